# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled matrix-free kernels for hex8 voxel models (internal module ``femur_fe.fe._voxel``).

Every element of a voxel model is a translate of one box, so its stiffness is
``E_e * K_hat`` with one (24, 24) unit-modulus template ``K_hat`` (interleaved local DOFs
``3 * a + c``, VTK corner order). Nothing here stores a global matrix: ``y = K x`` is
computed element by element. The Python wrappers in :mod:`femur_fe.fe.voxel_solver` check
shapes, dtypes and values first, and hold the NumPy twin of every kernel.

Conventions
-----------
* ``cells`` (m, 8) int32 node ids; elements are sorted by their grid index along axis 0
  ("layer"), and ``layer_ptr`` (L + 1) int64 gives the element range of each layer.
* Vectors are interleaved node DOFs (``3 * node + component``), float64 or float32
  (``real_t``); per-element moduli are float64 or float32 (``modulus_t``).
* Node grids are addressed by flat C-order indices on the node bounding box
  ``(n0, n1, n2)``; ``*_map`` arrays give the node id of each grid point, -1 if inactive.

Determinism
-----------
Elements of one layer touch node layers ``l`` and ``l + 1`` only, so the even layers
share no node and neither do the odd ones. The products loop over the even layers in
parallel (one thread per layer, elements in increasing order), then over the odd layers:
no two threads write the same entry, and the order in which the contributions to a node
are summed is fixed by the mesh, so the result is bitwise identical for any number of
threads. Transfers between grids are gathers (each output entry written by one thread).
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t

ctypedef fused real_t:
    float
    double

ctypedef fused modulus_t:
    float
    double


cdef inline void _element_product(const real_t* K, const real_t* x, real_t* y, const int32_t* nodes,
                                  real_t e) noexcept nogil:
    """y[nodes] += e * K_hat @ x[nodes] (24 interleaved DOFs)."""
    cdef real_t xe[24]
    cdef real_t ye[24]
    cdef real_t xc
    cdef int a, c, r
    cdef int64_t d
    for a in range(8):
        d = 3 * <int64_t> nodes[a]
        xe[3 * a] = x[d]
        xe[3 * a + 1] = x[d + 1]
        xe[3 * a + 2] = x[d + 2]
    for r in range(24):
        ye[r] = 0
    # column by column (K_hat is symmetric): the inner loop has no reduction and vectorises
    for c in range(24):
        xc = xe[c]
        for r in range(24):
            ye[r] = ye[r] + K[24 * c + r] * xc
    for a in range(8):
        d = 3 * <int64_t> nodes[a]
        y[d] += e * ye[3 * a]
        y[d + 1] += e * ye[3 * a + 1]
        y[d + 2] += e * ye[3 * a + 2]


def matvec(const int32_t[:, ::1] cells, const int64_t[::1] layer_ptr, const modulus_t[::1] young,
           const real_t[::1] khat, const real_t[::1] x, real_t[::1] y, int n_threads):
    """``y = K x`` with ``K = sum_e young[e] * K_hat`` (y is overwritten)."""
    cdef Py_ssize_t n = y.shape[0], i, t, half, e, lay
    cdef Py_ssize_t n_layers = layer_ptr.shape[0] - 1
    cdef int parity
    cdef const real_t* kp = &khat[0]
    cdef const real_t* xp = &x[0]
    cdef real_t* yp = &y[0]
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            yp[i] = 0
        for parity in range(2):
            half = (n_layers - parity + 1) // 2
            for t in prange(half, num_threads=n_threads, schedule="dynamic", chunksize=1):
                lay = 2 * t + parity
                for e in range(layer_ptr[lay], layer_ptr[lay + 1]):
                    _element_product(kp, xp, yp, &cells[e, 0], <real_t> young[e])


def prolong_add(const int64_t[::1] fine_flat, const int64_t[::1] fine_dims, const int32_t[::1] coarse_map,
                const int64_t[::1] coarse_dims, const int64_t[::1] shift, const real_t[::1] xc, real_t[::1] xf,
                int n_threads):
    """``xf += P xc``: trilinear interpolation from the coarse node grid to the fine one.

    Axis a is coarsened by 2 when ``shift[a] == 1`` and kept when ``shift[a] == 0``. Fine node
    (i, j, k) takes ``1/8 sum_o xc[(i + (o0 & s0)) >> s0, (j + (o1 & s1)) >> s1, (k + (o2 & s2)) >> s2]``
    over the eight o in {0, 1}^3 (weight 1 at coincident nodes, 1/2 on coarse edges, 1/4 on
    faces, 1/8 at cell centres).
    """
    cdef Py_ssize_t n = fine_flat.shape[0], p
    cdef int64_t f1 = fine_dims[1], f2 = fine_dims[2], c1 = coarse_dims[1], c2 = coarse_dims[2]
    cdef int64_t s0 = shift[0], s1 = shift[1], s2 = shift[2]
    cdef int64_t f, i, j, k, q
    cdef int o
    cdef double t0, t1, t2
    with nogil:
        for p in prange(n, num_threads=n_threads, schedule="static"):
            f = fine_flat[p]
            i = f // (f1 * f2)
            j = (f // f2) % f1
            k = f % f2
            t0 = 0.0
            t1 = 0.0
            t2 = 0.0
            for o in range(8):
                q = 3 * <int64_t> coarse_map[(((i + ((o & 1) & s0)) >> s0) * c1
                                              + ((j + (((o >> 1) & 1) & s1)) >> s1)) * c2
                                             + ((k + (((o >> 2) & 1) & s2)) >> s2)]
                t0 = t0 + xc[q]
                t1 = t1 + xc[q + 1]
                t2 = t2 + xc[q + 2]
            xf[3 * p] += <real_t> (0.125 * t0)
            xf[3 * p + 1] += <real_t> (0.125 * t1)
            xf[3 * p + 2] += <real_t> (0.125 * t2)


def restrict(const int64_t[::1] coarse_flat, const int64_t[::1] coarse_dims, const int32_t[::1] fine_map,
             const int64_t[::1] fine_dims, const int64_t[::1] shift, const real_t[::1] rf, real_t[::1] rc,
             int n_threads):
    """``rc = P^T rf`` (rc is overwritten), the transpose of :func:`prolong_add`, as a gather:
    along a coarsened axis coarse node I collects fine nodes 2I - 1, 2I, 2I + 1 with weights
    1/2, 1, 1/2; along a kept axis fine node I with weight 1."""
    cdef Py_ssize_t n = coarse_flat.shape[0], p
    cdef int64_t c1 = coarse_dims[1], c2 = coarse_dims[2]
    cdef int64_t f0 = fine_dims[0], f1 = fine_dims[1], f2 = fine_dims[2]
    cdef int64_t s0 = shift[0], s1 = shift[1], s2 = shift[2]
    cdef int64_t f, ci, cj, ck, i, j, k, q
    cdef int a, b, c
    cdef double t0, t1, t2, wi, wj, w
    with nogil:
        for p in prange(n, num_threads=n_threads, schedule="static"):
            f = coarse_flat[p]
            ci = f // (c1 * c2)
            cj = (f // c2) % c1
            ck = f % c2
            t0 = 0.0
            t1 = 0.0
            t2 = 0.0
            for a in range(-s0, s0 + 1):
                i = (ci << s0) + a
                if i < 0 or i >= f0:
                    continue
                wi = 1.0 if a == 0 else 0.5
                for b in range(-s1, s1 + 1):
                    j = (cj << s1) + b
                    if j < 0 or j >= f1:
                        continue
                    wj = wi if b == 0 else 0.5 * wi
                    for c in range(-s2, s2 + 1):
                        k = (ck << s2) + c
                        if k < 0 or k >= f2:
                            continue
                        q = fine_map[(i * f1 + j) * f2 + k]
                        if q < 0:
                            continue
                        w = wj if c == 0 else 0.5 * wj
                        q = 3 * q
                        t0 = t0 + w * rf[q]
                        t1 = t1 + w * rf[q + 1]
                        t2 = t2 + w * rf[q + 2]
            rc[3 * p] = <real_t> t0
            rc[3 * p + 1] = <real_t> t1
            rc[3 * p + 2] = <real_t> t2


def chebyshev_step(real_t[::1] d, real_t[::1] x, const real_t[::1] b, const real_t[::1] ax,
                   const real_t[::1] invdiag, double c1, double c2, int n_threads):
    """One Chebyshev update: ``d = c1 d + c2 D^-1 (b - A x)``, then ``x += d``."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef real_t t
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            t = <real_t> (c1 * d[i] + c2 * invdiag[i] * (b[i] - ax[i]))
            d[i] = t
            x[i] = x[i] + t

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled element kernels of femur_fe: element stiffness, deterministic global assembly, strain.

Internal module (``femur_fe._kernels``). Every function here trusts its arguments: the
Python wrappers in :mod:`femur_fe.assembly` and :mod:`femur_fe.recovery` check shapes,
dtypes, layouts and values first. Every kernel has a NumPy twin in
:mod:`femur_fe.reference`.

Conventions
-----------
* ``points`` (n, 3) float64 mm, ``cells`` (m, k) int64, VTK node order.
* ``dnref`` (q, k, 3): reference shape-function gradients at the quadrature points,
  ``wq`` (q,) the quadrature weights.
* ``young`` (m, qE) float64 with qE = 1 (per element) or qE = q (per quadrature point).
* Unit-modulus Lame constants ``lam``, ``mu`` (MPa per MPa of Young's modulus).
* Global DOFs are interleaved (dof = 3*node + component). The CSR matrix is stored node
  row by node row: the three rows of node i occupy ``data[9*bptr[i] : 9*bptr[i+1]]``,
  row ``3i+c`` starts at ``9*bptr[i] + 3*c*deg_i`` and its columns are ``3*j+d`` for the
  sorted neighbour nodes j of i (``bcols[bptr[i]:bptr[i+1]]``).

Determinism
-----------
The global assembly loops in parallel over *node rows*: the thread owning node i adds the
contributions of the elements around i (in increasing element order) into the rows of i
only. No two threads write the same entry and the summation order of every entry is fixed
by the mesh, so the matrix is bitwise identical for any number of threads.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdint cimport int8_t, int32_t, int64_t

import numpy as np

cdef extern from *:
    """
    #if defined(_OPENMP)
    #include <omp.h>
    static int femur_omp_enabled(void) { return 1; }
    static int femur_omp_max_threads(void) { return omp_get_max_threads(); }
    static int femur_omp_thread_num(void) { return omp_get_thread_num(); }
    #else
    static int femur_omp_enabled(void) { return 0; }
    static int femur_omp_max_threads(void) { return 1; }
    static int femur_omp_thread_num(void) { return 0; }
    #endif
    """
    int femur_omp_enabled() noexcept nogil
    int femur_omp_max_threads() noexcept nogil
    int femur_omp_thread_num() noexcept nogil

ctypedef fused index_t:
    int32_t
    int64_t

cdef enum:
    MAXQ = 8      # most quadrature points of any rule used here (hex8 2x2x2)
    MAXK = 10     # most nodes per element (tet10)

# kernel modes
MODE_TET4 = 0     # closed-form linear tetrahedron
MODE_ISO = 1      # isoparametric element with reference gradients at quadrature points
MODE_TEMPLATE = 2  # every element is a translate of one template (voxels): precomputed matrices
MODE_CACHED = 3   # isoparametric element with cached scaled gradients sqrt(w det J) dN/dX


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(femur_omp_enabled())


def omp_max_threads():
    """``omp_get_max_threads()`` (1 without OpenMP)."""
    return int(femur_omp_max_threads())


# ----------------------------------------------------------------------------- geometry
cdef struct Ctx:
    # read-only element data shared by all threads (raw pointers into C-contiguous arrays)
    int mode
    const double* X       # (n, 3)
    const int64_t* cells  # (m, k)
    int k
    const double* dn      # (nq, k, 3) reference gradients
    const double* wq      # (nq,)
    int nq
    const double* young   # (m, qe)
    int qe
    double lam
    double mu
    const double* tmpl    # (qe, 3k, 3k) template matrices (mode 2)
    const double* geo     # (m, nq, k, 3) cached sqrt(w det J) * dN/dX (mode 3)


cdef inline double _tet4_grads(const Ctx* c, Py_ssize_t e, double* g) noexcept nogil:
    """Closed-form gradients of the 4 linear shape functions (g[4*3]); returns det J = 6 V."""
    cdef const int64_t* cn = c.cells + 4 * e
    cdef const double* p0 = c.X + 3 * cn[0]
    cdef const double* p1 = c.X + 3 * cn[1]
    cdef const double* p2 = c.X + 3 * cn[2]
    cdef const double* p3 = c.X + 3 * cn[3]
    cdef double ax = p1[0] - p0[0], ay = p1[1] - p0[1], az = p1[2] - p0[2]
    cdef double bx = p2[0] - p0[0], by = p2[1] - p0[1], bz = p2[2] - p0[2]
    cdef double cx = p3[0] - p0[0], cy = p3[1] - p0[1], cz = p3[2] - p0[2]
    # rows of J are a, b, c; columns of J^-1 are (b x c, c x a, a x b) / det
    cdef double g1x = by * cz - bz * cy, g1y = bz * cx - bx * cz, g1z = bx * cy - by * cx
    cdef double g2x = cy * az - cz * ay, g2y = cz * ax - cx * az, g2z = cx * ay - cy * ax
    cdef double g3x = ay * bz - az * by, g3y = az * bx - ax * bz, g3z = ax * by - ay * bx
    cdef double det = ax * g1x + ay * g1y + az * g1z
    cdef double r = 1.0 / det
    g[3] = g1x * r; g[4] = g1y * r; g[5] = g1z * r
    g[6] = g2x * r; g[7] = g2y * r; g[8] = g2z * r
    g[9] = g3x * r; g[10] = g3y * r; g[11] = g3z * r
    g[0] = -(g[3] + g[6] + g[9])
    g[1] = -(g[4] + g[7] + g[10])
    g[2] = -(g[5] + g[8] + g[11])
    return det


cdef inline double _iso_grads(const Ctx* c, Py_ssize_t e, const double* dn, double* g) noexcept nogil:
    """Physical gradients g[k*3] from reference gradients dn[k*3] at one point; returns det J.

    J[a][b] = sum_n dN_n/dxi_a X_nb, and dN/dX = J^-1 dN/dxi.
    """
    cdef double j00 = 0, j01 = 0, j02 = 0, j10 = 0, j11 = 0, j12 = 0, j20 = 0, j21 = 0, j22 = 0
    cdef double x0, x1, x2, d0, d1, d2, det, r
    cdef double i00, i01, i02, i10, i11, i12, i20, i21, i22
    cdef int n, k = c.k
    cdef const int64_t* cn = c.cells + k * e
    cdef const double* p
    for n in range(k):
        p = c.X + 3 * cn[n]
        x0 = p[0]; x1 = p[1]; x2 = p[2]
        d0 = dn[3 * n]; d1 = dn[3 * n + 1]; d2 = dn[3 * n + 2]
        j00 += d0 * x0; j01 += d0 * x1; j02 += d0 * x2
        j10 += d1 * x0; j11 += d1 * x1; j12 += d1 * x2
        j20 += d2 * x0; j21 += d2 * x1; j22 += d2 * x2
    i00 = j11 * j22 - j12 * j21
    i10 = j12 * j20 - j10 * j22
    i20 = j10 * j21 - j11 * j20
    det = j00 * i00 + j01 * i10 + j02 * i20
    r = 1.0 / det
    i00 = i00 * r; i10 = i10 * r; i20 = i20 * r
    i01 = (j02 * j21 - j01 * j22) * r
    i11 = (j00 * j22 - j02 * j20) * r
    i21 = (j01 * j20 - j00 * j21) * r
    i02 = (j01 * j12 - j02 * j11) * r
    i12 = (j02 * j10 - j00 * j12) * r
    i22 = (j00 * j11 - j01 * j10) * r
    for n in range(k):
        d0 = dn[3 * n]; d1 = dn[3 * n + 1]; d2 = dn[3 * n + 2]
        g[3 * n + 0] = i00 * d0 + i01 * d1 + i02 * d2
        g[3 * n + 1] = i10 * d0 + i11 * d1 + i12 * d2
        g[3 * n + 2] = i20 * d0 + i21 * d1 + i22 * d2
    return det


cdef inline int _element_grads(const Ctx* c, Py_ssize_t e, double* g, double* wdet) noexcept nogil:
    """Gradients g[q*k*3] and weight * det J wdet[q] at all quadrature points; returns 1 if any
    det J is <= 0 or non-finite, else 0."""
    cdef int q, bad = 0
    cdef double det
    if c.mode == 0:
        det = _tet4_grads(c, e, g)
        wdet[0] = det / 6.0
        return 0 if (det > 0.0 and det < 1e300) else 1
    for q in range(c.nq):
        det = _iso_grads(c, e, c.dn + 3 * c.k * q, g + 3 * c.k * q)
        wdet[q] = c.wq[q] * det
        if not (det > 0.0 and det < 1e300):
            bad = 1
    return bad


cdef inline int _scaled_grads(const Ctx* c, Py_ssize_t e, double* h) noexcept nogil:
    """h[q*k*3] = sqrt(w_q det J_q) * dN/dX at every quadrature point; returns the bad flag."""
    cdef double wdet[MAXQ]
    cdef double r
    cdef int q, t, n3 = 3 * c.k
    cdef int bad = _element_grads(c, e, h, wdet)
    for q in range(c.nq):
        r = sqrt(wdet[q])
        for t in range(n3):
            h[n3 * q + t] = r * h[n3 * q + t]
    return bad


cdef inline int _element_row(const Ctx* c, Py_ssize_t e, int a, double* acc) noexcept nogil:
    """Row block a of the modulus-weighted element matrix into acc[k*9] (index 9b + 3c + d).

    With h_q = sqrt(E_q w_q det J_q) dN/dX and M_ab = sum_q h_qa (x) h_qb (outer product),
    K_ab[c, d] = lam M_ab[c, d] + mu (M_ab[d, c] + delta_cd tr M_ab) (per-element E_e is
    factored out of M). M_ba[d, c] is built from the same products in the same order as
    M_ab[c, d], so the element and global matrices are bitwise symmetric.
    Returns the bad-Jacobian flag (0 for templates and cached geometry, checked once).
    """
    cdef double g[MAXQ * MAXK * 3]
    cdef double m9[MAXK * 9]
    cdef int q, b, cc, d, t, bad = 0, k = c.k, qe = c.qe, n3 = 3 * c.k, nq = c.nq
    cdef double ev, tr, lam = c.lam, mu = c.mu
    cdef double ha0, ha1, ha2, hb0, hb1, hb2, r
    cdef const double* young = c.young + qe * e
    cdef const double* trow
    cdef const double* h
    cdef const double* hq
    cdef double* o
    if c.mode == 2:
        # template: K_e = sum_q E_q * T_q (or E_e * T_0)
        for b in range(9 * k):
            acc[b] = 0.0
        for q in range(qe):
            ev = young[q]
            for cc in range(3):
                trow = c.tmpl + (q * n3 + 3 * a + cc) * n3
                for b in range(k):
                    for d in range(3):
                        acc[9 * b + 3 * cc + d] += ev * trow[3 * b + d]
        return 0
    if c.mode == 3:
        h = c.geo + nq * n3 * e
    else:
        bad = _scaled_grads(c, e, g)
        h = g
    if qe != 1:
        # per-point moduli: h_q <- sqrt(E_q) h_q (same operation order cached or not)
        for q in range(nq):
            r = sqrt(young[q])
            for t in range(n3):
                g[n3 * q + t] = r * h[n3 * q + t]
        h = g
    for b in range(9 * k):
        m9[b] = 0.0
    for q in range(nq):
        hq = h + n3 * q
        ha0 = hq[3 * a]; ha1 = hq[3 * a + 1]; ha2 = hq[3 * a + 2]
        for b in range(k):
            hb0 = hq[3 * b]; hb1 = hq[3 * b + 1]; hb2 = hq[3 * b + 2]
            o = m9 + 9 * b
            o[0] += ha0 * hb0; o[1] += ha0 * hb1; o[2] += ha0 * hb2
            o[3] += ha1 * hb0; o[4] += ha1 * hb1; o[5] += ha1 * hb2
            o[6] += ha2 * hb0; o[7] += ha2 * hb1; o[8] += ha2 * hb2
    ev = young[0] if qe == 1 else 1.0
    for b in range(k):
        o = m9 + 9 * b
        tr = mu * ((o[0] + o[4]) + o[8])
        for cc in range(3):
            for d in range(3):
                if cc == d:
                    acc[9 * b + 3 * cc + d] = ev * ((lam * o[3 * cc + d] + mu * o[3 * d + cc]) + tr)
                else:
                    acc[9 * b + 3 * cc + d] = ev * (lam * o[3 * cc + d] + mu * o[3 * d + cc])
    return bad


cdef Ctx _make_ctx(int mode, const double[:, ::1] points, const int64_t[:, ::1] cells,
                   const double[:, :, ::1] dnref, const double[::1] wq,
                   const double[:, ::1] young, double lam, double mu,
                   const double[:, :, ::1] tmpl, const double[:, :, :, ::1] geo):
    cdef Ctx c
    if cells.shape[1] > MAXK or wq.shape[0] > MAXQ or dnref.shape[0] != wq.shape[0] \
            or dnref.shape[1] != cells.shape[1] or young.shape[0] != cells.shape[0]:
        raise ValueError("kernel arguments have inconsistent shapes")
    if mode == 0 and cells.shape[1] != 4:
        raise ValueError("the closed-form tet4 kernel needs 4 nodes per cell")
    c.mode = mode
    c.X = &points[0, 0]
    c.cells = &cells[0, 0]
    c.k = cells.shape[1]
    c.dn = &dnref[0, 0, 0]
    c.wq = &wq[0]
    c.nq = wq.shape[0]
    c.young = &young[0, 0]
    c.qe = young.shape[1]
    c.lam = lam
    c.mu = mu
    c.tmpl = &tmpl[0, 0, 0]
    c.geo = &geo[0, 0, 0, 0]
    if mode == 2 and (tmpl.shape[0] != c.qe or tmpl.shape[1] != 3 * c.k or tmpl.shape[2] != 3 * c.k):
        raise ValueError("template matrices have the wrong shape")
    if mode == 3 and (geo.shape[0] != cells.shape[0] or geo.shape[1] != c.nq
                      or geo.shape[2] != c.k or geo.shape[3] != 3):
        raise ValueError("cached geometry has the wrong shape")
    return c


# ----------------------------------------------------------------------------- element matrices
def element_matrices(int mode, const double[:, ::1] points, const int64_t[:, ::1] cells,
                     const double[:, :, ::1] dnref, const double[::1] wq,
                     const double[:, ::1] young, double lam, double mu,
                     const double[:, :, ::1] tmpl, const double[:, :, :, ::1] geo,
                     double[:, :, ::1] out, int8_t[::1] bad, int n_threads):
    """Element stiffness matrices out[e] (3k, 3k) for all elements, in parallel."""
    cdef Py_ssize_t m = cells.shape[0], e
    if m == 0:
        return
    cdef Ctx c = _make_ctx(mode, points, cells, dnref, wq, young, lam, mu, tmpl, geo)
    if out.shape[0] != m or out.shape[1] != 3 * c.k or out.shape[2] != 3 * c.k or bad.shape[0] != m:
        raise ValueError("output arrays have the wrong shape")
    with nogil:
        for e in prange(m, num_threads=n_threads, schedule="static"):
            bad[e] = _element_full(&c, e, &out[e, 0, 0])


cdef int8_t _element_full(const Ctx* c, Py_ssize_t e, double* out) noexcept nogil:
    cdef double acc[MAXK * 9]
    cdef int a, b, cc, d, bad = 0, k = c.k
    for a in range(k):
        bad |= _element_row(c, e, a, acc)
        for cc in range(3):
            for b in range(k):
                for d in range(3):
                    out[(3 * a + cc) * 3 * k + 3 * b + d] = acc[9 * b + 3 * cc + d]
    return <int8_t>bad


def geometry_cache(int mode, const double[:, ::1] points, const int64_t[:, ::1] cells,
                   const double[:, :, ::1] dnref, const double[::1] wq,
                   double[:, :, :, ::1] out, int8_t[::1] bad, int n_threads):
    """out[e, q] = sqrt(w_q det J_q) dN/dX (m, q, k, 3) for MODE_CACHED; bad[e] flags det J <= 0."""
    cdef Py_ssize_t m = cells.shape[0], e
    if m == 0:
        return
    cdef double[:, ::1] ydummy = np.ones((m, 1))
    cdef double[:, :, ::1] tdummy = np.zeros((1, 1, 1))
    cdef Ctx c = _make_ctx(mode, points, cells, dnref, wq, ydummy, 0.0, 0.0, tdummy, out)
    if out.shape[0] != m or out.shape[1] != c.nq or out.shape[2] != c.k or bad.shape[0] != m:
        raise ValueError("output arrays have the wrong shape")
    with nogil:
        for e in prange(m, num_threads=n_threads, schedule="static"):
            bad[e] = <int8_t>_scaled_grads(&c, e, &out[e, 0, 0, 0])


# ----------------------------------------------------------------------------- sparsity pattern
def node_incidence(const int64_t[:, ::1] cells, const int64_t[::1] ptr,
                   int32_t[::1] elem, int8_t[::1] loc):
    """Fill the node -> (element, local node) incidence lists, sorted by element id.

    ``ptr`` (n+1) holds the list offsets (cumulative node valences).
    """
    cdef Py_ssize_t m = cells.shape[0], e, n = ptr.shape[0] - 1, i
    cdef int k = cells.shape[1], a
    cdef int64_t t
    if elem.shape[0] != m * k or loc.shape[0] != m * k or (m and ptr[n] != m * k):
        raise ValueError("incidence arrays have inconsistent shapes")
    cursor = np.array(ptr[:n], dtype=np.int64)
    cdef int64_t[::1] cur = cursor
    with nogil:
        for e in range(m):
            for a in range(k):
                i = cells[e, a]
                t = cur[i]
                cur[i] = t + 1
                elem[t] = <int32_t>e
                loc[t] = <int8_t>a


cdef int64_t _gather_row(Py_ssize_t i, const int64_t[:, ::1] cells, const int64_t[::1] ptr,
                         const int32_t[::1] elem, int32_t* mark, int32_t* out) noexcept nogil:
    """Distinct nodes of the elements around node i (first-seen order) into ``out`` (unless
    NULL); returns their number. ``mark`` (n,) scratch: entries equal to i are 'seen'."""
    cdef int64_t cnt = 0, t, j
    cdef int b, k = cells.shape[1]
    cdef int32_t e
    for t in range(ptr[i], ptr[i + 1]):
        e = elem[t]
        for b in range(k):
            j = cells[e, b]
            if mark[j] != i:
                mark[j] = <int32_t>i
                if out != NULL:
                    out[cnt] = <int32_t>j
                cnt += 1
    return cnt


def count_neighbours(const int64_t[:, ::1] cells, const int64_t[::1] ptr,
                     const int32_t[::1] elem, int64_t[::1] deg, int32_t[:, ::1] marks,
                     int n_threads):
    """deg[i] = number of distinct nodes sharing an element with node i (i included).

    ``marks`` (n_threads, n) int32 scratch, filled with -1 by the caller.
    """
    cdef Py_ssize_t n = deg.shape[0], i
    if marks.shape[0] < n_threads or marks.shape[1] != n or ptr.shape[0] != n + 1:
        raise ValueError("scratch arrays have inconsistent shapes")
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=512):
            deg[i] = _gather_row(i, cells, ptr, elem, &marks[femur_omp_thread_num(), 0], NULL)


cdef void _fill_row(Py_ssize_t i, const int64_t[:, ::1] cells, const int64_t[::1] ptr,
                    const int32_t[::1] elem, const int64_t[::1] bptr, int32_t[::1] bcols,
                    int32_t[:, ::1] bmap, int32_t* mark, int32_t* pos) noexcept nogil:
    cdef int64_t t, start = bptr[i]
    cdef int64_t u, v
    cdef int b, k = cells.shape[1]
    cdef int32_t e, key
    cdef int64_t cnt = _gather_row(i, cells, ptr, elem, mark, &bcols[start])
    # insertion sort of the (short) neighbour list
    for u in range(start + 1, start + cnt):
        key = bcols[u]
        v = u - 1
        while v >= start and bcols[v] > key:
            bcols[v + 1] = bcols[v]
            v -= 1
        bcols[v + 1] = key
    for u in range(start, start + cnt):
        pos[bcols[u]] = <int32_t>(u - start)
    for t in range(ptr[i], ptr[i + 1]):
        e = elem[t]
        for b in range(k):
            bmap[t, b] = pos[cells[e, b]]


def fill_pattern(const int64_t[:, ::1] cells, const int64_t[::1] ptr, const int32_t[::1] elem,
                 const int64_t[::1] bptr, int32_t[::1] bcols, int32_t[:, ::1] bmap,
                 int32_t[:, ::1] marks, int32_t[:, ::1] pos, int n_threads):
    """Sorted neighbour lists ``bcols`` and, for every incidence t = (i, e, a) and local node b,
    ``bmap[t, b]`` = position of node cells[e, b] in the neighbour list of i (0-based, local)."""
    cdef Py_ssize_t n = bptr.shape[0] - 1, i
    cdef int tid
    if (marks.shape[0] < n_threads or pos.shape[0] < n_threads or marks.shape[1] != n
            or pos.shape[1] != n or ptr.shape[0] != n + 1 or bcols.shape[0] != bptr[n]
            or bmap.shape[0] != elem.shape[0] or bmap.shape[1] != cells.shape[1]):
        raise ValueError("pattern arrays have inconsistent shapes")
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=512):
            tid = femur_omp_thread_num()
            _fill_row(i, cells, ptr, elem, bptr, bcols, bmap, &marks[tid, 0], &pos[tid, 0])


def csr_structure(const int64_t[::1] bptr, const int32_t[::1] bcols,
                  index_t[::1] indptr, index_t[::1] indices, int n_threads):
    """Interleaved-DOF CSR ``indptr`` (3n+1) and ``indices`` (9 nnzb) from the node pattern."""
    cdef Py_ssize_t n = bptr.shape[0] - 1, i
    if indptr.shape[0] != 3 * n + 1 or indices.shape[0] != 9 * bptr[n] or bcols.shape[0] != bptr[n]:
        raise ValueError("CSR arrays have inconsistent shapes")
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            _csr_row(i, bptr, bcols, indptr, indices)
    indptr[3 * n] = <index_t>(9 * bptr[n])


cdef void _csr_row(Py_ssize_t i, const int64_t[::1] bptr, const int32_t[::1] bcols,
                   index_t[::1] indptr, index_t[::1] indices) noexcept nogil:
    cdef int64_t deg = bptr[i + 1] - bptr[i], base = 9 * bptr[i], p, rs
    cdef int c, d
    cdef int64_t col
    for c in range(3):
        rs = base + 3 * c * deg
        indptr[3 * i + c] = <index_t>rs
        for p in range(deg):
            col = 3 * <int64_t>bcols[bptr[i] + p]
            for d in range(3):
                indices[rs + 3 * p + d] = <index_t>(col + d)


# ----------------------------------------------------------------------------- assembly
cdef void _assemble_node(const Ctx* c, Py_ssize_t i, const int64_t* ptr, const int32_t* elem,
                         const int8_t* loc, const int64_t* bptr, const int32_t* bmap,
                         double* data, int8_t* bad, int bsr) noexcept nogil:
    cdef double acc[MAXK * 9]
    cdef int64_t deg = bptr[i + 1] - bptr[i], t
    cdef double* row0 = data + 9 * bptr[i]
    cdef double* r
    cdef const double* ab
    cdef const int32_t* bm
    cdef int k = c.k, a, b, cc, flag
    cdef int32_t e
    for t in range(9 * deg):
        row0[t] = 0.0
    for t in range(ptr[i], ptr[i + 1]):
        e = elem[t]
        a = loc[t]
        flag = _element_row(c, e, a, acc)
        if a == 0:
            bad[e] = <int8_t>flag
        bm = bmap + k * t
        for b in range(k):
            ab = acc + 9 * b
            for cc in range(3):
                if bsr:  # block (i, bm[b]) stored row-major at 9 * (bptr[i] + bm[b])
                    r = row0 + 9 * bm[b] + 3 * cc
                else:
                    r = row0 + 3 * cc * deg + 3 * bm[b]
                r[0] += ab[3 * cc]
                r[1] += ab[3 * cc + 1]
                r[2] += ab[3 * cc + 2]


def assemble_values(int mode, const double[:, ::1] points, const int64_t[:, ::1] cells,
                    const double[:, :, ::1] dnref, const double[::1] wq,
                    const double[:, ::1] young, double lam, double mu,
                    const double[:, :, ::1] tmpl, const double[:, :, :, ::1] geo,
                    const int64_t[::1] ptr, const int32_t[::1] elem, const int8_t[::1] loc,
                    const int64_t[::1] bptr, const int32_t[:, ::1] bmap,
                    double[::1] data, int8_t[::1] bad, int n_threads, int bsr=0):
    """Global stiffness values ``data`` (9 nnzb) on the interleaved node-row CSR layout, or
    (``bsr``) as 3x3 blocks in the order of the node pattern (BSR with indptr ``bptr`` and
    indices ``bcols``).

    Parallel over node rows; each row is owned by one thread, so the result does not depend
    on ``n_threads``. ``bad[e]`` is set to 1 for elements with det J <= 0 somewhere.
    """
    cdef Py_ssize_t n = bptr.shape[0] - 1, i
    cdef Ctx c = _make_ctx(mode, points, cells, dnref, wq, young, lam, mu, tmpl, geo)
    cdef Py_ssize_t m = cells.shape[0], k = cells.shape[1]
    if (ptr.shape[0] != n + 1 or elem.shape[0] != m * k or loc.shape[0] != m * k
            or bmap.shape[0] != m * k or bmap.shape[1] != k or data.shape[0] != 9 * bptr[n]
            or bad.shape[0] != m):
        raise ValueError("assembly arrays have inconsistent shapes")
    cdef const int64_t* pp = &ptr[0]
    cdef const int32_t* pe = &elem[0]
    cdef const int8_t* pl = &loc[0]
    cdef const int64_t* pb = &bptr[0]
    cdef const int32_t* pm = &bmap[0, 0]
    cdef double* pd = &data[0]
    cdef int8_t* pbad = &bad[0]
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=256):
            _assemble_node(&c, i, pp, pe, pl, pb, pm, pd, pbad, bsr)


# ----------------------------------------------------------------------------- template check
def translates_of_first(const double[:, ::1] points, const int64_t[:, ::1] cells, double tol):
    """True when every element is element 0 translated (node by node, within ``tol`` mm)."""
    cdef Py_ssize_t m = cells.shape[0], e
    cdef int k = cells.shape[1], a, c
    cdef double off[MAXK * 3]
    cdef int64_t n0
    cdef double d
    cdef int ok = 1
    if m == 0:
        return False
    n0 = cells[0, 0]
    for a in range(k):
        for c in range(3):
            off[3 * a + c] = points[cells[0, a], c] - points[n0, c]
    with nogil:
        for e in range(m):
            n0 = cells[e, 0]
            for a in range(1, k):
                for c in range(3):
                    d = points[cells[e, a], c] - points[n0, c] - off[3 * a + c]
                    if not (-tol <= d <= tol):
                        ok = 0
            if not ok:
                break
    return bool(ok)


# ----------------------------------------------------------------------------- strain
cdef int8_t _strain_element(const Ctx* c, Py_ssize_t e, const double* u, double* out) noexcept nogil:
    """out[q*9 + 3c + d] = sym(grad u) at the nq reference points of c.dn; returns the bad flag."""
    cdef double g[MAXK * 3]
    cdef double h[9]
    cdef double det
    cdef int q, n, cc, d, k = c.k, flag = 0
    cdef const double* un
    cdef const int64_t* cn = c.cells + k * e
    for q in range(c.nq):
        if c.mode == 0:
            det = _tet4_grads(c, e, g)
        else:
            det = _iso_grads(c, e, c.dn + 3 * k * q, g)
        if not (det > 0.0 and det < 1e300):
            flag = 1
        for cc in range(9):
            h[cc] = 0.0
        # displacement gradient H[c][d] = du_c/dX_d
        for n in range(k):
            un = u + 3 * cn[n]
            for cc in range(3):
                for d in range(3):
                    h[3 * cc + d] += un[cc] * g[3 * n + d]
        for cc in range(3):
            for d in range(3):
                out[9 * q + 3 * cc + d] = 0.5 * (h[3 * cc + d] + h[3 * d + cc])
    return <int8_t>flag


def strain_at(int mode, const double[:, ::1] points, const int64_t[:, ::1] cells,
              const double[:, :, ::1] dnref, const double[:, ::1] u,
              double[:, :, :, ::1] out, int8_t[::1] bad, int n_threads):
    """Small-strain tensors out[e, q] = sym(grad u) at the reference points of ``dnref``
    (for mode 0, tet4, the constant strain is written nq times)."""
    cdef Py_ssize_t m = cells.shape[0], e
    if m == 0:
        return
    cdef double[::1] wdummy = np.ones(dnref.shape[0])
    cdef double[:, ::1] ydummy = np.ones((m, 1))
    cdef double[:, :, ::1] tdummy = np.zeros((1, 1, 1))
    cdef double[:, :, :, ::1] gdummy = np.zeros((1, 1, 1, 1))
    cdef Ctx c = _make_ctx(mode, points, cells, dnref, wdummy, ydummy, 0.0, 0.0, tdummy, gdummy)
    if (u.shape[0] != points.shape[0] or u.shape[1] != 3 or out.shape[0] != m
            or out.shape[1] != dnref.shape[0] or out.shape[2] != 3 or out.shape[3] != 3
            or bad.shape[0] != m):
        raise ValueError("strain arrays have inconsistent shapes")
    cdef const double* pu = &u[0, 0]
    with nogil:
        for e in prange(m, num_threads=n_threads, schedule="static"):
            bad[e] = _strain_element(&c, e, pu, &out[e, 0, 0, 0])

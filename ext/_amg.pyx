# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of the smoothed-aggregation multigrid (:mod:`femur_fe.amg`).

Internal module (``femur_fe._amg``): block sparse (BSR) products and the Chebyshev smoother,
parallel over block rows with OpenMP. Every function trusts its arguments (checked by
:mod:`femur_fe.amg`); every kernel has a NumPy twin in :mod:`femur_fe.reference`.

A BSR matrix is ``indptr`` (nbr+1), ``indices`` (nnzb) int32 and ``data`` (nnzb, R, C), float32
or float64; vectors have the same float type. Each output entry is written by one thread and
summed in a fixed order, so results do not depend on the number of threads (except
:func:`bsr_rmatvec`, whose per-thread partial sums are added in thread order).
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t

import numpy as np

ctypedef fused real_t:
    float
    double

cdef enum:
    MAXB = 8   # largest block dimension (3 DOFs per node, 6 rigid-body modes)


cdef inline void _row_product(const int32_t* indptr, const int32_t* indices, const real_t* data,
                              const real_t* x, Py_ssize_t i, int R, int C, double* acc) noexcept nogil:
    """acc[0:R] = (A x)_i for block row i (accumulated in double)."""
    cdef Py_ssize_t p, col
    cdef int r, c
    cdef const real_t* blk
    cdef const real_t* xc
    cdef double s
    for r in range(R):
        acc[r] = 0.0
    for p in range(indptr[i], indptr[i + 1]):
        blk = data + p * R * C
        xc = x + <Py_ssize_t>indices[p] * C
        for r in range(R):
            s = 0.0
            for c in range(C):
                s = s + blk[r * C + c] * xc[c]
            acc[r] += s


def bsr_matvec(const int32_t[::1] indptr, const int32_t[::1] indices, const real_t[:, :, ::1] data,
               const real_t[::1] x, real_t[::1] y, bint add, int n_threads):
    """y = A x (``add``: y += A x)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i
    cdef int R = data.shape[1], C = data.shape[2]
    if R > MAXB or C > MAXB or y.shape[0] != n * R or x.shape[0] % C or data.shape[0] != indices.shape[0]:
        raise ValueError("bsr_matvec: inconsistent shapes")
    if n == 0:
        return
    cdef const int32_t* ip = &indptr[0]
    cdef const int32_t* ix = &indices[0] if indices.shape[0] else NULL
    cdef const real_t* d = &data[0, 0, 0] if data.shape[0] else NULL
    cdef const real_t* px = &x[0]
    cdef real_t* py = &y[0]
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            _matvec_row(ip, ix, d, px, py, i, R, C, add)


cdef inline void _matvec_row(const int32_t* ip, const int32_t* ix, const real_t* d, const real_t* px,
                             real_t* py, Py_ssize_t i, int R, int C, bint add) noexcept nogil:
    cdef double acc[MAXB]
    cdef int r
    _row_product(ip, ix, d, px, i, R, C, acc)
    if add:
        for r in range(R):
            py[i * R + r] = <real_t>(py[i * R + r] + acc[r])
    else:
        for r in range(R):
            py[i * R + r] = <real_t>acc[r]


def bsr_rmatvec(const int32_t[::1] indptr, const int32_t[::1] indices, const real_t[:, :, ::1] data,
                const real_t[::1] x, real_t[::1] y, real_t[:, ::1] scratch, int n_threads):
    """y = A^T x. ``scratch`` (n_threads, y.size): per-thread partial sums (rows split in
    contiguous chunks), added in thread order."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, m = y.shape[0], i, p, t, j, lo, hi, chunk
    cdef int R = data.shape[1], C = data.shape[2], r, c, nt = n_threads
    cdef const real_t* blk
    cdef real_t* out
    cdef double s
    if x.shape[0] != n * R or m % C or scratch.shape[0] < nt or scratch.shape[1] != m:
        raise ValueError("bsr_rmatvec: inconsistent shapes")
    if n == 0 or m == 0:
        y[:] = 0
        return
    chunk = (n + nt - 1) // nt
    with nogil:
        for t in prange(nt, num_threads=nt, schedule="static"):
            out = &scratch[t, 0]
            for j in range(m):
                out[j] = 0
            lo = t * chunk
            hi = min(n, lo + chunk)
            for i in range(lo, hi):
                for p in range(indptr[i], indptr[i + 1]):
                    blk = &data[p, 0, 0]
                    for c in range(C):
                        s = 0.0
                        for r in range(R):
                            s = s + blk[r * C + c] * x[i * R + r]
                        out[<Py_ssize_t>indices[p] * C + c] += <real_t>s
        for j in prange(m, num_threads=nt, schedule="static"):
            y[j] = _column_sum(&scratch[0, 0], m, nt, j)


def bsr_residual(const int32_t[::1] indptr, const int32_t[::1] indices, const real_t[:, :, ::1] data,
                 const real_t[::1] x, const real_t[::1] b, real_t[::1] r_out, int n_threads):
    """r = b - A x (square blocks)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i
    cdef int R = data.shape[1]
    if R > MAXB or data.shape[2] != R or x.shape[0] != n * R or b.shape[0] != n * R or r_out.shape[0] != n * R:
        raise ValueError("bsr_residual: inconsistent shapes")
    if n == 0:
        return
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            _residual_row(&indptr[0], &indices[0], &data[0, 0, 0], &x[0], &b[0], &r_out[0], i, R)


cdef inline void _residual_row(const int32_t* ip, const int32_t* ix, const real_t* d, const real_t* x,
                               const real_t* b, real_t* r_out, Py_ssize_t i, int R) noexcept nogil:
    cdef double acc[MAXB]
    cdef int r
    _row_product(ip, ix, d, x, i, R, R, acc)
    for r in range(R):
        r_out[i * R + r] = <real_t>(b[i * R + r] - acc[r])


cdef inline real_t _column_sum(const real_t* scratch, Py_ssize_t m, int nt, Py_ssize_t j) noexcept nogil:
    cdef double s = 0.0
    cdef int u
    for u in range(nt):
        s = s + scratch[u * m + j]
    return <real_t>s


def cheb_first(const real_t[:, :, ::1] dinv, const real_t[::1] r, real_t[::1] d, real_t[::1] x,
               double c, int n_threads):
    """First Chebyshev step: d = c D^-1 r, x += d (D^-1 block diagonal, (n, R, R))."""
    cdef Py_ssize_t n = dinv.shape[0], i
    cdef int R = dinv.shape[1], a, b
    cdef double s
    if dinv.shape[2] != R or r.shape[0] != n * R or d.shape[0] != n * R or x.shape[0] != n * R:
        raise ValueError("cheb_first: inconsistent shapes")
    if n == 0:
        return
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            for a in range(R):
                s = 0.0
                for b in range(R):
                    s = s + dinv[i, a, b] * r[i * R + b]
                d[i * R + a] = <real_t>(c * s)
                x[i * R + a] = <real_t>(x[i * R + a] + c * s)


def cheb_step(const int32_t[::1] indptr, const int32_t[::1] indices, const real_t[:, :, ::1] data,
              const real_t[:, :, ::1] dinv, const real_t[::1] d_old, real_t[::1] d_new, real_t[::1] r,
              real_t[::1] x, double alpha, double c, int n_threads):
    """One Chebyshev step, row by row: r -= A d_old; d_new = alpha d_old + c D^-1 r; x += d_new."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i
    cdef int R = data.shape[1]
    if (R > MAXB or data.shape[2] != R or dinv.shape[0] != n or d_old.shape[0] != n * R
            or d_new.shape[0] != n * R or r.shape[0] != n * R or x.shape[0] != n * R):
        raise ValueError("cheb_step: inconsistent shapes")
    if n == 0:
        return
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            _cheb_row(&indptr[0], &indices[0], &data[0, 0, 0], &dinv[0, 0, 0], &d_old[0], &d_new[0], &r[0],
                      &x[0], i, R, alpha, c)


cdef inline void _cheb_row(const int32_t* ip, const int32_t* ix, const real_t* d, const real_t* dinv,
                           const real_t* d_old, real_t* d_new, real_t* r, real_t* x, Py_ssize_t i, int R,
                           double alpha, double c) noexcept nogil:
    cdef double acc[MAXB]
    cdef double rr[MAXB]
    cdef double s
    cdef int a, b
    cdef const real_t* di = dinv + i * R * R
    _row_product(ip, ix, d, d_old, i, R, R, acc)
    for a in range(R):
        rr[a] = r[i * R + a] - acc[a]
        r[i * R + a] = <real_t>rr[a]
    for a in range(R):
        s = 0.0
        for b in range(R):
            s = s + di[a * R + b] * rr[b]
        s = alpha * d_old[i * R + a] + c * s
        d_new[i * R + a] = <real_t>s
        x[i * R + a] = <real_t>(x[i * R + a] + s)

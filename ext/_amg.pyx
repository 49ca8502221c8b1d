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
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t

import numpy as np

ctypedef fused real_t:
    float
    double

cdef enum:
    MAXB = 8   # largest block dimension (3 DOFs per node, 6 rigid-body modes)
    ROWS_PER_TASK = 1024  # rows per dynamically scheduled task (threads that lag on a busy machine get fewer)


cdef inline void _row_product_n(const int32_t* indptr, const int32_t* indices, const real_t* data,
                                const real_t* x, Py_ssize_t i, int R, int C, double* acc) noexcept nogil:
    """acc[0:R] = (A x)_i for block row i (accumulated in double)."""
    cdef Py_ssize_t p
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


cdef inline void _row_product_33(const int32_t* indptr, const int32_t* indices, const real_t* data,
                                 const real_t* x, Py_ssize_t i, double* acc) noexcept nogil:
    """3x3 blocks, accumulated in the matrix precision."""
    cdef Py_ssize_t p
    cdef const real_t* blk
    cdef const real_t* xc
    cdef real_t a0 = 0, a1 = 0, a2 = 0, x0, x1, x2
    for p in range(indptr[i], indptr[i + 1]):
        blk = data + 9 * p
        xc = x + 3 * <Py_ssize_t>indices[p]
        x0 = xc[0]
        x1 = xc[1]
        x2 = xc[2]
        a0 = a0 + (blk[0] * x0 + blk[1] * x1 + blk[2] * x2)
        a1 = a1 + (blk[3] * x0 + blk[4] * x1 + blk[5] * x2)
        a2 = a2 + (blk[6] * x0 + blk[7] * x1 + blk[8] * x2)
    acc[0] = a0
    acc[1] = a1
    acc[2] = a2


cdef inline void _row_product(const int32_t* indptr, const int32_t* indices, const real_t* data,
                              const real_t* x, Py_ssize_t i, int R, int C, double* acc) noexcept nogil:
    """acc[0:R] = (A x)_i; the common block sizes are passed as constants so that the compiler
    unrolls the block loops."""
    if R == 3 and C == 3:
        _row_product_33(indptr, indices, data, x, i, acc)
    elif R == 6 and C == 6:
        _row_product_n(indptr, indices, data, x, i, 6, 6, acc)
    elif R == 3 and C == 6:
        _row_product_n(indptr, indices, data, x, i, 3, 6, acc)
    else:
        _row_product_n(indptr, indices, data, x, i, R, C, acc)


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
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=ROWS_PER_TASK):
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
    """y = A^T x. ``scratch`` (k, y.size): partial sums of k contiguous chunks of rows (taken
    by the threads as they come free), added in chunk order: the result depends on k, not on
    the number of threads."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, m = y.shape[0], i, p, t, j, lo, hi, chunk
    cdef int R = data.shape[1], C = data.shape[2], r, c, nt = n_threads, nk = scratch.shape[0]
    cdef const real_t* blk
    cdef real_t* out
    cdef double s
    if x.shape[0] != n * R or m % C or nk < 1 or scratch.shape[1] != m:
        raise ValueError("bsr_rmatvec: inconsistent shapes")
    if n == 0 or m == 0:
        y[:] = 0
        return
    chunk = (n + nk - 1) // nk
    with nogil:
        for t in prange(nk, num_threads=nt, schedule="dynamic", chunksize=1):
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
            y[j] = _column_sum(&scratch[0, 0], m, nk, j)


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
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=ROWS_PER_TASK):
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
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=ROWS_PER_TASK):
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
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=ROWS_PER_TASK):
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


# ----------------------------------------------------------------------------- set-up products
cdef inline void _gemm_add_n(const real_t* a, const real_t* b, real_t* c, int m, int k, int n,
                             real_t scale) noexcept nogil:
    """c (m, n) += scale * a (m, k) @ b (k, n), row-major blocks."""
    cdef int r, q, s
    cdef real_t v
    for r in range(m):
        for q in range(k):
            v = scale * a[r * k + q]
            for s in range(n):
                c[r * n + s] += v * b[q * n + s]


cdef inline void _gemm_add(const real_t* a, const real_t* b, real_t* c, int m, int k, int n,
                           real_t scale) noexcept nogil:
    """Dispatch of :func:`_gemm_add_n` with the common block sizes as constants (unrolled)."""
    if m == 3 and k == 3 and n == 6:
        _gemm_add_n(a, b, c, 3, 3, 6, scale)
    elif m == 6 and k == 6 and n == 6:
        _gemm_add_n(a, b, c, 6, 6, 6, scale)
    else:
        _gemm_add_n(a, b, c, m, k, n, scale)


cdef inline void _gemm_tn_add_n(const real_t* a, const real_t* b, real_t* c, int k, int m, int n) noexcept nogil:
    """c (m, n) += a^T @ b with a (k, m), b (k, n), row-major blocks."""
    cdef int r, q, s
    cdef real_t v
    for q in range(k):
        for r in range(m):
            v = a[q * m + r]
            for s in range(n):
                c[r * n + s] += v * b[q * n + s]


cdef inline void _gemm_tn_add(const real_t* a, const real_t* b, real_t* c, int k, int m, int n) noexcept nogil:
    if k == 3 and m == 6 and n == 6:
        _gemm_tn_add_n(a, b, c, 3, 6, 6)
    elif k == 6 and m == 6 and n == 6:
        _gemm_tn_add_n(a, b, c, 6, 6, 6)
    else:
        _gemm_tn_add_n(a, b, c, k, m, n)


cdef void _smooth_row(const int32_t* aip, const int32_t* aix, const real_t* ad, const real_t* dinv,
                      const int32_t* agg, const real_t* tblk, const int32_t* pip, const int32_t* pix,
                      real_t* pd, Py_ssize_t i, int R, int C, double w) noexcept nogil:
    """Row i of P = T - w D^-1 A T (T: one (R, C) block per row at column agg[row], or none)."""
    cdef real_t tmp[MAXB * MAXB]
    cdef Py_ssize_t p, q, lo = pip[i], hi = pip[i + 1]
    cdef int32_t j, J
    cdef int t
    for p in range(lo * R * C, hi * R * C):
        pd[p] = 0
    # pd row <- sum_j A_ij T_j (block column agg[j]); linear search in the short sorted row
    for p in range(aip[i], aip[i + 1]):
        j = aix[p]
        J = agg[j]
        if J < 0:
            continue
        for q in range(lo, hi):
            if pix[q] == J:
                _gemm_add(ad + p * R * R, tblk + <Py_ssize_t>j * R * C, pd + q * R * C, R, R, C, <real_t>1)
                break
    # pd row <- -w D_i^-1 (pd row), then + T_i
    for q in range(lo, hi):
        for t in range(R * C):
            tmp[t] = pd[q * R * C + t]
            pd[q * R * C + t] = 0
        _gemm_add(dinv + i * R * R, tmp, pd + q * R * C, R, R, C, <real_t>(-w))
        if pix[q] == agg[i]:
            for t in range(R * C):
                pd[q * R * C + t] = pd[q * R * C + t] + tblk[i * R * C + t]


def smooth_prolongator(const int32_t[::1] aip, const int32_t[::1] aix, const real_t[:, :, ::1] ad,
                       const real_t[:, :, ::1] dinv, const int32_t[::1] agg, const real_t[:, :, ::1] tblk,
                       const int32_t[::1] pip, const int32_t[::1] pix, real_t[:, :, ::1] pd, double w,
                       int n_threads):
    """Values of the smoothed prolongator P = T - w D^-1 A T on its pattern (pip, pix).

    ``tblk`` (n, R, C): the block of the tentative prolongator T in row i (column agg[i];
    rows with agg[i] < 0 have none). The pattern must contain column agg[j] for every
    neighbour j of i with agg[j] >= 0, and agg[i]."""
    cdef Py_ssize_t n = aip.shape[0] - 1, i
    cdef int R = ad.shape[1], C = tblk.shape[2]
    if (R > MAXB or C > MAXB or ad.shape[2] != R or dinv.shape[0] != n or tblk.shape[0] != n
            or tblk.shape[1] != R or agg.shape[0] != n or pip.shape[0] != n + 1 or pd.shape[0] != pix.shape[0]
            or pd.shape[1] != R or pd.shape[2] != C):
        raise ValueError("smooth_prolongator: inconsistent shapes")
    if n == 0 or pix.shape[0] == 0:
        return
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=ROWS_PER_TASK):
            _smooth_row(&aip[0], &aix[0], &ad[0, 0, 0], &dinv[0, 0, 0], &agg[0], &tblk[0, 0, 0], &pip[0],
                        &pix[0], &pd[0, 0, 0], i, R, C, w)


cdef void _galerkin_range(const int32_t* aip, const int32_t* aix, const real_t* ad,
                          const int32_t* pip, const int32_t* pix, const real_t* pd,
                          const int32_t* cip, const int32_t* cix, real_t* cd,
                          Py_ssize_t n, int R, int C, int32_t lo_c, int32_t hi_c,
                          int32_t* slot, int32_t* stamp, int32_t* touched, real_t* acc, int32_t* pos,
                          int32_t* pos_row) noexcept nogil:
    """A_c[I, :] += P_iI^T (A P)_i for the coarse rows lo_c <= I < hi_c, fine rows in order."""
    cdef Py_ssize_t i, p, q, u, v
    cdef int32_t j, J, I, nt_, k
    cdef int t, rc = R * C, cc = C * C
    pos_row[0] = -1
    for i in range(n):
        if pip[i] == pip[i + 1] or pix[pip[i + 1] - 1] < lo_c or pix[pip[i]] >= hi_c:
            continue
        # (A P)_i into compact accumulators
        nt_ = 0
        for p in range(aip[i], aip[i + 1]):
            j = aix[p]
            for q in range(pip[j], pip[j + 1]):
                J = pix[q]
                if stamp[J] != i:
                    stamp[J] = <int32_t>i
                    slot[J] = nt_
                    touched[nt_] = J
                    for t in range(rc):
                        acc[nt_ * rc + t] = 0
                    nt_ = nt_ + 1
                _gemm_add(ad + p * R * R, pd + q * rc, acc + <Py_ssize_t>slot[J] * rc, R, R, C, <real_t>1)
        for q in range(pip[i], pip[i + 1]):
            I = pix[q]
            if I < lo_c or I >= hi_c:
                continue
            if pos_row[0] != I:
                for u in range(cip[I], cip[I + 1]):
                    pos[cix[u]] = <int32_t>(u - cip[I])
                pos_row[0] = I
            for k in range(nt_):
                J = touched[k]
                if J < I:
                    continue  # lower triangle: the transpose of (J, I), filled by the caller
                v = cip[I] + pos[J]
                _gemm_tn_add(pd + q * rc, acc + <Py_ssize_t>k * rc, cd + v * cc, R, C, C)
        for k in range(nt_):  # the stamps are per thread and outlive this task
            stamp[touched[k]] = -1


def galerkin(const int32_t[::1] aip, const int32_t[::1] aix, const real_t[:, :, ::1] ad,
             const int32_t[::1] pip, const int32_t[::1] pix, const real_t[:, :, ::1] pd,
             const int32_t[::1] cip, const int32_t[::1] cix, real_t[:, :, ::1] cd,
             const int32_t[::1] split, int32_t[:, ::1] iwork, real_t[:, ::1] acc, int n_threads):
    """Upper block triangle (J >= I) of the Galerkin product A_c = P^T A P on the symmetric
    pattern (cip, cix) of A_c (sorted rows); the lower blocks are left at zero.

    Task t owns the coarse rows split[t] <= I < split[t + 1] and walks the fine rows in
    order, computing (A P)_i only for rows whose P row touches its range, so every entry is
    summed in the same order for any thread count; tasks go to threads as they come free. ``iwork`` (n_threads, 3 nc + 1) int32 and
    ``acc`` (n_threads, max_touched * R * C) scratch; ``cd`` is overwritten."""
    cdef Py_ssize_t n = aip.shape[0] - 1, nc = cip.shape[0] - 1, t, tasks = split.shape[0] - 1
    cdef int R = ad.shape[1], C = pd.shape[2], nt = n_threads, tid
    if (R > MAXB or C > MAXB or ad.shape[2] != R or pd.shape[1] != R or pip.shape[0] != n + 1
            or cd.shape[0] != cix.shape[0] or cd.shape[1] != C or cd.shape[2] != C
            or split.shape[0] < 2 or iwork.shape[0] < nt or iwork.shape[1] < 4 * nc + 1
            or acc.shape[0] < nt):
        raise ValueError("galerkin: inconsistent shapes")
    cd[:, :, :] = 0
    if n == 0 or nc == 0 or pix.shape[0] == 0:
        return
    iwork[:, :] = -1
    with nogil:
        for t in prange(tasks, num_threads=nt, schedule="dynamic", chunksize=1):
            tid = threadid()
            _galerkin_range(&aip[0], &aix[0], &ad[0, 0, 0], &pip[0], &pix[0], &pd[0, 0, 0], &cip[0], &cix[0],
                            &cd[0, 0, 0], n, R, C, split[t], split[t + 1], &iwork[tid, 0], &iwork[tid, nc],
                            &iwork[tid, 3 * nc], &acc[tid, 0], &iwork[tid, 2 * nc], &iwork[tid, 4 * nc])

"""Preconditioned Krylov solvers on operators given as functions (matrix-free).

* :func:`pcg`: conjugate gradients for symmetric positive definite operators with a
  symmetric positive definite preconditioner;
* :func:`gmres`: restarted GMRES with *left* preconditioning for non-symmetric operators
  (Saad and Schultz 1986, SIAM J Sci Stat Comput 7:856-869; Saad 2003, *Iterative Methods
  for Sparse Linear Systems*, 2nd ed., SIAM, algorithm 9.4). It minimises the preconditioned
  residual ``||M (b - A x)||_2`` and accepts the preconditioned right-hand side ``M b`` when
  the caller already has it (a Newton iteration computes it for its convergence test), so
  every iteration costs exactly one product with ``A`` and one application of ``M``.

Both start from ``x = 0`` and return the iterate and the iteration count; they never
raise on non-convergence (the caller decides what an inexact answer is worth).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Operator = Callable[[np.ndarray], np.ndarray]


def pcg(matvec: Operator, precond: Operator, b: np.ndarray, *, rtol: float, maxiter: int,
        z0: np.ndarray | None = None) -> tuple[np.ndarray, int, float]:
    """Solve ``A x = b`` by preconditioned conjugate gradients from ``x = 0``.

    Stops when ``sqrt(r . M r) <= rtol * sqrt(b . M b)`` (the residual in the norm of the
    preconditioner, an energy-like norm when ``M`` approximates ``A^-1``).

    Returns
    -------
    (x, iterations, relative preconditioned residual)
    """
    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r) if z0 is None else z0.copy()
    rz = float(r @ z)
    if not rz > 0:
        return x, 0, 0.0
    rz0 = rz
    p = z.copy()
    for it in range(1, int(maxiter) + 1):
        ap = matvec(p)
        pap = float(p @ ap)
        if not pap > 0:  # not positive definite along p: keep what was reached
            return x, it - 1, math.sqrt(rz / rz0)
        alpha = rz / pap
        x += alpha * p
        r -= alpha * ap
        z = precond(r)
        rz_new = float(r @ z)
        if rz_new <= rtol * rtol * rz0:
            return x, it, math.sqrt(max(rz_new, 0.0) / rz0)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, int(maxiter), math.sqrt(max(rz, 0.0) / rz0)


def gmres(matvec: Operator, precond: Operator, b: np.ndarray, *, rtol: float, maxiter: int, restart: int = 50,
          z0: np.ndarray | None = None) -> tuple[np.ndarray, int, float]:
    """Solve ``A x = b`` by left-preconditioned restarted GMRES from ``x = 0``.

    Stops when ``||M (b - A x)|| <= rtol ||M b||`` or after ``maxiter`` iterations in total.
    ``z0``: ``M b`` if the caller has it (saves one application of ``M``).

    Returns
    -------
    (x, iterations, relative preconditioned residual)
    """
    n = b.shape[0]
    x = np.zeros_like(b)
    z = precond(b) if z0 is None else z0
    beta0 = float(np.linalg.norm(z))
    if beta0 == 0.0:
        return x, 0, 0.0
    restart = max(1, min(int(restart), int(maxiter)))
    total = 0
    rel = 1.0
    while total < maxiter:
        beta = float(np.linalg.norm(z))
        if beta <= rtol * beta0:
            return x, total, beta / beta0
        m = min(restart, int(maxiter) - total)
        v = np.empty((m + 1, n))
        h = np.zeros((m + 1, m))
        cs, sn = np.zeros(m), np.zeros(m)
        g = np.zeros(m + 1)
        g[0] = beta
        v[0] = z / beta
        k = 0
        for j in range(m):
            w = precond(matvec(v[j]))
            total += 1
            for i in range(j + 1):  # modified Gram-Schmidt
                h[i, j] = float(w @ v[i])
                w -= h[i, j] * v[i]
            h[j + 1, j] = float(np.linalg.norm(w))
            if h[j + 1, j] > 0:
                v[j + 1] = w / h[j + 1, j]
            for i in range(j):  # apply the previous Givens rotations
                t = cs[i] * h[i, j] + sn[i] * h[i + 1, j]
                h[i + 1, j] = -sn[i] * h[i, j] + cs[i] * h[i + 1, j]
                h[i, j] = t
            d = math.hypot(h[j, j], h[j + 1, j])
            cs[j], sn[j] = (1.0, 0.0) if d == 0 else (h[j, j] / d, h[j + 1, j] / d)
            h[j, j] = d
            h[j + 1, j] = 0.0
            g[j + 1] = -sn[j] * g[j]
            g[j] = cs[j] * g[j]
            k = j + 1
            rel = abs(g[j + 1]) / beta0
            if rel <= rtol or h[j, j] == 0.0:
                break
        y = np.zeros(k)
        for i in range(k - 1, -1, -1):  # back substitution with the triangular H
            s = g[i] - float(h[i, i + 1:k] @ y[i + 1:k])
            y[i] = s / h[i, i] if h[i, i] != 0 else 0.0
        x += v[:k].T @ y
        if rel <= rtol or total >= maxiter:
            break
        z = precond(b - matvec(x))  # restart from the true preconditioned residual
    return x, total, rel

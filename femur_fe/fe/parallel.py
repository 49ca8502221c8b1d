"""Thread-count helpers for the compiled kernels (OpenMP)."""
from __future__ import annotations

import numbers

from ..errors import FemurFeError
from . import _kernels


def openmp_enabled() -> bool:
    """True when femur_fe's compiled kernels were built with OpenMP (multi-threaded)."""
    return _kernels.openmp_enabled()


def effective_n_threads(n_threads: int | None = None) -> int:
    """Number of threads the kernels will use for a requested ``n_threads``.

    scikit-learn semantics: ``None`` means all cores (``omp_get_max_threads()``, which
    honours ``OMP_NUM_THREADS``); a positive number is used as given; a negative number
    counts back from all cores (``-1`` = all, ``-2`` = all but one, never below 1);
    ``0`` is an error. Without OpenMP the answer is always 1.
    """
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral)):
        raise FemurFeError(
            f"n_threads must be None or a non-zero integer, got {n_threads!r} "
            "(use None for all cores, -1 for all cores, 2 for two threads)"
        )
    if n_threads is not None and int(n_threads) == 0:
        raise FemurFeError("n_threads=0 is not allowed; use None or -1 for all cores, or a positive count")
    if not _kernels.openmp_enabled():
        return 1
    max_threads = int(_kernels.omp_max_threads())
    if n_threads is None:
        return max_threads
    n = int(n_threads)
    if n < 0:
        return max(max_threads + 1 + n, 1)
    return n

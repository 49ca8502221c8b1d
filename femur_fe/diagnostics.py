"""Named run-time warnings: what a run did that a reader of its numbers must know.

A :class:`RunWarning` has a ``name`` (snake_case and stable: scripts and tests look for it)
and a one-line ``message``. :func:`warn` logs it at WARNING level and records it in every
active collector (:func:`collecting`). Each stage collects what happened while it ran and
keeps it on the object it returns: reading the bone and building the model
(``Model.warnings``), preparing the analysis (``Analysis.warnings``), solving
(``Result.warnings``). ``summary.json`` writes them as ``"warnings": [{"name": ..., "message":
...}]``, the CLI prints them after the numbers, comparisons and sweeps carry them per run.

Plain ``log.warning`` calls of femur_fe modules made inside a collector are recorded too,
named after their module (e.g. ``"anatomy"``), so that nothing the log shows is missing
from the summary.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

#: attribute set on log records emitted by :func:`warn` (the collector records those itself)
_RECORD_ATTR = "femur_fe_warning"


@dataclass(frozen=True)
class RunWarning:
    """One named warning of a run."""

    name: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message}

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


_ACTIVE: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("femur_fe_run_warnings", default=())


def _add(sink: list, w: RunWarning) -> None:
    if w not in sink:
        sink.append(w)


def warn(name: str, message: str, logger: logging.Logger | None = None) -> RunWarning:
    """Log ``message`` as a warning called ``name`` and record it in the active collectors."""
    w = RunWarning(str(name), str(message))
    (logger or log).warning("%s", w.message, extra={_RECORD_ATTR: w.name})
    for sink in _ACTIVE.get():
        _add(sink, w)
    return w


class _Recorder(logging.Handler):
    """Records WARNING log records of femur_fe modules into the collectors of their context."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        _last_resort(record)
        if getattr(record, _RECORD_ATTR, None) is not None:
            return  # a warn() call: already recorded under its own name
        sinks = _ACTIVE.get()
        if not sinks:
            return
        try:
            w = RunWarning(record.name.rsplit(".", 1)[-1], record.getMessage())
        except Exception:  # a malformed log call must not break the run
            return
        for sink in sinks:
            _add(sink, w)


def _last_resort(record: logging.LogRecord) -> None:
    """Print ``record`` the way logging does when no handler is configured (this recorder
    being attached would otherwise silence Python's last-resort output)."""
    logger: Any = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not _HANDLER for h in logger.handlers):
            return
        if not logger.propagate:
            break
        logger = logger.parent
    last = logging.lastResort
    if last is not None and record.levelno >= last.level:
        last.handle(record)


_HANDLER = _Recorder()
_LOCK = threading.Lock()
_USERS = [0]


@contextlib.contextmanager
def collecting(into: list | None = None) -> Iterator[list]:
    """Collect the warnings raised inside the block (nested collectors all receive them)."""
    sink: list = [] if into is None else into
    token = _ACTIVE.set(_ACTIVE.get() + (sink,))
    pkg = logging.getLogger("femur_fe")
    with _LOCK:
        if _USERS[0] == 0:
            pkg.addHandler(_HANDLER)
        _USERS[0] += 1
    try:
        yield sink
    finally:
        _ACTIVE.reset(token)
        with _LOCK:
            _USERS[0] -= 1
            if _USERS[0] == 0:
                pkg.removeHandler(_HANDLER)


def merged(*groups: Iterable[Any]) -> tuple[RunWarning, ...]:
    """The warnings of several groups in order, each once (dicts are accepted too)."""
    out: list[RunWarning] = []
    for g in groups:
        for w in g or ():
            if isinstance(w, Mapping):
                w = RunWarning(str(w["name"]), str(w["message"]))
            _add(out, w)
    return tuple(out)


def as_dicts(warnings: Iterable[RunWarning]) -> list[dict[str, str]]:
    """``[{"name": ..., "message": ...}]`` for JSON."""
    return [w.to_dict() for w in warnings]


__all__ = ["RunWarning", "warn", "collecting", "merged", "as_dicts"]

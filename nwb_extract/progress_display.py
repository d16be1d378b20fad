"""Showing progress events: ``tqdm.auto`` bars in a terminal or notebook, ``logging`` lines otherwise.

:func:`progress_display` turns the ``progress=`` argument of the Python API (None, a bool or a callable) into a
context manager yielding the callback to hand to the engine. The default (``progress=None``) follows
``cfg.python.progress``: bars when stderr is a terminal or the code runs in a Jupyter kernel, else INFO lines on the
logger ``nwb_extract.progress`` (seen once logging is configured, e.g. ``logging.basicConfig(level="INFO")``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nwb_extract.progress import ProgressCallback, ProgressEvent

__all__ = ["BarDisplay", "LogDisplay", "progress_display", "wants_progress"]

log = logging.getLogger("nwb_extract.progress")

_STAGE_NAMES = {"read": "reading", "preprocess": "preprocessing", "cellfinding": "cell finding",
                "refinement": "refinement", "frr": "final regression", "write": "writing", "simulate": "simulating",
                "partitions": "partitions (Dask tasks)"}


def _label(event: ProgressEvent) -> str:
    name = _STAGE_NAMES.get(event.stage, event.stage)
    return name if event.n_partitions == 1 else f"{name} [partition {event.partition + 1}/{event.n_partitions}]"


class BarDisplay:
    """One ``tqdm.auto`` bar per stage and partition (the ETA shows where the total is known). Partitions that run
    side by side each keep their own bar; events may come from several threads."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bars: dict[int, tuple[str, Any]] = {}  # partition -> (stage, its open bar)
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            stage, bar = self._bars.get(event.partition, (None, None))
            if stage != event.stage or bar is None:
                if bar is not None:
                    bar.close()
                bar = self._tqdm(desc=_label(event), total=event.total, unit=f" {event.unit}" if event.unit else "it",
                                 leave=True, file=sys.stderr, dynamic_ncols=True, mininterval=0)
                self._bars[event.partition] = (event.stage, bar)
            if bar.total != event.total:
                bar.total = event.total
            if event.message:
                bar.set_postfix_str(event.message, refresh=False)
            bar.update(event.done - bar.n)  # events are coarse (a block, a cell, an iteration): each is drawn
            if event.finished:
                bar.close()
                del self._bars[event.partition]

    def close(self) -> None:
        with self._lock:
            for _, bar in self._bars.values():
                bar.close()
            self._bars.clear()


class LogDisplay:
    """INFO lines on ``nwb_extract.progress``: a stage's first and last event, and at most one line per
    ``interval`` seconds in between (per partition), with the ETA where the total is known. Events may come from
    several threads (partitions side by side)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._stages: dict[int, tuple[str, float, float]] = {}  # partition -> (stage, its start, last line)
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        with self._lock:
            stage, started, last = self._stages.get(event.partition, (None, now, 0.0))
            if stage != event.stage:
                started = now
            elif not event.finished and now - last < self.interval:
                return
            self._stages[event.partition] = (event.stage, started, now)
        log.info("%s", self.line(event, now - started))

    @staticmethod
    def line(event: ProgressEvent, elapsed: float) -> str:
        """``"<stage>: <done>/<total> <unit> (<message>), <elapsed>, ETA <s>"``."""
        amount = f"{event.done}" + ("" if event.total is None else f"/{event.total}") + \
            (f" {event.unit}" if event.unit else "")
        text = f"{_label(event)}: {amount}" + (f" ({event.message})" if event.message else "")
        text += f", {elapsed:.1f} s"
        if event.finished:
            return text + ", done"
        if event.total and event.done > 0:
            text += f", ETA {elapsed * (event.total - event.done) / event.done:.0f} s"
        return text

    def close(self) -> None:
        with self._lock:
            self._stages.clear()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def wants_progress(cfg: Any) -> bool:
    """Whether a config asks for the default display: ``python.progress`` on and EXTRACT's ``verbose`` not 0."""
    return bool(cfg.python.progress) and cfg.verbose != 0


@contextmanager
def progress_display(progress: bool | ProgressCallback | None, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """The callback for ``progress`` (None: the default display when ``enabled``, i.e. :func:`wants_progress`;
    False: none; True: the default display; a callable: itself); bars are closed on exit."""
    if callable(progress):
        yield progress
        return
    if progress is False or (progress is None and not enabled):
        yield None
        return
    display = BarDisplay() if sys.stderr.isatty() or _in_notebook() else LogDisplay()
    try:
        yield display
    finally:
        display.close()

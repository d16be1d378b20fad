"""Progress events: what long stages report, and the one way the engine, the workflow and the simulator emit them.

A :class:`ProgressEvent` says how far a stage is (``done`` of ``total`` units; ``total`` None while unknown) with a
short message; ``done == total`` marks the stage finished. Stages, in the order of a run: ``read``, ``preprocess``,
``cellfinding``, ``refinement``, ``frr`` (the final regression), then ``write``; ``simulate`` for the simulator.
The engine emits through a :class:`Reporter` carried in its stage settings: a plain callable holder, free when no
callback is set (no device synchronisation, no formatting). How events are shown (tqdm bars, logging lines) is
:mod:`nwb_extract.progress_display`, never the engine's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SILENT", "STAGES", "ProgressCallback", "ProgressEvent", "Reporter"]

#: The stages of one run, in the order they report.
STAGES = ("read", "preprocess", "cellfinding", "refinement", "frr", "write")


@dataclass(frozen=True)
class ProgressEvent:
    """How far one stage is.

    stage : one of :data:`STAGES`, ``simulate`` for the simulator, or ``partitions`` (partition tasks finished) when
        the partitions run as Dask tasks.
    done : units of work done so far (frames read or preprocessed, cells found, iterations, trace kinds, steps).
    total : units the stage will do, or None while unknown (cell finding before it stops).
    message : short human text (e.g. ``"40 cells"``, ``"stopped: yield"``).
    unit : name of the unit (``"frames"``, ``"cells"``, ``"iterations"``, ...).
    partition, n_partitions : the 0-based partition the event belongs to and how many there are.
    """

    stage: str
    done: int
    total: int | None
    message: str = ""
    unit: str = ""
    partition: int = 0
    n_partitions: int = 1

    @property
    def finished(self) -> bool:
        """Whether the stage is complete (``done == total``)."""
        return self.total is not None and self.done >= self.total


#: What receives progress: any callable taking one :class:`ProgressEvent` (a GUI, a Dask dashboard, a list's append).
ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class Reporter:
    """Emits :class:`ProgressEvent` s of one partition to ``callback`` (nothing at all when it is None)."""

    callback: ProgressCallback | None = None
    partition: int = 0
    n_partitions: int = 1

    def __call__(self, stage: str, done: int, total: int | None = None, message: str = "", unit: str = "") -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(stage, int(done), None if total is None else int(total), message, unit,
                                        self.partition, self.n_partitions))

    def for_partition(self, index: int, count: int) -> Reporter:
        """The same callback, tagging events with partition ``index`` of ``count``."""
        return Reporter(self.callback, index, count)


#: The reporter that reports nothing (the default in every stage's settings).
SILENT = Reporter()

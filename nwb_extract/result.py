"""``ExtractResult``: what one EXTRACT run produces, in the package's one orientation.

Footprints are ``(cells, rows, cols)`` float32, each image scaled to max 1; traces are ``(frames, cells)`` float32
in ΔF/F units (ΔF divided by each cell's baseline fluorescence, spec §8.4) when preprocessing ran. Arrays are NumPy
arrays: the engine moves its results to the host before building a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nwb_extract.config import TRACE_KINDS  # noqa: F401  (re-exported: the result keys of the trace table)
from nwb_extract.errors import InputError


@dataclass(frozen=True)
class EliminatedCandidates:
    """Candidates removed by quality control, kept unless ``compact_output``.

    footprints : float32 (n, rows, cols); traces : float32 (frames, n); rules : the elimination rule that removed
    each candidate (spec §7.3 attribute names, or a cell-finding check name).
    """

    footprints: np.ndarray
    traces: np.ndarray
    rules: tuple[str, ...]

    def __repr__(self) -> str:
        return (f"EliminatedCandidates({len(self.rules)} candidates, footprints {self.footprints.shape}, traces "
                f"{self.traces.shape})")


@dataclass(frozen=True)
class Curation:
    """A person's review of a run's cells (``nwb-extract review``), stored as the PlaneSegmentation columns
    ``Accepted`` and ``Rejected``.

    accepted, rejected : bool (cells,); a cell is never both, and a cell that is neither was not reviewed.
    curated_by : who saved the review; curated_at : when, ISO 8601 with its UTC offset (None when not recorded,
    e.g. columns written by another tool).
    """

    accepted: np.ndarray
    rejected: np.ndarray
    curated_by: str | None = None
    curated_at: str | None = None

    def __post_init__(self) -> None:
        accepted, rejected = np.asarray(self.accepted, dtype=bool), np.asarray(self.rejected, dtype=bool)
        if accepted.ndim != 1 or accepted.shape != rejected.shape:
            raise InputError(f"accepted and rejected must be bool arrays (cells,) of one length; got shapes "
                             f"{accepted.shape} and {rejected.shape}")
        if np.any(accepted & rejected):
            raise InputError(f"cells {np.flatnonzero(accepted & rejected).tolist()} are both accepted and rejected; "
                             "a cell has one status")
        object.__setattr__(self, "accepted", accepted)
        object.__setattr__(self, "rejected", rejected)


@dataclass(frozen=True)
class ExtractResult:
    """Footprints, traces, images and run information of one EXTRACT run.

    Attributes
    ----------
    footprints : float32 array (cells, rows, cols), each cell's max 1.
    traces : dict of float32 arrays (frames, cells) keyed ``baseline_adjusted``, ``nonneg``, ``raw`` (plus
        ``least_squares`` or ``nonnegative_least_squares`` when that is the chosen option); empty for ``none``.
    primary_trace : key of ``traces`` named by the config's ``trace_output_option`` (None for ``none``).
    summary_image, max_image, F_per_pixel : float arrays (rows, cols).
    roi_metrics : dict of per-cell arrays (cells,): the 30 quality metrics of spec §7.2 in EXTRACT's names
        (``T_maxval``, ``S_area_1``, ... as ``nwb_extract.engine.refine.METRIC_NAMES``) and ``partition``.
    eliminated : removed candidates, or None (``compact_output`` or nothing eliminated).
    timings : seconds per stage (``read``, ``preprocess``, ``cellfinding``, ``refinement``, ``frr``, ``total``).
    stop_reason : why cell finding stopped (``min_magnitude``, ``yield``, ``max_iter``), or ``external init``
        when footprints were given.
    config : the resolved :class:`nwb_extract.config.ExtractConfig` the run used.
    versions : package versions (``nwb_extract``, ``engine``, ``numpy``, ...).
    backend, device : the array backend and device the engine ran on.
    run_info : engine diagnostics: ``partitions`` (rows, cols and the diagnostics of each), the cells found before
        stitching and the seam duplicates and fragments removed; for one partition also its ``noise_std`` and
        ``kappa`` of the regression, the refined ``avg_cell_radius`` (px, working resolution), the downsampling
        factors ``dss`` / ``dst``, ``n_found`` and the refinement's iterations and stop reason.
    curation : a person's accept / reject review of the cells (read from a reviewed file), or None.
    """

    footprints: np.ndarray
    traces: dict[str, np.ndarray]
    primary_trace: str | None
    summary_image: np.ndarray
    max_image: np.ndarray
    F_per_pixel: np.ndarray
    config: Any
    roi_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    eliminated: EliminatedCandidates | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    backend: str = "numpy"
    device: str = "cpu"
    run_info: dict[str, Any] = field(default_factory=dict)
    curation: Curation | None = None

    def __post_init__(self) -> None:
        if self.footprints.ndim != 3 or self.footprints.dtype != np.float32:
            raise InputError(f"footprints must be float32 (cells, rows, cols); got {self.footprints.dtype} "
                             f"{self.footprints.shape}")
        n_cells, rows, cols = self.footprints.shape
        for name, trace in self.traces.items():
            if trace.ndim != 2 or trace.shape[1] != n_cells or trace.dtype != np.float32:
                raise InputError(f"traces[{name!r}] must be float32 (frames, {n_cells}); got {trace.dtype} "
                                 f"{trace.shape}")
        for name in ("summary_image", "max_image", "F_per_pixel"):
            if getattr(self, name).shape != (rows, cols):
                raise InputError(f"{name} must have the frame shape {(rows, cols)}")
        if self.primary_trace is not None and self.primary_trace not in self.traces:
            raise InputError(f"primary_trace {self.primary_trace!r} is not among the traces {list(self.traces)}")
        if self.curation is not None and self.curation.accepted.shape != (n_cells,):
            raise InputError(f"curation covers {self.curation.accepted.shape[0]} cells, the result has {n_cells}")

    def __repr__(self) -> str:
        """One line of shapes and counts (the arrays themselves are not printed)."""
        rows, cols = self.frame_shape
        kinds = ", ".join(f"{k}*" if k == self.primary_trace else k for k in self.traces) or "none"
        eliminated = 0 if self.eliminated is None else len(self.eliminated.rules)
        total = self.timings.get("total")
        return (f"ExtractResult({self.n_cells} cells, {self.n_frames} frames of {rows} x {cols} px; traces {kinds} "
                f"(* primary); {len(self.roi_metrics)} metrics; {eliminated} eliminated; stop {self.stop_reason!r}; "
                f"{self.backend} ({self.device})" + ("" if total is None else f"; {total:.1f} s") + ")")

    @property
    def n_cells(self) -> int:
        """Number of cells (footprints)."""
        return int(self.footprints.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, cols) of the movie the footprints index."""
        return int(self.footprints.shape[1]), int(self.footprints.shape[2])

    @property
    def n_frames(self) -> int | None:
        """Number of frames of the traces (None when no traces were produced)."""
        first = next(iter(self.traces.values()), None)
        return None if first is None else int(first.shape[0])

    @property
    def primary(self) -> np.ndarray | None:
        """The primary traces ``traces[primary_trace]`` (frames, cells), or None."""
        return None if self.primary_trace is None else self.traces[self.primary_trace]

    def centroids(self) -> np.ndarray:
        """Footprint-weighted centroids, float64 (cells, 2) as [row, col] in 0-based pixel coordinates
        (pixel centres at integer positions)."""
        weights = np.clip(self.footprints, 0.0, None)  # float32; sums below accumulate in float64
        by_row = weights.sum(axis=2, dtype=np.float64)
        by_col = weights.sum(axis=1, dtype=np.float64)
        total = by_row.sum(axis=1)
        total[total == 0] = np.nan
        row_c = (by_row @ np.arange(self.footprints.shape[1], dtype=np.float64)) / total
        col_c = (by_col @ np.arange(self.footprints.shape[2], dtype=np.float64)) / total
        return np.stack([row_c, col_c], axis=1)

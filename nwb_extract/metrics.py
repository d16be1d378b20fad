"""Evaluation of extracted cells against ground truth (spec §11.3).

* footprint matching (:func:`match_to_ground_truth`, optimal or EXTRACT's greedy ``match_sets``), counts and
  :func:`precision_recall_f1`;
* :func:`trace_correlations` of matched pairs;
* event detection ROC and AUC as EXTRACT's ``compute_ROC_curve`` / ``match_events_to_ground`` /
  ``compute_AUC`` (:func:`event_roc`, :func:`roc_auc`);
* :func:`evaluate`, all of the above in one :class:`Evaluation`.

Orientation as everywhere in the package: footprints ``(cells, rows, cols)``, traces ``(frames, cells)``, frame
and cell indices 0-based. Host-side NumPy code; the matching itself is :mod:`nwb_extract.engine.matching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from nwb_extract.engine import backend, matching
from nwb_extract.errors import InputError

#: event thresholds of ``compute_ROC_curve``: 0.01, 0.02, ..., 1.00 (of each trace's maximum)
ROC_THRESHOLDS = np.arange(1, 101) / 100.0
#: largest |frame difference| at which an estimated event matches a true one (``match_events_to_ground``)
EVENT_MATCH_FRAMES = 3


@dataclass(frozen=True)
class Evaluation:
    """Scores of one extraction against ground truth (see :func:`evaluate`).

    ``pairs`` is an int64 array (M, 2) of ``[true cell, estimated cell]``; correlations are Pearson r; ``auc`` is
    None when no true event frames were given.
    """

    n_true: int
    n_est: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    median_footprint_corr: float
    median_trace_corr: float
    auc: float | None
    pairs: np.ndarray

    def summary(self) -> str:
        """One line, e.g. ``12/12 true cells matched by 12 of 13 found: precision 0.923, ...``."""
        auc = "n/a" if self.auc is None else f"{self.auc:.3f}"
        return (f"{self.n_matched}/{self.n_true} true cells matched by {self.n_matched} of {self.n_est} found: "
                f"precision {self.precision:.3f}, recall {self.recall:.3f}, F1 {self.f1:.3f}, median footprint r "
                f"{self.median_footprint_corr:.3f}, median trace r {self.median_trace_corr:.3f}, event AUC {auc}")


def match_to_ground_truth(true_footprints, est_footprints, threshold: float = 0.5,
                          method: str = "optimal") -> tuple[np.ndarray, np.ndarray]:
    """Match estimated footprints to true ones by image correlation (spec §11.3).

    Parameters
    ----------
    true_footprints : array of shape (K, H, W)
        Ground-truth footprints (any namespace; any real dtype).
    est_footprints : array of shape (J, H, W)
        Extracted footprints, same image shape.
    threshold : float, default 0.5
        Pairs need a Pearson correlation ``> threshold`` (EXTRACT's ``get_simulation_results`` uses 0.5).
    method : {"optimal", "greedy"}, default "optimal"
        ``"optimal"``: Hungarian assignment maximising the total correlation of admissible pairs
        (:func:`~nwb_extract.engine.matching.match_optimal`); ``"greedy"``: EXTRACT's ``match_sets``
        (:func:`~nwb_extract.engine.matching.match_sets`).

    Returns
    -------
    pairs : int64 ndarray of shape (M, 2)
        ``[true cell, estimated cell]``, sorted by true cell.
    corr : float64 ndarray of shape (M,)
        Footprint correlation of each pair.
    """
    true_footprints, est_footprints = _as_stack(true_footprints, "true_footprints"), \
        _as_stack(est_footprints, "est_footprints")
    if true_footprints.shape[1:] != est_footprints.shape[1:]:
        raise InputError(f"true footprints {true_footprints.shape} and estimated footprints {est_footprints.shape} "
                         "must have the same image shape (cells, rows, cols); transpose or crop one of them")
    if method == "optimal":
        pairs, corr = matching.match_optimal(true_footprints, est_footprints, threshold)
        return backend.to_numpy(pairs).astype(np.int64), backend.to_numpy(corr).astype(np.float64)
    if method == "greedy":
        pairs = backend.to_numpy(matching.match_sets(true_footprints, est_footprints, threshold)).astype(np.int64)
        corr = backend.to_numpy(matching.footprint_correlation(true_footprints, est_footprints))
        return pairs, corr[pairs[:, 0], pairs[:, 1]].astype(np.float64)
    raise InputError(f"method must be 'optimal' or 'greedy', got {method!r}")


def precision_recall_f1(n_true: int, n_est: int, n_matched: int) -> tuple[float, float, float]:
    """Detection scores from counts: ``precision = M/J``, ``recall = M/K``, ``F1 = 2M/(K + J)``.

    ``F1`` is the harmonic mean of precision and recall, written so it is defined (0) when nothing matched.
    A ratio with a zero denominator is NaN (no true cells: recall undefined; nothing found: precision undefined).

    Parameters
    ----------
    n_true, n_est, n_matched : int
        Numbers of true cells ``K``, estimated cells ``J`` and matched pairs ``M <= min(K, J)``.
    """
    if min(n_true, n_est, n_matched) < 0 or n_matched > min(n_true, n_est):
        raise InputError(f"need 0 <= n_matched <= min(n_true, n_est); got n_true={n_true}, n_est={n_est}, "
                         f"n_matched={n_matched}")
    precision = n_matched / n_est if n_est else float("nan")
    recall = n_matched / n_true if n_true else float("nan")
    f1 = 2 * n_matched / (n_true + n_est) if n_true + n_est else float("nan")
    return precision, recall, f1


def trace_correlations(true_traces, est_traces, pairs) -> np.ndarray:
    """Pearson correlation of each matched pair's traces over all frames.

    Parameters
    ----------
    true_traces : array of shape (T, K)
        Ground-truth traces.
    est_traces : array of shape (T, J)
        Extracted traces, same number of frames.
    pairs : int array of shape (M, 2)
        ``[true cell, estimated cell]`` (from :func:`match_to_ground_truth`).

    Returns
    -------
    r : float64 ndarray of shape (M,)
        0 for a pair in which a trace is constant.
    """
    true_traces = np.asarray(_to_host(true_traces), dtype=np.float64)
    est_traces = np.asarray(_to_host(est_traces), dtype=np.float64)
    pairs = _as_pairs(pairs)
    if true_traces.ndim != 2 or est_traces.ndim != 2 or true_traces.shape[0] != est_traces.shape[0]:
        raise InputError(f"traces must be (frames, cells) with the same frame count; got {true_traces.shape} and "
                         f"{est_traces.shape}")
    r = matching.pearson_columns(true_traces[:, pairs[:, 0]], est_traces[:, pairs[:, 1]])
    return np.diagonal(backend.to_numpy(r)).copy()


def event_roc(true_event_frames: Sequence, traces, tau: float = 10) -> np.ndarray:
    """Event-detection ROC of each trace against its true event frames (``compute_ROC_curve``, spec §11.3).

    Each trace is divided by its maximum and inverse-filtered with the calcium kernel ``exp(-(1..5 tau)/tau)``
    (MATLAB ``deconv`` of the zero-padded trace: the first ``T`` samples of the polynomial quotient); negative
    values are set to 0 and, for each threshold ``s`` in 0.01, 0.02, ..., 1.00, the frames where the result
    exceeds ``s`` are the estimated events, matched to the true ones by :func:`match_events`.

    Parameters
    ----------
    true_event_frames : sequence of K int arrays
        0-based frames of the true events of each cell.
    traces : array of shape (T, K)
        Estimated traces of the same cells, in the same order.
    tau : float, default 10
        Decay time constant of the kernel in frames (``5 tau`` must be a positive integer).

    Returns
    -------
    rocs : float64 ndarray of shape (2, 100, K)
        ``rocs[0]`` true-positive rates, ``rocs[1]`` false-positive rates (really false-discovery rates, as in
        EXTRACT), one column per threshold.
    """
    traces = np.asarray(_to_host(traces), dtype=np.float64)
    if traces.ndim != 2 or traces.shape[1] != len(true_event_frames):
        raise InputError(f"traces must be (frames, cells) with one column per event list; got {traces.shape} for "
                         f"{len(true_event_frames)} event lists")
    kernel_length = int(round(5 * tau))
    if kernel_length < 1 or kernel_length != 5 * tau:
        raise InputError(f"5 * tau must be a positive integer number of frames, got tau={tau!r}")
    kernel = np.exp(-np.arange(1, kernel_length + 1) / tau)
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero trace gives NaN, i.e. no events
        normalised = traces / np.max(traces, axis=0, keepdims=True)
    deconvolved = np.maximum(lfilter([1.0], kernel, normalised, axis=0), 0)
    rocs = np.zeros((2, ROC_THRESHOLDS.size, traces.shape[1]))
    for cell, truth in enumerate(true_event_frames):
        for k, threshold in enumerate(ROC_THRESHOLDS):
            estimated = np.flatnonzero(deconvolved[:, cell] > threshold)
            rocs[:, k, cell] = match_events(truth, estimated)
    return rocs


def match_events(true_frames, est_frames, max_distance: int = EVENT_MATCH_FRAMES) -> tuple[float, float]:
    """Greedy one-to-one matching of event frames (``match_events_to_ground``, spec §11.3).

    Repeatedly pairs the closest remaining (true, estimated) events while ``|dt| <= max_distance``; ties go to
    the first pair in MATLAB's column-major order (lowest estimated index, then lowest true index).

    Returns
    -------
    (tpr, fpr) : (float, float)
        ``matches / n_true`` and ``(n_est - matches) / n_est`` (a false-discovery rate); ``(0, 0)`` without
        estimated events and ``(1, 0)`` without true events (when some were estimated), as EXTRACT.
    """
    true_frames = np.asarray(true_frames, dtype=np.int64).ravel()
    est_frames = np.asarray(est_frames, dtype=np.int64).ravel()
    if est_frames.size == 0:
        return 0.0, 0.0
    if true_frames.size == 0:
        return 1.0, 0.0
    squared = (true_frames[:, None] - est_frames[None, :]) ** 2
    g, e = np.nonzero(squared <= max_distance ** 2)
    order = np.lexsort((g, e, squared[g, e]))  # by distance, then estimated index, then true index
    used_true, used_est, matches = set(), set(), 0
    for i, j in zip(g[order].tolist(), e[order].tolist()):
        if i not in used_true and j not in used_est:
            used_true.add(i)
            used_est.add(j)
            matches += 1
    return matches / true_frames.size, (est_frames.size - matches) / est_frames.size


def roc_auc(rocs: np.ndarray) -> float:
    """Mean area under the per-cell ROC curves (``compute_AUC``, spec §11.3).

    Per cell: points sorted by fpr (stable); inside each group of equal fpr the tprs are sorted ascending and
    ``1e-4 * (1..g)`` is added to the group's fprs; tpr is made non-decreasing by up to 100 forward passes that
    copy the previous value over a drop; a point ``(1, last tpr)`` is appended; trapezoid area (no ``(0, 0)``
    point is added). Cells are averaged.

    Parameters
    ----------
    rocs : array of shape (2, n_thresholds, K)
        From :func:`event_roc`.

    Returns
    -------
    auc : float
        NaN when there are no cells.
    """
    rocs = np.asarray(rocs, dtype=np.float64)
    if rocs.ndim != 3 or rocs.shape[0] != 2:
        raise InputError(f"rocs must be (2, n_thresholds, cells), got shape {rocs.shape}")
    if rocs.shape[2] == 0 or rocs.shape[1] == 0:
        return float("nan")
    return float(np.mean([_cell_auc(rocs[0, :, c], rocs[1, :, c]) for c in range(rocs.shape[2])]))


def _cell_auc(tpr: np.ndarray, fpr: np.ndarray) -> float:
    order = np.argsort(fpr, kind="stable")
    tpr, fpr = tpr[order].copy(), fpr[order].copy()
    for value in np.unique(fpr):
        group = np.flatnonzero(fpr == value)
        tpr[group] = np.sort(tpr[group])
        fpr[group] = fpr[group] + 1e-4 * np.arange(1, group.size + 1)
    for _ in range(100):
        drops = np.flatnonzero(np.diff(tpr) < 0) + 1
        if drops.size == 0:
            break
        tpr[drops] = tpr[drops - 1]
    fpr, tpr = np.append(fpr, 1.0), np.append(tpr, tpr[-1])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def evaluate(truth_footprints, truth_traces, est_footprints, est_traces, *, threshold: float = 0.5,
             true_event_frames: Sequence | None = None, method: str = "optimal", tau: float = 10) -> Evaluation:
    """Score an extraction against ground truth: matching, counts, correlations and (optionally) event AUC.

    Parameters
    ----------
    truth_footprints : array of shape (K, H, W)
    truth_traces : array of shape (T, K)
    est_footprints : array of shape (J, H, W)
    est_traces : array of shape (T, J)
    threshold : float, default 0.5
        Footprint correlation a pair must exceed.
    true_event_frames : sequence of K int arrays, optional
        0-based event frames of every true cell; when given, ``auc`` is :func:`roc_auc` of :func:`event_roc` over
        the matched cells (true events of each matched true cell against its estimated trace), as EXTRACT's
        ``get_simulation_results``.
    method : {"optimal", "greedy"}, default "optimal"
        Matching, see :func:`match_to_ground_truth`.
    tau : float, default 10
        Kernel time constant for :func:`event_roc`, in frames.

    Returns
    -------
    Evaluation
        Medians are NaN when nothing matched.
    """
    pairs, footprint_corr = match_to_ground_truth(truth_footprints, est_footprints, threshold, method)
    n_true, n_est, n_matched = int(truth_footprints.shape[0]), int(est_footprints.shape[0]), len(pairs)
    precision, recall, f1 = precision_recall_f1(n_true, n_est, n_matched)
    trace_corr = trace_correlations(truth_traces, est_traces, pairs)
    auc = None
    if true_event_frames is not None:
        if len(true_event_frames) != n_true:
            raise InputError(f"true_event_frames has {len(true_event_frames)} lists for {n_true} true cells")
        est = _to_host(est_traces)[:, pairs[:, 1]]
        auc = roc_auc(event_roc([true_event_frames[i] for i in pairs[:, 0]], est, tau=tau))
    return Evaluation(n_true=n_true, n_est=n_est, n_matched=n_matched, precision=precision, recall=recall, f1=f1,
                      median_footprint_corr=_median(footprint_corr), median_trace_corr=_median(trace_corr),
                      auc=auc, pairs=pairs)


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def _as_stack(footprints, name: str):
    if len(footprints.shape) != 3:
        raise InputError(f"{name} must be a (cells, rows, cols) stack, got shape {tuple(footprints.shape)}")
    return footprints


def _to_host(a) -> np.ndarray:
    """Array of any namespace, or a nested list, as a NumPy array."""
    return np.asarray(a) if isinstance(a, (list, tuple)) else backend.to_numpy(a)


def _as_pairs(pairs) -> np.ndarray:
    pairs = np.asarray(_to_host(pairs), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise InputError(f"pairs must be an (M, 2) int array of [true cell, estimated cell], got {pairs.shape}")
    return pairs

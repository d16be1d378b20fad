"""Figures of a result (PNG): footprint contours over the summary image, and a few traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nwb_extract.result import ExtractResult


def plot_overview(result: ExtractResult, path: str | Path, *, true_traces: np.ndarray | None = None,
                  pairs: np.ndarray | None = None, n_traces: int = 5, frame_rate: float | None = None) -> Path:
    """Write a PNG: left, the 0.5-level contour of every footprint over the summary image (numbered); right, the
    primary traces of the first ``n_traces`` cells, with the matched true traces (scaled to the same peak) when
    ``true_traces`` (frames, K_true) and ``pairs`` [[true, est], ...] are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_img, ax_tr) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    ax_img.imshow(result.summary_image, cmap="gray")
    for k, (fp, (r, c)) in enumerate(zip(result.footprints, result.centroids())):
        ax_img.contour(fp, levels=[0.5], colors="tab:orange", linewidths=0.8)
        ax_img.text(c, r, str(k), color="yellow", fontsize=7, ha="center", va="center")
    ax_img.set_title(f"{result.n_cells} cells over the summary image (rows x cols = {result.frame_shape})")
    ax_img.set_axis_off()

    trace = result.primary
    if trace is not None:
        t = np.arange(trace.shape[0]) / (frame_rate or 1.0)
        est_to_true = {int(e): int(g) for g, e in pairs} if pairs is not None else {}
        for row, k in enumerate(range(min(n_traces, result.n_cells))):
            offset = 1.2 * row
            peak = max(float(np.max(trace[:, k])), 1e-12)
            ax_tr.plot(t, trace[:, k] / peak + offset, lw=0.7, color="tab:blue",
                       label=f"{result.primary_trace}" if row == 0 else None)
            if true_traces is not None and k in est_to_true:
                truth = true_traces[:, est_to_true[k]]
                ax_tr.plot(t, truth / max(float(truth.max()), 1e-12) + offset, lw=0.7, color="tab:red", alpha=0.6,
                           label="ground truth" if row == 0 else None)
        ax_tr.set_xlabel("time (s)" if frame_rate else "frame")
        ax_tr.set_yticks([])
        ax_tr.set_title("traces (each scaled to its peak)")
        ax_tr.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

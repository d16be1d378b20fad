"""Figures of a result (PNG): footprint contours over the summary image, and the traces of a few cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nwb_extract.result import ExtractResult

#: Up to this many cells every contour is labelled with its ID; above it, only the cells whose traces are shown.
LABEL_ALL_UP_TO = 40
_CONTOUR_LEVEL = 0.5
_OTHER_COLOUR = "#e6e6e6"  # the cells without a trace on the right: near white, unlike every trace colour


def plot_overview(result: ExtractResult, path: str | Path, *, true_traces: np.ndarray | None = None,
                  pairs: np.ndarray | None = None, n_traces: int = 8, frame_rate: float | None = None) -> Path:
    """Write a PNG: left, the 0.5-level contour of every footprint over the summary image; right, the primary
    traces of ``n_traces`` cells (the highest trace SNR ``T_maxval`` first, when known), each labelled with its
    cell ID and drawn in the colour of its contour, against time in s when ``frame_rate`` (Hz) is given.

    Cell IDs sit next to the contours, never over a footprint's 0.5 region (:func:`label_positions`); with more
    than :data:`LABEL_ALL_UP_TO` cells only the cells whose traces are shown are labelled. With ``true_traces``
    (frames, K_true) and ``pairs`` [[true, est], ...] the matched true traces are drawn too (scaled to the same
    peak).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _cells_to_show(result, n_traces)
    palette = [plt.get_cmap("tab10")(i) for i in range(10) if i != 7]  # no grey: it vanishes on the gray image
    colours = {k: palette[i % len(palette)] for i, k in enumerate(shown)}
    labelled = list(range(result.n_cells)) if result.n_cells <= LABEL_ALL_UP_TO else shown
    rows, cols = result.frame_shape
    width = 7.0 * min(max(cols / rows, 0.6), 1.6)
    fig, (ax_img, ax_tr) = plt.subplots(1, 2, figsize=(width + 8.0, 7.0),
                                        gridspec_kw={"width_ratios": [width, 8.0]})
    _draw_image(ax_img, result, colours, labelled)
    _draw_traces(ax_tr, result, shown, colours, true_traces, pairs, frame_rate)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cells_to_show(result: ExtractResult, n_traces: int) -> list[int]:
    """IDs of the cells whose traces are drawn: the highest ``T_maxval`` first, else the first IDs."""
    snr = result.roi_metrics.get("T_maxval")
    order = np.argsort(-np.asarray(snr), kind="stable") if snr is not None and len(snr) else range(result.n_cells)
    return sorted(int(k) for k in list(order)[:n_traces])


def _draw_image(ax, result: ExtractResult, colours: dict[int, tuple], labelled: list[int]) -> None:
    from matplotlib import patheffects

    ax.imshow(result.summary_image, cmap="gray")
    thin = 0.8 if result.n_cells <= 200 else 0.5
    others = [k for k in range(result.n_cells) if k not in colours]
    for group in _disjoint_groups(result.footprints, others):  # one contour call per group of separate cells
        ax.contour(np.max(result.footprints[group], axis=0), levels=[_CONTOUR_LEVEL], colors=[_OTHER_COLOUR],
                   linewidths=thin)
    for k, colour in colours.items():
        ax.contour(result.footprints[k], levels=[_CONTOUR_LEVEL], colors=[colour], linewidths=2 * thin + 0.4)
    for k, (r, c) in zip(labelled, label_positions(result.footprints, labelled)):
        halo = [patheffects.withStroke(linewidth=2.5, foreground="white" if k in colours else "black")]
        ax.text(c, r, str(k), color=colours.get(k, _OTHER_COLOUR), fontsize=8, ha="center", va="center",
                fontweight="bold", path_effects=halo)
    note = "" if len(labelled) == result.n_cells else f"; IDs of the {len(labelled)} cells traced on the right"
    ax.set_title(f"{result.n_cells} cells over the summary image ({result.frame_shape[0]} x "
                 f"{result.frame_shape[1]} px){note}", fontsize=10)
    ax.set_axis_off()


def _disjoint_groups(footprints: np.ndarray, cells: list[int]) -> list[list[int]]:
    """``cells`` in groups whose 0.5 regions (boxes with a 1 px margin) do not touch, so the 0.5 contour of a
    group's pixelwise maximum is exactly the contours of its cells."""
    groups: list[tuple[list[int], list[tuple[int, int, int, int]]]] = []
    for k in cells:
        box = _box(footprints[k])
        if box is None:
            continue
        for members, boxes in groups:
            if not any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in boxes):
                members.append(k)
                boxes.append(box)
                break
        else:
            groups.append(([k], [box]))
    return [members for members, _ in groups]


def _draw_traces(ax, result: ExtractResult, shown: list[int], colours: dict[int, tuple],
                 true_traces: np.ndarray | None, pairs: np.ndarray | None, frame_rate: float | None) -> None:
    trace = result.primary
    if trace is None or not shown:
        ax.set_axis_off()
        ax.set_title("no traces" if trace is None else "no cells")
        return
    t = np.arange(trace.shape[0]) / (frame_rate or 1.0)
    est_to_true = {int(e): int(g) for g, e in pairs} if pairs is not None else {}
    for row, k in enumerate(shown):
        offset = 1.2 * (len(shown) - 1 - row)  # the lowest ID on top
        peak = max(float(np.max(trace[:, k])), 1e-12)
        ax.plot(t, trace[:, k] / peak + offset, lw=0.7, color=colours[k])
        if true_traces is not None and k in est_to_true:
            truth = true_traces[:, est_to_true[k]]
            ax.plot(t, truth / max(float(truth.max()), 1e-12) + offset, lw=0.7, color="black", alpha=0.45,
                    label="ground truth" if not ax.get_legend_handles_labels()[0] else None)
    ax.set_yticks([1.2 * (len(shown) - 1 - row) for row in range(len(shown))],
                  [f"cell {k}" for k in shown])
    for tick, k in zip(ax.get_yticklabels(), shown):
        tick.set_color(colours[k])
    ax.set_xlim(t[0], t[-1])
    ax.set_xlabel("time (s)" if frame_rate else "frame")
    ax.set_title(f"{result.primary_trace} traces of {len(shown)} cells (each scaled to its peak)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)


def _box(fp: np.ndarray, margin: int = 1) -> tuple[int, int, int, int] | None:
    """Rows and columns ``(r0, r1, c0, c1)`` around the footprint's 0.5 region plus ``margin``; None if empty."""
    rows, cols = np.nonzero(fp >= _CONTOUR_LEVEL)
    if rows.size == 0:
        return None
    h, w = fp.shape
    return (max(int(rows.min()) - margin, 0), min(int(rows.max()) + margin + 1, h),
            max(int(cols.min()) - margin, 0), min(int(cols.max()) + margin + 1, w))


def label_positions(footprints: np.ndarray, cells: list[int]) -> list[tuple[float, float]]:
    """(row, col) of each cell's ID label: beside its contour (above, below, left or right of the 0.5 region,
    the first spot where no footprint reaches 0.5 within one pixel), else above it.

    footprints : (cells, rows, cols) each scaled to max 1.
    """
    covered = np.max(footprints, axis=0) >= _CONTOUR_LEVEL if len(footprints) else None
    h, w = footprints.shape[1:]
    positions = []
    for k in cells:
        box = _box(footprints[k], margin=0)
        if box is None:
            positions.append((h / 2, w / 2))
            continue
        r0, r1, c0, c1 = box
        rc, cc = (r0 + r1 - 1) / 2, (c0 + c1 - 1) / 2
        spots = [(r0 - 2.5, cc), (r1 + 1.5, cc), (rc, c0 - 3.0), (rc, c1 + 2.0)]
        free = [(r, c) for r, c in spots if 0 <= r < h and 0 <= c < w and not _near(covered, r, c)]
        positions.append(free[0] if free else (max(r0 - 2.5, 0.0), cc))
    return positions


def _near(covered: np.ndarray, r: float, c: float) -> bool:
    """Whether any pixel within one pixel of (r, c) is inside some footprint's 0.5 region."""
    r_i, c_i = int(round(r)), int(round(c))
    return bool(covered[max(r_i - 1, 0):r_i + 2, max(c_i - 1, 0):c_i + 2].any())

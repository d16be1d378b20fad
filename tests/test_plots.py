"""The overview figure stays readable from a few to 1000 cells: IDs beside the contours (never over a footprint),
traces labelled with their cell IDs, time in seconds."""

from __future__ import annotations

import numpy as np
import pytest

from nwb_extract.config import ExtractConfig
from nwb_extract.plots import LABEL_ALL_UP_TO, _cells_to_show, label_positions, plot_overview
from nwb_extract.result import ExtractResult


def _result(n_cells: int, size: int, n_frames: int = 200, seed: int = 0) -> ExtractResult:
    """Gaussian cells (sigma 2 px) at random places, gamma-distributed traces; T_maxval = each trace's peak."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    centres = rng.uniform(4, size - 4, (n_cells, 2))
    footprints = np.exp(-((rows[None] - centres[:, :1, None]) ** 2 + (cols[None] - centres[:, 1:, None]) ** 2)
                        / 8.0).astype(np.float32)
    traces = rng.gamma(0.3, 1.0, (n_frames, n_cells)).astype(np.float32)
    image = footprints.sum(axis=0, dtype=np.float64)
    return ExtractResult(footprints=footprints, traces={"baseline_adjusted": traces},
                         primary_trace="baseline_adjusted", summary_image=image, max_image=image, F_per_pixel=image,
                         config=ExtractConfig(), roi_metrics={"T_maxval": traces.max(axis=0).astype(np.float64)})


@pytest.mark.parametrize(("n_cells", "size"), [(30, 120), (150, 200), (1000, 200)])
def test_overview_png_labels_beside_contours_and_traced_ids(n_cells, size, tmp_path):
    result = _result(n_cells, size)
    shown = _cells_to_show(result, 8)
    assert len(shown) == 8
    snr = result.roi_metrics["T_maxval"]
    assert min(snr[shown]) >= np.sort(snr)[-8]  # the 8 highest trace SNRs are traced
    labelled = list(range(n_cells)) if n_cells <= LABEL_ALL_UP_TO else shown
    covered = result.footprints.max(axis=0) >= 0.5
    for r, c in label_positions(result.footprints, labelled):
        r, c = int(round(r)), int(round(c))
        assert not covered[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any(), (r, c)  # no label over a footprint
    path = plot_overview(result, tmp_path / "overview.png", frame_rate=30.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_overview_axes_name_cells_and_seconds(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to look at its axes
    result = _result(150, 200)
    plot_overview(result, tmp_path / "o.png", frame_rate=20.0)
    ax_img, ax_tr = kept[0].axes
    assert ax_tr.get_xlabel() == "time (s)" and ax_tr.get_xlim()[1] == pytest.approx(199 / 20.0)
    assert [t.get_text() for t in ax_tr.get_yticklabels()] == [f"cell {k}" for k in _cells_to_show(result, 8)]
    assert sorted(int(t.get_text()) for t in ax_img.texts) == _cells_to_show(result, 8)  # IDs of traced cells only
    plt.close(kept[0])

"""The result layout shared by the writer and the reader (docs/nwb-layout.md): container names, mask types, run infos."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from nwb_extract.io import schema

__all__ = ["ELIMINATED_SERIES_NAME", "MASK_TYPES", "METRIC_DESCRIPTIONS", "PRIMARY_SERIES_NAME", "SERIES_NAMES",
           "dataset_marker", "metric_description", "run_infos"]

MASK_TYPES = ("image", "pixel")
"""Mask columns :func:`nwb_extract.io.nwb_write.write_result` can write: dense weighted ``image_mask`` or sparse ``pixel_mask``."""

PRIMARY_SERIES_NAME = "RoiResponseSeries"
"""RoiResponseSeries name of a run's primary trace kind."""

#: RoiResponseSeries name of each trace kind that is not the run's primary kind (the primary kind is always
#: :data:`PRIMARY_SERIES_NAME`).
SERIES_NAMES = MappingProxyType({
    "baseline_adjusted": "BaselineAdjustedRoiResponseSeries",
    "nonneg": "NonnegRoiResponseSeries",
    "raw": "RawRoiResponseSeries",
    "least_squares": "LeastSquaresRoiResponseSeries",
    "nonnegative_least_squares": "NonnegativeLeastSquaresRoiResponseSeries",
})

ELIMINATED_SERIES_NAME = "EliminatedRoiResponseSeries"
"""RoiResponseSeries name of the traces of the eliminated candidates (when they are written)."""


_ST_QUANTILES = ("1st percentile", "lower quartile", "median", "upper quartile", "99th percentile")
_ST_RATIOS = {
    1: "residual of the movie projected on the footprint above the trace, over the trace",
    2: "trace above the movie projected on the footprint's surround, over the trace",
    3: "movie projected on the footprint above its projection on the surround, over the trace",
}

#: Description of every quality-metric column (PlaneSegmentation) and roiextractors property, self-contained.
METRIC_DESCRIPTIONS = MappingProxyType({
    "T_maxval": "trace SNR: maximum of the 3-frame median-filtered trace divided by sqrt(2) times the trace's "
                "high-frequency noise standard deviation",
    "T_corruption": "temporal corruption: mean of abs(trace - 3-frame median) / max(trace, median) over the frames "
                    "where the median exceeds 0.3 of its maximum (spiky, noisy traces score high)",
    "T_max_corr": "largest correlation of the 3-frame median-filtered trace with any trace, itself included "
                  "(about 1; informative only)",
    "S_area_1": "pixels of the footprint above 0.2 (footprint scaled to max 1)",
    "S_smooth_area_1": "pixels of the smoothed footprint above 0.2",
    "S_area_2": "pixels of the footprint above 0.1",
    "S_smooth_area_2": "pixels of the smoothed footprint above 0.1",
    "S_max_corr": "largest Pearson correlation of the smoothed footprint with another cell's (informative only)",
    "S_corruption": "spatial corruption: variance around a local 4 x 4 mean over variance around the global mean, "
                    "inside the footprint (patchy footprints score high)",
    "S_eccent": "eccentricity (major / minor axis) of the largest connected region of the footprint above 0.3 "
                "(inf when there is none)",
    "S_circularity": "circularity 4 pi area / perimeter^2 of the largest connected region of the footprint above 0.3",
    **{f"ST{j}_index_{i}": f"spatio-temporal check: {_ST_QUANTILES[i - 1]} over the cell's activity periods of the "
                           f"{_ST_RATIOS[j]}"
       for j in (1, 2, 3) for i in range(1, 6)},
    **{f"ST_corr_{i}": f"spatio-temporal check: {q} over the cell's activity periods of the correlation between the "
                       "footprint and the movie's correlation-with-the-trace image"
       for i, q in ((1, "10th percentile"), (2, "median"), (3, "90th percentile"))},
    "T_dup_val": "largest correlation of the cell's trace, mixed with its spatially correlated neighbours, with "
                 "another cell's (trace-duplicate score; informative only)",
    "partition": "index of the field-of-view partition the cell was found in (0-based)",
})


def metric_description(name: str) -> str:
    """The description of metric ``name`` (a generic line for a name outside :data:`METRIC_DESCRIPTIONS`)."""
    return METRIC_DESCRIPTIONS.get(name, f"EXTRACT per-cell quality metric {name}")


def dataset_marker(name: str) -> str:
    """What ``config_json`` holds in place of the config array stored as the run-info dataset ``name``."""
    return f"<dataset {name}>"


def run_infos(nwbfile: Any) -> list:
    """The ExtractRunInfo objects of ``processing/ophys``, in writing order."""
    ophys = nwbfile.processing.get("ophys")
    if ophys is None:
        return []
    runs = [obj for obj in ophys.data_interfaces.values() if getattr(obj, "neurodata_type", None) ==
            schema.RUN_INFO_TYPE and getattr(obj, "namespace", None) == schema.NAMESPACE]
    return sorted(runs, key=lambda info: int(info.run_index))

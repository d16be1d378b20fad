"""The result layout shared by the writer and the reader (docs/nwb-layout.md): container names, mask types, run infos."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from nwb_extract.io import schema

__all__ = ["ELIMINATED_SERIES_NAME", "MASK_TYPES", "PRIMARY_SERIES_NAME", "SERIES_NAMES", "dataset_marker",
           "run_infos"]

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

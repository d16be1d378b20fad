"""nwb_extract: the EXTRACT cell-extraction algorithm for NWB and DANDI.

Public API: :func:`extract` runs EXTRACT on a movie ``(frames, rows, cols)``; :class:`ExtractConfig` holds its
configuration (EXTRACT's own parameter names); :class:`ExtractResult` holds footprints ``(cells, rows, cols)``,
the three trace kinds ``(frames, cells)`` and run information.
"""

from nwb_extract._version import __version__
from nwb_extract.config import ExtractConfig
from nwb_extract.engine.pipeline import extract
from nwb_extract.errors import NwbExtractError
from nwb_extract.result import ExtractResult

__all__ = ["ExtractConfig", "ExtractResult", "NwbExtractError", "__version__", "extract", "register"]


def register() -> None:
    """Add nwb-extract's SegmentationExtractor / ImagingExtractor to roiextractors' registries and its DataInterface
    to neuroconv's (``interface_list``, ``interfaces_by_category["segmentation"]``, ``neuroconv.datainterfaces``),
    so YAML conversion specs can name it. Explicit and idempotent; importing nwb_extract registers nothing."""
    from nwb_extract.neuroconv import register as _register

    _register()

"""nwb_extract: the EXTRACT cell-extraction algorithm for NWB and DANDI.

Public API: :func:`extract` runs EXTRACT on a movie ``(frames, rows, cols)``; :class:`ExtractConfig` holds its
configuration (EXTRACT's own parameter names); :class:`ExtractResult` holds footprints ``(cells, rows, cols)``,
the three trace kinds ``(frames, cells)`` and run information.
"""

from nwb_extract._version import __version__
from nwb_extract.config import ExtractConfig
from nwb_extract.engine import pipeline as _pipeline
from nwb_extract.errors import NwbExtractError
from nwb_extract.result import ExtractResult

__all__ = ["ExtractConfig", "ExtractResult", "NwbExtractError", "__version__", "extract", "register"]


def register() -> None:
    """Add nwb-extract's SegmentationExtractor / ImagingExtractor to roiextractors' registries and its DataInterface
    to neuroconv's (``interface_list``, ``interfaces_by_category["segmentation"]``, ``neuroconv.datainterfaces``),
    so YAML conversion specs can name it. Explicit and idempotent; importing nwb_extract registers nothing."""
    from nwb_extract.neuroconv import register as _register

    _register()


def extract(movie, config=None, *, client=None, **overrides) -> ExtractResult:
    """Run EXTRACT on ``movie`` (frames, rows, cols): :func:`nwb_extract.engine.pipeline.extract`.

    ``client`` runs the partitions as Dask tasks (docs/cluster.md): a ``dask.distributed.Client``, or
    ``nwb_extract.distributed.LocalWorkers(n)`` / ``Scheduler(address)``; the config's ``parallel_cpu`` /
    ``multi_gpu`` ask for the same. Without them the partitions run one after the other here, and Dask is not
    imported. With a client the movie is a NumPy array (each task is sent its own block only), a local h5py
    dataset, or a ``nwb_extract.io.series_ref.SeriesRef`` (the workers read their blocks themselves).
    """
    if client is None:
        cfg = ExtractConfig.coerce(config, **overrides)
        if not (cfg.parallel_cpu or cfg.multi_gpu):
            return _pipeline.extract(movie, config, **overrides)
    from nwb_extract.distributed import extract as _extract_on_dask

    return _extract_on_dask(movie, config, client=client, **overrides)

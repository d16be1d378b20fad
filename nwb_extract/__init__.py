"""nwb_extract: the EXTRACT cell-extraction algorithm for NWB and DANDI.

Public API: :func:`extract` runs EXTRACT on a movie ``(frames, rows, cols)``; :class:`ExtractConfig` holds its
configuration (EXTRACT's own parameter names); :class:`ExtractResult` holds footprints ``(cells, rows, cols)``,
the three trace kinds ``(frames, cells)`` and run information. The names are imported on first use, so that
``import nwb_extract`` (and the command line's ``--help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nwb_extract._version import __version__
from nwb_extract.errors import NwbExtractError

if TYPE_CHECKING:
    from nwb_extract.config import ExtractConfig
    from nwb_extract.progress import ProgressCallback
    from nwb_extract.result import ExtractResult

__all__ = ["ExtractConfig", "ExtractResult", "NwbExtractError", "__version__", "extract", "register"]

_LAZY = {"ExtractConfig": "nwb_extract.config", "ExtractResult": "nwb_extract.result"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nwb_extract' has no attribute {name!r}")


def extract(movie: Any, config: ExtractConfig | dict | None = None, *,
            progress: bool | ProgressCallback | None = None, client: Any = None, **overrides: Any) -> ExtractResult:
    """Run EXTRACT on ``movie``.

    Parameters
    ----------
    movie : array (frames, rows, cols) of any supported namespace (NumPy, CuPy, ...), or a lazy source with
        ``.shape``, ``.dtype`` and slicing ``[t0:t1, r0:r1, c0:c1]`` such as an h5py dataset.
    config : :class:`ExtractConfig`, a dict of EXTRACT parameters, or None for the defaults.
    progress : callable, bool or None
        A callable receives a :class:`nwb_extract.progress.ProgressEvent` (``stage``, ``done``, ``total``,
        ``message``, ...) as each stage advances; None shows the default display when ``python.progress`` is on
        and ``verbose`` is not 0 (tqdm bars in a terminal or notebook, else INFO lines on the logger
        ``nwb_extract.progress``); False shows nothing. With several partitions running side by side, a callable is
        called from their threads.
    client : optional
        Runs the partitions as Dask tasks (docs/cluster.md): a ``dask.distributed.Client``, or
        ``nwb_extract.distributed.LocalWorkers(n)`` / ``Scheduler(address)``; the config's ``parallel_cpu`` /
        ``multi_gpu`` ask for the same. Without them the partitions run one after the other here, and Dask is not
        imported. With a client the movie is a NumPy array (each task is sent its own block only), a local h5py
        dataset, or a ``nwb_extract.io.series_ref.SeriesRef`` (the workers read their blocks themselves); progress
        then counts finished partitions.
    **overrides : EXTRACT parameters (or Python-only settings such as ``backend``) applied on top of ``config``.

    Returns
    -------
    ExtractResult with footprints (cells, rows, cols) and the traces ``baseline_adjusted``, ``nonneg``, ``raw``
    (frames, cells).
    """
    from nwb_extract.config import ExtractConfig
    from nwb_extract.progress_display import progress_display, wants_progress

    cfg = ExtractConfig.coerce(config, **overrides)
    with progress_display(progress, wants_progress(cfg)) as callback:
        if client is None and not (cfg.parallel_cpu or cfg.multi_gpu):
            from nwb_extract.engine.pipeline import extract as run

            return run(movie, cfg, progress=callback)
        from nwb_extract.distributed import extract as run_on_dask

        return run_on_dask(movie, cfg, client=client, progress=callback)


def register() -> None:
    """Add nwb-extract's SegmentationExtractor / ImagingExtractor to roiextractors' registries and its DataInterface
    to neuroconv's (``interface_list``, ``interfaces_by_category["segmentation"]``, ``neuroconv.datainterfaces``),
    so YAML conversion specs can name it. Explicit and idempotent; importing nwb_extract registers nothing."""
    from nwb_extract.neuroconv import register as _register

    _register()

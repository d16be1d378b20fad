"""Open a series, run EXTRACT, write the result: the one place that does all three.

:func:`run_nwb` is the whole path for one input (a local NWB file or Zarr folder, an http(s) URL, or a DANDI asset,
streamed); the CLI's ``run`` and ``demo`` and the DANDI batch call it. :func:`run_batch` runs it over every imaging
asset of a dandiset, resumably. :func:`extract_frames` is the engine call on a file's stored frames that
:func:`run_nwb` and the roiextractors plugin share, and :func:`resolve_input` the input resolution that
:func:`run_nwb` and the neuroconv plugin share. Below this module, :mod:`nwb_extract.io` only reads and writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nwb_extract import distributed
from nwb_extract.config import ExtractConfig
from nwb_extract.engine import pipeline
from nwb_extract.errors import NoImagingSeriesError, NwbExtractError
from nwb_extract.io import dandi
from nwb_extract.io.movie import ImagingSource
from nwb_extract.io.nwb_write import write_result
from nwb_extract.io.series_ref import SeriesRef
from nwb_extract.progress import ProgressCallback, Reporter
from nwb_extract.progress_display import progress_display, wants_progress
from nwb_extract.result import ExtractResult

__all__ = ["BatchReport", "RunOutput", "extract_frames", "resolve_input", "run_batch", "run_nwb"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutput:
    """What :func:`run_nwb` wrote: the file, the run name, the result and what was read."""

    path: Path
    run_name: str
    result: ExtractResult
    series_path: str
    frames: tuple[int, int]


def resolve_input(text: str, *, path: str | None = None) -> tuple[str | dandi.RemoteAsset, dict[str, str | None]]:
    """``(what to open, DANDI fields of the run info)`` of an input given as text.

    A DANDI address (``dandi://``, ``DANDI:`` with ``path``, an API asset URL, ``s3://``) becomes its
    :class:`~nwb_extract.io.dandi.RemoteAsset`; a local path or plain http(s) URL stays as it is, with no fields.
    """
    if not dandi.is_dandi_input(text) and path is None:
        return text, {}
    asset = dandi.resolve_asset(text, path=path)
    return asset, asset.dandi_fields()


def extract_frames(frames: Any, config: ExtractConfig, *, progress: bool | ProgressCallback | None = None
                   ) -> ExtractResult:
    """Run EXTRACT on a file's movie in its stored axis order ``(frames, x, y)``, read lazily.

    ``frames`` is a :class:`~nwb_extract.io.movie.FrameBlockReader` or any lazy movie with ``.shape``, ``.dtype``
    and slicing. Masks of the result then index like the stored frames (docs/architecture.md, axis rule).
    ``progress`` is as in :func:`nwb_extract.extract`.
    """
    with progress_display(progress, wants_progress(config)) as callback:
        return pipeline.extract(frames, config, progress=callback)


def run_nwb(source: str | os.PathLike | dandi.RemoteAsset, output: str | os.PathLike, config: ExtractConfig, *,
            series: str | None = None, frames: tuple[int | None, int | None] | None = None, in_place: bool = False,
            overwrite: bool = False, run_name: str | None = None, cache_dir: str | os.PathLike | None = None,
            prepare: Callable[[ExtractConfig, ImagingSource], ExtractConfig] | None = None,
            progress: bool | ProgressCallback | None = None, client: Any = None,
            on_partition: Callable[[int, int], None] | None = None) -> RunOutput:
    """Open an imaging series, run EXTRACT on its stored frames and write the result into NWB.

    Parameters
    ----------
    source : str, os.PathLike or RemoteAsset
        A local NWB file or Zarr folder, an http(s) URL (streamed), or a resolved DANDI asset (streamed; its
        identity goes into the run info); a DANDI address as text is resolved here.
    output : str or os.PathLike
        The new result file; with ``in_place`` the source file itself.
    config : ExtractConfig
        EXTRACT settings.
    series, frames
        As :func:`nwb_extract.io.movie.open_series`.
    in_place, overwrite, run_name
        As :func:`nwb_extract.io.nwb_write.write_result`; the in-place append runs once the source is closed.
    cache_dir : str or os.PathLike, optional
        remfile disk cache of a streamed DANDI asset.
    prepare : callable, optional
        ``prepare(config, source) -> config``, called once the series is open (e.g. to check footprints against
        its frame shape).
    progress : callable, bool or None
        As in :func:`nwb_extract.extract`; the run reports the engine's stages (or, on Dask, the finished
        partitions) and then ``write``.
    client : dask.distributed.Client, LocalWorkers or Scheduler, optional
        Run the partitions as Dask tasks that read their own blocks (:mod:`nwb_extract.distributed`); the
        config's ``parallel_cpu`` / ``multi_gpu`` ask for a local cluster. None: serial, in this process.
    on_partition : callable, optional
        ``on_partition(done, total)`` as Dask partition tasks finish (instead of ``partitions`` progress events).
    """
    with progress_display(progress, wants_progress(config)) as callback:
        return _run_nwb(source, output, config, series=series, frames=frames, in_place=in_place,
                        overwrite=overwrite, run_name=run_name, cache_dir=cache_dir, prepare=prepare,
                        progress=callback, client=client, on_partition=on_partition)


def _run_nwb(source: str | os.PathLike | dandi.RemoteAsset, output: str | os.PathLike, config: ExtractConfig, *,
             series: str | None, frames: tuple[int | None, int | None] | None, in_place: bool, overwrite: bool,
             run_name: str | None, cache_dir: str | os.PathLike | None,
             prepare: Callable[[ExtractConfig, ImagingSource], ExtractConfig] | None,
             progress: ProgressCallback | None, client: Any,
             on_partition: Callable[[int, int], None] | None) -> RunOutput:
    """:func:`run_nwb` with its progress callback resolved."""
    report = Reporter(progress)
    if isinstance(source, (str, os.PathLike)):
        source, dandi_fields = resolve_input(os.fspath(source))
    else:
        dandi_fields = source.dandi_fields()
    ref = SeriesRef(source, series, frames, None if cache_dir is None else os.fspath(cache_dir))
    with ref.open() as src:
        n_frames, n_x, n_y = src.data.shape
        log.info("reading %s :: %s (%s), frames %d:%d, %d x %d px, %s", src.location, src.series_path,
                 src.series_type, *src.frames, n_x, n_y, src.data.dtype)
        if prepare is not None:
            config = prepare(config, src)
        execution = client if client is not None else distributed.execution_from_config(config.resolved())
        if execution is None:
            result = pipeline.extract(src.data, config, progress=progress)
        else:  # the workers open the same series and frames themselves
            chosen = SeriesRef(source, src.series_path, src.frames, ref.cache_dir)
            finished = on_partition or (lambda done, total: report("partitions", done, total, unit="partitions"))
            result = pipeline.extract(src.data, config, progress=progress,
                                      runner=distributed.partition_runner(execution, chosen, finished))
        info = src.source_info(**dandi_fields)
        report("write", 0, 1, f"{result.n_cells} cells to {output}", "files")
        if not in_place:  # a new file copies the metadata from the open source (no second read of a stream)
            path, name = write_result(result, output, source=info, overwrite=overwrite, run_name=run_name,
                                      source_nwbfile=src.nwbfile)
    if in_place:  # the source is closed now, so the file can be opened for appending
        path, name = write_result(result, output, source=info, in_place=True, run_name=run_name)
    report("write", 1, 1, f"wrote {path} (run {name})", "files")
    return RunOutput(path=path, run_name=name, result=result, series_path=info.series_path, frames=info.frames)


# ----------------------------------------------------------------------------------------------------------------
# batch


@dataclass
class BatchReport:
    """Result of :func:`run_batch`: one entry per asset considered, and which of them this run processed."""

    entries: list[dandi.BatchEntry]
    processed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dandi.BatchEntry]:
        return [e for e in self.entries if e.status == "failed"]

    def table(self) -> str:
        """The final table: status, cells, asset path, output or error; then the counts."""
        rows = [("STATUS", "CELLS", "ASSET", "OUTPUT / REASON")]
        rows += [(e.status + ("" if e.path in self.processed else " (earlier)"),
                  "" if e.n_cells is None else str(e.n_cells), e.path, e.output or e.error or "")
                 for e in self.entries]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        counts = {s: sum(e.status == s for e in self.entries) for s in ("done", "failed", "skipped")}
        lines.append(f"{len(self.entries)} asset(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return "\n".join(lines)


def run_batch(source: str, out_dir: str | os.PathLike, config: ExtractConfig, *, include: str | None = None,
              series: str | None = None, cache_dir: str | os.PathLike | None = None, client: Any = None,
              dandi_client: Any = None, on_asset: Callable[[dandi.BatchEntry], None] | None = None,
              on_progress: Callable[[dict[str, int]], None] | None = None,
              progress: bool | ProgressCallback | None = None) -> BatchReport:
    """Run EXTRACT on every NWB asset of a dandiset (or ``dandi://`` prefix) that has an imaging series, resumably.

    Results go to ``out_dir / derived_file_name(asset.path)``. The manifest ``out_dir / MANIFEST_NAME`` (JSON,
    rewritten atomically after each asset) records every asset as done, failed (with the error) or skipped (no
    imaging series); a re-run processes only the assets not done or skipped. A failure of one asset (network,
    a bad series, any error) is recorded and the batch goes on. ``progress`` (as in :func:`nwb_extract.extract`)
    reports the stages of each asset's run.

    ``client`` (a ``dask.distributed.Client``, ``LocalWorkers(n)`` or ``Scheduler(address)``; or the config's
    ``parallel_cpu``) runs one Dask task per asset; this process alone writes the manifest, as each task
    finishes. ``dandi_client`` is the ``DandiAPIClient`` to list the dandiset with. ``on_asset(entry)`` is called
    after each asset, ``on_progress(counts)`` with the done / failed / skipped / running / queued counts (Dask
    only).

    Raises the errors of :func:`nwb_extract.io.dandi.list_assets` when the dandiset itself cannot be listed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / dandi.MANIFEST_NAME
    manifest = dandi.load_manifest(manifest_path)
    assets = dandi.list_assets(source, include=include, client=dandi_client)
    todo = [a for a in assets if manifest.get(a.path) is None or manifest[a.path].status not in ("done", "skipped")]
    execution = client if client is not None else distributed.execution_from_config(config.resolved())
    if execution is None:
        finished = (_run_asset(asset, out_dir, config, series=series, cache_dir=cache_dir, progress=progress)
                    for asset in todo)
    else:
        finished = distributed.map_assets(execution, _run_asset, todo, on_progress=on_progress, out_dir=out_dir,
                                          config=config, series=series, cache_dir=cache_dir, progress=False)
    processed = []
    for entry in finished:  # written here only, after each asset
        manifest[entry.path] = entry
        dandi.save_manifest(manifest_path, source, manifest)
        processed.append(entry.path)
        if on_asset is not None:
            on_asset(entry)
    return BatchReport([manifest[a.path] for a in assets], processed)


def _run_asset(asset: dandi.RemoteAsset, out_dir: Path, config: ExtractConfig, *, series: str | None,
               cache_dir: str | os.PathLike | None, progress: bool | ProgressCallback | None) -> dandi.BatchEntry:
    """Process one asset of a batch; every failure becomes the entry's error (KeyboardInterrupt stops the batch)."""
    output = out_dir / dandi.derived_file_name(asset.path)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        run = run_nwb(asset, output, config, series=series, cache_dir=cache_dir, overwrite=True, progress=progress)
        entry = dandi.BatchEntry(asset.path, "done", asset.asset_id, output=str(output.relative_to(out_dir)),
                                 n_cells=run.result.n_cells)
    except NoImagingSeriesError as err:
        entry = dandi.BatchEntry(asset.path, "skipped", asset.asset_id, error=" ".join(str(err).split()))
    except Exception as err:  # isolate every failure to its asset
        log.debug("asset %s failed", asset.path, exc_info=True)
        text = str(err) if isinstance(err, NwbExtractError) else f"{type(err).__name__}: {err}"
        entry = dandi.BatchEntry(asset.path, "failed", asset.asset_id, error=" ".join(text.split()))
    entry.seconds = round(time.perf_counter() - started, 3)
    return entry

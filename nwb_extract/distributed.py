"""Partitions and dandiset assets as Dask tasks: a local cluster, any scheduler address, or a given client.

Nothing here runs without an execution option (docs/cluster.md): ``client=`` in Python, ``--workers N`` /
``--scheduler ADDRESS`` on the command line, or the reference's ``parallel_cpu`` / ``num_workers`` / ``multi_gpu``
in the config. Dask is imported only inside the functions that use it, so the serial path never loads it.

- A movie's partitions (:func:`partition_runner`): one task per partition. A task gets a small source descriptor
  (:class:`~nwb_extract.io.series_ref.SeriesRef`, :class:`H5Dataset`, or its own block of an in-memory array,
  sent straight to one worker) and the partition's :class:`~nwb_extract.engine.pipeline.PartitionJob`; it reads
  its block, overlap included, where it runs, and sends back only the partition's cells. Stitching stays on the
  client (:func:`nwb_extract.engine.pipeline.extract`).
- A dandiset batch (:func:`map_assets`): one task per asset; results come back as they finish, so the caller (the
  client) writes the manifest after each.

A worker killed mid-task (out of memory, a lost node) makes the scheduler run the task again elsewhere (Dask's
``distributed.scheduler.allowed-failures``, 3 by default). Memory per worker is sized from the largest partition:
:func:`worker_memory_needed`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from nwb_extract.config import ExtractConfig
from nwb_extract.engine import pipeline
from nwb_extract.errors import BackendError, InputError, NwbExtractError, ResourceError
from nwb_extract.io import dandi
from nwb_extract.io.series_ref import SeriesRef
from nwb_extract.progress import ProgressCallback, ProgressEvent

__all__ = ["BLOCK_FACTOR", "SCHEDULER_CONFIG", "WORKER_BASE_BYTES", "GpuWorkers", "H5Dataset", "LocalWorkers", "Scheduler",
           "TaskStats", "connect", "execution_from_config", "extract", "map_assets", "partition_runner",
           "set_dask_log_level", "worker_memory_needed"]

log = logging.getLogger(__name__)

#: Memory a worker process holds before its first partition (Python, NumPy, SciPy, Numba, pynwb, h5py and Dask
#: loaded; about 0.3 GiB measured here), with room to spare: bytes.
WORKER_BASE_BYTES = 768 * 2**20
#: Worker memory set aside per byte of a partition's float32 movie block (the engine's own measure, also used when
#: it runs partitions side by side in one process).
BLOCK_FACTOR = pipeline.PARTITION_MEMORY_FACTOR


#: Scheduler settings of the clusters made here: a worker is given one task at a time (its one thread's), so a
#: worker that dies takes no queued task down with it (Dask counts every task on a dead worker as suspect).
SCHEDULER_CONFIG = {"distributed.scheduler.worker-saturation": 1.0}


@dataclass(frozen=True)
class LocalWorkers:
    """A local cluster of ``n_workers`` processes, one thread each (``--workers N``).

    ``memory_limit``: bytes per worker; None sizes it from the largest partition (:func:`worker_memory_needed`)
    when the movie is known, and leaves Dask's default (the machine's memory shared evenly) for a batch.
    """

    n_workers: int
    memory_limit: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n_workers, bool) or not isinstance(self.n_workers, int) or self.n_workers < 1:
            raise InputError(f"the number of workers must be a positive integer, got {self.n_workers!r}")


@dataclass(frozen=True)
class Scheduler:
    """A running Dask scheduler reached at ``address`` (``--scheduler tcp://host:8786``)."""

    address: str


@dataclass(frozen=True)
class GpuWorkers:
    """One worker per GPU through dask-cuda's ``LocalCUDACluster`` (config ``multi_gpu``); ``n_workers`` None: all
    visible GPUs."""

    n_workers: int | None = None


#: What ``client=`` accepts: a ``dask.distributed.Client`` or one of the cluster descriptions above.
Execution = Any


def execution_from_config(cfg: ExtractConfig) -> LocalWorkers | GpuWorkers | None:
    """The execution the reference's parallel keys ask for: ``multi_gpu`` -> :class:`GpuWorkers`, ``parallel_cpu``
    -> :class:`LocalWorkers` (``num_workers``, else one per CPU core); None when neither is set (serial), and
    inside a Dask task (a batch's asset runs its partitions serially on its worker)."""
    if _inside_dask_task():
        return None
    if cfg.multi_gpu:
        _check_gpus()
        return GpuWorkers(cfg.num_workers)
    if cfg.parallel_cpu:
        return LocalWorkers(int(cfg.num_workers or os.cpu_count() or 1))
    return None


def _inside_dask_task() -> bool:
    if "distributed" not in sys.modules:  # Dask was never loaded: certainly not a worker
        return False
    from dask.distributed import get_worker

    try:
        get_worker()
        return True
    except ValueError:
        return False


def _check_gpus() -> None:
    try:
        import cupy
        import dask_cuda  # noqa: F401

        count = cupy.cuda.runtime.getDeviceCount()
    except ImportError as err:
        raise BackendError(f"multi_gpu needs CuPy and dask-cuda ({err.name} is not installed): pip install "
                           "'nwb-extract[gpu,dask-cuda]', or set multi_gpu false and use parallel_cpu") from None
    except Exception as err:  # CUDA driver or runtime errors of every kind
        raise BackendError(f"multi_gpu: no usable CUDA GPU ({err}); set multi_gpu false") from None
    if count == 0:
        raise BackendError("multi_gpu: CuPy sees no CUDA GPU; set multi_gpu false")


def _require_dask() -> None:
    try:
        import dask.distributed  # noqa: F401
    except ImportError as err:
        raise BackendError(f"running on Dask needs dask and distributed ({err.name} is not installed): pip install "
                           "'nwb-extract[dask]'") from None


def set_dask_log_level(level: int) -> None:
    """Log Dask's own messages (scheduler, nanny, workers started and closed) from ``level`` up (the command line
    shows them with ``-vv`` only). Dask sets its level when first imported, so it is imported here first."""
    _require_dask()
    logging.getLogger("distributed").setLevel(level)


def worker_memory_needed(block_bytes: int) -> int:
    """Memory (bytes) a worker needs to run a partition whose float32 movie block is ``block_bytes``:
    :data:`WORKER_BASE_BYTES` + :data:`BLOCK_FACTOR` x the block."""
    return WORKER_BASE_BYTES + BLOCK_FACTOR * int(block_bytes)


@contextmanager
def connect(execution: Execution, *, block_bytes: int | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``execution``, closed on exit if made here (a given client stays open).

    With ``block_bytes`` (the largest partition's float32 block), a local cluster's worker memory is set from it
    and every worker's memory limit is checked against it (:class:`~nwb_extract.errors.ResourceError` naming the
    sizes when no worker can hold the partition).
    """
    _require_dask()
    import dask
    from dask.distributed import Client, LocalCluster

    if isinstance(execution, Client):
        _check_worker_memory(execution, block_bytes)
        yield execution
        return
    if isinstance(execution, Scheduler):
        with Client(execution.address, timeout="30s") as client:
            _check_worker_memory(client, block_bytes)
            yield client
        return
    if isinstance(execution, GpuWorkers):
        from dask_cuda import LocalCUDACluster

        with dask.config.set(SCHEDULER_CONFIG), \
                LocalCUDACluster(n_workers=execution.n_workers, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
        return
    if not isinstance(execution, LocalWorkers):
        raise InputError(f"client must be a dask.distributed.Client, LocalWorkers(n), Scheduler(address) or "
                         f"GpuWorkers(); got {type(execution).__name__}")
    limit = execution.memory_limit
    if limit is None and block_bytes is not None:
        limit = _local_memory_limit(execution.n_workers, block_bytes)
    with dask.config.set(SCHEDULER_CONFIG), \
            LocalCluster(n_workers=execution.n_workers, threads_per_worker=1, processes=True,
                      memory_limit=limit if limit is not None else "auto", dashboard_address=None,
                      silence_logs=logging.getLogger("distributed").getEffectiveLevel()) as cluster, \
            Client(cluster) as client:
        _check_worker_memory(client, block_bytes)
        yield client


def _local_memory_limit(n_workers: int, block_bytes: int) -> int:
    """Worker memory from the partition size, if the machine has it for ``n_workers`` workers."""
    import psutil

    need = worker_memory_needed(block_bytes)
    share = psutil.virtual_memory().total // n_workers
    if need > share:
        raise ResourceError(
            f"a partition's movie block is {_mib(block_bytes)} as float32 and a worker needs about {_mib(need)} "
            f"({BLOCK_FACTOR} x the block + {_mib(WORKER_BASE_BYTES)}), but this machine's memory shared by "
            f"{n_workers} workers is {_mib(share)} each: use fewer workers or more partitions "
            "(num_partitions_x / num_partitions_y)")
    return need


def _check_worker_memory(client: Any, block_bytes: int | None) -> None:
    if block_bytes is None:
        return
    limits = [int(w.get("memory_limit") or 0) for w in client.scheduler_info()["workers"].values()]
    need = worker_memory_needed(block_bytes)
    if limits and all(0 < limit < need for limit in limits):
        raise ResourceError(
            f"a partition's movie block is {_mib(block_bytes)} as float32 and a worker needs about {_mib(need)} "
            f"({BLOCK_FACTOR} x the block + {_mib(WORKER_BASE_BYTES)}), but the largest worker memory limit is "
            f"{_mib(max(limits))}: give the workers more memory or use more partitions (num_partitions_x / "
            "num_partitions_y)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# sources: what a partition task is given instead of frames


@dataclass(frozen=True)
class H5Dataset:
    """A 3-D dataset ``(frames, rows, cols)`` of a local HDF5 file, by file path and dataset path."""

    path: str
    name: str

    @contextmanager
    def open_frames(self) -> Iterator[Any]:
        import h5py

        with h5py.File(self.path, "r") as file:
            yield file[self.name]


@dataclass(frozen=True)
class _Offset:
    """A block of an in-memory movie posing as the whole movie: indexing with full-movie coordinates reads the
    block (the only part a task has)."""

    block: Any          # (n, h, w) the partition's pixels, overlap included
    origin: tuple[int, int]
    shape: tuple[int, int, int]

    @property
    def dtype(self) -> Any:
        return self.block.dtype

    def __getitem__(self, key: tuple[slice, slice, slice]) -> Any:
        frames, rows, cols = key
        r0, c0 = self.origin
        return self.block[frames, slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0)]


def _descriptor(movie: Any) -> SeriesRef | H5Dataset | None:
    """The source descriptor of a lazy movie (None for an in-memory NumPy array, whose blocks are sent)."""
    if isinstance(movie, (SeriesRef, H5Dataset)):
        return movie
    if isinstance(movie, np.ndarray):
        return None
    file_name = getattr(getattr(movie, "file", None), "filename", None)
    if isinstance(file_name, str) and os.path.isfile(file_name) and getattr(movie, "ndim", 0) == 3:
        return H5Dataset(file_name, movie.name)
    raise InputError(f"with client=, the movie must be a NumPy array, a 3-D h5py dataset of a local file, or a "
                     f"nwb_extract.io.series_ref.SeriesRef(path or URL, series, frames) that the workers open "
                     f"themselves; got {type(movie).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# partitions


@dataclass(frozen=True)
class TaskStats:
    """How one task ran, measured inside it: worker address, process id, seconds, and memory (bytes; None where
    ``/proc`` cannot tell): the process's resident size at the start and its peak during the task."""

    worker: str
    pid: int
    seconds: float
    rss_start: int | None
    rss_peak: int | None

    @property
    def peak_increase(self) -> int | None:
        """Peak resident memory during the task above the size at its start (bytes)."""
        return None if self.rss_peak is None or self.rss_start is None else self.rss_peak - self.rss_start


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Give freed heap memory back to the system (glibc) and reset the process's peak resident size (``VmHWM``)
    to its current size (Linux >= 4.0), so that the peak measured next is the task's own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the resident size may include freed memory
        pass
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


@contextmanager
def _measured() -> Iterator[dict[str, Any]]:
    from dask.distributed import get_worker

    stats: dict[str, Any] = {"pid": os.getpid(), "worker": get_worker().address}
    can_reset = _reset_peak_rss()
    stats["rss_start"] = _proc_status_bytes("VmRSS") if can_reset else None
    start = time.perf_counter()
    yield stats
    stats["seconds"] = time.perf_counter() - start
    stats["rss_peak"] = _proc_status_bytes("VmHWM") if can_reset else None


def _partition_task(source: Any, job: pipeline.PartitionJob) -> tuple[pipeline.PartitionRun, TaskStats]:
    """One partition on a worker: open the source, read the job's block, run it (host arrays back)."""
    with _measured() as stats:
        if isinstance(source, _Offset):
            run = pipeline.run_partition_job(source, job)
        else:
            with source.open_frames() as movie:
                run = pipeline.run_partition_job(movie, job)
    return run, TaskStats(**stats)


class PartitionRunner:
    """``runner(jobs) -> runs`` for :func:`nwb_extract.engine.pipeline.extract`: every partition as a Dask task.

    ``stats`` holds the :class:`TaskStats` of the last run's partitions (partition order); ``on_partition(done,
    total)`` is called as partitions finish.
    """

    def __init__(self, execution: Execution, movie: Any,
                 on_partition: Callable[[int, int], None] | None = None) -> None:
        self._execution = execution
        self._movie = movie
        self._source = _descriptor(movie)
        self._on_partition = on_partition
        self.stats: list[TaskStats] = []

    def __call__(self, jobs: list[pipeline.PartitionJob]) -> list[pipeline.PartitionRun]:
        from dask.distributed import as_completed

        with connect(self._execution, block_bytes=max(job.block_bytes for job in jobs)) as client:
            token = uuid.uuid4().hex[:8]
            futures = [client.submit(_partition_task, self._task_source(client, job), job, pure=False,
                                     key=f"nwb-extract-partition-{job.block.index}-{token}") for job in jobs]
            done = 0
            try:
                for _ in as_completed(futures):
                    done += 1
                    if self._on_partition is not None:
                        self._on_partition(done, len(jobs))
                results = client.gather(futures)
            except Exception as err:
                raise _partition_error(err, jobs) from err
        self.stats = [stats for _, stats in results]
        return [run for run, _ in results]

    def _task_source(self, client: Any, job: pipeline.PartitionJob) -> Any:
        """The descriptor, or for an in-memory movie the job's own block, sent straight to a worker."""
        if self._source is not None:
            return self._source
        rows, cols = job.block.slices
        block = np.ascontiguousarray(self._movie[:job.n_read, rows, cols])
        future = client.scatter(block, direct=True)
        return client.submit(_Offset, future, (job.block.rows[0], job.block.cols[0]), tuple(self._movie.shape),
                             pure=False)


def _partition_error(err: Exception, jobs: Sequence[pipeline.PartitionJob]) -> Exception:
    from distributed.scheduler import KilledWorker

    if isinstance(err, NwbExtractError):
        return err
    if isinstance(err, KilledWorker):
        biggest = max(job.block_bytes for job in jobs)
        return ResourceError(f"a partition task killed its worker again and again ({err}); the largest partition's "
                             f"block is {_mib(biggest)} as float32: if the workers ran out of memory give them "
                             f"about {_mib(worker_memory_needed(biggest))} each or use more partitions")
    return err


def partition_runner(execution: Execution, movie: Any,
                     on_partition: Callable[[int, int], None] | None = None) -> PartitionRunner:
    """A :class:`PartitionRunner` for ``movie`` (a SeriesRef, an h5py dataset, an open series' ``.data`` or an
    in-memory array) on ``execution`` (a Client or a cluster description)."""
    return PartitionRunner(execution, movie, on_partition)


def extract(movie: Any, config: ExtractConfig | dict | None = None, *, client: Execution = None,
            progress: ProgressCallback | None = None, **overrides: Any) -> Any:
    """:func:`nwb_extract.engine.pipeline.extract` with the partitions as Dask tasks (``client`` None: from the
    config's ``parallel_cpu`` / ``multi_gpu``). A :class:`SeriesRef` is opened here for its shape only.
    ``progress`` receives a ``partitions`` event as each partition task finishes."""
    cfg = ExtractConfig.coerce(config, **overrides)
    execution = client if client is not None else execution_from_config(cfg.resolved())

    def on_partition(done: int, total: int) -> None:
        if progress is not None:
            progress(ProgressEvent("partitions", done, total, unit="partitions"))

    if isinstance(movie, SeriesRef):
        with movie.open() as src:  # the tasks get the series path and frames found here
            chosen = SeriesRef(movie.source, src.series_path, src.frames, movie.cache_dir)
            return pipeline.extract(src.data, cfg, progress=progress,
                                    runner=partition_runner(execution, chosen, on_partition))
    return pipeline.extract(movie, cfg, progress=progress, runner=partition_runner(execution, movie, on_partition))


# ----------------------------------------------------------------------------------------------------------------
# dandiset assets


def map_assets(execution: Execution, task: Callable[..., dandi.BatchEntry], assets: Sequence[dandi.RemoteAsset],
               on_progress: Callable[[dict[str, int]], None] | None = None,
               **kwargs: Any) -> Iterator[dandi.BatchEntry]:
    """``task(asset, **kwargs)`` for every asset as a Dask task; the entries as they finish.

    A task that raises, or whose worker keeps dying, gives a ``"failed"`` entry with the error. ``on_progress``
    gets ``{"done", "failed", "skipped", "running", "queued"}`` counts after every finished asset ("running": tasks
    executing on a worker at that moment).
    """
    from dask.distributed import as_completed

    counts = {"done": 0, "failed": 0, "skipped": 0}
    with connect(execution) as client:
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(task, asset, pure=False, key=f"nwb-extract-asset-{i}-{token}", **kwargs): asset
                   for i, asset in enumerate(assets)}
        if on_progress is not None and futures:
            on_progress({**counts, "running": 0, "queued": len(futures)})
        for future in as_completed(futures):
            asset = futures[future]
            try:
                entry = future.result()
            except Exception as err:  # KilledWorker, a task error: the asset fails, the batch goes on
                text = str(err) if isinstance(err, NwbExtractError) else f"{type(err).__name__}: {err}"
                entry = dandi.BatchEntry(asset.path, "failed", asset.asset_id, error=" ".join(text.split()))
            counts[entry.status] = counts.get(entry.status, 0) + 1
            if on_progress is not None:
                running = _executing(client)
                finished = sum(counts.values())
                on_progress({**counts, "running": running,
                             "queued": max(len(futures) - finished - running, 0)})
            yield entry


def _executing(client: Any) -> int:
    """Tasks executing on the workers now."""
    try:
        return sum(client.run(_executing_count).values())
    except Exception:  # a worker that just died: report what the others say next time
        return 0


def _executing_count(dask_worker: Any) -> int:
    return int(dask_worker.state.executing_count)

"""Partitions and dandiset batches as Dask tasks on a real LocalCluster (2 worker processes, 1 thread each).

One cluster serves the whole module (its start costs a few seconds). Its worker memory limit is set from the
largest partition used here (:func:`nwb_extract.distributed.worker_memory_needed`), so the nanny would kill a worker
that held more than that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import h5py
import numpy as np
import pytest

import nwb_extract
from nwb_extract import distributed
from nwb_extract.cli import BATCH_FAILED, main
from nwb_extract.config import ExtractConfig
from nwb_extract.engine import pipeline
from nwb_extract.errors import BackendError, ResourceError
from nwb_extract.io import dandi
from nwb_extract.io.movie_write import write_simulated_nwb
from nwb_extract.io.nwb_read import read_result
from nwb_extract.io.series_ref import SeriesRef
from nwb_extract.simulate import simulate_2p
from nwb_extract.workflow import run_nwb
from test_dandi import CONFIG, DANDISET, RUN_SETS, movie_file, no_foreign_hosts, stand_in  # noqa: F401  (fixtures)

dask = pytest.importorskip("dask")
dask_distributed = pytest.importorskip("dask.distributed")

GRID = {"avg_cell_radius": 3.5, "backend": "numpy", "num_partitions_x": 2, "num_partitions_y": 2}
#: the movie larger than the workers' data memory: 4 x 4 partitions of 500 frames of 96 x 96 px
BIG = {"n_frames": 500, "side": 96}
BIG_GRID = {**GRID, "num_partitions_x": 4, "num_partitions_y": 4}
#: per-task memory the test allows above 4 x the block: a fixed cost of every task whatever its block size
#: (5-9 MiB measured on these workers: thread-local buffers, h5py and FFT caches), bytes
FIXED_ALLOWANCE = 12 * 2**20

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def _big_block_bytes() -> int:
    cfg = ExtractConfig(**BIG_GRID).resolved()
    jobs = pipeline.partition_jobs((BIG["side"], BIG["side"]), BIG["n_frames"], cfg)
    return max(job.block_bytes for job in jobs)


@pytest.fixture(scope="module")
def client():
    """The module's cluster, made as :func:`nwb_extract.distributed.connect` makes one (same scheduler settings),
    with the worker memory limit of the largest partition used here."""
    limit = distributed.worker_memory_needed(_big_block_bytes())
    with dask.config.set(distributed.SCHEDULER_CONFIG), \
            dask_distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                          memory_limit=limit) as cluster, dask_distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def movie_nwb(tmp_path_factory) -> Path:
    sim = simulate_2p(n_rows=64, n_cols=64, n_frames=300, n_cells=12, seed=3)
    path = tmp_path_factory.mktemp("dask") / "movie.nwb"
    write_simulated_nwb(path, sim, chunk_frames=25, compression=None)
    return path


@pytest.fixture(scope="module")
def serial(movie_nwb):
    with SeriesRef(str(movie_nwb)).open() as src:
        result = pipeline.extract(src.data, **GRID)
    assert result.n_cells > 0 and len(result.run_info["partitions"]) == 4
    return result


def _assert_same(result, serial_result) -> None:
    assert result.n_cells == serial_result.n_cells
    np.testing.assert_allclose(result.footprints, serial_result.footprints, rtol=0, atol=1e-6)
    assert set(result.traces) == set(serial_result.traces)
    for kind, traces in serial_result.traces.items():
        np.testing.assert_allclose(result.traces[kind], traces, rtol=0, atol=1e-6)
    assert result.roi_metrics["partition"].tolist() == serial_result.roi_metrics["partition"].tolist()


# ----------------------------------------------------------------------------------------------------------------
# no Dask without an execution option


def test_default_path_imports_no_dask(tmp_path):
    code = ("import sys, numpy as np, nwb_extract, nwb_extract.workflow, nwb_extract.cli\n"
            "from nwb_extract.simulate import simulate_2p\n"
            "sim = simulate_2p(n_rows=24, n_cols=24, n_frames=60, n_cells=2, seed=0)\n"
            "nwb_extract.extract(sim.movie, avg_cell_radius=3, backend='numpy', max_iter=1)\n"
            "nwb_extract.cli.build_parser().parse_args(['run', 'x.nwb', '--workers', '2'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_config_keys_map_onto_the_execution(monkeypatch):
    assert distributed.execution_from_config(ExtractConfig().resolved()) is None
    assert distributed.execution_from_config(ExtractConfig(parallel_cpu=True, num_workers=3).resolved()) == \
        distributed.LocalWorkers(3)
    try:
        import cupy  # noqa: F401
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="multi_gpu needs CuPy and dask-cuda"):
            distributed.execution_from_config(ExtractConfig(multi_gpu=True).resolved())


# ----------------------------------------------------------------------------------------------------------------
# partitions


class _CountingReads:
    """A lazy movie that records every read (``reads`` gets each key) and is otherwise ``data`` itself."""

    def __init__(self, data, reads):
        self._data, self._reads = data, reads

    def __getattr__(self, name):
        return getattr(self._data, name)

    def __getitem__(self, key):
        self._reads.append(key)
        return self._data[key]


def test_partitions_2x2_on_two_workers_identical_to_serial(client, movie_nwb, serial, tmp_path):
    ref = SeriesRef(str(movie_nwb))
    runner = distributed.partition_runner(client, ref)
    read_here = []
    with ref.open() as src:
        result = pipeline.extract(_CountingReads(src.data, read_here), runner=runner, **GRID)
    assert read_here == []  # the client read no frame: each task read its own block
    _assert_same(result, serial)
    assert len(runner.stats) == 4 and {s.worker for s in runner.stats} <= set(client.scheduler_info()["workers"])

    events = []
    in_memory = nwb_extract.extract(_read_all(movie_nwb), client=client, progress=events.append,
                                    **GRID)  # blocks sent, not the movie
    _assert_same(in_memory, serial)
    assert [(e.done, e.total) for e in events if e.stage == "partitions"] == [(1, 4), (2, 4), (3, 4), (4, 4)]



def _read_all(path: Path) -> np.ndarray:
    with SeriesRef(str(path)).open() as src:
        return src.data[:, :, :]


@dataclass(frozen=True)
class _KillOnce(SeriesRef):
    """A SeriesRef whose first opening kills the worker process (SIGKILL) mid-task."""

    marker: str = ""

    def open_frames(self):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().open_frames()


def test_killed_worker_task_is_retried_with_identical_result(client, movie_nwb, serial, tmp_path):
    marker = tmp_path / "killed"
    pids_before = set(client.run(os.getpid).values())
    runner = distributed.partition_runner(client, _KillOnce(str(movie_nwb), marker=str(marker)))
    with SeriesRef(str(movie_nwb)).open() as src:
        result = pipeline.extract(src.data, runner=runner, **GRID)
    killed = int(marker.read_text())
    assert killed in pids_before and killed not in {s.pid for s in runner.stats}
    _assert_same(result, serial)


def test_movie_larger_than_worker_memory_runs_in_partitions(client, tmp_path):
    sim = simulate_2p(n_rows=BIG["side"], n_cols=BIG["side"], n_frames=BIG["n_frames"], n_cells=30, seed=5)
    path = tmp_path / "big.nwb"
    write_simulated_nwb(path, sim, chunk_frames=100, compression=None)
    movie_bytes = BIG["n_frames"] * BIG["side"] ** 2 * 4
    block = _big_block_bytes()
    data_memory = distributed.BLOCK_FACTOR * block  # what each worker's limit leaves for data
    assert movie_bytes > 2 * data_memory  # larger than both workers' data memory together
    limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert limits == [distributed.worker_memory_needed(block)] * 2

    client.run(_warm_up, str(path))  # a fresh worker's first task also loads the compiled kernels (~0.2 GiB, once)
    pids_before = set(client.run(os.getpid).values())
    runner = distributed.partition_runner(client, SeriesRef(str(path)))
    read_here = []
    with SeriesRef(str(path)).open() as src:
        result = pipeline.extract(_CountingReads(src.data, read_here), runner=runner, **BIG_GRID)
    assert read_here == [] and result.n_cells > 10
    assert {s.pid for s in runner.stats} <= pids_before  # no worker died or was restarted for memory
    jobs = pipeline.partition_jobs((BIG["side"],) * 2, BIG["n_frames"], ExtractConfig(**BIG_GRID).resolved())
    for stats, job in zip(runner.stats, jobs):
        assert stats.peak_increase is not None
        assert stats.peak_increase <= 4 * job.block_bytes + FIXED_ALLOWANCE, \
            f"partition {job.block.index}: peak {stats.peak_increase / 2**20:.1f} MiB, block " \
            f"{job.block_bytes / 2**20:.1f} MiB"


def _warm_up(path: str) -> None:
    """One partition of the movie, run where this is called (every code path of the test's tasks, once)."""
    jobs = pipeline.partition_jobs((BIG["side"],) * 2, BIG["n_frames"], ExtractConfig(**BIG_GRID).resolved())
    with SeriesRef(path).open() as src:
        pipeline.run_partition_job(src.data, jobs[5])


def test_partition_that_cannot_fit_names_the_sizes(client, tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # 100 GB of float32 frames, never written (HDF5 allocates lazily)
        f.create_dataset("movie", shape=(100_000, 512, 512), dtype="uint16", chunks=(100, 64, 64))
    with h5py.File(path, "r") as f:
        with pytest.raises(ResourceError, match=r"block is 100000 MiB as float32 .* largest worker memory limit"):
            nwb_extract.extract(f["movie"], client=client, avg_cell_radius=4, num_partitions_x=1,
                                num_partitions_y=1)
        with pytest.raises(ResourceError, match=r"block is 100000 MiB .* shared by 2 workers"):
            nwb_extract.extract(f["movie"], client=distributed.LocalWorkers(2), avg_cell_radius=4,
                                num_partitions_x=1, num_partitions_y=1)


# ----------------------------------------------------------------------------------------------------------------
# dandiset batch


def test_batch_of_four_assets_one_failing_resumes_after_the_client_is_killed(client, stand_in, movie_file,
                                                                              tmp_path):
    broken = tmp_path / "broken.nwb"
    broken.write_text("not an HDF5 file\n")
    ids = {f"sub-{i}/sub-{i}_ophys.nwb": stand_in.add(DANDISET, f"sub-{i}/sub-{i}_ophys.nwb", movie_file)
           for i in (1, 2, 4)}
    ids["sub-3/sub-3_ophys.nwb"] = stand_in.add(DANDISET, "sub-3/sub-3_ophys.nwb", broken)
    out = tmp_path / "out"
    manifest_path = out / dandi.MANIFEST_NAME
    args = ["batch", f"DANDI:{DANDISET}/draft", "-o", str(out), *RUN_SETS, "--scheduler", client.scheduler.address]

    # a first client, killed as soon as its manifest records a finished asset
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), dandi.API_URL_ENV: stand_in.api}
    first = subprocess.Popen([sys.executable, "-m", "nwb_extract.cli", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _lists_a_done_asset(manifest_path) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.kill()
    first.wait()
    before = json.loads(manifest_path.read_text())["assets"]
    assert 1 <= len(before) < 4
    served = dict(stand_in.bytes_served)

    assert main(args) == BATCH_FAILED  # the resumed batch
    manifest = json.loads(manifest_path.read_text())["assets"]
    assert {p: e["status"] for p, e in manifest.items()} == {
        "sub-1/sub-1_ophys.nwb": "done", "sub-2/sub-2_ophys.nwb": "done", "sub-3/sub-3_ophys.nwb": "failed",
        "sub-4/sub-4_ophys.nwb": "done"}
    assert "not an NWB HDF5 file" in manifest["sub-3/sub-3_ophys.nwb"]["error"]
    for asset_path, entry in before.items():  # what the killed client finished is not redone (failed ones are retried)
        if entry["status"] == "done":
            assert manifest[asset_path] == entry
            assert stand_in.bytes_served[ids[asset_path]] == served[ids[asset_path]]

    reference = run_nwb(movie_file, tmp_path / "serial.nwb", CONFIG).result
    for entry in manifest.values():
        if entry["status"] == "done":
            result = read_result(out / entry["output"])
            assert entry["n_cells"] == reference.n_cells
            _assert_same(result, reference)


def _lists_a_done_asset(manifest_path: Path) -> bool:
    """Whether the batch manifest (written atomically) exists and records an asset as done."""
    try:
        return any(e["status"] == "done" for e in json.loads(manifest_path.read_text())["assets"].values())
    except (OSError, ValueError, KeyError):
        return False


def _asset_task(asset: dandi.RemoteAsset, marker_dir: str) -> dandi.BatchEntry:
    """A batch task that kills its worker whenever it runs for the asset ``kill.nwb``."""
    if asset.path == "kill.nwb":
        Path(marker_dir, f"killed-{os.getpid()}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return dandi.BatchEntry(asset.path, "done", output=asset.path)


def test_asset_that_keeps_killing_its_worker_fails_and_the_batch_goes_on(client, tmp_path):
    allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 1))
    try:
        assets = [dandi.RemoteAsset(f"http://127.0.0.1:9/{name}", name) for name in ("a.nwb", "kill.nwb", "b.nwb")]
        entries = {e.path: e for e in distributed.map_assets(client, _asset_task, assets, marker_dir=str(tmp_path))}
    finally:
        client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", allowed))
    assert {p: e.status for p, e in entries.items()} == {"a.nwb": "done", "kill.nwb": "failed", "b.nwb": "done"}
    assert "KilledWorker" in entries["kill.nwb"].error
    assert len(list(tmp_path.glob("killed-*"))) == 2  # tried twice (allowed_failures 1), on two worker processes

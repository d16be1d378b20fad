"""Serial vs Dask (``--workers 2``), side by side in one run: a 4-partition movie and a 4-asset batch.

Also measures the scheduler's overhead per task (trivial tasks through the same kind of local cluster) and each
partition task's peak memory against its float32 block. Prints a Markdown table (docs/benchmarks.md).

    python benchmarks/dask_speed.py [--frames 1000] [--side 128]

The batch reads its assets over HTTP from the DANDI stand-in of the tests (a local server on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the DANDI stand-in
os.environ.setdefault("DANDI_NO_ET", "1")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _noop(i: int) -> int:
    return i


def _overhead(n_tasks: int) -> tuple[float, float, float]:
    """Cluster start (s); per task, one at a time (round trip, ms) and 200 at once (ms per task)."""
    from dask.distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = time.perf_counter() - start
        client.submit(_noop, -1, pure=False).result()
        one = _timed(lambda: [client.submit(_noop, i, pure=False).result() for i in range(n_tasks)]) / n_tasks
        many = _timed(lambda: client.gather([client.submit(_noop, i, pure=False) for i in range(200)])) / 200
    return started, one * 1e3, many * 1e3


def _memory(path: Path, grid: dict) -> list[tuple[float, float]]:
    """(block MiB, peak increase / block) of every partition task, workers warmed by a first run."""
    from dask.distributed import Client, LocalCluster

    from nwb_extract import distributed
    from nwb_extract.engine import pipeline
    from nwb_extract.io.series_ref import SeriesRef

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for _ in range(2):  # the first run loads the compiled kernels in each worker
            runner = distributed.partition_runner(client, SeriesRef(str(path)))
            with SeriesRef(str(path)).open() as src:
                pipeline.extract(src.data, runner=runner, **grid)
                jobs = pipeline.partition_jobs(src.data.shape[1:], src.data.shape[0],
                                               pipeline.ExtractConfig(**grid).resolved())
    return [(job.block_bytes / 2**20, s.peak_increase / job.block_bytes) for s, job in zip(runner.stats, jobs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--side", type=int, default=128)
    args = parser.parse_args()

    from dask.distributed import Client, LocalCluster
    from test_dandi import DANDISET, DandiStandIn

    from nwb_extract.cli import main as cli
    from nwb_extract.config import ExtractConfig
    from nwb_extract.workflow import run_batch, run_nwb
    from nwb_extract.io import dandi
    from nwb_extract.io.movie_write import write_simulated_nwb
    from nwb_extract.simulate import simulate_2p

    work = Path(tempfile.mkdtemp(prefix="dask-bench-"))
    try:
        movie = work / "movie.nwb"
        sim = simulate_2p(n_rows=args.side, n_cols=args.side, n_frames=args.frames, n_cells=40, seed=2)
        write_simulated_nwb(movie, sim, chunk_frames=100, compression=None)
        sets = ["--set", "avg_cell_radius=3.5", "--set", "num_partitions_x=2", "--set", "num_partitions_y=2",
                "--backend", "numpy", "-q"]
        rows = []
        serial = _timed(lambda: cli(["run", str(movie), "-o", str(work / "s.nwb"), *sets]))
        workers = _timed(lambda: cli(["run", str(movie), "-o", str(work / "w.nwb"), *sets, "--workers", "2"]))
        config = ExtractConfig(avg_cell_radius=3.5, num_partitions_x=2, num_partitions_y=2, backend="numpy")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            warm = [_timed(lambda i=i: run_nwb(str(movie), work / f"c{i}.nwb", config, client=client))
                    for i in range(2)][-1]
        rows.append((f"4-partition movie {args.side} x {args.side} x {args.frames}", serial, workers, warm))

        asset = work / "asset.nwb"
        small = simulate_2p(n_rows=64, n_cols=64, n_frames=600, n_cells=10, seed=4)
        write_simulated_nwb(asset, small, chunk_frames=100, compression=None)
        server = DandiStandIn()
        os.environ[dandi.API_URL_ENV] = server.api
        for i in range(4):
            server.add(DANDISET, f"sub-{i}/sub-{i}_ophys.nwb", asset)
        batch = ["batch", f"DANDI:{DANDISET}/draft", "--set", "avg_cell_radius=3.5", "--backend", "numpy", "-q"]
        serial = _timed(lambda: cli([*batch, "-o", str(work / "bs")]))
        workers = _timed(lambda: cli([*batch, "-o", str(work / "bw"), "--workers", "2"]))
        config = ExtractConfig(avg_cell_radius=3.5, backend="numpy")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            warm = [_timed(lambda i=i: run_batch(f"DANDI:{DANDISET}/draft", work / f"bc{i}", config, client=client))
                    for i in range(2)][-1]
        server.close()
        rows.append(("4-asset batch (64 x 64 x 600 each, over HTTP)", serial, workers, warm))

        started, one, many = _overhead(50)
        big = work / "big.nwb"
        sim = simulate_2p(n_rows=80, n_cols=80, n_frames=2000, n_cells=20, seed=6)
        write_simulated_nwb(big, sim, chunk_frames=100, compression=None)
        memory = _memory(big, {"avg_cell_radius": 3.5, "backend": "numpy", "num_partitions_x": 2,
                               "num_partitions_y": 2})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| run | serial (`nwb-extract`) | `--workers 2` (new cluster) | speed-up | warm 2-worker cluster "
          "(`client=`, second run) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, serial, workers, warm in rows:
        print(f"| {name} | {serial:.1f} s | {workers:.1f} s | {serial / workers:.2f}x | {warm:.1f} s | "
              f"{serial / warm:.2f}x |")
    print(f"\nLocalCluster start (2 worker processes): {started:.2f} s; trivial task one at a time: {one:.1f} ms "
          f"round trip; 200 at once: {many:.2f} ms per task")
    print("partition tasks (2000 frames, 2 x 2 of 80 x 80): " + ", ".join(
        f"block {mib:.1f} MiB peak {ratio:.2f}x" for mib, ratio in memory))


if __name__ == "__main__":
    main()

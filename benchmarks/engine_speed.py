"""Engine speed and accuracy benchmark (not a test): wall time per stage, peak memory, cells found, F1.

Usage::

    python benchmarks/engine_speed.py                 # standard movie: 256 x 256 px, 3000 frames, 150 cells
    python benchmarks/engine_speed.py --small         # 96 x 96 px, 1500 frames, 30 cells (quick check)
    python benchmarks/engine_speed.py --goldens       # our wall time vs the reference's runtime_s on the 3 goldens
    python benchmarks/engine_speed.py --size 200x160x1500x60 --radius 5   # any simulated 2p movie
    python benchmarks/engine_speed.py --peaks         # only the machine's sgemm and memory-bandwidth peaks

Every run of a simulated movie also prints a roofline per stage: the floating-point operations and the least memory
traffic of the movie-sized kernels (counted from their shapes by ``solver_kernels.counting_work``: the residual step of the
robust solvers, the single-source fits' region sums, the tile gathers), the achieved GFLOP/s and GB/s, and their
fractions of this machine's peaks, measured in the same run (float32 matrix product; a large array copy; a
cache-sized copy for the data the fixed-kappa solvers' row blocks read again from cache).

Peak memory is the peak resident set size of a fresh process that runs EXTRACT on the movie stored as HDF5 (read
lazily), reported against the float32 size of the movie. It is read from ``VmHWM`` in ``/proc/self/status``: on
Linux ``getrusage().ru_maxrss`` of a child starts at its parent's resident size at ``fork`` (here the simulator's
several GB) and survives ``exec``, so it would report the parent, not the engine. Run it alone on the machine: absolute times on a shared machine are noisy; ratios measured in one
run are what we report (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import nwb_extract
from nwb_extract.metrics import evaluate
from nwb_extract.simulate import simulate_2p

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


PEAK_RSS_SOURCE = (
    "def peak_rss(field='VmHWM'):\n"
    "    try:\n"
    "        with open('/proc/self/status') as status:\n"
    "            return next(int(l.split()[1]) * 1024 for l in status if l.startswith(field))\n"
    "    except OSError:  # not Linux: ru_maxrss (bytes on macOS)\n"
    "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n")


def measure_peaks(repeats: int = 5) -> dict:
    """This machine's float32 matrix-product throughput (GFLOP/s, 2048^3 NumPy matmul with its default BLAS threads),
    memory bandwidth (GB/s, read + write of a 256 MB copy) and cache bandwidth (GB/s, read + write of a 2 MiB copy
    repeated in place: the size of the fixed-kappa solvers' row blocks, which they read from cache), best of
    ``repeats``."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    best_mm = min(_timed(lambda: np.matmul(a, a, out=out)) for _ in range(repeats))
    src = np.ones(64 * 1024 * 1024, dtype=np.float32)
    dst = np.empty_like(src)
    best_copy = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    small, small_out = np.ones(512 * 1024, dtype=np.float32), np.empty(512 * 1024, dtype=np.float32)
    passes = 200
    best_cache = min(_timed(lambda: [np.copyto(small_out, small) for _ in range(passes)]) for _ in range(repeats))
    return {"sgemm_gflops": round(2 * n ** 3 / best_mm / 1e9, 1), "memory_gbs": round(2 * src.nbytes / best_copy / 1e9, 1),
            "cache_gbs": round(2 * small.nbytes * passes / best_cache / 1e9, 1)}


def _timed(func) -> float:
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


def roofline(stage_seconds: dict, work: dict, peaks: dict) -> list[dict]:
    """Per stage: counted GFLOP, GB from memory and GB from cache, achieved GFLOP/s and GB/s of each, and their
    fractions of the machine's peaks."""
    rows = []
    for stage, seconds in stage_seconds.items():
        if stage == "total" or seconds <= 0:
            continue
        flops, nbytes, cache_bytes = (list(work.get(stage, ())) + [0.0, 0.0, 0.0])[:3]
        gflops, gbs, cache_gbs = flops / seconds / 1e9, nbytes / seconds / 1e9, cache_bytes / seconds / 1e9
        rows.append({"stage": stage, "seconds": round(seconds, 2), "gflop": round(flops / 1e9, 2),
                     "gb": round(nbytes / 1e9, 2), "cache_gb": round(cache_bytes / 1e9, 2),
                     "gflop_per_s": round(gflops, 2), "gb_per_s": round(gbs, 2),
                     "cache_gb_per_s": round(cache_gbs, 2),
                     "of_sgemm_peak": round(gflops / peaks["sgemm_gflops"], 3),
                     "of_bandwidth_peak": round(gbs / peaks["memory_gbs"], 3),
                     "of_cache_peak": round(cache_gbs / peaks["cache_gbs"], 3)})
    return rows


def run_standard(small: bool, backend: str, early: bool = False, size: tuple | None = None,
                 radius: float = 4.5) -> dict:
    """Simulate (in this process), store the movie as HDF5, then run EXTRACT in a fresh process on the lazy h5py
    dataset so that its peak resident memory counts the engine alone."""
    size_override = size
    size = dict(n_rows=96, n_cols=96, n_frames=1500, n_cells=30) if small else \
        dict(n_rows=256, n_cols=256, n_frames=3000, n_cells=150)
    if size_override:
        size = dict(zip(("n_rows", "n_cols", "n_frames", "n_cells"), size_override))
    import subprocess
    import sys
    import tempfile

    import h5py

    t0 = time.perf_counter()
    cell_radius = (4, 5) if radius == 4.5 else (radius - 0.5, radius + 0.5)
    sim = simulate_2p(cell_radius=cell_radius, seed=0, **size)
    t_sim = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        movie_path, result_path = Path(tmp) / "movie.h5", Path(tmp) / "result.npz"
        with h5py.File(movie_path, "w") as f:
            f.create_dataset("movie", data=sim.movie, chunks=(100,) + sim.movie.shape[1:])
        code = (
            "import json, resource, sys, time, h5py, numpy as np, nwb_extract\n"
            "from nwb_extract.engine import solver_kernels\n"
            + PEAK_RSS_SOURCE +
            f"f = h5py.File({str(movie_path)!r}, 'r')\n"
            "imports_rss = peak_rss('VmRSS')\n"
            "t0 = time.perf_counter()\n"
            "with solver_kernels.counting_work() as work:\n"
            f"    r = nwb_extract.extract(f['movie'], avg_cell_radius={radius!r}, backend={backend!r}, "
            f"early_convergence_check={early!r})\n"
            "wall = time.perf_counter() - t0\n"
            f"np.savez({str(result_path)!r}, footprints=r.footprints, traces=r.traces['baseline_adjusted'])\n"
            "print(json.dumps({'wall': wall, 'timings': r.timings, 'backend': r.backend, 'work': work.stages,\n"
            "                  'peak_rss': peak_rss(), 'imports_rss': imports_rss}))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        saved = np.load(result_path)
        footprints, traces = saved["footprints"], saved["traces"]
    ev = evaluate(sim.footprints, sim.traces, footprints, traces, true_event_frames=sim.event_frames)
    peaks = measure_peaks()
    return {
        "movie": f"{size['n_rows']} x {size['n_cols']} px, {size['n_frames']} frames, {sim.n_cells} cells",
        "recording_s": size["n_frames"] / sim.frame_rate,
        "simulation_s": round(t_sim, 2),
        "extract_wall_s": round(run["wall"], 2),
        "stages_s": {k: round(v, 2) for k, v in run["timings"].items()},
        "engine_peak_rss_over_float32_movie": round(run["peak_rss"] / (sim.movie.size * 4), 2),
        "of_which_python_and_imports": round(run["imports_rss"] / (sim.movie.size * 4), 2),
        "cells_found": int(footprints.shape[0]),
        "precision": round(ev.precision, 3), "recall": round(ev.recall, 3), "f1": round(ev.f1, 3),
        "median_trace_corr": round(ev.median_trace_corr, 3),
        "backend": run["backend"],
        "early_convergence_check": early,
        "machine_peaks": peaks,
        "roofline": roofline(run["timings"], run["work"], peaks),
    }


def run_goldens(backend: str, repeats: int, early: bool = False) -> list[dict]:
    """Each pipeline golden ``repeats`` times in this process: the first run (with one-time costs: imports already
    done, first FFT plans and allocations) and the best, since timings on a shared machine are noisy."""
    import h5py

    rows = []
    for name in ("pipeline_m1_2p_nonsquare", "pipeline_m2_1p_background", "pipeline_m3_partitions_2x2"):
        with h5py.File(REFERENCE / f"{name}.h5", "r") as f:
            movie = f["movie"][...]
            cfg = json.loads(f.attrs["config_json"])
            ref = f["reference/baseline_adjusted"]
            runtime_ref = float(ref.attrs["runtime_s"])
            n_ref = int(ref.attrs["n_cells"])
        settings = {k: cfg[k] for k in ("avg_cell_radius", "num_partitions_x", "num_partitions_y") if k in cfg}
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = nwb_extract.extract(movie, backend=backend, early_convergence_check=early, **settings)
            walls.append(time.perf_counter() - t0)
        rows.append({"movie": name, "ours_first_s": round(walls[0], 2), "ours_best_s": round(min(walls), 2),
                     "reference_runtime_s": round(runtime_ref, 2), "speedup_best": round(runtime_ref / min(walls), 1),
                     "cells_ours": result.n_cells, "cells_ref": n_ref, "early_convergence_check": early})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="96 x 96 x 1500 movie instead of 256 x 256 x 3000")
    parser.add_argument("--goldens", action="store_true", help="time the three reference pipeline movies")
    parser.add_argument("--early", action="store_true",
                        help="python.early_convergence_check=True (faster refinement, not the reference's rule)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per golden movie (first and best reported)")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    parser.add_argument("--size", help="ROWSxCOLSxFRAMESxCELLS of the simulated movie, e.g. 200x160x1500x60")
    parser.add_argument("--radius", type=float, default=4.5, help="avg_cell_radius (cells simulated at +-0.5 px)")
    parser.add_argument("--peaks", action="store_true", help="only measure the machine's peaks")
    args = parser.parse_args()
    if args.peaks:
        print(json.dumps(measure_peaks()))
    elif args.goldens:
        for row in run_goldens(args.backend, args.repeats, args.early):
            print(json.dumps(row))
    else:
        size = tuple(int(v) for v in args.size.split("x")) if args.size else None
        print(json.dumps(run_standard(args.small, args.backend, args.early, size, args.radius), indent=2))


if __name__ == "__main__":
    main()

"""Engine speed and accuracy benchmark (not a test): wall time per stage, peak memory, cells found, F1.

Usage::

    python benchmarks/engine_speed.py                 # standard movie: 256 x 256 px, 3000 frames, 150 cells
    python benchmarks/engine_speed.py --small         # 96 x 96 px, 1500 frames, 30 cells (quick check)
    python benchmarks/engine_speed.py --goldens       # our wall time vs the reference's runtime_s on the 3 goldens

Peak memory is the process's peak resident set size (``resource.getrusage``), reported against the float32 size
of the movie. Run it alone on the machine: absolute times on a shared machine are noisy; ratios measured in one
run are what we report (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

import nwb_extract
from nwb_extract.metrics import evaluate
from nwb_extract.simulate import simulate_2p

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_standard(small: bool, backend: str) -> dict:
    size = dict(n_rows=96, n_cols=96, n_frames=1500, n_cells=30) if small else \
        dict(n_rows=256, n_cols=256, n_frames=3000, n_cells=150)
    t0 = time.perf_counter()
    sim = simulate_2p(cell_radius=(4, 5), seed=0, **size)
    t_sim = time.perf_counter() - t0
    movie_bytes = sim.movie.size * 4
    rss_before = _peak_rss_bytes()
    t0 = time.perf_counter()
    result = nwb_extract.extract(sim.movie, avg_cell_radius=4.5, backend=backend)
    wall = time.perf_counter() - t0
    ev = evaluate(sim.footprints, sim.traces, result.footprints, result.traces["baseline_adjusted"],
                  true_event_frames=sim.event_frames)
    report = {
        "movie": f"{size['n_rows']} x {size['n_cols']} px, {size['n_frames']} frames, {sim.n_cells} cells",
        "recording_s": size["n_frames"] / sim.frame_rate,
        "simulation_s": round(t_sim, 2),
        "extract_wall_s": round(wall, 2),
        "stages_s": {k: round(v, 2) for k, v in result.timings.items()},
        "peak_rss_over_movie": round(_peak_rss_bytes() / movie_bytes, 2),
        "peak_rss_before_extract_over_movie": round(rss_before / movie_bytes, 2),
        "cells_found": result.n_cells,
        "precision": round(ev.precision, 3), "recall": round(ev.recall, 3), "f1": round(ev.f1, 3),
        "median_trace_corr": round(ev.median_trace_corr, 3),
        "backend": result.backend,
    }
    return report


def run_goldens(backend: str) -> list[dict]:
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
        t0 = time.perf_counter()
        result = nwb_extract.extract(movie, backend=backend, **settings)
        wall = time.perf_counter() - t0
        rows.append({"movie": name, "ours_s": round(wall, 2), "reference_runtime_s": round(runtime_ref, 2),
                     "speedup": round(runtime_ref / wall, 1), "cells_ours": result.n_cells, "cells_ref": n_ref})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="96 x 96 x 1500 movie instead of 256 x 256 x 3000")
    parser.add_argument("--goldens", action="store_true", help="time the three reference pipeline movies")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    args = parser.parse_args()
    if args.goldens:
        for row in run_goldens(args.backend):
            print(json.dumps(row))
    else:
        print(json.dumps(run_standard(args.small, args.backend), indent=2))


if __name__ == "__main__":
    main()

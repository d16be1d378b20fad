"""The ``nwb-extract`` command line: ``demo``, ``simulate``, ``config``.

Errors of the package (:class:`~nwb_extract.errors.NwbExtractError`) are printed as one line on stderr and give
exit code 2; a usage error gives argparse's exit code 2 as well.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.errors import NwbExtractError


def _cmd_demo(args: argparse.Namespace) -> int:
    from nwb_extract.demo import run_demo

    run_demo(out_dir=Path(args.out), seed=args.seed, backend=args.backend)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from nwb_extract.io.nwb import write_simulated_nwb
    from nwb_extract.simulate import simulate_1p, simulate_2p

    build = simulate_2p if args.kind == "2p" else simulate_1p
    kwargs = {k: v for k, v in (("n_rows", args.rows), ("n_cols", args.cols), ("n_frames", args.frames),
                                ("n_cells", args.cells)) if v is not None}
    sim = build(seed=args.seed, **kwargs)
    path = write_simulated_nwb(Path(args.output), sim, overwrite=args.overwrite)
    print(f"wrote {path}: {sim.movie.shape[0]} frames of {sim.movie.shape[1]} x {sim.movie.shape[2]} px, "
          f"{sim.footprints.shape[0]} cells ({'TwoPhotonSeries' if args.kind == '2p' else 'OnePhotonSeries'})")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from nwb_extract.config import ExtractConfig

    cfg = ExtractConfig.load(Path(args.file)) if args.file else ExtractConfig()
    if args.set:
        import yaml

        changes: dict = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise NwbExtractError(f"--set expects KEY=VALUE, got {item!r}")
            group, dot, name = key.strip().rpartition(".")
            target = changes.setdefault(group, {}) if dot else changes
            target[name if dot else key.strip()] = yaml.safe_load(value)
        cfg = cfg.replace(**changes)
    text = cfg.to_json() if args.format == "json" else cfg.to_yaml()
    if args.output:
        cfg.save(Path(args.output))
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nwb-extract``."""
    parser = argparse.ArgumentParser(
        prog="nwb-extract",
        description="EXTRACT cell extraction (robust one-sided-Huber matrix factorisation) for NWB and DANDI.")
    parser.add_argument("--version", action="version", version=f"nwb-extract {__version__} ({ENGINE_VERSION})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log messages (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="simulate a 2-photon movie, write it as NWB, run EXTRACT, score it")
    demo.add_argument("--out", default="nwb-extract-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    demo.add_argument("--backend", choices=["auto", "numpy", "cupy"], default="auto",
                      help="array backend (default: %(default)s)")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help="write a simulated movie with ground truth as an NWB file")
    sim.add_argument("output", help="NWB file to write")
    sim.add_argument("--kind", choices=["2p", "1p"], default="2p", help="2-photon or 1-photon (default: 2p)")
    sim.add_argument("--rows", type=int, help="frame height in pixels")
    sim.add_argument("--cols", type=int, help="frame width in pixels")
    sim.add_argument("--frames", type=int, help="number of frames")
    sim.add_argument("--cells", type=int, help="number of cells")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing file")
    sim.set_defaults(func=_cmd_simulate)

    conf = sub.add_parser("config", help="print, validate or convert an EXTRACT config (.json, .yaml, .mat)")
    conf.add_argument("file", nargs="?", help="config file to validate (default: print the defaults)")
    conf.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="change a value (YAML syntax), e.g. --set avg_cell_radius=7")
    conf.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output format")
    conf.add_argument("-o", "--output", help="write the validated config to this file (.json/.yaml)")
    conf.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nwb-extract`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except NwbExtractError as exc:
        print(f"nwb-extract {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

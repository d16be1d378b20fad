"""The ``nwb-extract`` command line: ``run``, ``batch``, ``inspect``, ``review``, ``config show|validate|convert``,
``demo``, ``simulate``.

Every error of the package (:class:`~nwb_extract.errors.NwbExtractError`) is printed as one line on stderr,
``nwb-extract COMMAND: error: MESSAGE``, and gives the exit code of its kind (:data:`EXIT_CODES`, documented in
docs/cli.md); a usage error gives argparse's exit code 2. Nothing is written when a command fails: outputs are
checked before any work starts and written atomically.

Imports of the numerical and NWB stacks happen inside the commands, so ``--help`` and argument errors answer at
once (a test checks that importing this module loads none of them).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.errors import (
    AmbiguousSeriesError,
    AuthenticationRequiredError,
    BackendError,
    ConfigError,
    InputError,
    NoImagingSeriesError,
    NotImplementedYetError,
    NotNwbError,
    NwbExtractError,
    OutputExistsError,
    OutputNotWritableError,
    RemoteReadError,
    ResourceError,
    SeriesNotFoundError,
    SourceNotFoundError,
    UnknownConfigKeyError,
    UnsupportedSeriesError,
)
from nwb_extract.parameters import PARAMETERS, PYTHON_PARAMETERS, THRESHOLD_PARAMETERS, Param

if TYPE_CHECKING:
    import numpy as np

    from nwb_extract.config import ExtractConfig

log = logging.getLogger("nwb_extract.cli")

#: Exit code of each error kind, most specific first (the first ``isinstance`` match wins); docs/cli.md has the
#: table. 0 is success, 1 an unexpected error (a bug: Python prints the traceback), 2 a usage error (argparse),
#: 130 an interrupt; ``batch`` returns :data:`BATCH_FAILED` when some assets failed.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (SourceNotFoundError, 4),
    (NotNwbError, 5),
    (NoImagingSeriesError, 6),
    (AmbiguousSeriesError, 7),
    (SeriesNotFoundError, 8),
    (UnsupportedSeriesError, 9),
    (UnknownConfigKeyError, 10),
    (ConfigError, 11),
    (OutputExistsError, 12),
    (OutputNotWritableError, 13),
    (BackendError, 14),
    (NotImplementedYetError, 15),
    (RemoteReadError, 16),
    (AuthenticationRequiredError, 17),
    (ResourceError, 19),
    (InputError, 3),
    (NwbExtractError, 3),
)

#: Exit code of ``batch`` when it finished but some assets failed (the manifest lists them; re-run to retry).
BATCH_FAILED = 18

# ----------------------------------------------------------------------------------------------------------------
# argument types


_FRAMES = re.compile(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*")


def _frames_arg(text: str) -> tuple[int | None, int | None]:
    """``START:STOP`` (either may be empty or negative, counted from the end as in Python) -> (start, stop);
    argparse type."""
    match = _FRAMES.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected START:STOP (0-based, STOP exclusive, negative counts from the "
                                         f"end; e.g. 0:1000 or -500:), got {text!r}")
    return tuple(None if value is None else int(value) for value in match.groups())


def _join_negative_frames(argv: list[str]) -> list[str]:
    """``--frames -50:`` -> ``--frames=-50:``: argparse would read a value starting with '-' as an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--frames" and arg.startswith("-") and _FRAMES.fullmatch(arg):
            out[-1] = f"--frames={arg}"
        else:
            out.append(arg)
    return out


def _key_value_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML value -> (key, value); argparse type."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. avg_cell_radius=7), got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"the value of {key.strip()} is not valid YAML: {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# config helpers


def _config_keys() -> dict[str, set[str]]:
    """Known keys per group ("" top level, where Python settings and whole groups are also accepted)."""
    python = {p.name for p in PYTHON_PARAMETERS}
    groups = {"thresholds", "python"}  # a whole group may be given as a mapping: --set "thresholds={T_min_snr: 9}"
    return {"": {p.name for p in PARAMETERS} | python | groups,
            "thresholds": {p.name for p in THRESHOLD_PARAMETERS}, "python": python}


def _set_changes(items: list[tuple[str, Any]] | None) -> dict[str, Any]:
    """``--set`` pairs as ``ExtractConfig.replace`` keywords; ``thresholds.X`` / ``python.X`` go into the group."""
    known = _config_keys()
    changes: dict[str, Any] = {}
    for key, value in items or ():
        group, dot, name = key.rpartition(".")
        if group not in known or name not in known[group]:
            dotted = [f"{g}.{k}" if g else k for g, keys in known.items() for k in keys]
            close = difflib.get_close_matches(key, dotted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownConfigKeyError(f"unknown config key {key!r}{hint} (`nwb-extract config show` lists them)")
        target = changes.setdefault(group, {}) if dot else changes
        target[name] = value
    return changes


def _config_arg(path: str | None, sets: list[tuple[str, Any]] | None, backend: str | None = None,
                preset: str | None = None) -> ExtractConfig:
    """The config of a ``--config`` / FILE argument (defaults when None) with the ``--set`` changes,
    ``--backend`` and ``--preset`` applied (:meth:`ExtractConfig.coerce`; a bad preset is a ConfigError)."""
    from nwb_extract.config import ExtractConfig

    cfg = ExtractConfig.coerce(path, **_set_changes(sets))
    if backend is not None:
        cfg = cfg.replace(backend=backend)
    return cfg if preset is None else cfg.replace(preset=preset)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts (``ExtractConfig.to_dict()`` form): key -> (a, b)."""
    fa, fb = _flat(a), _flat(b)
    return {key: (fa.get(key), fb.get(key)) for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)}


def _show(value: Any) -> str:
    """A config value for one line: a list of more than 8 numbers as ``<array (shape)>``."""
    if isinstance(value, list):
        shape, inner = [len(value)], value
        while inner and isinstance(inner[0], list):
            shape.append(len(inner[0]))
            inner = inner[0]
        if _count(value) > 8:
            return f"<array {tuple(shape)}>"
    return repr(value)


def _count(value: Any) -> int:
    return sum(_count(v) for v in value) if isinstance(value, list) else 1


# ----------------------------------------------------------------------------------------------------------------
# outputs


def _check_output(path: Path, overwrite: bool) -> Path:
    """Refuse an output that exists (without ``overwrite``) or cannot be written, before any work starts."""
    if path.is_dir():
        raise OutputNotWritableError(f"cannot write {path}: it is a folder; give a file name such as "
                                     f"{path / 'result.nwb'}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it or choose another file "
                                "with -o")
    if not path.parent.is_dir():
        raise OutputNotWritableError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise OutputNotWritableError(f"cannot write to folder {path.parent}: {err.strerror}") from None
    return path


def _default_output(source: str) -> Path:
    """``<stem>_extract.nwb`` next to a local input (in the current folder for a URL)."""
    is_url = source.startswith(("http://", "https://"))
    name = source.split("?")[0].rstrip("/").rsplit("/", 1)[-1] if is_url else Path(source).name
    for suffix in (".zarr", ".nwb", ".h5", ".hdf5"):
        name = name.removesuffix(suffix)
    folder = Path.cwd() if is_url else Path(source).parent
    return folder / f"{name or 'input'}_extract.nwb"


def _plan_output(args: argparse.Namespace, asset: Any) -> tuple[Path, bool]:
    """(output path, in place) for ``run``, checked before the input is read; ``asset`` is the resolved DANDI asset
    (:class:`~nwb_extract.io.dandi.RemoteAsset`) or None for a local file or URL."""
    if asset is not None:  # a remote asset: a new local file, named after the asset by default
        from nwb_extract.io.dandi import derived_file_name

        default = Path.cwd() / Path(derived_file_name(asset.path)).name
        return _check_output(Path(args.output) if args.output else default, args.overwrite), False
    source = args.input
    if args.in_place:
        if source.startswith(("http://", "https://")) or Path(source).is_dir():
            raise OutputNotWritableError(f"--in-place appends to a local NWB HDF5 file; {source} is not one, so "
                                         "write a new file with -o instead")
        if Path(source).is_file() and not os.access(source, os.W_OK):
            raise OutputNotWritableError(f"--in-place: {source} is read-only; write a new file with -o instead")
        return Path(source), True
    output = Path(args.output) if args.output else _default_output(source)
    if Path(source).exists() and output.exists() and output.resolve() == Path(source).resolve():
        raise OutputNotWritableError(f"the output {output} is the input file; use --in-place to append the "
                                     "results to it, or choose another file with -o")
    return _check_output(output, args.overwrite), False


# ----------------------------------------------------------------------------------------------------------------
# commands


def _check_local_input(text: str) -> None:
    """A missing local input file is reported before the NWB stack is imported (an answer in well under 1 s)."""
    if "://" in text or text.upper().startswith("DANDI:"):
        return
    if not Path(text).exists():
        raise SourceNotFoundError(f"no such file: {text}")


def _cmd_run(args: argparse.Namespace) -> int:
    from nwb_extract.io.dandi import RemoteAsset, is_dandi_input

    if args.path is None:
        _check_local_input(args.input)
    cfg = _config_arg(args.config, args.set, args.backend, args.preset)
    if args.in_place and (is_dandi_input(args.input) or args.path is not None):
        raise OutputNotWritableError(f"--in-place appends to a local NWB HDF5 file; {args.input} is remote "
                                     "(read-only), so write a new file with -o instead")
    plot = _check_output(Path(args.plot), args.overwrite) if args.plot else None
    from nwb_extract.workflow import resolve_input, run_nwb

    source, _ = resolve_input(args.input, path=args.path)
    output, in_place = _plan_output(args, source if isinstance(source, RemoteAsset) else None)
    footprints = _load_footprints(args.footprints) if args.footprints else None

    def prepare(config: Any, src: Any) -> Any:
        if footprints is None:
            return config
        return _with_footprints(config, footprints, src.data.shape[1:], args.footprints)

    run = run_nwb(source, output, cfg, series=args.series, frames=args.frames, in_place=in_place,
                  overwrite=args.overwrite, run_name=args.run_name, cache_dir=args.cache_dir, prepare=prepare,
                  progress=_show_progress(args.quiet, cfg), client=_execution(args))
    if plot is not None:
        from nwb_extract.io.nwb_read import read_timing
        from nwb_extract.plots import plot_overview

        timing = read_timing(run.path, run.run_name)
        plot_overview(run.result, plot, frame_rate=_frame_rate(timing))
    _print_summary(run.result, run.series_path, run.frames, run.path, run.run_name, quiet=args.quiet)
    if plot is not None and not args.quiet:
        print(f"figure: {plot}")
    return 0


def _show_progress(quiet: bool, cfg: ExtractConfig | None = None) -> bool:
    """Whether to show progress (bars on a terminal, INFO lines of ``nwb_extract.progress`` otherwise): not with
    ``--quiet``, nor when the config turns it off (``python.progress`` false or ``verbose`` 0)."""
    from nwb_extract.progress_display import wants_progress

    show = not quiet and (cfg is None or wants_progress(cfg))
    if show and not sys.stderr.isatty():
        logging.getLogger("nwb_extract.progress").setLevel(logging.INFO)
    return show


def _frame_rate(timing: dict[str, Any]) -> float | None:
    """Frames per second of a run's timing (its rate, or 1 / median interval of its timestamps)."""
    if timing.get("rate"):
        return float(timing["rate"])
    stamps = timing.get("timestamps")
    if stamps is None or len(stamps) < 2:
        return None
    import numpy as np

    step = float(np.median(np.diff(stamps)))
    return 1.0 / step if step > 0 else None


def _cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nwb_extract.workflow import run_batch

    cfg = _config_arg(args.config, args.set, args.backend, args.preset)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputNotWritableError(f"-o {out_dir} is a file; give a folder for the batch results")

    def report(entry: Any) -> None:
        if not args.quiet:
            print(f"{entry.status}: {entry.path}" + (f" ({entry.error})" if entry.error else ""), file=sys.stderr)

    on_dask = args.workers is not None or args.scheduler is not None or cfg.parallel_cpu or cfg.multi_gpu
    show_bar = on_dask and not args.quiet and cfg.python.progress and sys.stderr.isatty()
    with tqdm(unit="asset", desc="assets", disable=not show_bar, leave=False, mininterval=0) as bar:

        def asset_counts(counts: dict[str, int]) -> None:  # with Dask: done / failed / skipped / running / queued
            finished = counts["done"] + counts["failed"] + counts["skipped"]
            bar.total, bar.n = sum(counts.values()), finished
            bar.set_postfix({k: v for k, v in counts.items() if k != "skipped" or v}, refresh=True)
            if not show_bar and not args.quiet:
                print("assets: " + ", ".join(f"{n} {state}" for state, n in counts.items()), file=sys.stderr)

        result = run_batch(args.source, out_dir, cfg, include=args.include, series=args.series,
                           cache_dir=args.cache_dir, client=_execution(args), on_asset=report, on_progress=asset_counts,
                           progress=_show_progress(args.quiet, cfg))
    print(result.table())
    return BATCH_FAILED if result.failed else 0


def _execution(args: argparse.Namespace) -> Any:
    """The Dask execution of ``--workers N`` / ``--scheduler ADDRESS`` (None: the config decides, else serial)."""
    if args.workers is None and args.scheduler is None:
        return None
    from nwb_extract.distributed import LocalWorkers, Scheduler, set_dask_log_level

    set_dask_log_level(logging.WARNING if args.verbose + args.sub_verbose < 2 else logging.INFO)
    return LocalWorkers(args.workers) if args.workers is not None else Scheduler(args.scheduler)


def _add_execution(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, metavar="N",
                       help="run as Dask tasks on a local cluster of N worker processes (needs nwb-extract[dask]; "
                            "docs/cluster.md)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run as Dask tasks on a running Dask scheduler, e.g. tcp://10.0.0.5:8786")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _load_footprints(path_text: str) -> np.ndarray:
    import numpy as np

    path = Path(path_text)
    if not path.is_file():
        raise SourceNotFoundError(f"no such footprints file: {path}")
    try:
        footprints = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not a readable .npy array ({err}); save the footprints with numpy.save") \
            from None
    if not isinstance(footprints, np.ndarray):
        raise InputError(f"{path} holds several arrays; give one (cells, rows, cols) array saved with numpy.save")
    return footprints


def _with_footprints(cfg: Any, footprints: np.ndarray, frame_shape: tuple[int, int], name: str) -> Any:
    """``cfg`` in EXTRACT's regression_only mode with ``footprints`` as ``S_init`` (checked against the frames)."""
    if footprints.ndim != 3 or tuple(footprints.shape[1:]) != tuple(frame_shape):
        raise InputError(f"--footprints {name} has shape {footprints.shape}; it must be (cells, {frame_shape[0]}, "
                         f"{frame_shape[1]}): one image per cell in the series' stored frame axis order")
    return cfg.replace(S_init=footprints.astype("float32"), regression_only=True)


def _print_summary(result: Any, series_path: str, frames: tuple[int, int], path: Path, run_name: str, *,
                   quiet: bool) -> None:
    if quiet:
        print(path)
        return
    n_frames = frames[1] - frames[0]
    rows, cols = result.frame_shape
    if result.n_cells == 0:
        print(f"nwb-extract run: warning: no cells were found (cell finding stopped on {result.stop_reason}); the "
              "file holds an empty segmentation. Check avg_cell_radius and the thresholds, or give a longer movie",
              file=sys.stderr)
    print(f"found {result.n_cells} cells in {series_path} (frames {frames[0]}:{frames[1]}, {n_frames} frames of "
          f"{rows} x {cols} px) on {result.backend} ({result.device})")
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items())
    print(f"time per stage: {stages}")
    print(f"wrote {path} (run {run_name})")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from nwb_extract.io.nwb_read import list_runs, read_result

    path = args.result
    if not path.startswith(("http://", "https://")) and not Path(path).exists():
        raise SourceNotFoundError(f"no such file: {path}")
    from nwb_extract.config import ExtractConfig

    names = list_runs(path)
    print(f"{path}: {len(names)} nwb-extract run(s)")
    results = [read_result(path, name) for name in names]
    defaults = ExtractConfig().to_dict()
    for name, result in zip(names, results):
        print(f"  {name}: {result.n_cells} cells, {result.n_frames} frames of {result.frame_shape[0]} x "
              f"{result.frame_shape[1]} px, primary traces {result.primary_trace}, {result.backend} "
              f"({result.device}), stop reason {result.stop_reason}, "
              f"nwb-extract {result.versions.get('nwb_extract', '?')}")
        changed = {key: new for key, (_, new) in config_diff(defaults, result.config.to_dict()).items()
                   if key not in _RUN_RECORDS}
        print(f"    settings that differ from the defaults: {len(changed) or 'none'}")
        for key, value in changed.items():
            print(f"      {key}: {_show(value)}")
    for (first, a), (later, b) in zip(zip(names, results), zip(names[1:], results[1:])):
        diff = config_diff(a.config.to_dict(), b.config.to_dict())
        print(f"config {first} -> {later}: " + (f"{len(diff)} difference(s)" if diff else "identical"))
        for key, (old, new) in diff.items():
            print(f"  {key}: {_show(old)} -> {_show(new)}")
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from nwb_extract.review.cli import run_review

    return run_review(args)


def _add_review(sub: Any) -> None:
    review = sub.add_parser("review", help="review the cells of a result in the browser: accept or reject them",
                            description="Serve a page on 127.0.0.1 showing every cell of a run (contours, metrics, "
                                        "traces) to accept or reject; Save writes the Accepted / Rejected columns "
                                        "into the file (atomically), or the --export JSON file.")
    review.add_argument("result", help="result NWB file, or an http(s) URL / DANDI asset of one (read-only: use "
                                       "--export)")
    review.add_argument("--run", help="run name (default: the file's first run; `nwb-extract inspect` lists them)")
    review.add_argument("--path", help="asset path inside the dandiset, with a DANDI:DANDISET[/VERSION] input")
    review.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    review.add_argument("--no-browser", action="store_true", help="only print the address; do not open a browser")
    review.add_argument("--export", metavar="CURATION.json", help="save the review to this JSON file instead of "
                                                                   "into the NWB file (needed for read-only inputs)")
    review.add_argument("--import", dest="import_from", metavar="CURATION.json",
                        help="start from the review in this JSON file (written by --export)")
    review.add_argument("--curator", help="who is reviewing, recorded on save (default: the login name)")
    review.set_defaults(func=_cmd_review)


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _config_arg(args.file, args.set)
    if args.format == "json":
        print(cfg.to_json(), end="")
    elif args.bare:
        print(cfg.to_yaml(), end="")
    else:
        print(described_yaml(cfg.to_dict()), end="")
    return 0


#: Sections of ``config show``: (title, whether a key belongs); keys go to the first section that takes them.
_SECTIONS: tuple[tuple[str, Any], ...] = (
    ("what the algorithm uses", lambda p: not p.status),
    ("device and parallel setup (MATLAB names; python.backend chooses the device)",
     lambda p: p.status.startswith("MATLAB device")),
    ("accepted for MATLAB compatibility, no effect here", lambda p: True),
)

#: Keys ``inspect`` leaves out of a run's "differs from the defaults" list: the record of what ran, not a choice
#: (python.backend and use_gpu name the backend that actually ran).
_RUN_RECORDS = frozenset({"use_gpu", "python.backend"})


def described_yaml(settings: dict[str, Any]) -> str:
    """YAML of a config dict (``ExtractConfig.to_dict()``) with each key's description as a comment, top-level keys
    in :data:`_SECTIONS`, then ``thresholds`` and ``python``; it loads back as the same config."""
    from nwb_extract.config_io import dumps_yaml

    def lines(params: tuple[Param, ...], values: dict[str, Any], indent: str) -> list[str]:
        out = []
        for param in params:
            if param.name not in values:
                continue
            text = dumps_yaml({param.name: values[param.name]}).rstrip("\n").splitlines()
            note = param.description + (f" [{param.status}]" if param.status else "")
            out.append(f"{indent}# {note}")
            out += [indent + line for line in text]
        return out

    def section(param: Param) -> int:
        return next(i for i, (_, belongs) in enumerate(_SECTIONS) if belongs(param))

    out = []
    for i, (title, _) in enumerate(_SECTIONS):
        chosen = tuple(p for p in PARAMETERS if section(p) == i)
        out += ["", f"# ---- {title}"] + lines(chosen, settings, "")
    for group, params, title in (("thresholds", THRESHOLD_PARAMETERS, "quality-control thresholds (EXTRACT's "
                                                                        "config.thresholds)"),
                                 ("python", PYTHON_PARAMETERS, "Python-only settings")):
        out += ["", f"# ---- {title}", f"{group}:"] + lines(params, settings.get(group, {}), "  ")
    return "\n".join(out).lstrip("\n") + "\n"


def _cmd_config_validate(args: argparse.Namespace) -> int:
    cfg = _config_arg(args.file, args.set)
    cfg.resolved()  # cross-key rules (e.g. regression_only needs S_init)
    diff = config_diff(type(cfg)().to_dict(), cfg.to_dict())
    print(f"{args.file}: valid EXTRACT config, {len(diff)} setting(s) differ from the defaults")
    for key, (_, value) in diff.items():
        print(f"  {key}: {_show(value)}")
    return 0


def _cmd_config_convert(args: argparse.Namespace) -> int:
    cfg = _config_arg(args.file, args.set)
    from nwb_extract.io.atomic import atomic_path

    output = _check_output(Path(args.output), args.overwrite)
    with atomic_path(output) as temporary:  # it has the output's suffix, which picks the format
        cfg.save(temporary)
    print(f"wrote {output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nwb_extract.demo import run_demo

    run_demo(out_dir=Path(args.out), seed=args.seed, backend=args.backend)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    output = _check_output(Path(args.output), args.overwrite)
    from nwb_extract.io.movie_write import write_simulated_nwb
    from nwb_extract.progress import Reporter
    from nwb_extract.progress_display import progress_display
    from nwb_extract.simulate import simulate_1p, simulate_2p

    build = simulate_2p if args.kind == "2p" else simulate_1p
    kwargs = {k: v for k, v in (("n_rows", args.rows), ("n_cols", args.cols), ("n_frames", args.frames),
                                ("n_cells", args.cells)) if v is not None}
    with progress_display(_show_progress(args.quiet)) as callback:
        sim = build(seed=args.seed, progress=callback, **kwargs)
        report = Reporter(callback)
        report("write", 0, 1, str(output), "files")
        path = write_simulated_nwb(output, sim, overwrite=args.overwrite)
        report("write", 1, 1, f"wrote {path}", "files")
    print(f"wrote {path}: {sim.movie.shape[0]} frames of {sim.movie.shape[1]} x {sim.movie.shape[2]} px, "
          f"{sim.footprints.shape[0]} cells ({'TwoPhotonSeries' if args.kind == '2p' else 'OnePhotonSeries'})")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", type=_key_value_arg, metavar="KEY=VALUE",
                        help="change a config value (YAML syntax; EXTRACT names, thresholds.X for thresholds), "
                             "e.g. --set avg_cell_radius=7 --set thresholds.T_min_snr=10; repeatable")


def _add_run(sub: Any, verbosity: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[verbosity], help="run EXTRACT on an imaging series of an NWB file",
                         description="Read an imaging series lazily, run EXTRACT and write the cells into NWB.")
    run.add_argument("input", help="NWB file (HDF5), NWB Zarr folder, http(s):// or s3:// URL (streamed), or a "
                                   "DANDI asset: dandi://INSTANCE/DANDISET[@VERSION]/PATH, DANDI:DANDISET[/VERSION] "
                                   "with --path, or a DANDI API asset URL")
    run.add_argument("--path", help="asset path inside the dandiset, with a DANDI:DANDISET[/VERSION] input")
    run.add_argument("--cache-dir", metavar="FOLDER", help="keep the streamed chunks of a remote file on disk here "
                                                          "(remfile disk cache)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", help="result file (default: <input stem>_extract.nwb next to the input)")
    where.add_argument("--in-place", action="store_true", help="append the results to the input file (atomic)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    run.add_argument("--series", help="series name or path, e.g. TwoPhotonSeries or processing/ophys/MotionCorrected "
                                      "(needed when the file holds several imaging series)")
    run.add_argument("--frames", type=_frames_arg, metavar="START:STOP",
                     help="stored frames to use, 0-based, STOP exclusive (e.g. 0:1000; default: all)")
    run.add_argument("--config", metavar="FILE", help="EXTRACT config file (.yaml, .json or MATLAB .mat)")
    _add_set(run)
    run.add_argument("--backend", choices=["auto", "numpy", "cupy"], help="array backend (default: the config's)")
    run.add_argument("--preset", metavar="NAME", help="python.preset: '1p' for 1-photon / miniscope movies (drops "
                     "background pieces, README), 'none' for the reference EXTRACT (default: the config's)")
    run.add_argument("--footprints", metavar="FILE.npy",
                     help="known footprints (cells, rows, cols) in the series' stored axis order: run EXTRACT's "
                          "regression_only mode (traces for these cells)")
    run.add_argument("--run-name", help="name of the run in the output (default: chosen by the writer)")
    run.add_argument("--plot", metavar="PNG", help="also write an overview figure: contours over the summary "
                                                   "image and the traces of a few cells (replaced with --overwrite)")
    _add_execution(run)
    run.set_defaults(func=_cmd_run)


def _add_batch(sub: Any, verbosity: argparse.ArgumentParser) -> None:
    batch = sub.add_parser("batch", parents=[verbosity], help="run EXTRACT on every imaging asset of a dandiset, "
                                                              "resumably",
                           description="Stream every NWB asset of a dandiset (or under a dandi:// path prefix) "
                                       "that has an imaging series, run EXTRACT, and write one result per asset "
                                       "under OUTDIR; a manifest lets a re-run resume.")
    batch.add_argument("source", help="DANDI:DANDISET[/VERSION] or dandi://INSTANCE/DANDISET[@VERSION][/PREFIX]")
    batch.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    batch.add_argument("--include", metavar="GLOB", help="only asset paths matching GLOB, e.g. 'sub-1*/*.nwb'")
    batch.add_argument("--series", help="series name or path to use in every asset")
    batch.add_argument("--config", metavar="FILE", help="EXTRACT config file (.yaml, .json or MATLAB .mat)")
    _add_set(batch)
    batch.add_argument("--backend", choices=["auto", "numpy", "cupy"], help="array backend (default: the "
                                                                            "config's)")
    batch.add_argument("--preset", metavar="NAME", help="python.preset: '1p' for 1-photon / miniscope movies, "
                       "'none' for the reference EXTRACT (default: the config's)")
    batch.add_argument("--cache-dir", metavar="FOLDER", help="remfile disk cache for the streamed chunks")
    _add_execution(batch)
    batch.set_defaults(func=_cmd_batch)


def _add_config(sub: Any) -> None:
    conf = sub.add_parser("config", help="show, validate or convert an EXTRACT config (.json, .yaml, .mat)",
                          description="Without a subcommand: print the default config as YAML.")
    conf.set_defaults(func=_cmd_config_show, file=None, set=None, format="yaml", bare=False)
    actions = conf.add_subparsers(dest="config_command", metavar="ACTION")
    show = actions.add_parser("show", help="print a config (the defaults, or FILE) with --set changes applied")
    show.add_argument("file", nargs="?", help="config file (default: the defaults)")
    _add_set(show)
    show.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output format (yaml: every key "
                                                                                  "with its description)")
    show.add_argument("--bare", action="store_true", help="yaml without the descriptions")
    show.set_defaults(func=_cmd_config_show)
    validate = actions.add_parser("validate", help="check a config file and list what differs from the defaults")
    validate.add_argument("file", help="config file")
    _add_set(validate)
    validate.set_defaults(func=_cmd_config_validate)
    convert = actions.add_parser("convert", help="write a config in another format (the output's suffix decides)")
    convert.add_argument("file", help="config file to read")
    convert.add_argument("output", help="config file to write (.json, .yaml, .yml or .mat)")
    _add_set(convert)
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.set_defaults(func=_cmd_config_convert)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nwb-extract``."""
    parser = argparse.ArgumentParser(
        prog="nwb-extract",
        description="EXTRACT cell extraction (robust one-sided-Huber matrix factorisation) for NWB and DANDI.")
    parser.add_argument("--version", action="version", version=f"nwb-extract {__version__} ({ENGINE_VERSION})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log messages (-v info, -vv debug)")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                           help="more log messages (-v info, -vv debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bar; print only "
                                                                      "the output path")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub, verbosity)
    _add_batch(sub, verbosity)

    inspect = sub.add_parser("inspect", help="list the EXTRACT runs in a result file, their cells and config changes")
    inspect.add_argument("result", help="NWB file written by nwb-extract run")
    inspect.set_defaults(func=_cmd_inspect)

    _add_review(sub)
    _add_config(sub)

    demo = sub.add_parser("demo", help="simulate a 2-photon movie, write it as NWB, run EXTRACT, score it")
    demo.add_argument("--out", default="nwb-extract-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    demo.add_argument("--backend", choices=["auto", "numpy", "cupy"], default="auto",
                      help="array backend (default: %(default)s)")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", parents=[verbosity],
                         help="write a simulated movie with ground truth as an NWB file")
    sim.add_argument("output", help="NWB file to write")
    sim.add_argument("--kind", choices=["2p", "1p"], default="2p", help="2-photon or 1-photon (default: 2p)")
    sim.add_argument("--rows", type=int, help="frame height in pixels")
    sim.add_argument("--cols", type=int, help="frame width in pixels")
    sim.add_argument("--frames", type=int, help="number of frames")
    sim.add_argument("--cells", type=int, help="number of cells")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing file")
    sim.set_defaults(func=_cmd_simulate)
    return parser


def _show_warning(command: str, message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A Python warning as one ``nwb-extract COMMAND: warning: ...`` line on stderr (no source line)."""
    print(f"nwb-extract {command}: warning: {message}", file=sys.stderr)


def exit_code(error: BaseException) -> int:
    """The exit code of a package error (:data:`EXIT_CODES`)."""
    return next(code for kind, code in EXIT_CODES if isinstance(error, kind))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nwb-extract`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_frames(sys.argv[1:] if argv is None else list(argv)))
    if args.command is None:
        parser.print_help()
        return 0
    verbose = args.verbose + getattr(args, "sub_verbose", 0)
    level = logging.ERROR if getattr(args, "quiet", False) else (logging.WARNING, logging.INFO,
                                                                 logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nwb_extract").setLevel(level)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():  # restores the caller's warning display (main() runs inside tests too)
            warnings.showwarning = functools.partial(_show_warning, args.command)
            if getattr(args, "quiet", False):
                warnings.simplefilter("ignore")
            code = args.func(args)
    except NwbExtractError as exc:
        message = " ".join(str(exc).splitlines())
        print(f"nwb-extract {args.command}: error: {message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"nwb-extract {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    log.info("%s finished in %.1f s", args.command, time.perf_counter() - started)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The EXTRACT parameter table: every config key's type, default, bounds, description and status (spec §10),
and the trace names of architecture.md.

The single source of truth that :mod:`nwb_extract.config` validates against and that the docs, the CLI, the MATLAB
loader and our NWB extension (:mod:`nwb_extract.io.schema`) read; :mod:`nwb_extract.config` re-exports every name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from nwb_extract.errors import ConfigError

__all__ = [
    "BACKENDS", "PARAMETERS", "PRESETS", "PRESET_VALUES", "PYTHON_PARAMETERS", "THRESHOLD_PARAMETERS", "TILINGS",
    "TRACE_KINDS", "TRACE_KIND_TO_OPTION", "TRACE_OPTION_TO_KIND", "UNUSED_STATUSES", "Param", "primary_trace_kind",
]


# ----------------------------------------------------------------------------------------------------------------
# Trace names (architecture.md, "Trace names")

#: Result keys of the three trace kinds every run computes, EXTRACT's default first.
TRACE_KINDS = ("baseline_adjusted", "nonneg", "raw")

#: ``trace_output_option`` -> result key of the trace kind it selects (``none``: no traces).
TRACE_OPTION_TO_KIND = MappingProxyType({
    "baseline_adjusted": "baseline_adjusted",
    "nonneg": "nonneg",
    "no_constraint": "raw",
    "least_squares": "least_squares",
    "nonnegative_least_squares": "nonnegative_least_squares",
    "none": None,
})

#: Result key of each of :data:`TRACE_KINDS` -> its ``trace_output_option`` value (``raw`` <-> ``no_constraint``).
TRACE_KIND_TO_OPTION = MappingProxyType({kind: option for option, kind in TRACE_OPTION_TO_KIND.items()
                                         if kind in TRACE_KINDS})

# ``raw`` is EXTRACT's README name of the unconstrained traces; the reference code maps it to baseline_adjusted
# with a warning, we follow the README (architecture.md, docs/decisions.md).
_TRACE_OPTION_ALIASES = {"raw": "no_constraint"}


def primary_trace_kind(trace_output_option: str) -> str | None:
    """Result key of the primary trace kind for a ``trace_output_option`` value (the alias ``raw`` included).

    Returns ``None`` for ``none`` (hyperparameter tuning: no traces are written).
    """
    option = _TRACE_OPTION_ALIASES.get(trace_output_option, trace_output_option)
    if option not in TRACE_OPTION_TO_KIND:
        raise ConfigError(f"unknown trace_output_option {trace_output_option!r}; "
                          f"choose one of {', '.join(TRACE_OPTION_TO_KIND)} (or the alias 'raw')")
    return TRACE_OPTION_TO_KIND[option]


# ----------------------------------------------------------------------------------------------------------------
# The parameter table

#: ``python.backend`` values: ``auto`` picks CuPy when ``use_gpu`` and a GPU is found, else NumPy.
BACKENDS = ("auto", "numpy", "cupy")

#: ``python.preset`` values: ``none`` (the reference EXTRACT) or ``1p`` (1-photon / miniscope data, issue 16;
#: docs/decisions.md, "The 1-photon preset").
PRESETS = ("none", "1p")

#: What each ``python.preset`` changes: keys (``thresholds.X`` as a nested dict) and their preset values.
#: :meth:`ExtractConfig.resolved` applies a value only where the key still holds its reference default, so an
#: explicit user value other than the default wins (docs/decisions.md, "The 1-photon preset").
PRESET_VALUES = MappingProxyType({
    "none": MappingProxyType({}),
    "1p": MappingProxyType({
        "spatial_highpass_cutoff": 2.0,
        "thresholds": MappingProxyType({"spatial_corrupt_thresh": 0.7, "size_upper_limit": 1.5}),
    }),
})

#: ``python.tiling`` values (the T/S-step tiling rule); only the deterministic §6.6 rule is implemented.
TILINGS = ("deterministic",)

# ``Param.status`` values: why a parameter has no effect on the numbers this package computes.
PLOTTING = "plotting only; no effect here"
UNUSED = "unused by the reference pipeline; no effect here"
DEVICE = "MATLAB device/parallel setup; read only to choose python.backend ('auto')"
PARALLEL = "runs the partitions (and batch assets) as Dask tasks (docs/cluster.md); parallel_cpu also turns use_gpu off"
DEVICE_UNUSED = "MATLAB device/parallel setup; no effect here (python.backend and python.device choose the device)"
INTERACTIVE = "interactive in MATLAB; no effect here (pass movie_mask instead)"
INTERNAL = "filled internally by the MATLAB pipeline; no effect here"
MATLAB_ONLY = "accepted for MATLAB-config compatibility; no effect here"
KEPT = "no effect (the engine draws no random numbers); kept so saved configs load"

#: The statuses of keys that nothing in the package reads (a test greps the source to check this both ways).
UNUSED_STATUSES = frozenset({PLOTTING, UNUSED, DEVICE_UNUSED, INTERACTIVE, INTERNAL, MATLAB_ONLY, KEPT})


@dataclass(frozen=True, slots=True)
class Param:
    """One configuration key: the row of the parameter table that validation, docs and the MATLAB loader read.

    Attributes
    ----------
    name : EXTRACT's name of the key (without the group prefix).
    kind : ``bool`` | ``int`` | ``float`` | ``choice`` (string) | ``int_or_auto`` | ``int_tuple`` | ``array``.
    default : immutable default (number, string, tuple or None); ``None`` means the key is optional (MATLAB ``[]``).
    description : one line, with units.
    low, high : inclusive bounds of numbers and array elements (``low_open``: ``low`` itself is excluded).
    allow_inf : whether ``inf`` is a valid value (floats only).
    choices : allowed values of ``choice`` keys, and of small enumerated ``int`` keys (which also accept bools).
    aliases : ``((alias, value), ...)`` accepted and normalised to ``value`` (``choice`` keys).
    shape : array axes, symbolic (``"K"``, ``"H"``, ``"W"``, ``"n"``: checked for consistency across keys) or fixed.
    dtype : NumPy dtype name arrays are stored as.
    status : empty when the pipeline uses the key, else why it has no numerical effect (:data:`PLOTTING`, ...);
        a status in :data:`UNUSED_STATUSES` marks a key nothing reads (:attr:`unused`).
    in_defaults : False for the keys that ``get_defaults`` leaves absent (written to ``.mat`` only when set).
    """

    name: str
    kind: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    allow_inf: bool = False
    choices: tuple = ()
    aliases: tuple[tuple[str, str], ...] = ()
    shape: tuple = ()
    dtype: str = ""
    status: str = ""
    in_defaults: bool = True

    @property
    def unused(self) -> bool:
        """True for a key that is accepted (MATLAB configs, saved configs) but read by nothing in the package."""
        return self.status in UNUSED_STATUSES

    @property
    def optional(self) -> bool:
        """True when ``None`` (MATLAB ``[]``) is a valid value."""
        return self.default is None

    def requirement(self) -> str:
        """What a valid value looks like, in words (used in error messages and in :func:`parameter_table`)."""
        if self.kind == "bool":
            text = "true or false (0 or 1)"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
            if self.aliases:
                text += " (alias " + ", ".join(f"{a!r} for {v!r}" for a, v in self.aliases) + ")"
        elif self.kind == "int" and self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.kind == "int_or_auto":
            text = f"an integer {self.bounds_text()} or 'auto'"
        elif self.kind == "int_tuple":
            text = f"a list of integers {self.bounds_text()}"
        elif self.kind == "array":
            axes = ", ".join(str(a) for a in self.shape)
            bounds = self.bounds_text()
            text = f"a {self.dtype} array of shape ({axes})" + (f" with elements {bounds}" if bounds else "")
        else:
            noun = "an integer" if self.kind == "int" else "a number"
            text = f"{noun} {self.bounds_text()}".rstrip()
            if self.allow_inf:
                text += " (inf allowed)"
        return text + (" or None" if self.optional and self.kind not in ("int_tuple", "int_or_auto") else "")

    def bounds_text(self) -> str:
        """The bounds in words ('> 0', 'in [0, 1]'), or '' when unbounded."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"<= {self.high:g}"
        return ""


_FILTER_TYPES = ("butter", "gauss", "wiener", "movavg", "median", "gaus", "none")
_TRACE_OPTIONS = tuple(TRACE_OPTION_TO_KIND)
_POS = {"low": 0.0, "low_open": True}
_NONNEG = {"low": 0.0}
_UNIT = {"low": 0.0, "high": 1.0}

#: Top-level EXTRACT parameters (spec §10), in the spec's order; ``thresholds`` is :data:`THRESHOLD_PARAMETERS`.
PARAMETERS: tuple[Param, ...] = (
    Param("avg_cell_radius", "float", 6.0, "typical cell radius (px); sets filter scales, overlap, tiling, areas",
          **_POS),
    Param("downsample_time_by", "int_or_auto", 1, "temporal block-average factor for cell finding and refinement",
          low=1),
    Param("dendrite_aware", "bool", False, "disable the eccentricity and size checks (§1.1)"),
    Param("remove_duplicate_cells", "bool", True, "remove duplicates across partition overlaps (§1.4)"),
    Param("T_dup_thresh", "float", 0.9, "partition dedup pass 1: trace-correlation threshold"),
    Param("S_corr_thresh", "float", 0.1, "partition dedup: image-correlation grouping threshold"),
    Param("use_gpu", "bool", True, "GPU computation (python.backend='auto' uses NumPy when false)", status=DEVICE),
    Param("parallel_cpu", "bool", False, "partitions in parallel on CPU workers (forces use_gpu off)",
          status=PARALLEL),
    Param("multi_gpu", "bool", False, "partitions in parallel on several GPUs (forces parallel_cpu off)",
          status=PARALLEL),
    Param("num_workers", "int", None, "worker count for the parallel modes", low=1, status=PARALLEL,
          in_defaults=False),
    Param("use_sparse_arrays", "bool", False, "sparse spatial weights in the MATLAB outputs", status=MATLAB_ONLY),
    Param("compact_output", "bool", False, "drop eliminated/trash components from the per-partition summaries"),
    Param("hyperparameter_tuning_flag", "bool", False, "one refinement step, all metrics, no elimination, no FRR"),
    Param("verbose", "int", 2, "logging level (0 silent ... 3 most detailed)", choices=(0, 1, 2, 3)),
    Param("num_partitions_x", "int", None, "partitions along columns (both _x and _y needed, else automatic)",
          low=1, in_defaults=False),
    Param("num_partitions_y", "int", None, "partitions along rows (both _x and _y needed, else automatic)",
          low=1, in_defaults=False),
    Param("preprocess", "bool", True, "run the preprocessing of §3 (baseline, high-pass)"),
    Param("skip_dff", "bool", False, "skip the baseline subtraction (F = max(baseline, 1))"),
    Param("spatial_highpass_cutoff", "float", 5.0, "high-pass corner = f_c / value (§3.2); inf disables",
          allow_inf=True, **_POS),
    Param("F_per_pixel", "array", None, "baseline fluorescence map, used when preprocess is false", shape=("H", "W"),
          dtype="float32", in_defaults=False),
    Param("spatial_lowpass_cutoff", "float", 2.0, "cell-finding low-pass corner = f_c * value (§3.2); inf disables",
          allow_inf=True, **_POS),
    Param("cellfind_min_snr", "float", 1.0, "cell-finding seed threshold in noise units", **_NONNEG),
    Param("cellfind_max_steps", "int", 1000, "maximum cell-finding candidates per partition", **_NONNEG),
    Param("cellfind_kappa_std_ratio", "float", 0.7, "kappa / noise std in cell finding", **_POS),
    Param("cellfind_adaptive_kappa", "bool", False, "adaptive kappa for the trace update in cell finding"),
    Param("init_with_gaussian", "bool", False, "Gaussian instead of correlation-image initialisation in cell finding"),
    Param("avg_yield_threshold", "float", 0.1, "cell-finding yield stop; window = round(1 / value)", **_POS),
    Param("visualize_cellfinding", "bool", False, "live cell-finding plots", status=PLOTTING),
    Param("S_init", "array", None, "initial cell images; skips cell finding", shape=("K", "H", "W"),
          dtype="float32"),
    Param("kappa_std_ratio", "float", 0.7, "kappa / noise std in refinement and final regression", **_POS),
    Param("adaptive_kappa", "int", 1, "0 none; 1 adaptive kappa in the final regression; 2 also refinement T-step",
          choices=(0, 1, 2)),
    Param("max_iter", "int", 6, "cell-refinement iterations", **_NONNEG),
    Param("l1_penalty_factor", "float", 0.0, "l1 penalty strength of the T-step (§6.5)", **_NONNEG),
    Param("regression_only", "bool", False, "trace estimation only, for the given S_init"),
    Param("trace_output_option", "choice", "baseline_adjusted",
          "final robust regression (§8.2): the primary trace kind",
          choices=_TRACE_OPTIONS, aliases=tuple(_TRACE_OPTION_ALIASES.items())),
    Param("trace_quantile", "float", 0.25, "quantile of the baseline_adjusted lower bound", **_UNIT),
    Param("cellfind_max_iter", "int", 10, "alternations and inner iterations in cell finding", **_NONNEG),
    Param("max_iter_S", "int", 100, "ADMM iterations per refinement S-step", **_NONNEG),
    Param("max_iter_T", "int", 100, "ADMM iterations per refinement T-step", **_NONNEG),
    Param("max_iter_T_final", "int", 100, "ADMM iterations in the final robust regression", **_NONNEG),
    Param("T_init", "array", None, "initial traces for S_init (frames, cells)", shape=("n", "K"), dtype="float32"),
    Param("num_iter_stop_quality_checks", "int_tuple", (), "refinement iterations (1-based) that skip quality control",
          low=1),
    Param("cellfind_filter_type", "choice", "butter", "filter of the cell-finding movie copy (§3.5)",
          choices=_FILTER_TYPES),
    Param("moving_radius_spatial", "float", 3.0, "'movavg' filter spatial size (px)", **_NONNEG),
    Param("moving_radius_temporal", "float", 3.0, "'movavg' filter temporal size (frames)", **_NONNEG),
    Param("cellfind_spatial_highpass_cutoff", "float", math.inf, "extra high-pass of the cell-finding filter",
          allow_inf=True, **_POS),
    Param("baseline_quantile", "float", None, "pixel baseline: mean (None), median (0.5) or this quantile", **_UNIT),
    Param("temporal_denoising", "bool", False, "per-pixel wavelet denoising along time (slow)"),
    Param("remove_background", "bool", False, "run correct_baseline (§3.3)"),
    Param("second_df", "float", None, "final per-pixel median (0.5) or quantile subtraction; None skips", **_UNIT),
    Param("T_corr_thresh", "float", 0.8, "partition dedup pass 2: trace-correlation threshold"),
    Param("fix_zero_FOV_strips", "bool", False, "zero-edge trimming inside preprocessing (§13.5)"),
    Param("medfilt_outlier_pixels", "bool", False, "replace outlier pixels by their neighbourhood median (§3.7)"),
    Param("visualize_cellfinding_show_bad_cells", "bool", False, "show rejected candidates", status=PLOTTING),
    Param("visualize_cellfinding_full_range", "bool", False, "full colour range", status=PLOTTING),
    Param("visualize_cellfinding_min", "float", 0.2, "lower colour quantile", status=PLOTTING, **_UNIT),
    Param("visualize_cellfinding_max", "float", 0.99, "upper colour quantile", status=PLOTTING, **_UNIT),
    Param("filter_sigma", "array", (2.0, 2.0, 10.0), "'gaus' filter sigmas (rows px, cols px, frames)", shape=(3,),
          dtype="float64", **_POS),
    Param("adaptive_kappa_filter", "bool", False, "adaptive kappa in the S-step"),
    Param("downsample_space_by", "int_or_auto", 1, "spatial block-average factor", low=1),
    Param("use_default_gpu", "bool", False, "skip GPU selection", status=DEVICE_UNUSED),
    Param("pick_gpu", "int", None, "GPU index (1-based, MATLAB)", low=1, status=DEVICE_UNUSED),
    Param("min_radius_after_downsampling", "float", 5.0, "target radius (px) of automatic spatial downsampling",
          **_POS),
    Param("min_tau_after_downsampling", "float", 5.0, "target decay (frames) of automatic time downsampling", **_POS),
    Param("reestimate_S_if_downsampled", "bool", False,
          "re-estimate images at full resolution (broken in MATLAB, §13)"),
    Param("reestimate_T_if_downsampled", "bool", True, "final regression at the full frame rate"),
    Param("low_cell_area_flag", "bool", False, "Gaussian instead of median smoothing of cell images"),
    Param("crop_circular", "bool", False, "draw a circular movie mask", status=INTERACTIVE),
    Param("arbitrary_mask", "bool", False, "draw a polygon movie mask", status=INTERACTIVE),
    Param("movie_mask", "array", None, "pixels to keep (multiplies the movie, restricts noise medians)",
          shape=("H", "W"), dtype="bool"),
    Param("smoothing_ratio_x2y", "float", 1.0, "anisotropy of the cell-finding low-pass", **_POS),
    Param("num_frames", "int", None, "frames read from a file movie (None: all)", low=1),
    Param("is_pixel_valid", "array", None, "pixels with non-zero temporal std", shape=("H", "W"), dtype="bool",
          status=INTERNAL),
    Param("save_all_found", "bool", False, "MATLAB: keep the pre-refinement images and traces of cell finding",
          status=MATLAB_ONLY),
    Param("cellfind_numpix_threshold", "int", 9, "minimum connected seed-region size (px)", **_NONNEG),
    Param("high2low_brightness_ratio", "float", math.inf, "dim-seed stop ratio of cell finding", allow_inf=True,
          **_POS),
    Param("plot_loss", "bool", False, "MATLAB: record solver losses and plot them", status=MATLAB_ONLY),
    Param("T_lower_snr_threshold", "float", 10.0, "trace SNR lower threshold", status=UNUSED),
    Param("smooth_T", "bool", False, "smooth traces in refinement; median-3 after the full-rate regression"),
    Param("smooth_S", "bool", True, "replace cell images by their smoothed version each iteration"),
    Param("avg_event_tau", "float", 10.0, "calcium event decay (frames): auto time downsampling, baseline windows",
          **_POS),
    Param("pre_mask_on", "bool", False, "fixed S-step mask from the initial images"),
    Param("pre_mask_radius", "float", 0.0, "dilation radius (px) of the fixed S-step mask", **_NONNEG),
    Param("minimal_checks", "bool", False, "relax the quality checks (§1.1)"),
    Param("cellfind_check_min_magnitude", "bool", True, "stop cell finding on the minimum-magnitude rule"),
    Param("frr_check_every_step", "bool", False, "recompute the baseline bound every final-regression iteration"),
    Param("frr_edge_case_flag", "bool", False, "alternative tile minimum handling (§6.8)"),
    Param("show_progress", "bool", False, "MATLAB progress bar (see python.progress)", status=PLOTTING),
    Param("TOL_sub", "float", 1e-6, "solver sub-problem tolerance", status=UNUSED, **_NONNEG),
    Param("TOL_main", "float", 1e-2, "refinement convergence tolerance", **_NONNEG),
    Param("kappa_iter_nums", "array", None, "fractions of the final-regression iterations that re-estimate kappa "
          "(None: 0.5, 0.7, 0.9)", shape=("m",), dtype="float64", **_UNIT),
    Param("skip_parpool_calculations", "bool", False, "skip device and worker-pool setup",
          status=DEVICE_UNUSED),
)

#: EXTRACT's nested ``thresholds`` struct (spec §7.3, §10); size limits are multiples of pi * r^2.
THRESHOLD_PARAMETERS: tuple[Param, ...] = (
    Param("T_min_snr", "float", 7.0, "minimum trace SNR (cell finding and refinement)", **_NONNEG),
    Param("size_lower_limit", "float", 0.1, "minimum cell area, x pi r^2", **_NONNEG),
    Param("size_upper_limit", "float", 10.0, "maximum cell area, x pi r^2", allow_inf=True, **_NONNEG),
    Param("spatial_corrupt_thresh", "float", 1.5, "maximum spatial corruption", allow_inf=True),
    Param("eccent_thresh", "float", 6.0, "maximum eccentricity", allow_inf=True, **_NONNEG),
    Param("T_dup_corr_thresh", "float", 0.95, "trace-duplicate merge threshold"),
    Param("S_dup_corr_thresh", "float", 0.8, "image-duplicate threshold"),
    Param("low_ST_index_thresh", "float", -1.0, "spatio-temporal index check; -1 disables it (ST metrics then 1, "
          "except in tuning records)"),
    Param("confidence_thresh", "float", 0.8, "classifier confidence", status=UNUSED),
    Param("high_ST_index_thresh", "float", 0.8, "legacy labeler threshold", status=UNUSED),
    Param("low_ST_corr_thresh", "float", 0.0, "spatio-temporal correlation check (only when ST metrics are on)"),
    Param("temporal_corrupt_thresh", "float", 0.7, "maximum temporal corruption"),
)

#: Python-only settings (no MATLAB counterpart), stored in ``cfg.python``.
PYTHON_PARAMETERS: tuple[Param, ...] = (
    Param("backend", "choice", "auto", "array backend; 'auto': CuPy when use_gpu and a GPU is found, else NumPy; "
          "numpy/cupy override use_gpu", choices=BACKENDS),
    Param("device", "int", None, "CUDA device index for the cupy backend (None: the current device)", **_NONNEG),
    Param("chunk_frames", "int", 1000, "frames per read from lazy movie sources", low=1),
    Param("seed", "int", 0, "seed of random draws", status=KEPT, **_NONNEG),
    Param("progress", "bool", True, "progress bars (also off when verbose is 0 or output is not a terminal)"),
    Param("tiling", "choice", "deterministic", "tiling of the T/S steps: 'deterministic' (§6.6 CPU rule, same "
          "result on every device)", choices=TILINGS),
    Param("early_convergence_check", "bool", False, "refinement's fixed-kappa ADMM T/S steps test convergence from "
          "the first iteration instead of after half of max_iter_T / max_iter_S (the reference): refinement about "
          "2.5x faster, individual traces differ by up to a few percent (docs/decisions.md)"),
    Param("preset", "choice", "none", "'1p' for 1-photon / miniscope data: a stronger spatial high-pass and tighter "
          "size and spatial-corruption checks, which drop pieces of the background (keys left at their reference "
          "defaults get the preset's values; docs/decisions.md); 'none': the reference EXTRACT", choices=PRESETS),
    Param("seam_ownership", "bool", True, "with partitions, drop a cell found in a neighbouring partition's core "
          "where that partition found an overlapping cell (seam fragments); false: the reference's stitching only "
          "(docs/decisions.md)"),
)

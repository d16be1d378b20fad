"""Tests of nwb_extract.config: defaults against the reference EXTRACT, validation, round trips, MATLAB files,
derived overrides (spec §1.1, §10)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

import nwb_extract
from nwb_extract.config import (
    PARAMETERS,
    PYTHON_PARAMETERS,
    THRESHOLD_PARAMETERS,
    TRACE_KIND_TO_OPTION,
    TRACE_KINDS,
    TRACE_OPTION_TO_KIND,
    ConfigWarning,
    ExtractConfig,
    parameter_table,
    primary_trace_kind,
)
from nwb_extract.errors import ConfigError

PIPELINES = ("pipeline_m1_2p_nonsquare.h5", "pipeline_m2_1p_background.h5", "pipeline_m3_partitions_2x2.h5")
# set explicitly in the reference runs (reference README §3 "Config"); every other field is get_defaults'
EXPLICIT = {"avg_cell_radius", "use_gpu", "parallel_cpu", "num_partitions_x", "num_partitions_y", "verbose",
            "save_all_found", "trace_output_option"}
# our keys that the reference's resolved struct does not hold: absent from get_defaults, or Python-only
NOT_IN_REFERENCE = {"num_workers", "F_per_pixel", "python"}


def _reference_configs(reference_dir, name):
    """Root config and the per-option run configs of one pipeline file, as JSON-decoded dicts."""
    with h5py.File(reference_dir / name, "r") as f:
        root = json.loads(f.attrs["config_json"])
        runs = {option: json.loads(group.attrs["config_json"]) for option, group in f["reference"].items()}
    return root, runs


def _assert_matches_reference(ours, ref, path=""):
    """``ours`` (our to_dict()) equals ``ref`` (the reference's JSON): MATLAB ``[]`` is None or an empty list,
    logicals compare with 0/1, numbers exactly (defaults are exact decimal constants in both)."""
    for key, expected in ref.items():
        got = ours[key]
        where = f"{path}{key}"
        if isinstance(expected, dict):
            _assert_matches_reference(got, expected, where + ".")
        elif expected == []:
            assert got in (None, []), where
        else:
            assert got == expected, f"{where}: ours {got!r}, reference {expected!r}"
            assert type(got) is not str or type(expected) is str, where


# ----------------------------------------------------------------------------------------------------------------
# defaults against the reference


@pytest.mark.parametrize("name", PIPELINES)
def test_defaults_match_reference_config(reference_dir, name):
    root, _ = _reference_configs(reference_dir, name)
    assert len(root) == 91
    ours = ExtractConfig().to_dict()
    assert set(ours) - NOT_IN_REFERENCE == set(root)
    assert set(ours["thresholds"]) == set(root["thresholds"])
    _assert_matches_reference(ours, {k: v for k, v in root.items() if k not in EXPLICIT})
    # the explicitly set fields differ from the defaults only where the README says they were set
    assert ours["use_gpu"] is True and root["use_gpu"] == 0
    assert ours["num_partitions_x"] is None and root["num_partitions_x"] in (1, 2)


@pytest.mark.parametrize("name", PIPELINES)
def test_reference_configs_load_unchanged(reference_dir, name):
    root, runs = _reference_configs(reference_dir, name)
    for option, ref in {"root": root, **runs}.items():
        cfg = ExtractConfig.from_dict(ref)
        _assert_matches_reference(cfg.to_dict(), ref)
        if option != "root":
            assert cfg.trace_output_option == option
    cfg = ExtractConfig.from_dict(root)
    assert cfg.use_gpu is False and cfg.save_all_found is True and cfg.verbose == 2
    assert cfg.S_init is None and cfg.num_iter_stop_quality_checks == () and cfg.baseline_quantile is None


def test_bool_fields_are_bools_and_defaults_are_immutable():
    cfg = ExtractConfig()
    for p in PARAMETERS + THRESHOLD_PARAMETERS + PYTHON_PARAMETERS:
        assert not isinstance(p.default, (list, dict, set, np.ndarray)), p.name
    assert all(type(getattr(cfg, p.name)) is bool for p in PARAMETERS if p.kind == "bool")
    a, b = ExtractConfig(), ExtractConfig()
    assert a.filter_sigma is not b.filter_sigma
    with pytest.raises(ValueError, match="read-only"):
        a.filter_sigma[0] = 5.0
    with pytest.raises(AttributeError, match="immutable"):
        a.avg_cell_radius = 3
    with pytest.raises(AttributeError, match="immutable"):
        a.thresholds.T_min_snr = 3
    np.testing.assert_array_equal(b.filter_sigma, [2, 2, 10])


def test_parameter_table_lists_every_key_with_status():
    text = parameter_table()
    for p in PARAMETERS:
        assert f"| {p.name} |" in text
    for p in THRESHOLD_PARAMETERS:
        assert f"| thresholds.{p.name} |" in text
    for p in PYTHON_PARAMETERS:
        assert f"| python.{p.name} |" in text
    row = next(line for line in text.splitlines() if line.startswith("| visualize_cellfinding_max |"))
    assert "plotting only" in row
    row = next(line for line in text.splitlines() if line.startswith("| thresholds.confidence_thresh |"))
    assert "unused" in row


def _package_source() -> str:
    """Every module of the package, without the parameter table's rows (which name every key)."""
    package = Path(nwb_extract.__file__).parent
    texts = [path.read_text(encoding="utf-8") for path in sorted(package.rglob("*.py"))]
    return "\n".join(line for text in texts for line in text.splitlines() if 'Param("' not in line)


def test_every_key_is_read_or_marked_unused():
    """A key the package reads is not marked unused, and a key nothing reads is (``Param.unused``, the status)."""
    source = _package_source()
    engine = "\n".join(path.read_text(encoding="utf-8")
                       for path in sorted((Path(nwb_extract.__file__).parent / "engine").rglob("*.py")))
    unmarked, wrongly_marked = [], []
    for group, params in (("", PARAMETERS), ("thresholds", THRESHOLD_PARAMETERS), ("python", PYTHON_PARAMETERS)):
        for p in params:
            attribute = rf"\.{p.name}\b" if group != "python" else rf"python\.{p.name}\b"
            by_name = rf"[\"']{p.name}[\"']"  # the engine reads some keys with getattr(cfg, name)
            read = bool(re.search(attribute, source)) or (group != "python" and bool(re.search(by_name, engine)))
            key = f"{group}.{p.name}" if group else p.name
            if not read and not p.unused:
                unmarked.append(key)
            if read and p.unused:
                wrongly_marked.append(key)
    assert unmarked == [], "read by nothing, but not marked unused in the parameter table"
    assert wrongly_marked == [], "marked unused in the parameter table, but read"
    for name in ("use_sparse_arrays", "save_all_found", "plot_loss"):
        assert next(p for p in PARAMETERS if p.name == name).unused
    assert next(p for p in PYTHON_PARAMETERS if p.name == "seed").unused


# ----------------------------------------------------------------------------------------------------------------
# construction, python group, trace names


def test_attribute_access_and_groups():
    cfg = ExtractConfig(avg_cell_radius=5, thresholds={"T_min_snr": 10}, python={"seed": 3}, backend="numpy")
    assert cfg.avg_cell_radius == 5.0 and isinstance(cfg.avg_cell_radius, float)
    assert cfg.thresholds.T_min_snr == 10.0 and cfg.thresholds.eccent_thresh == 6.0
    assert (cfg.python.backend, cfg.python.seed, cfg.python.chunk_frames) == ("numpy", 3, 1000)
    d = cfg.to_dict()
    assert "backend" not in d and d["python"]["backend"] == "numpy" and d["python"]["tiling"] == "deterministic"


def test_flat_and_nested_python_keys_are_the_same():
    assert ExtractConfig(backend="cupy", device=1) == ExtractConfig(python={"backend": "cupy", "device": 1})
    assert ExtractConfig.from_dict({"chunk_frames": 64}).python.chunk_frames == 64
    with pytest.raises(ConfigError, match=r"python\.backend is given twice"):
        ExtractConfig(backend="numpy", python={"backend": "cupy"})


def test_replace_merges_groups_and_validates():
    cfg = ExtractConfig(thresholds={"T_min_snr": 10})
    new = cfg.replace(thresholds={"eccent_thresh": 4}, max_iter=3, progress=False)
    assert new.thresholds.T_min_snr == 10.0 and new.thresholds.eccent_thresh == 4.0
    assert new.max_iter == 3 and new.python.progress is False
    assert cfg.max_iter == 6 and cfg.thresholds.eccent_thresh == 6.0  # the original is unchanged
    with pytest.raises(ConfigError, match="max_iter"):
        cfg.replace(max_iter=-1)


def test_matlab_style_values_are_accepted():
    cfg = ExtractConfig(use_gpu=0, smooth_S=1.0, adaptive_kappa=True, max_iter=6.0, verbose=np.uint8(1),
                        avg_cell_radius=np.float32(4.5), baseline_quantile=[], downsample_space_by="auto",
                        downsample_time_by=[], num_iter_stop_quality_checks=3)
    assert cfg.use_gpu is False and cfg.smooth_S is True
    assert cfg.adaptive_kappa == 1 and type(cfg.adaptive_kappa) is int
    assert cfg.max_iter == 6 and type(cfg.max_iter) is int and cfg.verbose == 1
    assert cfg.avg_cell_radius == 4.5 and cfg.baseline_quantile is None
    assert cfg.downsample_space_by == "auto" and cfg.downsample_time_by == "auto"
    assert cfg.num_iter_stop_quality_checks == (3,)
    assert ExtractConfig(spatial_highpass_cutoff=math.inf).spatial_highpass_cutoff == math.inf


def test_raw_trace_option_is_accepted_as_no_constraint():
    # We follow EXTRACT's README ('raw' = unconstrained traces); the reference code maps 'raw' to
    # baseline_adjusted with a warning (spec §1.1.4, §13.1). Documented departure.
    cfg = ExtractConfig(trace_output_option="raw")
    assert cfg.trace_output_option == "no_constraint"
    assert primary_trace_kind(cfg.trace_output_option) == "raw" == primary_trace_kind("raw")
    assert primary_trace_kind("baseline_adjusted") == "baseline_adjusted"
    assert primary_trace_kind("none") is None
    assert TRACE_KINDS == ("baseline_adjusted", "nonneg", "raw")
    assert {TRACE_OPTION_TO_KIND[TRACE_KIND_TO_OPTION[k]] for k in TRACE_KINDS} == set(TRACE_KINDS)
    assert TRACE_KIND_TO_OPTION["raw"] == "no_constraint"
    with pytest.raises(ConfigError, match="unknown trace_output_option 'rawish'"):
        primary_trace_kind("rawish")


# ----------------------------------------------------------------------------------------------------------------
# validation errors


@pytest.mark.parametrize(("settings", "message"), [
    ({"avg_cel_radius": 5}, r"unknown config key 'avg_cel_radius'; did you mean 'avg_cell_radius'\?"),
    ({"T_min_snr": 5}, r"T_min_snr is in the thresholds group: pass thresholds=\{'T_min_snr': \.\.\.\}"),
    ({"thresholds.T_min_snr": 5}, r"T_min_snr is in the thresholds group: pass thresholds=\{'T_min_snr': \.\.\.\}"),
    ({"python.seed": 5}, r"unknown config key 'python\.seed'; pass python=\{'seed': \.\.\.\} or the flat key 'seed'"),
    ({"thresholds": {"T_min_sn": 5}}, r"unknown config key 'T_min_sn' in thresholds; did you mean 'T_min_snr'"),
    ({"python": {"backnd": "numpy"}}, r"unknown config key 'backnd' in python; did you mean 'backend'"),
    ({"avg_cell_radius": "5"}, r"'avg_cell_radius' must be a number > 0 .*got '5'"),
    ({"avg_cell_radius": 0}, r"'avg_cell_radius' must be a number > 0 .*got 0"),
    ({"avg_cell_radius": -2.0}, r"'avg_cell_radius' must be a number > 0 .*got -2\.0"),
    ({"avg_cell_radius": True}, r"'avg_cell_radius' must be a number > 0 .*got True"),
    ({"avg_cell_radius": math.inf}, r"'avg_cell_radius' must be a number > 0 .*got inf"),
    ({"avg_cell_radius": math.nan}, r"'avg_cell_radius' must be a number > 0 .*got nan"),
    ({"avg_cell_radius": None}, r"'avg_cell_radius' .*got None \(this key cannot be empty\)"),
    ({"pre_mask_radius": -1}, r"'pre_mask_radius' must be a number >= 0 .*got -1"),
    ({"spatial_highpass_cutoff": 0}, r"'spatial_highpass_cutoff' must be a number > 0 \(inf allowed\)"),
    ({"spatial_lowpass_cutoff": -1}, r"'spatial_lowpass_cutoff' must be a number > 0 \(inf allowed\)"),
    ({"max_iter": -1}, r"'max_iter' must be an integer >= 0 .*got -1"),
    ({"max_iter": 2.5}, r"'max_iter' must be an integer >= 0 .*got 2\.5"),
    ({"max_iter": True}, r"'max_iter' must be an integer >= 0 .*got True"),
    ({"trace_quantile": 1.5}, r"'trace_quantile' must be a number in \[0, 1\] .*got 1\.5"),
    ({"baseline_quantile": -0.1}, r"'baseline_quantile' must be a number in \[0, 1\] or None .*got -0\.1"),
    ({"thresholds": {"size_lower_limit": -1}}, r"'thresholds\.size_lower_limit' must be a number >= 0"),
    ({"downsample_time_by": 0}, r"'downsample_time_by' must be an integer >= 1 or 'auto' .*got 0"),
    ({"downsample_space_by": "fast"}, r"'downsample_space_by' must be an integer >= 1 or 'auto' .*got 'fast'"),
    ({"downsample_time_by": [2, 3]}, r"'downsample_time_by' must be an integer >= 1 or 'auto' .*got \[2, 3\]"),
    ({"adaptive_kappa": 3}, r"'adaptive_kappa' must be one of 0, 1, 2 .*got 3"),
    ({"cellfind_filter_type": "butterworth"},
     r"'cellfind_filter_type' must be one of 'butter', 'gauss', 'wiener', 'movavg', 'median', 'gaus', 'none'"
     r".*got 'butterworth'; did you mean 'butter'\?"),
    ({"trace_output_option": "nonnegative"},
     r"'trace_output_option' must be one of 'baseline_adjusted', 'nonneg', 'no_constraint', 'least_squares', "
     r"'nonnegative_least_squares', 'none' \(alias 'raw' for 'no_constraint'\).*got 'nonnegative'"),
    ({"use_gpu": 2}, r"'use_gpu' must be true or false \(0 or 1\) .*got 2"),
    ({"use_gpu": "yes"}, r"'use_gpu' must be true or false \(0 or 1\) .*got 'yes'"),
    ({"backend": "torch"}, r"'python\.backend' must be one of 'auto', 'numpy', 'cupy' .*got 'torch'"),
    ({"tiling": "fast"}, r"'python\.tiling' must be one of 'deterministic' .*got 'fast'"),
    ({"tiling": "memory"}, r"'python\.tiling' must be one of 'deterministic' .*got 'memory'"),
    ({"chunk_frames": 0}, r"'python\.chunk_frames' must be an integer >= 1"),
    ({"num_iter_stop_quality_checks": [1, 0]}, r"'num_iter_stop_quality_checks' must be a list of integers >= 1"),
    ({"filter_sigma": [1, 2]}, r"'filter_sigma' must be a float64 array of shape \(3\).*\(expected 1 axes"),
    ({"filter_sigma": [1, 2, 0]}, r"'filter_sigma' .*elements must be finite numbers > 0"),
    ({"kappa_iter_nums": [0.5, 1.5]}, r"'kappa_iter_nums' .*elements must be finite numbers in \[0, 1\]"),
    ({"S_init": np.ones((4, 5))}, r"'S_init' must be a float32 array of shape \(K, H, W\).*expected 3 axes"),
    ({"S_init": np.full((1, 4, 5), np.nan)}, r"'S_init' .*elements must be finite numbers"),
    ({"movie_mask": np.full((4, 5), 2)}, r"'movie_mask' .*elements must be true/false or 0/1"),
    ({"S_init": np.ones((2, 4, 5)), "T_init": np.ones((10, 3))},
     r"inconsistent array shapes: S_init gives K=2 but T_init gives K=3"),
    ({"S_init": np.ones((2, 4, 5)), "movie_mask": np.ones((5, 4), bool)},
     r"inconsistent array shapes: S_init gives H=4 but movie_mask gives H=5"),
    ({"thresholds": 5}, r"config key 'thresholds' must be a dict of thresholds settings, got 5"),
])
def test_validation_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        ExtractConfig.from_dict(settings)


def test_unknown_attribute_suggests_name():
    with pytest.raises(AttributeError, match="did you mean 'avg_cell_radius'"):
        ExtractConfig().avg_cell_radus  # noqa: B018


# ----------------------------------------------------------------------------------------------------------------
# resolved(): derived overrides (spec §1.1)


def test_resolved_defaults_change_only_the_backend():
    cfg = ExtractConfig()
    assert cfg.resolved() == cfg  # use_gpu is true by default: 'auto' stays 'auto' (CuPy if a GPU is found)
    cpu = ExtractConfig(use_gpu=False)
    assert cpu.resolved() == cpu.replace(backend="numpy")
    assert ExtractConfig(use_gpu=False, backend="cupy").resolved().python.backend == "cupy"  # explicit wins


def test_resolved_dendrite_aware_and_minimal_checks():
    d = ExtractConfig(dendrite_aware=True).resolved().thresholds
    assert (d.eccent_thresh, d.size_lower_limit, d.size_upper_limit) == (math.inf, 0.0, math.inf)
    assert d.spatial_corrupt_thresh == 1.5
    m = ExtractConfig(minimal_checks=1).resolved().thresholds
    assert (m.size_upper_limit, m.eccent_thresh, m.spatial_corrupt_thresh, m.low_ST_index_thresh) == \
        (math.inf, math.inf, math.inf, -1.0)
    assert m.size_lower_limit == 0.1


def test_resolved_overrides_do_not_depend_on_edit_order():
    before = ExtractConfig(thresholds={"eccent_thresh": 3}).replace(dendrite_aware=True)
    after = ExtractConfig(dendrite_aware=True).replace(thresholds={"eccent_thresh": 3})
    assert before == after
    assert before.resolved().thresholds.eccent_thresh == math.inf
    tuned = ExtractConfig(hyperparameter_tuning_flag=True).replace(trace_output_option="nonneg").resolved()
    assert tuned.trace_output_option == "none"
    assert tuned.resolved() == tuned  # idempotent


def test_resolved_regression_only():
    with pytest.raises(ConfigError, match="regression_only=True needs S_init: pass the cell images as S_init"):
        ExtractConfig(regression_only=True).resolved()
    cfg = ExtractConfig(regression_only=True, max_iter=4, remove_duplicate_cells=False, downsample_time_by=3,
                        S_init=np.ones((2, 4, 5))).resolved()
    assert (cfg.max_iter, cfg.remove_duplicate_cells, cfg.downsample_time_by) == (0, True, 1)


@pytest.mark.parametrize(("parallel_cpu", "multi_gpu", "expected"), [
    (True, False, (False, True, False)),
    (False, True, (True, False, True)),
    (True, True, (False, False, True)),  # parallel_cpu turns use_gpu off before multi_gpu turns parallel_cpu off
])
def test_resolved_parallel_modes(parallel_cpu, multi_gpu, expected):
    cfg = ExtractConfig(parallel_cpu=parallel_cpu, multi_gpu=multi_gpu).resolved()
    assert (cfg.use_gpu, cfg.parallel_cpu, cfg.multi_gpu) == expected
    assert cfg.python.backend == ("numpy" if not expected[0] else "auto")


# ----------------------------------------------------------------------------------------------------------------
# round trips


def _rich_config():
    """A config with every kind of value: arrays (non-square frames, asymmetric), inf, None, tuples, groups."""
    rng = np.random.default_rng(0)
    k, h, w, n = 3, 4, 6, 7
    return ExtractConfig(
        avg_cell_radius=4.5, S_init=rng.random((k, h, w)), T_init=rng.random((n, k)) - 0.25,
        movie_mask=rng.random((h, w)) > 0.3, F_per_pixel=rng.random((h, w)) + 1, kappa_iter_nums=[0.25, 0.75],
        filter_sigma=[1.0, 3.0, 7.5], num_iter_stop_quality_checks=[2, 4], downsample_space_by="auto",
        spatial_highpass_cutoff=math.inf, baseline_quantile=0.5, num_partitions_x=2, num_partitions_y=1,
        cellfind_filter_type="gaus", trace_output_option="nonneg", use_gpu=False,
        thresholds={"T_min_snr": 9.5, "size_upper_limit": math.inf, "low_ST_index_thresh": -1},
        python={"backend": "numpy", "device": 1, "seed": 42, "progress": False},
    )


def _assert_same(a, b):
    assert a == b
    for name in ("S_init", "T_init", "F_per_pixel", "movie_mask", "filter_sigma", "kappa_iter_nums"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and not y.flags.writeable, name
        np.testing.assert_array_equal(x, y)


def test_rich_config_stores_arrays_in_our_orientation():
    cfg = _rich_config()
    assert cfg.S_init.shape == (3, 4, 6) and cfg.S_init.dtype == np.float32
    assert cfg.T_init.shape == (7, 3) and cfg.movie_mask.dtype == bool
    assert cfg != ExtractConfig() and cfg != cfg.replace(S_init=cfg.S_init * 2)


def test_dict_json_yaml_round_trips():
    cfg = _rich_config()
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain types only
    assert isinstance(d["S_init"], list) and d["thresholds"]["size_upper_limit"] == math.inf
    assert d["num_partitions_x"] == 2 and d["num_workers"] is None and d["python"]["device"] == 1
    _assert_same(cfg, ExtractConfig.from_dict(d))
    text = cfg.to_json()
    assert "Infinity" in text
    _assert_same(cfg, ExtractConfig.from_json(text))
    text = cfg.to_yaml()
    assert ".inf" in text
    _assert_same(cfg, ExtractConfig.from_yaml(text))
    assert ExtractConfig.from_yaml(ExtractConfig().to_yaml()) == ExtractConfig()


def test_user_yaml_reads_exponents_as_numbers():
    cfg = ExtractConfig.from_yaml("TOL_sub: 1e-7\nthresholds:\n  T_min_snr: 5\nbackend: numpy\nS_init: []\n")
    assert cfg.TOL_sub == 1e-7 and cfg.thresholds.T_min_snr == 5.0 and cfg.python.backend == "numpy"
    assert ExtractConfig.from_yaml("") == ExtractConfig()


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".mat"])
def test_file_round_trips(tmp_path, suffix):
    cfg = _rich_config()
    path = tmp_path / f"config{suffix}"
    cfg.save(path)
    _assert_same(cfg, ExtractConfig.load(path))


def test_saved_mat_is_in_matlab_orientation(tmp_path):
    cfg = _rich_config()
    cfg.save(tmp_path / "c.mat")
    raw = scipy.io.loadmat(tmp_path / "c.mat")["config"][0, 0]
    s = raw["S_init"]
    assert s.shape == (4, 6, 3)  # H x W x K
    np.testing.assert_array_equal(s[:, :, 1], cfg.S_init[1])
    assert raw["T_init"].shape == (3, 7)  # K x n
    np.testing.assert_array_equal(raw["T_init"][2], cfg.T_init[:, 2])
    assert raw["baseline_quantile"].item() == 0.5 and raw["S_init"].dtype == np.float32
    assert raw["thresholds"][0, 0]["size_upper_limit"].item() == math.inf
    assert raw["num_iter_stop_quality_checks"].tolist() == [[2.0, 4.0]]
    assert raw["second_df"].shape == (0, 0)  # MATLAB []
    assert "num_workers" not in raw.dtype.names  # get_defaults leaves it absent


def test_pickle_and_deepcopy():
    cfg = _rich_config()
    _assert_same(cfg, pickle.loads(pickle.dumps(cfg)))
    _assert_same(cfg, copy.deepcopy(cfg))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot tell the config format of .*config\.txt: use a \.json"):
        ExtractConfig().save(tmp_path / "config.txt")
    (tmp_path / "bad.json").write_text("{avg_cell_radius: 5}")
    with pytest.raises(ConfigError, match=r"bad\.json: config is not valid JSON"):
        ExtractConfig.load(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("avg_cell_radius: -5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key 'avg_cell_radius' must be a number > 0"):
        ExtractConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        ExtractConfig.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        ExtractConfig.from_json("[1, 2]")


# ----------------------------------------------------------------------------------------------------------------
# MATLAB files written the way MATLAB writes them


def _matlab_struct_values(k=3, h=4, w=6, n=7):
    """(our S_init (K,H,W), T_init (n,K), movie_mask (H,W)) and the same data in MATLAB's orientation."""
    rng = np.random.default_rng(1)
    S = rng.random((k, h, w)).astype(np.float32)
    T = rng.random((n, k)).astype(np.float32)
    mask = rng.random((h, w)) > 0.3
    S_hwk = np.einsum("kyx->yxk", S)  # MATLAB H x W x K
    S_pk = np.empty((h * w, k), np.float32)  # MATLAB P x K, column-major pixel index p = y + H*x
    for y in range(h):
        for x in range(w):
            S_pk[y + h * x] = S[:, y, x]
    return (S, T, mask), (S_hwk, S_pk, np.ascontiguousarray(T.T), mask)


def _assert_matlab_config(cfg, S, T, mask):
    assert cfg.avg_cell_radius == 7.0 and cfg.use_gpu is False and cfg.remove_duplicate_cells is True
    assert cfg.cellfind_filter_type == "wiener" and cfg.trace_output_option == "no_constraint"
    assert cfg.baseline_quantile is None and cfg.num_iter_stop_quality_checks == ()
    assert cfg.downsample_space_by == "auto" and cfg.max_iter == 4 and type(cfg.max_iter) is int
    assert cfg.spatial_highpass_cutoff == math.inf
    assert cfg.thresholds.T_min_snr == 10.0 and cfg.thresholds.eccent_thresh == 6.0
    np.testing.assert_array_equal(cfg.S_init, S)
    np.testing.assert_array_equal(cfg.T_init, T)
    np.testing.assert_array_equal(cfg.movie_mask, mask)
    np.testing.assert_array_equal(cfg.filter_sigma, [1.0, 2.0, 3.0])


def test_from_mat_v5(tmp_path):
    (S, T, mask), (S_hwk, S_pk, T_kn, mask_m) = _matlab_struct_values()
    config = {
        "avg_cell_radius": np.array([[7.0]]), "use_gpu": np.array([[0]], np.uint8),
        "remove_duplicate_cells": np.array([[1]], np.uint8), "cellfind_filter_type": "wiener",
        "trace_output_option": "raw", "baseline_quantile": np.zeros((0, 0)),
        "num_iter_stop_quality_checks": np.zeros((0, 0)), "downsample_space_by": "auto",
        "max_iter": np.array([[4.0]]), "spatial_highpass_cutoff": np.array([[np.inf]]),
        "S_init": S_hwk, "T_init": T_kn, "movie_mask": mask_m.astype(np.uint8),
        "filter_sigma": np.array([[1.0, 2.0, 3.0]]), "old_option": np.array([[1.0]]),
        "thresholds": {"T_min_snr": np.array([[10.0]]), "retired_thresh": np.array([[0.5]])},
    }
    path = tmp_path / "v5.mat"
    scipy.io.savemat(path, {"config": config, "other": {"a": 1.0}})
    with pytest.warns(ConfigWarning) as record:
        cfg = ExtractConfig.from_mat(path)
    assert sorted(str(r.message).split("'")[1] for r in record) == ["old_option", "thresholds.retired_thresh"]
    assert all(str(r.message).startswith(f"{path}: ignoring config key") for r in record)
    _assert_matlab_config(cfg, S, T, mask)

    # P x K column-major S_init: the frame shape comes from movie_mask, or from frame_shape
    scipy.io.savemat(path, {"cfg": {**config, "S_init": S_pk}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        np.testing.assert_array_equal(ExtractConfig.from_mat(path).S_init, S)
        no_mask = {k: v for k, v in config.items() if k != "movie_mask"}
        scipy.io.savemat(path, {"cfg": {**no_mask, "S_init": S_pk}})
        with pytest.raises(ConfigError, match=r"pixels x cells \(P x K\) or one H x W image cannot be told apart"):
            ExtractConfig.from_mat(path)
        np.testing.assert_array_equal(ExtractConfig.from_mat(path, frame_shape=(4, 6)).S_init, S)


def test_from_mat_picks_the_struct(tmp_path):
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"a": {"max_iter": 2.0}, "b": {"max_iter": 3.0}, "x": np.ones(3)})
    with pytest.raises(ConfigError, match=r"found 2 struct variables \(a, b\); name the EXTRACT config"):
        ExtractConfig.from_mat(path)
    assert ExtractConfig.from_mat(path, variable="b").max_iter == 3
    with pytest.raises(ConfigError, match=r"no struct variable 'c'; structs in the file: a, b"):
        ExtractConfig.from_mat(path, variable="c")
    scipy.io.savemat(path, {"a": {"max_iter": 2.0}, "config": {"max_iter": 5.0}})
    assert ExtractConfig.from_mat(path).max_iter == 5
    scipy.io.savemat(path, {"config": {"max_iter": -2.0}})
    with pytest.raises(ConfigError, match=r"two\.mat: config key 'max_iter' must be an integer >= 0"):
        ExtractConfig.from_mat(path)


def _mat73_header() -> bytes:
    """The 512-byte user block MATLAB writes in front of a v7.3 MAT-file (HDF5)."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM" + b"\x00" * 384


def _mat73_write(group, name, value):
    """Write one MATLAB value as MATLAB v7.3 does: axes reversed, class in MATLAB_class, [] as MATLAB_empty."""
    if isinstance(value, dict):
        sub = group.create_group(name)
        sub.attrs["MATLAB_class"] = np.bytes_("struct")
        fields = np.empty(len(value), dtype=object)
        for i, key in enumerate(value):
            fields[i] = np.frombuffer(key.encode(), "S1")
        sub.attrs.create("MATLAB_fields", fields, dtype=h5py.vlen_dtype(np.dtype("S1")))
        for key, item in value.items():
            _mat73_write(sub, key, item)
        return
    if isinstance(value, str):
        ds = group.create_dataset(name, data=np.array([[ord(c) for c in value]], np.uint16).T)  # 1 x N -> (N, 1)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        ds.attrs["MATLAB_int_decode"] = np.int32(2)
        return
    a = np.asarray(value)
    if a.size == 0:
        ds = group.create_dataset(name, data=np.array([0, 0], np.uint64))
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        ds.attrs["MATLAB_empty"] = np.uint8(1)
        return
    a = a.reshape(1, 1) if a.ndim == 0 else a
    if a.dtype == bool:
        ds = group.create_dataset(name, data=a.astype(np.uint8).T)
        ds.attrs["MATLAB_class"] = np.bytes_("logical")
        ds.attrs["MATLAB_int_decode"] = np.int32(1)
        return
    ds = group.create_dataset(name, data=a.T)
    ds.attrs["MATLAB_class"] = np.bytes_({np.float32: "single"}.get(a.dtype.type, "double"))


def test_from_mat_v73(tmp_path):
    (S, T, mask), (S_hwk, _, T_kn, mask_m) = _matlab_struct_values()
    config = {
        "avg_cell_radius": 7.0, "use_gpu": False, "remove_duplicate_cells": True, "cellfind_filter_type": "wiener",
        "trace_output_option": "no_constraint", "baseline_quantile": np.zeros((0, 0)),
        "num_iter_stop_quality_checks": np.zeros((0, 0)), "downsample_space_by": "auto", "max_iter": 4.0,
        "spatial_highpass_cutoff": np.inf, "S_init": S_hwk, "T_init": T_kn, "movie_mask": mask_m,
        "filter_sigma": np.array([[1.0, 2.0, 3.0]]), "thresholds": {"T_min_snr": 10.0},
    }
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        _mat73_write(f, "config", config)
    with open(path, "r+b") as f:
        f.write(_mat73_header())
    with h5py.File(path, "r") as f:  # the layout really is MATLAB's
        assert f.userblock_size == 512 and f["config/S_init"].shape == (3, 6, 4)
        assert f["config/cellfind_filter_type"].dtype == np.uint16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = ExtractConfig.from_mat(path)
    _assert_matlab_config(cfg, S, T, mask)

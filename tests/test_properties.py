"""Property-based tests (hypothesis, issue #15): any config input gives a valid config or one clear error of our
types, and any small movie gives a result or one clear error, never a traceback from deep inside a library.

"Clear error" means an :class:`~nwb_extract.errors.NwbExtractError` (the CLI prints its message as one line); any
other exception fails the test with the input hypothesis found. Example counts and movie sizes are small so the
file runs in seconds; the example database is off (nothing is written into the repository).
"""

from __future__ import annotations

import math
import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.extra import numpy as hnp

import nwb_extract
from nwb_extract.config import PARAMETERS, PYTHON_PARAMETERS, THRESHOLD_PARAMETERS, ExtractConfig
from nwb_extract.errors import NwbExtractError
from nwb_extract.result import ExtractResult

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nwb-extract-hypothesis")  # never .hypothesis/ in the repo
QUICK = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MOVIES = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------------
# config


_KEYS = st.sampled_from([p.name for p in PARAMETERS] + [p.name for p in PYTHON_PARAMETERS]
                        + [f"thresholds.{p.name}" for p in THRESHOLD_PARAMETERS])
_SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
            | st.sampled_from(["auto", "", "inf", "-Inf", "none", "butter", "nonneg", "numpy", "[]", "1e3"]))
_VALUES = st.recursive(_SCALARS | hnp.arrays(st.sampled_from([np.float64, np.int32, np.bool_]),
                                             hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS | st.text(max_size=6),
                                                                                    inner, max_size=3),
                       max_leaves=6)


def _nested(flat: dict) -> dict:
    """``{"thresholds.x": v}`` -> ``{"thresholds": {"x": v}}`` (a real group, as users write it)."""
    out: dict = {}
    for key, value in flat.items():
        if isinstance(key, str) and key.startswith("thresholds."):
            group = out.setdefault("thresholds", {})
            if isinstance(group, dict):
                group[key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return out


def _config_or_clear_error(make) -> ExtractConfig | None:
    """``make()``'s config, checked usable (resolved, round-tripped), or None after one of our errors."""
    try:
        cfg = make()
    except NwbExtractError as err:
        assert str(err).strip(), "an error without a message"
        return None
    assert isinstance(cfg, ExtractConfig)
    try:
        cfg.resolved()
    except NwbExtractError:
        return cfg
    if not any(isinstance(v, np.ndarray) for v in cfg.to_dict().values()):
        assert ExtractConfig.from_yaml(cfg.to_yaml()) == cfg
        assert ExtractConfig.from_json(cfg.to_json()) == cfg
    return cfg


@QUICK
@given(st.dictionaries(_KEYS | st.text(max_size=12), _VALUES, max_size=6))
def test_any_dict_is_a_config_or_a_clear_error(settings_dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _config_or_clear_error(lambda: ExtractConfig.coerce(_nested(settings_dict)))


@QUICK
@given(st.dictionaries(_KEYS, _SCALARS, max_size=4))
def test_any_overrides_are_a_config_or_a_clear_error(overrides):
    flat = {k: v for k, v in overrides.items() if not k.startswith("thresholds.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _config_or_clear_error(lambda: ExtractConfig.coerce(None, **flat))


def _yaml_texts():
    documents = st.dictionaries(_KEYS | st.text(max_size=8), _SCALARS | st.lists(_SCALARS, max_size=3), max_size=5)
    dumped = documents.map(lambda d: yaml.safe_dump(_nested(d)))
    garbage = st.text(alphabet=string.printable, max_size=60)
    return dumped | garbage | st.sampled_from(["", "- 1\n- 2", "avg_cell_radius: [", "a: !!python/object:os.system",
                                               "\x00\x01", "thresholds: 3", "avg_cell_radius: .nan"])


@QUICK
@given(_yaml_texts(), st.sampled_from([".yaml", ".json"]))
def test_any_config_file_text_is_a_config_or_a_clear_error(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("cfg") / f"config{suffix}"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    _config_or_clear_error(lambda: ExtractConfig.coerce(path))


_MAT_VALUES = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-1000, 1000) | st.booleans()
               | st.text(alphabet=string.ascii_letters, max_size=6)
               | hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=3)))


@QUICK
@given(st.dictionaries(_KEYS.filter(lambda k: "." not in k and len(k) <= 31)  # MATLAB's longest field name
                       | st.from_regex(r"[a-z][a-z_]{0,6}", fullmatch=True),
                       _MAT_VALUES, max_size=5),
       st.sampled_from(["cfg", "config", "other"]), st.booleans())
def test_any_mat_file_is_a_config_or_a_clear_error(tmp_path_factory, fields, variable, corrupt):
    path = tmp_path_factory.mktemp("mat") / "config.mat"
    scipy.io.savemat(path, {variable: fields} if fields else {variable: np.zeros(0)})
    if corrupt:  # the header kept, the data cut short
        path.write_bytes(path.read_bytes()[:150])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _config_or_clear_error(lambda: ExtractConfig.coerce(path))


def test_config_properties_can_fail():
    """The helper is not vacuous: a non-package error escapes it."""
    with pytest.raises(ZeroDivisionError):
        _config_or_clear_error(lambda: 1 / 0)


# ----------------------------------------------------------------------------------------------------------------
# movies


_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float16,
           np.float32, np.float64]


@st.composite
def movies(draw) -> np.ndarray:
    """A small movie of any supported dtype and shape (down to 1 frame and 1 x 1 pixels): noise, a bright blob, a
    constant, or extreme values; floats may carry NaN / inf in pixels, frames, borders or everywhere."""
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    tiny = draw(st.integers(0, 3)) == 0  # a quarter of the movies: some axis too short to run
    shape = ((draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 3))) if tiny
             else (draw(st.integers(5, 48)), draw(st.integers(2, 14)), draw(st.integers(2, 14))))
    kind = draw(st.sampled_from(["noise", "blob", "constant", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    low, high = (max(float(info.min), -1e4), min(float(info.max), 1e4)) if kind != "extremes" else \
        (float(info.min), float(info.max))
    if kind == "constant":
        movie = np.full(shape, draw(st.floats(low, high)) if dtype.kind == "f" else draw(st.integers(int(low),
                                                                                                      int(high))))
    elif kind == "extremes":
        movie = rng.choice(np.array([low, high, 0], dtype=np.float64), size=shape)
    else:
        mid, spread = (low + high) / 2, (high - low) / 8
        movie = mid + spread * rng.standard_normal(shape)
        if kind == "blob":
            r, c = np.ogrid[:shape[1], :shape[2]]
            blob = np.exp(-((r - shape[1] / 2) ** 2 + (c - shape[2] / 2) ** 2) / 4.0)
            movie += spread * 3 * blob[None] * (rng.random(shape[0]) > 0.7)[:, None, None]
    with np.errstate(over="ignore", invalid="ignore"):
        movie = np.clip(movie, low, high).astype(dtype)
    if dtype.kind == "f":
        pattern = draw(st.sampled_from(["none", "pixel", "frame", "border", "patch", "all", "inf"]))
        bad = {"none": (), "pixel": (slice(None), 0, 0), "frame": (0,), "border": (slice(None), slice(None), -1),
               "patch": (slice(0, 3), slice(0, 4), slice(0, 4)), "all": (Ellipsis,), "inf": (slice(None, None, 2),)}
        if pattern != "none":
            movie[bad[pattern]] = np.inf if pattern == "inf" else np.nan
    return movie


@MOVIES
@given(movies())
def test_any_movie_gives_a_result_or_a_clear_error(movie):
    assume(movie.size > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-frames and NaN warnings are expected here
        try:
            result = nwb_extract.extract(movie, avg_cell_radius=2.0, backend="numpy")
        except NwbExtractError as err:
            assert str(err).strip()
            return
    assert isinstance(result, ExtractResult)
    n, h, w = movie.shape
    assert result.footprints.shape[1:] == (h, w)
    assert all(t.shape == (n, result.n_cells) for t in result.traces.values())
    assert all(np.isfinite(t).all() for t in result.traces.values())
    assert np.isfinite(result.footprints).all()


@pytest.mark.parametrize("dtype", _DTYPES)
def test_every_dtype_runs_on_a_simulated_movie(dtype):
    """Each dtype on the same small simulated movie (scaled into the dtype's range): a result, finite traces."""
    from nwb_extract.simulate import simulate_2p

    sim = simulate_2p(n_rows=24, n_cols=28, n_frames=120, n_cells=3, cell_radius=(3, 4), event_rate=0.03, seed=2)
    movie = sim.movie
    if np.dtype(dtype).kind in "iu":
        top = min(float(np.iinfo(dtype).max), 30000.0)
        movie = np.round(movie / movie.max() * top * 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nwb_extract.extract(movie.astype(dtype), avg_cell_radius=3.5, backend="numpy")
    assert all(np.isfinite(t).all() for t in result.traces.values())
    assert not math.isnan(result.timings["total"])


def test_movie_examples_include_the_edge_cases():
    """The movie strategy reaches 1 x 1 pixels, single frames, constants and all-NaN movies (checked on a sample)."""
    seen = set()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(movies())
    def collect(movie):
        if movie.shape[1:] == (1, 1):
            seen.add("1x1")
        if movie.shape[0] == 1:
            seen.add("one frame")
        if movie.dtype.kind == "f" and np.isnan(movie).all():
            seen.add("all nan")
        if movie.size and np.all(movie == movie.flat[0]):
            seen.add("constant")

    collect()
    assert seen == {"1x1", "one frame", "all nan", "constant"}, seen

"""EXTRACT configuration: every parameter of the reference ``get_defaults`` in one table (spec §10).

:class:`ExtractConfig` holds the run's settings under EXTRACT's own names and with the reference code's
defaults, so a MATLAB user's config loads unchanged; ``cfg.thresholds`` is EXTRACT's nested ``thresholds`` struct
and ``cfg.python`` the Python-only settings (array backend, GPU index, chunking, seed, progress, tiling rule).

One table is the single source of truth: :data:`PARAMETERS` (top level), :data:`THRESHOLD_PARAMETERS` and
:data:`PYTHON_PARAMETERS` give, for each key, its type, default, bounds or allowed values, a one-line description
and whether anything reads it (:attr:`Param.unused`). Validation, :func:`parameter_table` (docs, ``nwb-extract
config``) and the MATLAB loader all read these tables. :meth:`ExtractConfig.coerce` turns what a user passes (None, a
dict, a config, a file path, keyword overrides) into a config. File formats (JSON, YAML, MATLAB ``.mat``) are in
:mod:`nwb_extract.config_io`; this module imports nothing of the package but that and the error types.

Python representation of MATLAB values (also accepted on input, so a config written by MATLAB loads as is):

===========================================  ==================================================================
MATLAB                                       Python
===========================================  ==================================================================
``[]`` (optional scalar or array)            ``None`` (``num_iter_stop_quality_checks``: the empty tuple ``()``;
                                             ``downsample_time_by`` / ``downsample_space_by``: ``'auto'``, which
                                             the reference treats the same as ``[]``)
logical, or 0/1 double for a flag            ``bool``
``Inf``                                      ``math.inf`` (JSON ``Infinity``, YAML ``.inf``)
``S_init`` H x W x K, or P x K column-major  read-only float32 array ``(K, H, W)`` (cells, rows, cols)
``T_init`` K x n                             read-only float32 array ``(n, K)`` (frames, cells), like result traces
``movie_mask`` / ``is_pixel_valid`` H x W    read-only bool array ``(H, W)``
``F_per_pixel`` H x W                        read-only float32 array ``(H, W)``
``filter_sigma``, ``kappa_iter_nums``        read-only 1-D float64 arrays
===========================================  ==================================================================

Configs are immutable: ``cfg.replace(**changes)`` returns a validated copy. A nested group is changed with a
dict that is merged into it, e.g. ``cfg.replace(thresholds={"T_min_snr": 5})``; Python settings may also be given
as flat keys (``cfg.replace(backend="numpy")``), and are always stored in ``cfg.python``.
:meth:`ExtractConfig.resolved` applies the derived overrides of spec §1.1.
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract import config_io
from nwb_extract.errors import ConfigError, ConfigFileNotFoundError, UnknownConfigKeyError
from nwb_extract.parameters import (
    BACKENDS,
    PARAMETERS,
    PRESET_VALUES,
    PRESETS,
    PYTHON_PARAMETERS,
    THRESHOLD_PARAMETERS,
    TILINGS,
    TRACE_KIND_TO_OPTION,
    TRACE_KINDS,
    TRACE_OPTION_TO_KIND,
    UNUSED_STATUSES,
    Param,
    primary_trace_kind,
)

__all__ = [  # the names of nwb_extract.parameters are re-exported: config is where users look for them
    "BACKENDS",
    "PARAMETERS",
    "PRESETS",
    "PRESET_VALUES",
    "PYTHON_PARAMETERS",
    "THRESHOLD_PARAMETERS",
    "TILINGS",
    "TRACE_KINDS",
    "TRACE_KIND_TO_OPTION",
    "TRACE_OPTION_TO_KIND",
    "ConfigWarning",
    "ExtractConfig",
    "Param",
    "PythonSettings",
    "Thresholds",
    "UNUSED_STATUSES",
    "parameter_table",
    "primary_trace_kind",
]


class ConfigWarning(UserWarning):
    """A config read from a MATLAB file had a key the reference EXTRACT no longer knows; it was dropped."""


def parameter_table() -> str:
    """The parameter tables as Markdown (key, default, allowed values, description, status), for docs and the CLI."""
    lines = ["| key | default | allowed | description | note |", "|---|---|---|---|---|"]
    for prefix, params in (("", PARAMETERS), ("thresholds.", THRESHOLD_PARAMETERS), ("python.", PYTHON_PARAMETERS)):
        for p in params:
            default = "None" if p.default is None else repr(_plain(p.default))
            lines.append(f"| {prefix}{p.name} | {default} | {p.requirement()} | {p.description} | {p.status} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Validation of single values


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _invalid(key: str, value: Any, param: Param, source: str, detail: str = "") -> ConfigError:
    return ConfigError(f"{source}config key {key!r} must be {param.requirement()} ({param.description}), "
                       f"got {_short(value)}{detail}")


def _is_empty(value: Any) -> bool:
    """MATLAB ``[]``: None or an empty list/tuple/array."""
    if value is None:
        return True
    if isinstance(value, np.ndarray):
        return value.size == 0
    return isinstance(value, (list, tuple)) and len(value) == 0  # not np.size: ragged lists have none


def _scalar(value: Any) -> Any:
    """Python scalar of a NumPy scalar or one-element array (MATLAB's 1 x 1 values); anything else unchanged."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.size == 1):
        return value.item()
    return value


def _in_bounds(param: Param, x: float) -> bool:
    if param.low is not None and (x < param.low or (param.low_open and x == param.low)):
        return False
    return param.high is None or x <= param.high


def _check_bool(param: Param, value: Any, key: str, source: str) -> bool:
    v = _scalar(value)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise _invalid(key, value, param, source)


def _check_int(param: Param, value: Any, key: str, source: str) -> int:
    v = _scalar(value)
    if isinstance(v, bool) and not param.choices:
        raise _invalid(key, value, param, source)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int):
        raise _invalid(key, value, param, source)
    if (param.choices and v not in param.choices) or not _in_bounds(param, v):
        raise _invalid(key, value, param, source)
    return int(v)


def _check_float(param: Param, value: Any, key: str, source: str) -> float:
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _invalid(key, value, param, source)
    v = float(v)
    if math.isnan(v) or (math.isinf(v) and not param.allow_inf) or not _in_bounds(param, v):
        raise _invalid(key, value, param, source)
    return v


def _check_choice(param: Param, value: Any, key: str, source: str) -> str:
    v = _scalar(value)
    if isinstance(v, str):
        v = dict(param.aliases).get(v, v)
        if v in param.choices:
            return v
        close = difflib.get_close_matches(v, [str(c) for c in param.choices], n=1)
        raise _invalid(key, value, param, source, f"; did you mean {close[0]!r}?" if close else "")
    raise _invalid(key, value, param, source)


def _check_int_or_auto(param: Param, value: Any, key: str, source: str) -> int | str:
    v = _scalar(value)
    if isinstance(v, str):
        if v == "auto":
            return v
        raise _invalid(key, value, param, source)
    return _check_int(param, value, key, source)


def _check_int_tuple(param: Param, value: Any, key: str, source: str) -> tuple[int, ...]:
    items = np.ravel(np.asarray(value, dtype=object)).tolist() if isinstance(value, (list, tuple, np.ndarray)) \
        else [value]
    try:
        return tuple(_check_int(param, item, key, source) for item in items)
    except ConfigError:
        raise _invalid(key, value, param, source) from None


def _check_array(param: Param, value: Any, key: str, source: str) -> np.ndarray:
    try:
        a = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise _invalid(key, value, param, source) from None
    fixed_ok = all(isinstance(n, str) or n == m for n, m in zip(param.shape, a.shape))
    if a.ndim != len(param.shape) or not fixed_ok:
        axes = ", ".join(str(s) for s in param.shape)
        raise _invalid(key, value, param, source, f" (expected {len(param.shape)} axes ({axes}))")
    if param.dtype == "bool":
        if a.dtype != bool and not (a.dtype.kind in "iuf" and np.isin(a, (0, 1)).all()):
            raise _invalid(key, value, param, source, " (elements must be true/false or 0/1)")
    elif a.dtype.kind not in "iuf" or not np.isfinite(a).all() or not _array_in_bounds(param, a):
        raise _invalid(key, value, param, source, " (elements must be finite numbers"
                                                  f"{' ' + param.bounds_text() if param.bounds_text() else ''})")
    out = np.array(a, dtype=param.dtype, copy=True)
    out.setflags(write=False)
    return out


def _array_in_bounds(param: Param, a: np.ndarray) -> bool:
    # the bounds are an interval, so the extreme elements decide
    return a.size == 0 or (_in_bounds(param, float(a.min())) and _in_bounds(param, float(a.max())))


_CHECKS = {
    "bool": _check_bool,
    "int": _check_int,
    "float": _check_float,
    "choice": _check_choice,
    "int_or_auto": _check_int_or_auto,
    "int_tuple": _check_int_tuple,
    "array": _check_array,
}


def _validate(param: Param, value: Any, key: str, source: str) -> Any:
    """The stored form of ``value`` for ``param``, or a :class:`ConfigError` naming ``key``, value and fix."""
    if _is_empty(value):
        if param.optional:
            return None
        if param.kind == "int_tuple":
            return ()
        if param.kind == "int_or_auto":
            return "auto"
        raise _invalid(key, value, param, source, " (this key cannot be empty)")
    return _CHECKS[param.kind](param, value, key, source)


def _plain(value: Any) -> Any:
    """JSON-able plain form: arrays and tuples -> (nested) lists, NumPy scalars -> Python scalars."""
    if isinstance(value, (np.ndarray, tuple)):
        return np.asarray(value).tolist() if isinstance(value, np.ndarray) else list(value)
    return value


def _suggest(key: str, names: list[str], group: str) -> str:
    prefix, _, name = key.rpartition(".")
    if group == "" and prefix in ("", "thresholds") and name in {p.name for p in THRESHOLD_PARAMETERS}:
        hint = f"; {name} is in the thresholds group: pass thresholds={{{name!r}: ...}}"
    elif group == "" and prefix == "python" and name in _PYTHON_NAMES:
        hint = f"; pass python={{{name!r}: ...}} or the flat key {name!r}"
    else:
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    where = f" in {group}" if group else ""
    return f"unknown config key {key!r}{where}{hint} (nwb_extract.config.parameter_table() lists every key)"


# ----------------------------------------------------------------------------------------------------------------
# Immutable groups


def _restore(cls: type, values: dict) -> Any:
    obj = object.__new__(cls)
    object.__setattr__(obj, "_values", values)
    return obj


def _unpickle(cls: type, values: dict) -> Any:
    """:func:`_restore` for pickle and deepcopy, which hand back writeable array copies."""
    for value in values.values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return _restore(cls, values)


class _Group:
    """Immutable, validated mapping of the keys of one parameter table, read as attributes."""

    __slots__ = ("_values",)
    _PARAMS: tuple[Param, ...] = ()
    _PREFIX = ""

    def __init__(self, **settings: Any) -> None:
        object.__setattr__(self, "_values", self._merge(self._defaults(), settings, "error", ""))

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        return {p.name: _validate(p, p.default, cls._PREFIX + p.name, "") for p in cls._PARAMS}

    @classmethod
    def _merge(cls, base: dict[str, Any], settings: Mapping[str, Any], unknown: str, source: str) -> dict[str, Any]:
        """``base`` updated with validated ``settings``; unknown keys raise (``"error"``) or warn and are dropped."""
        params = {p.name: p for p in cls._PARAMS}
        values = dict(base)
        for key, value in settings.items():
            if key not in params:
                _unknown(key, list(params), cls._PREFIX.rstrip("."), unknown, source)
                continue
            values[key] = _validate(params[key], value, cls._PREFIX + key, source)
        return values

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(_suggest(name, list(self._values), self._PREFIX.rstrip("."))) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use ExtractConfig.replace({name}=...)")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._values))

    def __reduce__(self):
        return _unpickle, (type(self), self._values)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(self._values[k], other._values[k]) for k in self._values)

    __hash__ = None  # mutable-looking array values; configs are compared, not hashed

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict (arrays as nested lists, tuples as lists, ``inf`` kept as a float)."""
        return {k: v.to_dict() if isinstance(v, _Group) else _plain(v) for k, v in self._values.items()}

    def __repr__(self) -> str:
        defaults = type(self)()._values
        changed = [f"{k}={_short(v)}" if isinstance(v, np.ndarray) else f"{k}={v!r}"
                   for k, v in self._values.items() if not _same(v, defaults[k])]
        return f"{type(self).__name__}({', '.join(changed)})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype \
            and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def _unknown(key: Any, names: list[str], group: str, unknown: str, source: str) -> None:
    if not isinstance(key, str):
        raise ConfigError(f"{source}config keys must be strings, got {key!r}")
    if unknown == "warn":
        where = f"{group}." if group else ""
        warnings.warn(f"{source}ignoring config key '{where}{key}': the reference EXTRACT (1.3.0) does not know it",
                      ConfigWarning, stacklevel=5)
        return
    raise UnknownConfigKeyError(source + _suggest(key, names, group))


class Thresholds(_Group):
    """EXTRACT's ``thresholds`` struct (spec §7.3): quality-control thresholds, see :data:`THRESHOLD_PARAMETERS`."""

    __slots__ = ()
    _PARAMS = THRESHOLD_PARAMETERS
    _PREFIX = "thresholds."


class PythonSettings(_Group):
    """Python-only settings (no MATLAB counterpart), see :data:`PYTHON_PARAMETERS`."""

    __slots__ = ()
    _PARAMS = PYTHON_PARAMETERS
    _PREFIX = "python."


_PYTHON_NAMES = frozenset(p.name for p in PYTHON_PARAMETERS)
_GROUPS = {"thresholds": Thresholds, "python": PythonSettings}
_SHAPED = [p for p in PARAMETERS if p.kind == "array" and any(isinstance(a, str) for a in p.shape)]


# ----------------------------------------------------------------------------------------------------------------
# ExtractConfig


class ExtractConfig(_Group):
    """The EXTRACT configuration: every key of :data:`PARAMETERS` as an attribute, plus two groups.

    ``ExtractConfig(**settings)`` validates ``settings`` over the reference defaults (spec §10). ``thresholds``
    and ``python`` are given as dicts (merged into the group's defaults); Python settings are also accepted as flat
    keys (``backend="numpy"``). Unknown keys, wrong types and out-of-range values raise
    :class:`~nwb_extract.errors.ConfigError` naming the key, the value and what is allowed. Instances are immutable
    and compare by value; see the module docstring for the Python form of MATLAB values.

    Examples
    --------
    >>> cfg = ExtractConfig(avg_cell_radius=5, thresholds={"T_min_snr": 10}, backend="numpy")
    >>> cfg.thresholds.T_min_snr, cfg.python.backend
    (10.0, 'numpy')
    >>> cfg.replace(trace_output_option="raw").trace_output_option
    'no_constraint'
    """

    __slots__ = ()
    _PARAMS = PARAMETERS

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        values = super()._defaults()
        values.update({name: group() for name, group in _GROUPS.items()})
        return values

    @classmethod
    def _merge(cls, base: dict[str, Any], settings: Mapping[str, Any], unknown: str, source: str) -> dict[str, Any]:
        flat, nested = {}, {name: {} for name in _GROUPS}
        for key, value in settings.items():
            if key in _GROUPS:
                if isinstance(value, _GROUPS[key]):
                    value = value._values
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}config key {key!r} must be a dict of {key} settings, got "
                                      f"{_short(value)}")
                _add_unique(nested[key], value, key, source)
            elif key in _PYTHON_NAMES:
                _add_unique(nested["python"], {key: value}, "python", source)
            else:
                flat[key] = value
        values = super()._merge(base, flat, unknown, source)
        for name, group in _GROUPS.items():
            values[name] = _restore(group, group._merge(base[name]._values, nested[name], unknown, source))
        _check_shapes(values, source)
        return values

    # -- changes and derived overrides

    def replace(self, **changes: Any) -> ExtractConfig:
        """A validated copy with ``changes`` applied; ``thresholds={...}`` / ``python={...}`` merge into the group."""
        return _restore(ExtractConfig, self._merge(self._values, changes, "error", ""))

    def resolved(self) -> ExtractConfig:
        """A copy with the derived overrides of spec §1.1 applied (computed from the current values, so the order
        of earlier edits does not matter; ``resolved()`` of a resolved config changes nothing).

        - ``dendrite_aware``: ``eccent_thresh = inf``, ``size_lower_limit = 0``, ``size_upper_limit = inf``;
        - ``hyperparameter_tuning_flag``: ``trace_output_option = 'none'``;
        - ``minimal_checks``: ``size_upper_limit = eccent_thresh = spatial_corrupt_thresh = inf``,
          ``low_ST_index_thresh = -1``;
        - ``regression_only``: ``max_iter = 0``, ``remove_duplicate_cells = True``, ``downsample_time_by = 1``
          (a :class:`ConfigError` without ``S_init``);
        - ``parallel_cpu``: ``use_gpu = False``; then ``multi_gpu``: ``parallel_cpu = False`` (the reference's order);
        - ours: ``python.backend = 'auto'`` with ``use_gpu`` false becomes ``'numpy'``;
        - ours, first: ``python.preset`` sets the keys of :data:`PRESET_VALUES` that still hold their reference
          default (``'1p'``: ``spatial_highpass_cutoff = 2``, ``spatial_corrupt_thresh = 0.7``,
          ``size_upper_limit = 1.5``); the overrides above then apply on top.
        """
        changes: dict[str, Any] = {}
        thresholds: dict[str, Any] = {}
        self = self._with_preset()
        if self.dendrite_aware:
            thresholds.update(eccent_thresh=math.inf, size_lower_limit=0.0, size_upper_limit=math.inf)
        if self.hyperparameter_tuning_flag:
            changes["trace_output_option"] = "none"
        if self.minimal_checks:
            thresholds.update(size_upper_limit=math.inf, eccent_thresh=math.inf, spatial_corrupt_thresh=math.inf,
                              low_ST_index_thresh=-1.0)
        if self.regression_only:
            if self.S_init is None:
                raise ConfigError("regression_only=True needs S_init: pass the cell images as S_init (cells, rows, "
                                  "cols), or set regression_only=False to find cells")
            changes.update(max_iter=0, remove_duplicate_cells=True, downsample_time_by=1)
        use_gpu, parallel_cpu = self.use_gpu, self.parallel_cpu
        if parallel_cpu:
            use_gpu = False
        if self.multi_gpu:
            parallel_cpu = False
        changes.update(use_gpu=use_gpu, parallel_cpu=parallel_cpu)
        if self.python.backend == "auto" and not use_gpu:
            changes["backend"] = "numpy"
        return self.replace(thresholds=thresholds, **changes)

    def _with_preset(self) -> ExtractConfig:
        """A copy with ``python.preset``'s values (:data:`PRESET_VALUES`) set where the reference default is."""
        preset = PRESET_VALUES[self.python.preset]
        top = {p.name: p.default for p in PARAMETERS}
        nested = {p.name: p.default for p in THRESHOLD_PARAMETERS}
        changes = {key: value for key, value in preset.items()
                   if key != "thresholds" and getattr(self, key) == top[key]}
        thresholds = {key: value for key, value in preset.get("thresholds", {}).items()
                      if getattr(self.thresholds, key) == nested[key]}
        return self.replace(thresholds=thresholds, **changes) if changes or thresholds else self

    # -- plain data

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> ExtractConfig:
        """Config from a (nested) dict as :meth:`to_dict` writes it; MATLAB ``[]`` may appear as ``[]`` or None."""
        if not isinstance(settings, Mapping):
            raise ConfigError(f"a config must be a mapping of keys to values, got {_short(settings)}")
        return _restore(cls, cls._merge(cls._defaults(), settings, "error", ""))

    @classmethod
    def coerce(cls, config: Any = None, **overrides: Any) -> ExtractConfig:
        """The config a user means, from anything the API accepts, with keyword ``overrides`` applied.

        ``config`` is None (the defaults), an :class:`ExtractConfig`, a mapping of EXTRACT parameters (as
        :meth:`from_dict`) or the path of a config file (``.json``, ``.yaml``/``.yml``, ``.mat``; :meth:`load`);
        ``overrides`` go through :meth:`replace` (groups merge: ``thresholds={...}``; Python settings may be flat,
        ``backend="numpy"``). The derived overrides of :meth:`resolved` are not applied.

        Raises
        ------
        ConfigFileNotFoundError
            ``config`` is a path with no file.
        ConfigError
            Any other kind of ``config``, or an invalid key or value.
        """
        if config is None:
            cfg = cls()
        elif isinstance(config, ExtractConfig):
            cfg = config
        elif isinstance(config, Mapping):
            cfg = cls.from_dict(config)
        elif isinstance(config, (str, os.PathLike)):
            if not os.path.isfile(config):
                raise ConfigFileNotFoundError(f"no such config file: {os.fspath(config)}; give a .json, .yaml or "
                                              ".mat EXTRACT config")
            cfg = cls.load(config)
        else:
            raise ConfigError(f"config must be an ExtractConfig, a dict, a config file path or None, got "
                              f"{type(config).__name__}")
        return cfg.replace(**overrides) if overrides else cfg

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict` (``inf`` written as ``Infinity``, as Python's and MATLAB's readers accept)."""
        return config_io.dumps_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ExtractConfig:
        """Config from JSON text (the inverse of :meth:`to_json`)."""
        return cls.from_dict(config_io.loads_json(text))

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict` (``inf`` written as ``.inf``)."""
        return config_io.dumps_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, text: str) -> ExtractConfig:
        """Config from YAML text; numbers like ``1e-6`` are read as floats (YAML 1.2), not strings."""
        return cls.from_dict(config_io.loads_yaml(text))

    # -- files (formats: nwb_extract.config_io; the config of a run in an NWB file: nwb_extract.io.nwb_read)

    def save(self, path: str | Path) -> None:
        """Write the config to ``path``; the suffix picks the format: ``.json``, ``.yaml``/``.yml`` or ``.mat``.

        ``.mat`` files (MATLAB v5) hold a struct ``config`` in MATLAB's orientation that EXTRACT reads as is, and
        the Python settings in a second struct ``nwb_extract_python``.
        """
        path = Path(path)
        suffix = config_io.config_format(path)
        if suffix == ".mat":
            config_io.write_mat(path, self.to_matlab(), self.python.to_dict())
        else:
            path.write_text(self.to_json() if suffix == ".json" else self.to_yaml(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ExtractConfig:
        """Read a config written by :meth:`save` (or by MATLAB, for ``.mat``); the suffix picks the format."""
        path = Path(path)
        suffix = config_io.config_format(path)
        if suffix == ".mat":
            return cls.from_mat(path)
        text = config_io.read_text(path)
        try:
            return cls.from_json(text) if suffix == ".json" else cls.from_yaml(text)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    # -- MATLAB

    def to_matlab(self) -> dict[str, Any]:
        """The EXTRACT fields in MATLAB's form, for ``scipy.io.savemat``: ``S_init`` (H, W, K), ``T_init`` (K, n),
        ``[]`` for None (keys that ``get_defaults`` leaves absent are omitted), nested ``thresholds``."""
        out: dict[str, Any] = {}
        for p in PARAMETERS:
            value = self._values[p.name]
            if value is None and not p.in_defaults:
                continue
            out[p.name] = config_io.to_matlab_orientation(p.name, value)
        out["thresholds"] = self.thresholds.to_dict()
        return out

    @classmethod
    def from_mat(cls, path: str | Path, variable: str | None = None, *,
                 frame_shape: tuple[int, int] | None = None) -> ExtractConfig:
        """Config from a MATLAB ``.mat`` file holding an EXTRACT config struct (``save(file, 'config')``).

        Reads v5/v7 files (``scipy.io.loadmat``) and v7.3 files (HDF5, ``h5py``). ``variable`` names the struct;
        None picks the one named ``config``, else the only struct in the file. Keys the reference no longer knows
        are dropped with a :class:`ConfigWarning`. Arrays are reoriented (module docstring); ``frame_shape``
        ``(H, W)`` is needed only for an ``S_init`` stored as pixels x cells without ``movie_mask`` or
        ``F_per_pixel`` to take the frame shape from.
        """
        path = Path(path)
        source = f"{path}: "
        settings, python = config_io.read_mat(path, variable, frame_shape, source)
        values = cls._merge(cls._defaults(), settings, "warn", source)
        values["python"] = _restore(PythonSettings, PythonSettings._merge(values["python"]._values, python,
                                                                           "warn", source))
        return _restore(cls, values)


def _add_unique(target: dict[str, Any], settings: Mapping[str, Any], group: str, source: str) -> None:
    for key, value in settings.items():
        if key in target:
            raise ConfigError(f"{source}{group}.{key} is given twice (as a flat key and inside {group}={{...}}); "
                              "give it once")
        target[key] = value


def _check_shapes(values: dict[str, Any], source: str) -> None:
    """Cross-key check of the symbolic array axes (K cells, H rows, W cols, n frames) of the arrays given."""
    bound: dict[str, tuple[int, str]] = {}
    for p in _SHAPED:
        a = values[p.name]
        if a is None:
            continue
        for axis, n in zip(p.shape, a.shape):
            if axis in bound and bound[axis][0] != n:
                first_n, first = bound[axis]
                raise ConfigError(f"{source}inconsistent array shapes: {first} gives {axis}={first_n} but "
                                  f"{p.name} gives {axis}={n} (shapes: S_init (K, H, W), T_init (n, K), movie_mask, "
                                  "F_per_pixel and is_pixel_valid (H, W)); pass arrays of one movie and cell set")
            bound.setdefault(axis, (n, p.name))

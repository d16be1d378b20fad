"""Config files: JSON, YAML and MATLAB ``.mat`` (v5/v7 and v7.3) in and out, as plain settings dicts.

The file-format side of :mod:`nwb_extract.config`: this module turns files and text into nested dicts of plain
values (and back), in our orientation of the MATLAB arrays (the table in :mod:`nwb_extract.config`); validation and
defaults stay with :class:`~nwb_extract.config.ExtractConfig`, whose ``save`` / ``load`` / ``from_mat`` / ``to_json``
/ ``from_yaml`` ... call the functions here. It imports nothing of the package but its errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nwb_extract.errors import ConfigError

__all__ = ["MAT_PYTHON_VARIABLE", "config_format", "dumps_json", "dumps_yaml", "loads_json", "loads_yaml",
           "read_mat", "read_text", "to_matlab_orientation", "write_mat"]

#: Name of the struct of a ``.mat`` config that holds the Python settings (``cfg.python``).
MAT_PYTHON_VARIABLE = "nwb_extract_python"


def config_format(path: Path) -> str:
    """``.json``, ``.yaml`` (also for ``.yml``) or ``.mat``: the format the suffix of ``path`` picks."""
    suffix = path.suffix.lower()
    suffix = ".yaml" if suffix == ".yml" else suffix
    if suffix not in (".json", ".yaml", ".mat"):
        raise ConfigError(f"cannot tell the config format of {path}: use a .json, .yaml, .yml or .mat file")
    return suffix


def dumps_json(settings: dict[str, Any]) -> str:
    """JSON text of a settings dict (``inf`` written as ``Infinity``, as Python's and MATLAB's readers accept)."""
    return json.dumps(settings, indent=2) + "\n"


def loads_json(text: str) -> Any:
    """The value of JSON text, or a :class:`ConfigError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config is not valid JSON: {err}") from None


def dumps_yaml(settings: dict[str, Any]) -> str:
    """YAML text of a settings dict (``inf`` written as ``.inf``)."""
    return yaml.safe_dump(settings, sort_keys=False)


def loads_yaml(text: str) -> Any:
    """The value of YAML text (numbers like ``1e-6`` read as floats, YAML 1.2), ``{}`` when empty."""
    try:
        settings = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"config is not valid YAML: {err}") from None
    return {} if settings is None else settings


def read_text(path: Path) -> str:
    """The text of a config file, or a :class:`ConfigError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats without a dot (``1e-6``) as floats."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# ----------------------------------------------------------------------------------------------------------------
# MATLAB files


def write_mat(path: Path, matlab: dict[str, Any], python: dict[str, Any]) -> None:
    """A MATLAB v5 file with the struct ``config`` (``matlab``, in MATLAB's orientation, see
    :func:`to_matlab_orientation`) and the struct :data:`MAT_PYTHON_VARIABLE` (``python``; None as ``[]``)."""
    from scipy.io import savemat

    python = {k: np.zeros((0, 0)) if v is None else v for k, v in python.items()}
    savemat(path, {"config": matlab, MAT_PYTHON_VARIABLE: python}, long_field_names=True, do_compression=True)


def read_mat(path: Path, variable: str | None, frame_shape: tuple[int, int] | None,
             source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the EXTRACT config struct in our orientation, the Python settings struct or ``{}``) of a MAT file.

    ``variable`` names the config struct (None: the one named ``config``, else the only struct); ``frame_shape``
    as in ``ExtractConfig.from_mat``; ``source`` prefixes error messages.
    """
    structs = _read_mat_structs(path, source)
    python = structs.pop(MAT_PYTHON_VARIABLE, {})
    struct = _select_struct(structs, variable, source)
    return _from_matlab_orientation(struct, frame_shape, source), python


def to_matlab_orientation(name: str, value: Any) -> Any:
    if value is None or (isinstance(value, tuple) and not value):
        return np.zeros((0, 0))
    if name == "S_init":
        return np.moveaxis(value, 0, -1)  # (K, H, W) -> H x W x K
    if name == "T_init":
        return value.T  # (n, K) -> K x n
    if name == "num_iter_stop_quality_checks":
        return np.asarray(value, dtype=float)
    return value


def _read_mat_structs(path: Path, source: str) -> dict[str, dict[str, Any]]:
    """Every struct variable of a MAT file as a dict of MATLAB-shaped values (v7.3 through h5py, else scipy)."""
    import h5py

    if not path.exists():
        raise ConfigError(f"{source}no such file")
    from scipy.io import loadmat

    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return {name: _h5_struct(f[name], source) for name in f
                        if not name.startswith("#") and _h5_class(f[name]) == "struct"}
        contents = loadmat(path, squeeze_me=False, struct_as_record=True, chars_as_strings=True)
    except ConfigError:
        raise
    except Exception as err:  # a damaged file makes the parsers fail in many ways (IndexError, zlib.error, ...)
        raise ConfigError(f"{source}not a readable MATLAB file ({type(err).__name__}: {err})") from None
    return {name: _v5_struct(value, source) for name, value in contents.items()
            if not name.startswith("__") and isinstance(value, np.ndarray) and value.dtype.names}


def _select_struct(structs: dict[str, dict], variable: str | None, source: str) -> dict[str, Any]:
    if variable is not None:
        if variable not in structs:
            raise ConfigError(f"{source}no struct variable {variable!r}; structs in the file: "
                              f"{', '.join(structs) or 'none'}")
        return structs[variable]
    if "config" in structs:
        return structs["config"]
    if len(structs) == 1:
        return next(iter(structs.values()))
    raise ConfigError(f"{source}found {len(structs)} struct variables ({', '.join(structs) or 'none'}); name the "
                      "EXTRACT config with variable=...")


def _matlab_value(a: np.ndarray) -> Any:
    """A MATLAB-shaped numeric array as Python: ``[]`` -> None, 1 x 1 -> scalar, else the array."""
    if a.size == 0:
        return None
    return a.item() if a.size == 1 else a


def _v5_struct(a: np.ndarray, source: str) -> dict[str, Any]:
    if a.size != 1:
        raise ConfigError(f"{source}struct arrays of size {a.shape} are not EXTRACT configs; save one struct")
    record = a.reshape(-1)[0]
    return {name: _v5_value(record[name], source) for name in a.dtype.names}


def _v5_value(a: np.ndarray, source: str) -> Any:
    if a.dtype.names:
        return _v5_struct(a, source)
    if a.dtype.kind == "U":
        return "".join(a.reshape(-1).tolist())
    if a.dtype.kind == "O":  # cell array
        return [_v5_value(item, source) for item in a.reshape(-1, order="F")]
    return _matlab_value(a)


def _h5_class(obj: Any) -> str:
    cls = obj.attrs.get("MATLAB_class", b"")
    return cls.decode() if isinstance(cls, bytes) else str(cls)


def _h5_struct(group: Any, source: str) -> dict[str, Any]:
    return {name: _h5_value(group[name], source) for name in group}


def _h5_value(obj: Any, source: str) -> Any:
    """A v7.3 (HDF5) MATLAB value: datasets are stored with their axes reversed, chars as uint16 codes."""
    import h5py

    cls = _h5_class(obj)
    if isinstance(obj, h5py.Group):
        if cls != "struct":
            raise ConfigError(f"{source}{obj.name}: MATLAB class {cls!r} is not supported in a config")
        return _h5_struct(obj, source)
    if "MATLAB_sparse" in obj.attrs:
        raise ConfigError(f"{source}{obj.name}: sparse arrays are not supported; save full(...) instead")
    if obj.attrs.get("MATLAB_empty", 0):
        return "" if cls == "char" else None
    a = np.asarray(obj[()]).T
    if cls == "char":
        return "".join(chr(c) for c in a.reshape(-1, order="F"))
    if cls == "cell":
        return [_h5_value(obj.file[ref], source) for ref in a.reshape(-1, order="F")]
    if cls == "logical":
        a = a.astype(bool)
    return _matlab_value(a)


def _from_matlab_orientation(struct: dict[str, Any], frame_shape: tuple[int, int] | None,
                             source: str) -> dict[str, Any]:
    """MATLAB field values -> our orientation (module docstring table)."""
    settings = dict(struct)
    if frame_shape is None:
        shaped = [settings.get(k) for k in ("movie_mask", "F_per_pixel", "is_pixel_valid")]
        frame_shape = next((a.shape for a in shaped if isinstance(a, np.ndarray) and a.ndim == 2), None)
    if isinstance(settings.get("S_init"), (np.ndarray, float, int)):
        settings["S_init"] = _S_init_from_matlab(np.asarray(settings["S_init"]), frame_shape, source)
    if isinstance(settings.get("T_init"), (np.ndarray, float, int)):
        settings["T_init"] = np.atleast_2d(settings["T_init"]).T  # K x n -> (n, K)
    for name in ("filter_sigma", "kappa_iter_nums", "num_iter_stop_quality_checks"):
        if isinstance(settings.get(name), np.ndarray):
            settings[name] = settings[name].reshape(-1)
    return settings


def _S_init_from_matlab(a: np.ndarray, frame_shape: tuple[int, int] | None, source: str) -> np.ndarray:
    """MATLAB ``S_init`` (H x W x K, H x W for one cell, or P x K column-major) -> (K, H, W)."""
    if a.ndim == 3:
        return np.moveaxis(a, -1, 0)
    if frame_shape is None:
        raise ConfigError(f"{source}S_init is a 2-D array of shape {a.shape}: pixels x cells (P x K) or one H x W "
                          "image cannot be told apart; pass frame_shape=(H, W) to ExtractConfig.from_mat")
    h, w = frame_shape
    a2 = np.atleast_2d(a)
    if a2.shape == (h, w):
        return a2[None]
    if a2.shape[0] == h * w:
        return np.moveaxis(a2.reshape(h, w, a2.shape[1], order="F"), -1, 0)
    raise ConfigError(f"{source}S_init of shape {a.shape} fits neither H x W = {frame_shape} nor P x K with "
                      f"P = {h * w}; check frame_shape")

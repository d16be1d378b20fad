"""Our NWB extension ``ndx-nwb-extract``: the ``ExtractRunInfo`` neurodata type (config and run info of one run).

The namespace YAML is shipped as package data (``nwb_extract/schemas`` in the wheel, the repo-root ``schemas/``
in an editable install) and loaded once, on first use, like an ndx-template extension (style-anchors §5, item 13).
:func:`build_spec` derives the type from the config tables of :mod:`nwb_extract.config`, so the YAML cannot drift
from the config (a test compares the two); regenerate it after a config change with
``python -m nwb_extract.io.schema schemas`` and bump :data:`NAMESPACE_VERSION`: a test on the spec's hash fails
until the new version and its hash are recorded. Files written under an earlier version still read (a stored 0.1.0
file is tested): readers use the run-info fields every version has and ignore the others.

``ExtractRunInfo`` (``neurodata_type_inc: NWBDataInterface``, stored in ``processing/ophys``):

- a typed attribute per config key with a fixed type (EXTRACT's names; ``thresholds.X`` as ``thresholds_X``,
  ``python.X`` as ``python_X``; bool, int32, float64 (``inf`` allowed where the key allows it) or text); an
  optional key whose value is None (MATLAB ``[]``) has no attribute;
- ``config_json``: the whole resolved config as JSON (``ExtractConfig.to_json``) except the movie-sized arrays
  (:data:`CONFIG_DATASETS`), which are datasets of the same name and appear in the JSON as ``"<dataset NAME>"``;
  keys whose type is mixed ('auto' or an int; lists) are only in the JSON;
- the run information as typed attributes (:data:`RUN_ATTRIBUTES`, :data:`TIMING_STAGES`) and, losslessly, in
  ``run_info_json``;
- links to the PlaneSegmentation it describes and to the run's summary images; the paths of its trace container
  and of the eliminated candidates' PlaneSegmentation (both optional) in path attributes.
"""

from __future__ import annotations

import functools
import importlib.resources
import sys
from pathlib import Path

from nwb_extract.config import PARAMETERS, PYTHON_PARAMETERS, THRESHOLD_PARAMETERS, Param

__all__ = [
    "AXIS_ORDER",
    "CONFIG_DATASETS",
    "NAMESPACE",
    "NAMESPACE_VERSION",
    "RUN_ATTRIBUTES",
    "RUN_INFO_TYPE",
    "TIMING_STAGES",
    "build_spec",
    "config_attributes",
    "get_run_info_class",
    "namespace_path",
    "write_spec",
]

NAMESPACE = "ndx-nwb-extract"
NAMESPACE_VERSION = "0.4.0"
"""Version of the namespace; every change of the spec needs a new one (tests/test_schema.py holds the hash of the
spec of each version). 0.2.0: the first versioned spec (0.1.0 files, written with several specs, still read).
0.3.0: ``curated_by`` and ``curated_at``, who reviewed the run's cells and when (``nwb-extract review``).
0.4.0: ``python_preset`` (config ``python.preset``, issue 16)."""
RUN_INFO_TYPE = "ExtractRunInfo"

AXIS_ORDER = ("masks follow the source series' stored axis order: image_mask[k] indexes like the series' data[t] "
              "(stored axes 1 and 2); in pixel_mask x indexes stored axis 1 and y stored axis 2; ROICentroids are "
              "[x, y] in the same axes; summary images index like data[t]")
"""Value of the ``axis_order`` attribute (architecture.md, "Data orientation")."""

#: Config keys stored as datasets (movie-sized arrays): name -> (dtype, dims).
CONFIG_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "S_init": ("float32", ("num_cells", "num_x", "num_y")),
    "T_init": ("float32", ("num_frames", "num_cells")),
    "F_per_pixel": ("float32", ("num_x", "num_y")),
    "movie_mask": ("bool", ("num_x", "num_y")),
    "is_pixel_valid": ("bool", ("num_x", "num_y")),
}

#: Run-information attributes: name -> (dtype, shape or None for a scalar, required, doc).
RUN_ATTRIBUTES: dict[str, tuple[str, tuple | None, bool, str]] = {
    "run_name": ("text", None, True, "name of the run (readers select runs by it)"),
    "run_index": ("int32", None, True, "1-based position of the run among the runs of its file, in writing order"),
    "package_version": ("text", None, True, "version of the nwb-extract package that wrote the run"),
    "engine_version": ("text", None, True, "version of the EXTRACT algorithm the engine follows"),
    "backend": ("text", None, True, "array backend the engine ran on (numpy, cupy, ...)"),
    "device": ("text", None, True, "device the engine ran on (cpu, or the GPU)"),
    "stop_reason": ("text", None, False, "why cell finding stopped, or 'external init' when footprints were given"),
    "axis_order": ("text", None, True, "axis-order convention of the masks, centroids and images"),
    "source_path": ("text", None, False, "local path or URL of the NWB file holding the input series"),
    "source_series": ("text", None, False, "path of the input series inside its file"),
    "source_shape": ("int32", (None,), False, "stored shape of the whole input series"),
    "source_dtype": ("text", None, False, "dtype of the input series' data"),
    "source_frame_start": ("int32", None, False, "first frame of the input series used (0-based)"),
    "source_frame_stop": ("int32", None, False, "frame after the last frame used (0-based, exclusive)"),
    "dandiset_id": ("text", None, False, "DANDI dandiset id of the input"),
    "dandiset_version": ("text", None, False, "DANDI dandiset version of the input"),
    "dandi_asset_id": ("text", None, False, "DANDI asset id of the input"),
    "dandi_asset_path": ("text", None, False, "path of the DANDI asset inside its dandiset"),
    "roi_responses_path": ("text", None, False, "path in the file of the DfOverF or Fluorescence container of "
                           "this run's traces (absent when the run has no traces)"),
    "eliminated_plane_segmentation_path": ("text", None, False, "path in the file of the PlaneSegmentation of the "
                                           "candidates this run eliminated (absent unless they were written)"),
    "curated_by": ("text", None, False, "who last saved a review of this run's cells (the Accepted and Rejected "
                   "columns of its PlaneSegmentation; absent when never reviewed)"),
    "curated_at": ("text", None, False, "when the review was last saved: ISO 8601 date and time with its UTC "
                   "offset (absent when never reviewed)"),
}

#: Stages with a typed ``seconds_<stage>`` attribute (all stages, these included, are in ``run_info_json``).
TIMING_STAGES = ("read", "preprocess", "cellfinding", "refinement", "frr", "total")

_ATTRIBUTE_DTYPES = {"bool": "bool", "int": "int32", "float": "float64", "choice": "text"}
_GROUP_PREFIXES = (("", PARAMETERS), ("thresholds_", THRESHOLD_PARAMETERS), ("python_", PYTHON_PARAMETERS))
# Only required links, of distinct target types: hdmf 6.2 fills an absent optional link with any other link
# target of the same type on read, so the optional containers are named by path attributes instead.
_LINKS = (
    ("plane_segmentation", "PlaneSegmentation", "the PlaneSegmentation of the cells this run found"),
    ("summary_images", "Images", "the Images container of this run's summary images"),
)
_SPEC_DIR_NAME = "schemas"


def config_attributes() -> dict[str, tuple[str, Param, str]]:
    """Config keys stored as typed attributes: attribute name -> (group, :class:`Param`, NWB dtype).

    ``group`` is ``""`` (top level), ``"thresholds"`` or ``"python"``. Keys of a mixed or array kind are absent.
    """
    out = {}
    for prefix, params in _GROUP_PREFIXES:
        for p in params:
            if p.kind in _ATTRIBUTE_DTYPES:
                out[prefix + p.name] = (prefix.rstrip("_"), p, _ATTRIBUTE_DTYPES[p.kind])
    return out


def _config_doc(group: str, p: Param) -> str:
    key = f"{group}.{p.name}" if group else p.name
    return f"config {key}: {p.description}; {p.requirement()}"


def build_spec():
    """The namespace builder and the ``ExtractRunInfo`` group spec, derived from the config tables.

    Returns
    -------
    (pynwb.spec.NWBNamespaceBuilder, pynwb.spec.NWBGroupSpec)
    """
    from pynwb.spec import NWBAttributeSpec, NWBDatasetSpec, NWBGroupSpec, NWBLinkSpec, NWBNamespaceBuilder

    builder = NWBNamespaceBuilder(
        doc="Config and run information of nwb-extract (EXTRACT cell extraction) runs",
        name=NAMESPACE, version=NAMESPACE_VERSION, author=["nwb-extract developers"],
        contact=["nwb-extract developers (see the package's project metadata)"],
    )
    for type_name in ("NWBDataInterface", "PlaneSegmentation", "Images"):
        builder.include_type(type_name, namespace="core")
    attributes = [
        NWBAttributeSpec(name=name, doc=doc, dtype=dtype, shape=shape, dims=shape and ("axes",), required=required)
        for name, (dtype, shape, required, doc) in RUN_ATTRIBUTES.items()
    ]
    attributes += [
        NWBAttributeSpec(name=f"seconds_{stage}", doc=f"wall-clock seconds of the '{stage}' stage",
                         dtype="float64", required=False)
        for stage in TIMING_STAGES
    ]
    attributes += [
        NWBAttributeSpec(name=name, doc=_config_doc(group, p), dtype=dtype, required=False)
        for name, (group, p, dtype) in config_attributes().items()
    ]
    datasets = [
        NWBDatasetSpec(name="config_json", dtype="text",
                       doc="the resolved config as JSON (ExtractConfig.to_json); movie-sized arrays are the "
                           "datasets of the same name and appear here as \"<dataset NAME>\""),
        NWBDatasetSpec(name="run_info_json", dtype="text",
                       doc="run information as JSON: versions, backend, device, per-stage timings, stop reason, "
                           "engine diagnostics, input identity, names of the trace series by kind"),
    ]
    datasets += [
        NWBDatasetSpec(name=name, dtype=dtype, dims=dims, shape=tuple(None for _ in dims), quantity="?",
                       doc=f"config {name}, in the axis order of the masks (see axis_order)")
        for name, (dtype, dims) in CONFIG_DATASETS.items()
    ]
    links = [NWBLinkSpec(name=name, target_type=target, doc=doc) for name, target, doc in _LINKS]
    spec = NWBGroupSpec(
        neurodata_type_def=RUN_INFO_TYPE, neurodata_type_inc="NWBDataInterface",
        doc="Config and run information of one nwb-extract run (EXTRACT cell extraction)",
        attributes=attributes, datasets=datasets, links=links,
    )
    return builder, spec


def write_spec(output_dir: str | Path) -> Path:
    """Write ``<namespace>.namespace.yaml`` and ``<namespace>.extensions.yaml`` into ``output_dir``.

    Returns the path of the namespace file.
    """
    from pynwb.spec import export_spec

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    builder, spec = build_spec()
    export_spec(builder, [spec], str(output_dir))
    return output_dir / f"{NAMESPACE}.namespace.yaml"


def namespace_path() -> Path:
    """Path of the shipped namespace YAML: package data first, then the repo-root ``schemas/`` (editable install)."""
    file_name = f"{NAMESPACE}.namespace.yaml"
    candidates = (
        Path(str(importlib.resources.files("nwb_extract") / _SPEC_DIR_NAME / file_name)),
        Path(__file__).resolve().parents[2] / _SPEC_DIR_NAME / file_name,
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the {NAMESPACE} namespace YAML is missing (looked at {', '.join(map(str, candidates))}); "
                            "reinstall nwb-extract")


@functools.cache
def get_run_info_class() -> type:
    """The pynwb class of ``ExtractRunInfo`` (the namespace is loaded on the first call).

    The class is generated by ``pynwb.get_class``: its ``__init__`` takes ``name`` and every attribute, dataset
    and link of the spec as keyword arguments.
    """
    import pynwb

    if NAMESPACE not in pynwb.get_manager().namespace_catalog.namespaces:  # e.g. loaded from a file's cache
        pynwb.load_namespaces(str(namespace_path()))
    return pynwb.get_class(RUN_INFO_TYPE, NAMESPACE)


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m nwb_extract.io.schema OUTPUT_DIR   (writes the namespace YAML files)")
        return 2
    print(write_spec(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


"""Tests of our NWB extension (nwb_extract.io.schema): the shipped YAML, its version, the typed config attributes,
the class, and files of an older version.

The shipped YAML must equal what :func:`schema.build_spec` derives from the config tables, so a config key added
without regenerating the schema fails here; and each namespace version has one spec (its hash is recorded below), so
a regenerated spec fails until the version is bumped.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone

import h5py
import numpy as np
import pynwb
import yaml
from pynwb import NWBHDF5IO
from pynwb.base import Images
from pynwb.image import GrayscaleImage
from pynwb.testing import TestCase
from pynwb.testing.mock.file import mock_NWBFile
from pynwb.testing.mock.ophys import mock_PlaneSegmentation

from conftest import REPO_ROOT
from nwb_extract.config import PARAMETERS, PYTHON_PARAMETERS, THRESHOLD_PARAMETERS, ExtractConfig
from nwb_extract.io import schema
from nwb_extract.engine.refine import METRIC_NAMES
from nwb_extract.io.nwb_read import list_runs, read_config, read_result, read_timing
from nwb_extract.io.layout import METRIC_DESCRIPTIONS
from nwb_extract.io.nwb_write import _config_fields

#: sha256 of the ExtractRunInfo spec (the extensions YAML, parsed, as sorted JSON) of each namespace version. A spec
#: change needs a new version: bump schema.NAMESPACE_VERSION and add its line; never edit a line. (0.1.0 had several
#: specs, before versioning; its files still read, see test_a_file_of_namespace_0_1_0_reads.)
SPEC_HASHES = {
    "0.2.0": "1a2e65afc14d229a25abe05d63c55680a2e180bf27fd534dab3bd8051301de52",
    "0.3.0": "484a7375ce84d9661395731168dc2552999233599a910e7870edc5c60a5cdbe0",
    "0.4.0": "dffbad1bcbaee802edf26e78b82f6bb188c7b12d5a96c8ce6d12498e33e10730",
}

OLD_FILE = REPO_ROOT / "tests" / "data" / "result_ndx-nwb-extract-0.1.0.nwb"


def _yaml(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_each_namespace_version_has_one_spec():
    spec = _yaml(REPO_ROOT / "schemas" / f"{schema.NAMESPACE}.extensions.yaml")
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    assert schema.NAMESPACE_VERSION in SPEC_HASHES, "a new namespace version: record the hash of its spec here"
    assert SPEC_HASHES[schema.NAMESPACE_VERSION] == digest, (
        f"the spec changed under version {schema.NAMESPACE_VERSION}: bump schema.NAMESPACE_VERSION, regenerate "
        f"schemas/ and add the new version's hash {digest} to SPEC_HASHES")
    assert list(SPEC_HASHES)[-1] == schema.NAMESPACE_VERSION and len(set(SPEC_HASHES.values())) == len(SPEC_HASHES)


def _old_arrays():
    """The arrays tests/data/result_ndx-nwb-extract-0.1.0.nwb was written from (tests/data/README.md)."""
    rng = np.random.default_rng(13)
    footprints = np.zeros((3, 12, 20), dtype=np.float32)
    for k, (r, c) in enumerate([(3, 4), (8, 10), (5, 16)]):
        footprints[k, r - 2:r + 3, c - 2:c + 3] = rng.random((5, 5)).astype(np.float32)
        footprints[k] /= footprints[k].max()
    traces = {kind: rng.standard_normal((30, 3)).astype(np.float32) for kind in ("baseline_adjusted", "nonneg", "raw")}
    images = rng.random((3, 12, 20))
    return footprints, traces, images


def test_a_file_of_namespace_0_1_0_reads():
    """A result written by nwb-extract 0.1.0 (namespace 0.1.0, pixel masks, eliminated candidates) reads back."""
    with h5py.File(OLD_FILE, "r") as f:
        assert list(f[f"specifications/{schema.NAMESPACE}"]) == ["0.1.0"]
    footprints, traces, images = _old_arrays()
    assert list_runs(OLD_FILE) == ["old"]
    result = read_result(OLD_FILE)
    assert result.footprints.tobytes() == footprints.tobytes()
    assert result.primary_trace == "baseline_adjusted"
    for kind, trace in traces.items():
        assert result.traces[kind].tobytes() == trace.tobytes()
    for name, image in zip(("summary_image", "max_image", "F_per_pixel"), images):
        np.testing.assert_array_equal(getattr(result, name), image)
    np.testing.assert_array_equal(result.roi_metrics["T_maxval"], [9.5, 12.0, 20.0])
    assert result.eliminated.rules == ("T_maxval",)
    np.testing.assert_array_equal(result.eliminated.footprints, footprints[:1] * 0.5)
    assert result.stop_reason == "min_magnitude" and result.timings == {"read": 0.1, "preprocess": 0.2, "total": 1.0}
    expected = ExtractConfig(avg_cell_radius=3, thresholds={"T_min_snr": 9}, backend="numpy").resolved()
    assert result.config == expected and read_config(OLD_FILE, "old") == expected
    assert read_timing(OLD_FILE) == {"rate": 10.0, "starting_time": 0.0}


def test_metric_descriptions_cover_every_metric_and_cite_no_spec():
    assert set(METRIC_DESCRIPTIONS) == set(METRIC_NAMES) | {"partition"}
    assert not [name for name, text in METRIC_DESCRIPTIONS.items() if "§" in text or "spec" in text]


def test_shipped_yaml_is_the_spec_built_from_the_config_tables(tmp_path):
    written = schema.write_spec(tmp_path)
    shipped = REPO_ROOT / "schemas"
    for name in (written.name, f"{schema.NAMESPACE}.extensions.yaml"):
        assert _yaml(shipped / name) == _yaml(tmp_path / name), (
            f"schemas/{name} is stale: run `python -m nwb_extract.io.schema schemas`")


def test_namespace_path_finds_the_repo_schemas_in_an_editable_install():
    path = schema.namespace_path()
    assert path.name == "ndx-nwb-extract.namespace.yaml" and path.is_file()
    assert _yaml(path)["namespaces"][0]["version"] == schema.NAMESPACE_VERSION


def test_every_fixed_type_config_key_has_a_typed_attribute():
    attributes = schema.config_attributes()
    expected = {"bool": "bool", "int": "int32", "float": "float64", "choice": "text"}
    for prefix, params in (("", PARAMETERS), ("thresholds_", THRESHOLD_PARAMETERS), ("python_", PYTHON_PARAMETERS)):
        for p in params:
            if p.kind in expected:
                assert attributes[prefix + p.name][2] == expected[p.kind], p.name
            else:  # 'auto'-or-int, lists and arrays: JSON (or a dataset), never a typed attribute
                assert prefix + p.name not in attributes, p.name
    assert attributes["thresholds_T_min_snr"][:2] == ("thresholds", THRESHOLD_PARAMETERS[0])


def test_movie_sized_config_arrays_are_datasets():
    symbolic = {p.name for p in PARAMETERS if p.kind == "array" and any(isinstance(a, str) and a in "KHWn"
                                                                           for a in p.shape)}
    assert symbolic == set(schema.CONFIG_DATASETS)


def test_attribute_and_dataset_names_do_not_collide():
    spec = _yaml(REPO_ROOT / "schemas" / f"{schema.NAMESPACE}.extensions.yaml")["groups"][0]
    names = [a["name"] for a in spec["attributes"]] + [d["name"] for d in spec["datasets"]] + \
        [link["name"] for link in spec["links"]]
    assert len(names) == len(set(names))
    assert len(spec["attributes"]) == len(schema.RUN_ATTRIBUTES) + len(schema.TIMING_STAGES) + \
        len(schema.config_attributes())


def test_config_fields_are_typed_and_omit_none():
    cfg = ExtractConfig(avg_cell_radius=5, num_partitions_x=2, thresholds={"T_min_snr": 9}, backend="numpy")
    fields = _config_fields(cfg)
    assert fields["avg_cell_radius"] == 5.0 and isinstance(fields["avg_cell_radius"], float)
    assert fields["num_partitions_x"] == 2 and isinstance(fields["num_partitions_x"], np.int32)
    assert fields["dendrite_aware"] is False
    assert fields["cellfind_spatial_highpass_cutoff"] == math.inf  # inf is a float64 value
    assert fields["thresholds_T_min_snr"] == 9.0 and fields["python_backend"] == "numpy"
    assert "baseline_quantile" not in fields  # None (MATLAB []) has no attribute
    assert "downsample_time_by" not in fields  # 'auto' or an int: JSON only


def _run_info(nwbfile, cfg):
    ps = mock_PlaneSegmentation(nwbfile=nwbfile, n_rois=3)
    images = Images(name="SegmentationImages", description="summary images",
                    images=[GrayscaleImage(name="max_image", data=np.ones((4, 5)), description="max")])
    nwbfile.processing["ophys"].add(images)
    cls = schema.get_run_info_class()
    info = cls(name="ExtractRunInfo", run_name="run1", run_index=np.int32(1), package_version="0.1.0",
               engine_version="EXTRACT 1.3.0", backend="numpy", device="cpu", axis_order=schema.AXIS_ORDER,
               config_json=cfg.to_json(), run_info_json="{}", plane_segmentation=ps, summary_images=images,
               seconds_total=1.5, **_config_fields(cfg))
    nwbfile.processing["ophys"].add(info)
    return info


def test_run_info_round_trip(tmp_path):
    cfg = ExtractConfig(avg_cell_radius=4.5, thresholds={"size_upper_limit": math.inf})
    nwbfile = mock_NWBFile(session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    nwbfile.create_processing_module(name="ophys", description="optical physiology")
    info = _run_info(nwbfile, cfg)
    path = tmp_path / "info.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    assert pynwb.validate(path=str(path)) == []
    with NWBHDF5IO(str(path), "r") as io:
        read = io.read().processing["ophys"]["ExtractRunInfo"]
        TestCase().assertContainerEqual(read, info)
        assert read.plane_segmentation.name == "PlaneSegmentation"
        assert ExtractConfig.from_json(read.config_json) == cfg
    with h5py.File(path, "r") as f:
        attrs = f["processing/ophys/ExtractRunInfo"].attrs
        assert attrs["avg_cell_radius"].dtype == np.float64 and attrs["avg_cell_radius"] == 4.5
        assert attrs["thresholds_size_upper_limit"] == math.inf
        assert attrs["verbose"].dtype == np.int32
        assert attrs["neurodata_type"] == "ExtractRunInfo" and attrs["namespace"] == "ndx-nwb-extract"
        assert f"specifications/{schema.NAMESPACE}/{schema.NAMESPACE_VERSION}" in f  # cached for readers

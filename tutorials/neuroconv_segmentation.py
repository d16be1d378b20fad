# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Segment a raw movie inside a neuroconv conversion
#
# One `NWBConverter` writes the raw movie (here a TIFF file, through neuroconv's `TiffImagingInterface`) and the
# EXTRACT cells (through `nwb_extract.neuroconv.NwbExtractSegmentationInterface`) into a single NWB file. The cells
# get nwb-extract's layout: float32 image masks that index like the stored movie frames, the three trace kinds
# (`RoiResponseSeries` = baseline_adjusted, `NonnegRoiResponseSeries`, `RawRoiResponseSeries`), summary images and
# the `ExtractRunInfo` with the full config.

# %%
from datetime import datetime, timezone
from pathlib import Path

import tifffile
from neuroconv import NWBConverter
from neuroconv.datainterfaces import TiffImagingInterface

from nwb_extract.neuroconv import NwbExtractSegmentationInterface
from nwb_extract.roiextractors import NwbExtractSegmentationExtractor
from nwb_extract.simulate import simulate_2p

# %% [markdown]
# A small simulated 2-photon movie (40 x 56 px, 300 frames at 30 Hz, 8 cells) stands in for your recording.

# %%
sim = simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)
tifffile.imwrite("movie.tif", sim.movie)


# %% [markdown]
# Both interfaces share one metadata key, so the cells link the raw movie's imaging plane.

# %%
class Converter(NWBConverter):
    data_interface_classes = {"Imaging": TiffImagingInterface, "Segmentation": NwbExtractSegmentationInterface}


converter = Converter(source_data={
    "Imaging": {"file_paths": ["movie.tif"], "sampling_frequency": 30.0, "metadata_key": "nwb_extract"},
    "Segmentation": {"file_path": "movie.tif", "sampling_frequency": 30.0, "config": {"avg_cell_radius": 3.5}},
})
metadata = converter.get_metadata()
metadata["NWBFile"].update(session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
                           session_description="raw movie and EXTRACT cells", experimenter=["Doe, Jane"])
metadata["Subject"] = {"subject_id": "m1", "species": "Mus musculus", "sex": "U", "age": "P90D"}
metadata["Ophys"]["ImagingPlanes"]["nwb_extract"].update(location="root", indicator="GCaMP6f", excitation_lambda=920.0)
metadata["Ophys"]["MicroscopySeries"] = {"nwb_extract": {"name": "TwoPhotonSeries", "description": "raw movie",
                                                         "imaging_plane_metadata_key": "nwb_extract"}}
converter.run_conversion(nwbfile_path="session.nwb", metadata=metadata, overwrite=True)

# %% [markdown]
# Reload the cells without rerunning EXTRACT, as a roiextractors `SegmentationExtractor`:

# %%
cells = NwbExtractSegmentationExtractor.from_nwb("session.nwb")
print(f"{cells.get_num_rois()} cells, masks {cells.get_roi_image_masks().shape} (height, width, cells)")
print("traces:", sorted(k for k, v in cells.get_traces_dict().items() if v is not None))
assert cells.get_num_rois() >= 6 and Path("session.nwb").is_file()

# %% [markdown]
# To use the interface by name in a neuroconv YAML conversion spec, call `nwb_extract.neuroconv.register()` first;
# the spec then names `NwbExtractSegmentationInterface` under `data_interfaces`.

# %% [markdown]
# # Cell extraction on a DANDI asset, streamed
#
# `nwb-extract` reads an imaging series straight from the DANDI Archive: only the bytes of the frames used
# (and the file's metadata) are fetched, never the whole asset. An asset is named in any of these forms:
#
# - `dandi://dandi/<dandiset>[@<version>]/<path>`, e.g. `dandi://dandi/000123@draft/sub-1/sub-1_ophys.nwb`
# - `DANDI:<dandiset>/<version>` plus the asset path (`--path` on the command line)
# - an API asset URL, e.g. `https://api.dandiarchive.org/api/dandisets/000123/versions/draft/assets/?path=sub-1/sub-1_ophys.nwb`
#
# The command line equivalent of this tutorial is
#
# ```
# nwb-extract run dandi://dandi/000123@draft/sub-1/sub-1_ophys.nwb --frames 0:1000 -o result.nwb
# ```
#
# Embargoed dandisets need your API key in the environment variable `DANDI_API_KEY`.
#
# To run against another server (a mirror, or the local stand-in the tests use) set
# `NWB_EXTRACT_DANDI_API_URL` to its API address; the dandiset and asset can be changed with
# `NWB_EXTRACT_TUTORIAL_DANDISET` and `NWB_EXTRACT_TUTORIAL_ASSET`.

# %%
import os

from nwb_extract.config import ExtractConfig
from nwb_extract.io.dandi import resolve_asset
from nwb_extract.workflow import run_nwb

dandiset = os.environ.get("NWB_EXTRACT_TUTORIAL_DANDISET", "000123")
asset_path = os.environ.get("NWB_EXTRACT_TUTORIAL_ASSET", "sub-1/sub-1_ophys.nwb")
address = f"dandi://dandi/{dandiset}@draft/{asset_path}"

# %% [markdown]
# Resolve the address: the dandi client finds the asset and its content URL (an S3 URL on the real archive).

# %%
asset = resolve_asset(address)
print(asset.label, "->", asset.content_url)

# %% [markdown]
# Stream the imaging series, run EXTRACT on the first 100 frames and write a new local NWB file. The result
# copies the session, subject, device and imaging plane of the asset and records the dandiset, version, asset id,
# asset path and content URL in its run info.

# %%
config = ExtractConfig().replace(avg_cell_radius=3.5, backend="numpy")
run = run_nwb(asset, "dandi_result.nwb", config, frames=(0, 100), overwrite=True)
output = str(run.path)
print(f"{run.result.n_cells} cells from {run.series_path}, frames {run.frames}; wrote {output}")

"""Structuring elements, kernels and dilation (engine/morphology.py) against functions.h5, plus the layout check.

Masks are compared exactly (they are integer/boolean facts). The Gaussian kernels are float64 on both sides
(MATLAB double): agreement to 1e-12 relative to the peak leaves room only for summation order.
"""

from __future__ import annotations

import array_api_compat
import h5py
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.engine import backend, morphology


@pytest.fixture(scope="module")
def strel_case(reference_dir):
    with h5py.File(reference_dir / "functions.h5") as f:
        return {name: ds[...] for name, ds in f["strel_disk/outputs"].items()}


def _same_namespace(out, xp, device):
    assert array_api_compat.array_namespace(out) == array_api_compat.array_namespace(xp.asarray(0))
    if device is not None:
        assert array_api_compat.device(out) == device


# ---------------------------------------------------------------------------------------------------------------
# golden neighbourhoods


@pytest.mark.parametrize("radius", [3, 6])
def test_strel_disk_matches_reference(strel_case, radius):
    expected = strel_case[f"strel_disk_{radius}"].astype(bool)
    np.testing.assert_array_equal(backend.to_numpy(morphology.strel_disk(radius)), expected)


def test_strel_disk_shapes_documented_in_the_readme():
    assert backend.to_numpy(morphology.strel_disk(3)).all() and morphology.strel_disk(3).shape == (5, 5)
    octagon = backend.to_numpy(morphology.strel_disk(6))
    assert octagon.shape == (11, 11)
    # octagon: corners cut by two pixels along each side
    assert octagon[0].sum() == 7 and octagon[1].sum() == 9 and octagon[2:-2].all()


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_strel_disk_small_radius_is_the_euclidean_disk(radius):
    dy, dx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    np.testing.assert_array_equal(backend.to_numpy(morphology.strel_disk(radius)), dy**2 + dx**2 <= radius**2)


@pytest.mark.parametrize("radius", range(3, 16))
def test_strel_disk_is_symmetric_and_inscribed(radius):
    nhood = backend.to_numpy(morphology.strel_disk(radius))
    half = nhood.shape[0] // 2
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    assert half <= radius
    assert nhood[half, :].all() and nhood[:, half].all()  # full horizontal and vertical diameter
    np.testing.assert_array_equal(nhood, np.rot90(nhood))  # 90-degree symmetry of the periodic-line set
    np.testing.assert_array_equal(nhood, nhood.T)
    assert not nhood[(dy**2 + dx**2) > (radius + 1) ** 2].any()  # never reaches beyond the disk's pixel ring


@pytest.mark.parametrize("radius", range(1, 11))
def test_disk_footprint_matches_fspecial(strel_case, radius):
    expected = strel_case[f"fspecial_disk_{radius}"] > 0
    np.testing.assert_array_equal(backend.to_numpy(morphology.disk_footprint(radius)), expected)


@pytest.mark.parametrize(("name", "size", "sigma"), [("fspecial_gaussian_11_sigma2", 11, 2.0),
                                                      ("fspecial_gaussian_7_sigma1p5", 7, 1.5)])
def test_gaussian_kernel_matches_fspecial(strel_case, name, size, sigma):
    expected = strel_case[name]
    got = backend.to_numpy(morphology.gaussian_kernel(size, sigma))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * expected.max())


def test_gaussian_kernel_rectangular_even_size():
    got = backend.to_numpy(morphology.gaussian_kernel((2, 3), 1.0))
    dy, dx = np.meshgrid([-0.5, 0.5], [-1.0, 0.0, 1.0], indexing="ij")
    expected = np.exp(-(dy**2 + dx**2) / 2)
    np.testing.assert_allclose(got, expected / expected.sum(), rtol=1e-12)


def test_kernels_on_requested_namespace(namespace):
    xp, device = namespace
    for out in (morphology.strel_disk(4, xp=xp, device=device), morphology.disk_footprint(2.5, xp=xp, device=device)):
        _same_namespace(out, xp, device)
        assert out.dtype == xp.bool
    kernel = morphology.gaussian_kernel(5, 1.0, dtype=xp.float32, xp=xp, device=device)
    _same_namespace(kernel, xp, device)
    assert kernel.dtype == xp.float32
    assert float(xp.sum(kernel)) == pytest.approx(1.0, rel=1e-6)


def test_bad_radius_and_sizes():
    with pytest.raises(ValueError, match="non-negative integer"):
        morphology.strel_disk(2.5)
    with pytest.raises(ValueError, match="must be > 0"):
        morphology.disk_footprint(0)
    with pytest.raises(ValueError, match="sigma > 0"):
        morphology.gaussian_kernel(5, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# dilation


def test_dilate_stack_places_the_footprint_and_clips_at_borders(namespace):
    xp, device = namespace
    masks = np.zeros((2, 9, 10), bool)
    masks[0, 4, 5] = True  # interior: the dilation is the footprint itself
    masks[1, 0, 9] = True  # corner: zero padding clips it
    footprint = backend.to_numpy(morphology.disk_footprint(2))
    out = morphology.dilate(to_xp(masks, xp, device), to_xp(footprint, xp, device))
    _same_namespace(out, xp, device)
    assert out.dtype == xp.bool
    got = backend.to_numpy(out)
    expected0 = np.zeros((9, 10), bool)
    expected0[2:7, 3:8] = footprint
    np.testing.assert_array_equal(got[0], expected0)
    expected1 = np.zeros((9, 10), bool)
    expected1[0:3, 7:10] = footprint[2:, :3]
    np.testing.assert_array_equal(got[1], expected1)


def test_dilate_single_image_and_rejects_even_footprint():
    image = np.zeros((5, 5), bool)
    image[2, 2] = True
    got = backend.to_numpy(morphology.dilate(image, morphology.strel_disk(3)))
    np.testing.assert_array_equal(got, np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="odd sides"):
        morphology.dilate(image, np.ones((2, 2), bool))


# ---------------------------------------------------------------------------------------------------------------
# reading convention of functions.h5 (reference README §1, item 1)


def test_layout_check_reading_convention(reference_dir):
    with h5py.File(reference_dir / "functions.h5") as f:
        case = f["layout_check"]
        B = case["inputs/B"][...]
        A_flat = case["outputs/A_flat"][...]
        assert case["outputs/A_equals_B"][0, 0] == 1
        value_231 = case["outputs/B_value_at_2_3_1"][0, 0]
    r, c, t = np.meshgrid(np.arange(5), np.arange(7), np.arange(3), indexing="ij")
    # a[i, j, k] read with h5py is MATLAB A(i+1, j+1, k+1)
    np.testing.assert_array_equal(B, 100 * (r + 1) + 10 * (c + 1) + (t + 1))
    assert value_231 == B[1, 2, 0] == 231
    # MATLAB reshape flattens column-major: pixel p = row + n_rows * col
    for row, col, frame in [(0, 0, 0), (4, 0, 1), (0, 6, 2), (3, 5, 1)]:
        assert A_flat[row + 5 * col, frame] == B[row, col, frame]
    np.testing.assert_array_equal(A_flat, B.reshape(35, 3, order="F"))
    np.testing.assert_array_equal(A_flat.reshape(5, 7, 3, order="F"), B)

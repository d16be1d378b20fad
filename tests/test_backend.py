"""Every kernel of nwb_extract.engine.backend against a direct computation written here, under every namespace.

Each namespace test checks, in order: the output's namespace is the input's, its device is the input's, its dtype,
then the values. Tolerances: kernels that only select or count (median, label, dilation, assignment) must be
exact; float32 arithmetic kernels get ``rtol=1e-5`` (about 100 float32 ulps, far above their rounding error and far
below any real mistake, which would be O(1)).
"""

from __future__ import annotations

import itertools
import math

import array_api_compat
import numpy as np
import pytest
import scipy.interpolate
from conftest import to_xp

from nwb_extract.engine import backend
from nwb_extract.errors import BackendError

RTOL32 = 1e-5


def _check_array(out, xp, device, dtype):
    """Namespace, device and dtype of a kernel output; returns it as NumPy."""
    assert array_api_compat.array_namespace(out) == array_api_compat.array_namespace(xp.asarray(0))
    if device is not None:
        assert array_api_compat.device(out) == device
    assert out.dtype == dtype
    return backend.to_numpy(out)


# ---------------------------------------------------------------------------------------------------------------
# (a) namespaces


def test_select_numpy_and_auto_without_gpu():
    xp = backend.select("numpy")
    assert backend.is_numpy(xp)
    auto = backend.select("auto")
    if backend._cupy_device_count() == 0:
        assert backend.is_numpy(auto)
    else:
        assert backend.is_cupy(auto)


def test_select_cupy_without_gpu_names_the_fix():
    if backend._cupy_device_count() > 0:
        pytest.skip("a GPU is present: backend='cupy' is valid here")
    with pytest.raises(BackendError, match=r"backend='cupy' needs CuPy and a CUDA GPU.*backend='numpy'"):
        backend.select("cupy")


def test_select_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'torch'; choose one of auto, numpy, cupy"):
        backend.select("torch")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_to_numpy_from_numpy_round_trip(namespace, dtype):
    xp, device = namespace
    a = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    x = backend.from_numpy(a, xp, device)
    got_xp, got_device = backend.get_namespace_and_device(x)
    assert got_xp == array_api_compat.array_namespace(xp.asarray(0))
    if device is not None:
        assert got_device == device
    back = backend.to_numpy(x)
    assert isinstance(back, np.ndarray)
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back, a)


# ---------------------------------------------------------------------------------------------------------------
# (b) kernels


def _sliding_median(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Median over a (size) box around each element, zeros outside the array (MATLAB medfilt2)."""
    hr, hc = size[0] // 2, size[1] // 2
    padded = np.pad(a, ((hr, hr), (hc, hc)))
    out = np.empty_like(a)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = np.median(padded[i:i + size[0], j:j + size[1]])
    return out


@pytest.mark.parametrize("size", [(3, 3), (1, 5), (5, 3)])
def test_median_filter_zero_padding(namespace, size):
    xp, device = namespace
    a = np.random.default_rng(0).normal(size=(7, 9)).astype(np.float32) + 1.0
    out = _check_array(backend.median_filter(to_xp(a, xp, device), size), xp, device, xp.float32)
    # odd boxes: the median is one of the samples, so the result must be exact
    np.testing.assert_array_equal(out, _sliding_median(a, size))


def test_median_filter_rejects_bad_arguments():
    a = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="one length per axis"):
        backend.median_filter(a, (3,))
    with pytest.raises(ValueError, match="mode must be one of"):
        backend.median_filter(a, (3, 3), mode="symmetric")


def test_correlate_even_kernel_matlab_anchor(namespace):
    xp, device = namespace
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 7)).astype(np.float32)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    expected = np.zeros((6, 7))
    # MATLAB imfilter anchor for length 4 is index 2 (1-based): offsets -1..+2, zero padding
    for i, j in itertools.product(range(6), range(7)):
        for p, q in itertools.product(range(4), range(4)):
            r, c = i + p - 1, j + q - 1
            if 0 <= r < 6 and 0 <= c < 7:
                expected[i, j] += w[p, q] * a[r, c]
    out = _check_array(backend.correlate(to_xp(a, xp, device), w, origin=-1), xp, device, xp.float32)
    np.testing.assert_allclose(out, expected, rtol=RTOL32, atol=RTOL32 * np.abs(expected).max())


def test_correlate_replicate_mode(namespace):
    xp, device = namespace
    a = np.arange(5, dtype=np.float32)[None, :] * np.ones((3, 1), np.float32)
    w = np.array([[1.0, 0.0, 0.0]], np.float32)  # picks the left neighbour
    out = _check_array(backend.correlate(to_xp(a, xp, device), w, mode="nearest"), xp, device, xp.float32)
    np.testing.assert_array_equal(out[0], [0, 0, 1, 2, 3])  # 'replicate': the edge value repeats


def test_binary_dilation_cross_and_stack(namespace):
    xp, device = namespace
    mask = np.zeros((5, 6), bool)
    mask[0, 0] = mask[3, 4] = True
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    expected = np.zeros((5, 6), bool)
    for r, c in zip(*np.nonzero(mask)):
        for dr, dc in zip(*np.nonzero(cross)):
            rr, cc = r + dr - 1, c + dc - 1
            if 0 <= rr < 5 and 0 <= cc < 6:
                expected[rr, cc] = True
    out = _check_array(backend.binary_dilation(to_xp(mask, xp, device), cross), xp, device, xp.bool)
    np.testing.assert_array_equal(out, expected)
    stack = np.stack([mask, np.zeros_like(mask)])
    out3 = _check_array(backend.binary_dilation(to_xp(stack, xp, device), cross[None]), xp, device, xp.bool)
    np.testing.assert_array_equal(out3, np.stack([expected, np.zeros_like(mask)]))  # images do not mix


@pytest.mark.parametrize("structure_shape", [(3, 3), (3, 5), (13, 13), (1, 7)])
def test_binary_dilation_equals_scipy(namespace, structure_shape):
    """Random masks and random odd neighbourhoods (asymmetric ones too), single images and stacks: the compiled
    NumPy path and the other namespaces give SciPy's dilation."""
    import scipy.ndimage as ndi

    xp, device = namespace
    rng = np.random.default_rng(sum(structure_shape))
    structure = rng.random(structure_shape) > 0.4
    structure[structure_shape[0] // 2, structure_shape[1] // 2] = True
    for shape in [(9, 11), (1, 4), (4, 20, 17)]:
        mask = rng.random(shape) > 0.85
        s = structure if len(shape) == 2 else structure[None]
        expected = ndi.binary_dilation(mask, structure=s)
        out = _check_array(backend.binary_dilation(to_xp(mask, xp, device), s), xp, device, xp.bool)
        np.testing.assert_array_equal(backend.to_numpy(out), expected)


def test_label_connectivity(namespace):
    xp, device = namespace
    image = np.array([[1, 0, 0, 1],
                      [0, 1, 0, 1],
                      [0, 0, 0, 0],
                      [1, 1, 0, 1]], bool)
    labels8, n8 = backend.label(to_xp(image, xp, device))
    labels4, n4 = backend.label(to_xp(image, xp, device), connectivity=4)
    lab8 = _check_array(labels8, xp, device, xp.int32)
    lab4 = _check_array(labels4, xp, device, xp.int32)
    assert (n8, n4) == (4, 5)  # the diagonal pair (0,0)-(1,1) joins only with 8-connectivity
    assert lab8[0, 0] == lab8[1, 1] != 0 and lab4[0, 0] != lab4[1, 1]
    assert lab8[0, 3] == lab8[1, 3] and lab8[3, 0] == lab8[3, 1]
    np.testing.assert_array_equal(lab8 == 0, ~image)
    assert sorted(set(lab4[image].tolist())) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        backend.label(image, connectivity=6)


def _cubic(x):
    return 2 * x**3 - x**2 + 3 * x - 1


def test_cubic_spline_reproduces_a_cubic_and_extrapolates(namespace):
    xp, device = namespace
    pos = np.array([0.0, 1.0, 2.5, 3.0, 4.5, 6.0])
    new = np.array([-1.5, 0.25, 2.0, 3.7, 6.0, 7.5])  # both ends extrapolated
    values = np.stack([_cubic(pos), 2 * _cubic(pos)]).astype(np.float32)
    out = _check_array(backend.cubic_spline(to_xp(values, xp, device), pos, new, axis=1), xp, device, xp.float32)
    expected = np.stack([_cubic(new), 2 * _cubic(new)])
    # a not-a-knot cubic reproduces any cubic exactly; the only error is float32 rounding of the samples
    np.testing.assert_allclose(out, expected, rtol=RTOL32, atol=RTOL32 * np.abs(expected).max())


def test_cubic_spline_matches_scipy_and_small_cases(namespace):
    xp, device = namespace
    rng = np.random.default_rng(2)
    pos = np.cumsum(rng.uniform(0.5, 1.5, size=8))
    new = np.linspace(pos[0] - 1, pos[-1] + 1, 17)
    values = rng.normal(size=(8, 3)).astype(np.float32)
    out = _check_array(backend.cubic_spline(to_xp(values, xp, device), pos, new, axis=0), xp, device, xp.float32)
    expected = scipy.interpolate.CubicSpline(pos, values.astype(np.float64), axis=0, bc_type="not-a-knot")(new)
    np.testing.assert_allclose(out, expected, rtol=RTOL32, atol=RTOL32 * np.abs(expected).max())
    # 2 samples: the line through them; 3 samples: the parabola (MATLAB spline)
    line = backend.to_numpy(backend.cubic_spline(to_xp(np.array([1.0, 3.0], np.float32), xp, device),
                                                 [0.0, 1.0], [2.0, -1.0], axis=0))
    np.testing.assert_allclose(line, [5.0, -1.0], rtol=RTOL32)
    parabola = backend.to_numpy(backend.cubic_spline(to_xp(np.array([0.0, 1.0, 4.0], np.float32), xp, device),
                                                     [0.0, 1.0, 2.0], [3.0], axis=0))
    np.testing.assert_allclose(parabola, [9.0], rtol=RTOL32)


def test_normal_cdf_pdf_against_erf(namespace):
    xp, device = namespace
    x = np.linspace(-6, 6, 49).astype(np.float32)
    cdf = _check_array(backend.normal_cdf(to_xp(x, xp, device)), xp, device, xp.float32)
    pdf = _check_array(backend.normal_pdf(to_xp(x, xp, device)), xp, device, xp.float32)
    xd = x.astype(np.float64)
    expected_cdf = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xd]
    expected_pdf = [math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in xd]
    np.testing.assert_allclose(cdf, expected_cdf, rtol=RTOL32, atol=1e-7)
    np.testing.assert_allclose(pdf, expected_pdf, rtol=RTOL32, atol=1e-7)


def test_linear_sum_assignment_against_brute_force(namespace):
    xp, device = namespace
    cost = np.random.default_rng(3).normal(size=(4, 5))
    rows, cols = backend.linear_sum_assignment(to_xp(cost, xp, device))
    rows = _check_array(rows, xp, device, xp.int64)
    cols = _check_array(cols, xp, device, xp.int64)
    best = min(itertools.permutations(range(5), 4), key=lambda p: sum(cost[i, j] for i, j in enumerate(p)))
    np.testing.assert_array_equal(rows, np.arange(4))
    np.testing.assert_array_equal(cols, best)


def test_column_histogram_counts_per_column(namespace):
    xp, device = namespace
    bins = np.random.default_rng(5).integers(-2, 7, size=(40, 3)).astype(np.int64)  # includes out-of-range bins
    out = _check_array(backend.column_histogram(to_xp(bins, xp, device), 5), xp, device, xp.int64)
    expected = np.array([[np.count_nonzero(bins[:, j] == b) for j in range(3)] for b in range(5)])
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------------------------------------------
# (c) stopgaps


@pytest.mark.parametrize("q", [0.0, 0.05, 0.25, 0.5, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_quantile_is_hazen(namespace, q, axis):
    xp, device = namespace
    a = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float32)
    out = backend.quantile(to_xp(a, xp, device), q, axis=axis)
    got = _check_array(out, xp, device, xp.float32)
    np.testing.assert_allclose(got, np.quantile(a.astype(np.float64), q, axis=axis, method="hazen"), rtol=RTOL32,
                               atol=1e-6)


def test_quantile_matlab_examples(namespace):
    xp, device = namespace
    # MATLAB: quantile([1 2 3 4], 0.25) = 1.5; quantile([1 2 3 4 5], 0.3) = 2; quantile([1 2 3], 0.05) = 1
    # (clamped); median([3 1 2 10]) = 2.5
    cases = [([1, 2, 3, 4], 0.25, 1.5), ([1, 2, 3, 4, 5], 0.3, 2.0), ([1, 2, 3], 0.05, 1.0), ([3, 1, 2, 10], 0.5, 2.5)]
    for values, q, expected in cases:
        x = to_xp(np.array(values, np.float64), xp, device)
        assert float(backend.quantile(x, q)) == pytest.approx(expected, abs=1e-12)
    assert float(backend.median(to_xp(np.array([3.0, 1.0, 2.0, 10.0]), xp, device))) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="empty"):
        backend.quantile(to_xp(np.zeros((0,)), xp, device), 0.5)


def test_largest_component_shape_does_not_depend_on_the_empty_surroundings():
    """The same components at the image border and padded into a larger empty frame: same area, perimeter and axes
    (the function measures each image inside its bounding box), and MATLAB's scan order picks the same one of two
    equally large components."""
    rng = np.random.default_rng(3)
    blob = rng.random((9, 7)) > 0.35
    blob[4, :] = True  # one connected piece through the middle
    two = np.zeros((6, 9), bool)
    two[1:3, 0:2] = True  # two equal 2x2 squares: the first in column-major scan order wins
    two[3:5, 6:8] = True
    two[3, 7] = False
    for image in (blob, two):
        padded = np.zeros((image.shape[0] + 12, image.shape[1] + 15), bool)
        padded[5:5 + image.shape[0], 8:8 + image.shape[1]] = image
        at_border = backend.largest_component_shape(image[None])
        inside = backend.largest_component_shape(padded[None])
        for a, b in zip(at_border, inside):
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_largest_component_shape_area_and_hand_counted_perimeters():
    """Area: the pixel count of the largest 8-connected component (scipy.ndimage.label); perimeters of traced
    boundaries counted by hand (the choice among equally large components: the test above)."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(11)
    stack = rng.random((60, 13, 17)) < rng.uniform(0.1, 0.6, (60, 1, 1))
    area = np.asarray(backend.largest_component_shape(stack)[0])
    for k, image in enumerate(stack):
        labels, count = ndi.label(image, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            assert np.isnan(area[k])
            continue
        assert area[k] == np.bincount(labels.ravel())[1:].max()
    # a pixel: no boundary; a 1 x 3 line: 4 axis steps there and back, no change of step; a 2 x 2 square: 4 axis
    # steps, each a change of direction; a diagonal of 2: 2 diagonal steps, no change
    shapes = [np.ones((1, 1)), np.ones((1, 3)), np.ones((2, 2)), np.eye(2)]
    expected = [0.0, 4 * 0.980, 4 * 0.980 - 4 * 0.091, 2 * 1.406]
    for image, perimeter in zip(shapes, expected):
        got = backend.largest_component_shape(np.pad(image, 2)[None].astype(bool))[1]
        np.testing.assert_allclose(np.asarray(got), [perimeter], rtol=1e-12)


def test_compiled_axis_lengths_are_numpys_moments_bitwise():
    """The compiled shape metrics take the axis lengths from the second central moments as NumPy's ``var`` and
    ``mean`` compute them (integers cast and summed 8192 at a time, then pairwise sums): the same floats, for small
    and large (over 8192 pixels) components."""
    from nwb_extract.engine import cpu_kernels

    rng = np.random.default_rng(8)
    for n in (1, 2, 7, 129, 3000, 8192, 8193, 20000):
        rows, cols = (np.sort(rng.integers(0, 300, n)).astype(np.int64), rng.integers(0, 300, n).astype(np.int64))
        uxx, uyy = cols.var() + 1.0 / 12.0, rows.var() + 1.0 / 12.0
        uxy = np.mean((cols - cols.mean()) * (rows - rows.mean()))
        common = math.sqrt((uxx - uyy) ** 2 + 4.0 * uxy * uxy)
        expected = (2.0 * math.sqrt(2.0) * math.sqrt(uxx + uyy + common),
                    2.0 * math.sqrt(2.0) * math.sqrt(max(uxx + uyy - common, 0.0)))
        assert cpu_kernels._axis_lengths(rows, cols) == expected, n

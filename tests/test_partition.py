"""Tests of nwb_extract.engine.partition: partition geometry, per-partition inputs, stitching (spec §1.3–1.4).

Goldens: ``functions.h5/get_current_partition`` (2 x 2 blocks with overlap 6), ``functions.h5/find_duplicate_cells``
and the m3 pipeline's ``reference/baseline_adjusted/stitching`` group (seam-duplicate removal on the reference's
own 30 cells). Every
golden here is integer-valued (ranges, masks, counts, removed-cell indices), so all comparisons are exact
(README §4 of the reference pack: "Exact: ... indices such as idx_trash").

The reference flattens pixels column-major (``p = row + H col``); the engine row-major. Pixel-index goldens are
converted with :func:`row_major_pixels`, pixel-by-cell matrices with :func:`row_major_rows`.
"""

from __future__ import annotations

import json

import array_api_compat
import h5py
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.config import ExtractConfig
from nwb_extract.engine import backend, preprocess
from nwb_extract.engine import partition as pt
from nwb_extract.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def functions_h5(reference_dir):
    with h5py.File(reference_dir / "functions.h5", "r") as f:
        yield f


@pytest.fixture(scope="module")
def m3(reference_dir):
    with h5py.File(reference_dir / "pipeline_m3_partitions_2x2.h5", "r") as f:
        yield f


def row_major_pixels(column_major, frame_shape):
    """0-based column-major pixel indices -> 0-based row-major indices."""
    h, w = frame_shape
    column_major = np.asarray(column_major, dtype=np.int64)
    return (column_major % h) * w + column_major // h


def row_major_rows(X, frame_shape):
    """Rows of a (P, K) matrix in column-major pixel order -> row-major pixel order."""
    h, w = frame_shape
    return np.ascontiguousarray(X.reshape(w, h, -1).transpose(1, 0, 2).reshape(h * w, -1))


def numpy_ns():
    return backend.get_namespace(np.empty(0)), "cpu"


# ----------------------------------------------------------------------------------------------------------------
# geometry


def test_partition_blocks_golden_get_current_partition(functions_h5):
    g = functions_h5["get_current_partition"]
    movie = g["inputs/M"][...]  # MATLAB layout (rows, cols, frames)
    h, w, _ = movie.shape
    blocks = pt.partition_blocks((h, w), int(g.attrs["npy"]), int(g.attrs["npx"]), int(g.attrs["overlap"]))
    assert [b.index for b in blocks] == [0, 1, 2, 3]
    xp, device = numpy_ns()
    for b in blocks:
        expected = g[f"outputs/fov_occupation_{b.index + 1}"][...].astype(bool)
        np.testing.assert_array_equal(b.occupation((h, w), xp=xp, device=device), expected)
    # partition 1's cut movie has the reference's size [rows, cols, frames]
    assert movie[blocks[0].slices].shape == tuple(int(v) for v in g["outputs/size_1"][0])


def test_trimmed_block_gives_the_golden_zero_edge_occupation(functions_h5):
    # npx = npy = 1 on M_zero_edges, then the trimming of preprocess.remove_zero_edge_pixels (tested there)
    g = functions_h5["get_current_partition"]
    movie = np.ascontiguousarray(g["inputs/M_zero_edges"][...].transpose(2, 0, 1))
    (block,) = pt.partition_blocks(movie.shape[1:], 1, 1, 6)
    _, trims = preprocess.remove_zero_edge_pixels(movie[(slice(None),) + block.slices])
    kept = block.trimmed(trims)
    xp, device = numpy_ns()
    expected = g["outputs/fov_occupation_zero_edges"][...].astype(bool)
    np.testing.assert_array_equal(kept.occupation(movie.shape[1:], xp=xp, device=device), expected)


def test_partition_index_runs_down_rows_first():
    blocks = pt.partition_blocks((100, 80), 3, 2, 7)
    assert [(b.iy, b.ix) for b in blocks] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    # spec §1.3: side = ceil((100 + 2*7)/3) = 38, starts j*(38-7); cols: ceil((80+7)/2) = 44, starts 0, 37
    assert [b.rows for b in blocks[:3]] == [(0, 38), (31, 69), (62, 100)]
    assert [blocks[0].cols, blocks[3].cols] == [(0, 44), (37, 80)]


@pytest.mark.parametrize("h, w, npy, npx, overlap", [(96, 96, 2, 2, 10), (57, 131, 3, 4, 5), (30, 20, 1, 1, 12)])
def test_partition_blocks_cover_the_fov_with_the_given_overlap(h, w, npy, npx, overlap):
    blocks = pt.partition_blocks((h, w), npy, npx, overlap)
    xp, device = numpy_ns()
    count = np.asarray(pt.coverage(blocks, (h, w), xp=xp, device=device))
    assert count.min() >= 1
    rows = sorted({b.rows for b in blocks})
    assert rows[0][0] == 0 and rows[-1][1] == h
    assert all(a[1] - b[0] == overlap for a, b in zip(rows, rows[1:]))


def test_partition_blocks_rejects_grids_that_do_not_fit():
    # a side not longer than the overlap: blocks of ceil((10 + 12) / 2) = 11 px would start at -1
    with pytest.raises(ConfigError, match="num_partitions_x=2 is too many"):
        pt.partition_blocks((40, 10), 1, 2, 12)
    # 6 blocks of ceil(10 / 6) = 2 rows without overlap: the last one would start at row 10 of 10
    with pytest.raises(ConfigError, match="num_partitions_y=6 leaves an empty partition"):
        pt.partition_blocks((10, 40), 6, 1, 0)


def test_partition_grid_manual_and_automatic():
    assert pt.partition_grid(ExtractConfig(num_partitions_x=3, num_partitions_y=2), (64, 64)) == (2, 3)
    # automatic: ceil(side / 512) per axis; one of the two counts alone does not switch to manual
    assert pt.partition_grid(ExtractConfig(num_partitions_x=3), (1100, 600)) == (3, 2)
    # 'auto' downsampling: dss = round(12 / 5) = 2 -> 550 x 300 pixels -> 2 x 1 partitions
    auto = ExtractConfig(avg_cell_radius=12, downsample_space_by="auto")
    assert pt.partition_grid(auto, (1100, 600)) == (2, 1)
    # reestimate_S_if_downsampled forces dss = 1
    assert pt.partition_grid(auto.replace(reestimate_S_if_downsampled=True), (1100, 600)) == (3, 2)
    assert pt.partition_overlap(5) == 10 and pt.partition_overlap(4.2) == 9


def test_m3_partitions_coverage_and_overlap_pixels_golden(m3):
    cfg = json.loads(m3.attrs["config_json"])
    st = m3["reference/baseline_adjusted/stitching"]
    h, w = st["fov_occupation_total"].shape
    blocks = pt.partition_blocks((h, w), cfg["num_partitions_y"], cfg["num_partitions_x"],
                                 pt.partition_overlap(cfg["avg_cell_radius"]))
    for b in blocks:
        a = m3[f"reference/baseline_adjusted/info/partitions/p{b.index + 1}"].attrs
        assert (b.rows, b.cols) == ((a["row_start"], a["row_stop"]), (a["col_start"], a["col_stop"]))
    xp, device = numpy_ns()
    count = pt.coverage(blocks, (h, w), xp=xp, device=device)
    np.testing.assert_array_equal(count, st["fov_occupation_total"][...])
    expected = np.sort(row_major_pixels(st["overlap_idx"][...] - 1, (h, w)))
    np.testing.assert_array_equal(pt.overlap_pixels(count), expected)


def test_block_trimmed_rejects_trimming_everything():
    with pytest.raises(InputError, match="leaves no pixels"):
        pt.Block(0, 0, 0, (0, 10), (0, 10)).trimmed((5, 5, 0, 0))


# ----------------------------------------------------------------------------------------------------------------
# per-partition inputs


def test_partition_inputs_cut_the_config_and_drop_cells_outside(namespace):
    xp, device = namespace
    h, w, n = 12, 16, 5
    S_init = np.zeros((3, h, w), np.float32)
    S_init[0, 2:4, 2:4] = 1.0          # inside the kept block
    S_init[1, 10:12, 12:16] = 1.0      # outside
    S_init[2, 5, 9] = 2e-7             # inside, but sum <= 1e-6: dropped like an outside cell
    S_init[2, 0, 0] = 0.5
    T_init = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    mask = np.zeros((h, w), bool)
    mask[1:9, 3:11] = True
    F = np.arange(h * w, dtype=np.float32).reshape(h, w)
    cfg = ExtractConfig(S_init=S_init, T_init=T_init, movie_mask=mask, F_per_pixel=F, preprocess=False)
    kept = pt.Block(0, 0, 0, (1, 9), (1, 10))
    inputs = pt.partition_inputs(cfg, kept, xp=xp, device=device)
    assert inputs.init_cells == (0,)
    np.testing.assert_array_equal(backend.to_numpy(inputs.S_init), S_init[[0], 1:9, 1:10])
    np.testing.assert_array_equal(backend.to_numpy(inputs.T_init), T_init[:, [0]])
    np.testing.assert_array_equal(backend.to_numpy(inputs.movie_mask), mask[1:9, 1:10])
    np.testing.assert_array_equal(backend.to_numpy(inputs.F_per_pixel), F[1:9, 1:10])
    for a in (inputs.S_init, inputs.T_init, inputs.movie_mask, inputs.F_per_pixel):
        assert array_api_compat.device(a) == device


def test_partition_inputs_without_config_arrays():
    xp, device = numpy_ns()
    inputs = pt.partition_inputs(ExtractConfig(), pt.Block(0, 0, 0, (0, 4), (0, 4)), xp=xp, device=device)
    assert inputs == pt.PartitionInputs(None, None, None, None, ())


# ----------------------------------------------------------------------------------------------------------------
# duplicate detection goldens


def test_find_duplicate_cells_golden(functions_h5, namespace):
    xp, device = namespace
    g = functions_h5["find_duplicate_cells"]
    shape = tuple(int(v) for v in g.attrs["fov_size"][0])
    S = row_major_rows(g["inputs/S"][...], shape)
    overlap = row_major_pixels(g["inputs/overlap_idx"][:, 0] - 1, shape)
    trash = pt.find_duplicate_cells(to_xp(S, xp, device), to_xp(g["inputs/Tt"][...], xp, device),
                                    to_xp(overlap, xp, device), float(g.attrs["T_dup_thresh"]),
                                    float(g.attrs["T_corr_thresh"]), float(g.attrs["S_corr_thresh"]))
    assert trash == (g["outputs/idx_trash"][0] - 1).astype(int).tolist() == [0, 3]


def test_find_duplicate_cells_m3_golden_gives_idx_trash_in_order(m3):
    st = m3["reference/baseline_adjusted/stitching"]
    before = st["spatial_weights_before"][...]
    k, h, w = before.shape
    S = np.ascontiguousarray(before.reshape(k, h * w).T)
    T = st["temporal_weights_before"][...]
    overlap = row_major_pixels(st["overlap_idx"][...] - 1, (h, w))
    cfg = json.loads(m3.attrs["config_json"])
    trash = pt.find_duplicate_cells(S, T, overlap, cfg["T_dup_thresh"], cfg["T_corr_thresh"], cfg["S_corr_thresh"])
    assert trash == (st["idx_trash"][...] - 1).astype(int).tolist()
    # deleting them reproduces the reference output (attribute reproduces_output)
    keep = [i for i in range(k) if i not in trash]
    np.testing.assert_array_equal(before[keep], m3["reference/baseline_adjusted/spatial_weights"][...])


# ----------------------------------------------------------------------------------------------------------------
# stitching on hand-made partitions

H, W, N = 40, 24, 300
OVERLAP = 6


def gaussian(center, sigma=2.0):
    r, c = np.mgrid[:H, :W]
    return np.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def spikes(seed):
    rng = np.random.default_rng(seed)
    t = np.zeros(N, np.float32)
    t[rng.choice(N, 12, replace=False)] = rng.uniform(1.0, 3.0, 12)
    return np.convolve(t, np.exp(-np.arange(20) / 5.0), mode="full")[:N].astype(np.float32)


def partition_result(block, images, traces, noise_seed, xp, device, extra_per_cell=None):
    """A partition's result as cell finding would give it: the images cut to the block, noisy copies of traces."""
    rng = np.random.default_rng(noise_seed)
    S = np.stack([img[block.slices].reshape(-1) for img in images], axis=1) if images else np.zeros(
        (block.shape[0] * block.shape[1], 0), np.float32)
    S[S < 0.05] = 0.0
    T = np.stack(traces, axis=1) if traces else np.zeros((N, 0), np.float32)
    T = (T + 0.01 * rng.standard_normal(T.shape)).astype(np.float32)
    per_cell = {"baseline_adjusted": to_xp(T, xp, device)}
    per_cell.update(extra_per_cell or {})
    summary = np.full(block.shape, float(block.index + 1), np.float32)
    return pt.PartitionResult(block, to_xp(S.astype(np.float32), xp, device), per_cell,
                              {"summary_image": to_xp(summary, xp, device)})


def two_partitions():
    return pt.partition_blocks((H, W), 2, 1, OVERLAP)  # rows (0, 23) and (17, 40): seam rows 17..22


def test_a_cell_on_the_seam_found_by_both_partitions_is_kept_once(namespace):
    xp, device = namespace
    top, bottom = two_partitions()
    straddling, trace = gaussian((20, 12)), spikes(1)
    far_top, far_bottom = gaussian((5, 5)), gaussian((35, 18))
    results = [partition_result(top, [far_top, straddling], [spikes(2), trace], 10, xp, device),
               partition_result(bottom, [straddling, far_bottom], [trace, spikes(3)], 11, xp, device)]
    out = pt.stitch(results, (H, W), ExtractConfig(), "baseline_adjusted")
    assert out.n_found == 4
    # the straddling cell's two copies are trace duplicates; the copy with the larger support (count S > 0)
    # survives: the bottom partition sees rows 17..39 of a cell centred on row 20, the top one rows 0..22
    support_top = np.count_nonzero(backend.to_numpy(results[0].S)[:, 1])
    support_bottom = np.count_nonzero(backend.to_numpy(results[1].S)[:, 0])
    assert support_bottom > support_top
    assert out.removed == (1,)
    assert out.selected == (0, 2, 3)
    assert out.cell_partition == (0, 1, 1)
    assert out.S.shape == (H * W, 3) and out.per_cell["baseline_adjusted"].shape == (N, 3)


def test_two_distinct_neighbours_on_the_seam_are_both_kept():
    xp, device = numpy_ns()
    top, bottom = two_partitions()
    left, right = gaussian((20, 10)), gaussian((20, 14))  # overlapping images, independent activity
    S_pair = np.stack([left.ravel(), right.ravel()], axis=1)
    assert np.corrcoef(S_pair.T)[0, 1] > 0.1  # image-correlated: the pair is examined as a candidate group
    results = [partition_result(top, [left], [spikes(4)], 12, xp, device),
               partition_result(bottom, [right], [spikes(5)], 13, xp, device)]
    out = pt.stitch(results, (H, W), ExtractConfig(), "baseline_adjusted")
    assert out.removed == () and out.selected == (0, 1)
    # control: the same images with one shared trace are one cell found twice; the larger support survives
    shared = spikes(4)
    results = [partition_result(top, [left], [shared], 12, xp, device),
               partition_result(bottom, [right], [0.5 * shared], 13, xp, device)]
    assert pt.stitch(results, (H, W), ExtractConfig(), "baseline_adjusted").removed == (0,)


@pytest.mark.parametrize("h, w, npy, npx, overlap", [(40, 24, 2, 1, 6), (96, 96, 2, 2, 12), (50, 71, 3, 2, 7)])
def test_partition_cores_tile_the_fov_and_cut_overlaps_in_the_middle(h, w, npy, npx, overlap):
    blocks = pt.partition_blocks((h, w), npy, npx, overlap)
    cores = pt.partition_cores(blocks)
    count = np.zeros((h, w), int)
    for block, core in zip(blocks, cores):
        assert core.index == block.index
        assert block.rows[0] <= core.rows[0] < core.rows[1] <= block.rows[1]
        assert block.cols[0] <= core.cols[0] < core.cols[1] <= block.cols[1]
        count[core.slices] += 1
    np.testing.assert_array_equal(count, 1)  # every pixel owned by exactly one partition
    if (h, w, npy, npx) == (40, 24, 2, 1):  # rows (0, 23) and (17, 40): the seam 17..22 is cut at row 20
        assert [c.rows for c in cores] == [(0, 20), (20, 40)]


def fragment_case(with_owner_cell, xp, device):
    """The top partition sees a whole cell centred on row 15; the bottom one (rows 17..39) only its lower edge,
    fitted with a trace mixed with other activity (trace correlation below the reference's 0.8)."""
    top, bottom = two_partitions()
    cell, trace = gaussian((15, 12)), spikes(1)
    fragment_trace = 0.5 * trace + spikes(6)
    far_bottom = gaussian((35, 18))
    top_cells = ([cell], [trace]) if with_owner_cell else ([], [])
    return [partition_result(top, *top_cells, 20, xp, device),
            partition_result(bottom, [cell, far_bottom], [fragment_trace, spikes(3)], 21, xp, device)]


def test_a_fragment_in_the_neighbours_core_is_removed_when_the_neighbour_has_the_cell(namespace):
    xp, device = namespace
    results = fragment_case(True, xp, device)
    bottom_shape = results[1].kept.shape
    fragment = backend.to_numpy(results[1].S)[:, 0].reshape(bottom_shape)
    rows = np.arange(17, 17 + bottom_shape[0])[:, None]
    assert (rows * fragment).sum() / fragment.sum() < 20  # centroid in the top partition's core
    assert np.corrcoef(spikes(1), 0.5 * spikes(1) + spikes(6))[0, 1] < 0.8
    reference = pt.stitch(results, (H, W), ExtractConfig(seam_ownership=False), "baseline_adjusted")
    assert reference.selected == (0, 1, 2) and reference.fragments == ()  # the reference's stitching keeps it
    out = pt.stitch(results, (H, W), ExtractConfig(), "baseline_adjusted")
    assert out.fragments == (1,) and out.removed == ()
    assert out.selected == (0, 2) and out.cell_partition == (0, 1)


def test_a_fragment_is_kept_when_the_owner_found_nothing_there(namespace):
    xp, device = namespace
    out = pt.stitch(fragment_case(False, xp, device), (H, W), ExtractConfig(), "baseline_adjusted")
    assert out.fragments == () and out.selected == (0, 1)


def test_stitch_without_duplicate_removal_concatenates_in_partition_order(namespace):
    xp, device = namespace
    top, bottom = two_partitions()
    cell, trace = gaussian((20, 12)), spikes(1)
    metrics = [to_xp(np.full((30, 1), float(i), np.float64), xp, device) for i in (1, 2)]
    results = [partition_result(top, [cell], [trace], 10, xp, device, {"metrics": metrics[0]}),
               partition_result(bottom, [cell], [trace], 11, xp, device, {"metrics": metrics[1]})]
    out = pt.stitch(results, (H, W), ExtractConfig(remove_duplicate_cells=False), "baseline_adjusted")
    assert out.removed == () and out.selected == (0, 1) and out.cell_partition == (0, 1)
    S = backend.to_numpy(out.S).reshape(H, W, 2)
    np.testing.assert_array_equal(S[top.slices][..., 0], backend.to_numpy(results[0].S).reshape(top.shape))
    np.testing.assert_array_equal(S[bottom.slices][..., 1], backend.to_numpy(results[1].S).reshape(bottom.shape))
    assert not S[23:, :, 0].any() and not S[:17, :, 1].any()  # zero outside each partition's block
    np.testing.assert_array_equal(backend.to_numpy(out.per_cell["metrics"])[0], [1.0, 2.0])
    # partition 1 wins in the overlap (rows 17..22), partition 2 below
    summary = backend.to_numpy(out.images["summary_image"])
    np.testing.assert_array_equal(summary[:23], 1.0)
    np.testing.assert_array_equal(summary[23:], 2.0)
    np.testing.assert_array_equal(backend.to_numpy(out.coverage)[:, 0], [1] * 17 + [2] * 6 + [1] * 17)


def test_embed_footprints_and_images_namespace(namespace):
    xp, device = namespace
    kept = pt.Block(1, 1, 0, (3, 7), (2, 5))
    S_block = np.arange(12 * 2, dtype=np.float32).reshape(12, 2) + 1
    S = pt.embed_footprints(to_xp(S_block, xp, device), kept, (9, 6))
    assert S.shape == (54, 2) and S.dtype == xp.float32
    expected = np.zeros((9, 6, 2), np.float32)
    expected[3:7, 2:5] = S_block.reshape(4, 3, 2)
    np.testing.assert_array_equal(backend.to_numpy(S), expected.reshape(54, 2))
    image = pt.embed_images([to_xp(np.ones((4, 3), np.float64), xp, device)], [kept], (9, 6), fill=-1.0)
    assert backend.to_numpy(image).sum() == 12 - (54 - 12)
    occupation = backend.to_numpy(kept.occupation((9, 6), xp=xp, device=device))
    np.testing.assert_array_equal(occupation, expected[..., 0] > 0)
    np.testing.assert_array_equal(backend.to_numpy(pt.coverage([kept, kept], (9, 6), xp=xp, device=device)),
                                  2 * occupation)


def test_uncovered_trimmed_pixels_count_as_overlap_but_carry_no_cells():
    xp, device = numpy_ns()
    (block,) = pt.partition_blocks((H, W), 1, 1, OVERLAP)
    kept = block.trimmed((0, 2, 1, 0))  # as after remove_zero_edge_pixels
    count = pt.coverage([kept], (H, W), xp=xp, device=device)
    assert pt.overlap_pixels(count).shape == (H * 1 + 2 * (W - 1),)
    result = partition_result(kept, [gaussian((20, 12))], [spikes(1)], 1, xp, device)
    out = pt.stitch([result], (H, W), ExtractConfig(), "baseline_adjusted")
    assert out.selected == (0,)


def test_regression_only_stitching_maps_cells_to_s_init_order(namespace):
    xp, device = namespace
    top, bottom = two_partitions()
    S_init = np.stack([gaussian((35, 5)), gaussian((20, 12)), gaussian((4, 18))])  # bottom, seam, top cell
    cfg = ExtractConfig(S_init=S_init, regression_only=True).resolved()
    # each partition finds the S_init cells inside it (in its own order): the seam cell is found twice
    results = [partition_result(top, [S_init[2], S_init[1]], [spikes(1), spikes(2)], 1, xp, device),
               partition_result(bottom, [S_init[1], S_init[0]], [spikes(2), spikes(3)], 2, xp, device)]
    out = pt.stitch(results, (H, W), cfg, "baseline_adjusted")
    # seam cell: the bottom partition's copy holds more of it (rows 17..39 of a cell centred on row 20)
    assert out.selected == (3, 2, 0)
    assert out.removed == (1,)
    assert out.cell_partition == (1, 1, 0)
    np.testing.assert_array_equal(backend.to_numpy(out.per_cell["baseline_adjusted"]),
                                  backend.to_numpy(xp.concat([results[0].per_cell["baseline_adjusted"],
                                                              results[1].per_cell["baseline_adjusted"]],
                                                             axis=1))[:, [3, 2, 0]])


def test_match_to_init_is_the_first_full_match_of_the_decreasing_threshold_loop():
    # the reference loop: c = 0.99, 0.98, ... until match_sets(S_init, S, c) matches every S_init cell
    from nwb_extract.engine.matching import match_sets

    rng = np.random.default_rng(0)
    S_init = rng.random((4, 50)).astype(np.float32)
    S = (S_init[[2, 0, 3, 1]] + rng.random((4, 50)).astype(np.float32) * np.array([[0.1], [1], [2], [3]])).T
    c = 1.0
    while True:
        c -= 0.01
        pairs = match_sets(S_init, S.T, c)
        if len(pairs) == 4 or c < 0.01:
            break
    assert c < 0.9  # the loop had to go down: the threshold matters
    assert pt.match_to_init(S_init, np.ascontiguousarray(S)) == pairs[:, 1].tolist() == [1, 3, 0, 2]


def test_find_duplicate_cells_pass_two_removes_the_hub_then_the_weaker_of_the_pair(namespace):
    # three image-overlapping cells whose traces are unit vectors at angles 0, 0.5, 1.0 rad in the plane of two
    # orthogonal zero-mean signals: correlations cos 0.5 = 0.878 (A-B, B-C) and cos 1.0 = 0.540 (A-C). All are
    # below T_dup_thresh 0.9 (pass 1 does nothing) and the chain A-B-C is one component at T_corr_thresh 0.8.
    # B has the most edges and goes first; A and C are then no longer connected, yet as the last pair the one with
    # the smaller trace maximum (A, scaled by 0.5) goes too (spec §1.4 item 4).
    xp, device = namespace
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((200, 2))
    basis -= basis.mean(axis=0)
    basis, _ = np.linalg.qr(basis)  # orthonormal and zero-mean (the mean lies outside the span)
    angles = np.array([0.0, 0.5, 1.0])
    T = (basis @ np.stack([np.cos(angles), np.sin(angles)])) * np.array([0.5, 1.0, 1.0])
    T = T.astype(np.float32)
    corr = np.corrcoef(T.T)
    assert 0.8 < corr[0, 1] < 0.9 and 0.8 < corr[1, 2] < 0.9 and corr[0, 2] < 0.8
    assert T[:, 0].max() < T[:, 2].max()
    S = np.stack([gaussian((20, 11)).ravel(), gaussian((20, 12)).ravel(), gaussian((20, 13)).ravel()], axis=1)
    S[S < 0.05] = 0.0  # compact supports, as EXTRACT's footprints have
    overlap = np.arange(17 * W, 23 * W)
    trash = pt.find_duplicate_cells(to_xp(S, xp, device), to_xp(T, xp, device), to_xp(overlap, xp, device))
    assert trash == [1, 0]
    # a cell away from the overlap pixels is never a candidate
    far = np.arange(0, 2 * W)
    assert pt.find_duplicate_cells(to_xp(S, xp, device), to_xp(T, xp, device), to_xp(far, xp, device)) == []


def test_partitions_run_side_by_side_within_the_free_memory(m3, monkeypatch):
    """With two threads the m3 movie's 2 x 2 partitions run two at a time on different threads; when the free
    memory holds only one partition's share (PARTITION_MEMORY_FACTOR x its block) they run one after the other.
    The results are the same, bitwise."""
    import threading

    from nwb_extract.engine import pipeline, solver_kernels

    cfg = json.loads(m3.attrs["config_json"])
    movie = m3["movie"][:300, ...]
    settings = {k: cfg[k] for k in ("avg_cell_radius", "num_partitions_x", "num_partitions_y")}
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    real_run_job = pipeline._run_job
    threads_used: list[int] = []

    def run_job(*args, **kwargs):
        threads_used.append(threading.get_ident())
        return real_run_job(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_run_job", run_job)
    side_by_side = pipeline.extract(movie, None, **settings)
    assert len(threads_used) == 4 and len(set(threads_used)) == 2
    block_bytes = 300 * 56 * 56 * 4  # a 48 x 48 block with its overlap, at most
    monkeypatch.setattr(backend, "free_memory_bytes", lambda: pipeline.PARTITION_MEMORY_FACTOR * block_bytes)
    threads_used.clear()
    in_turn = pipeline.extract(movie, None, **settings)
    assert len(threads_used) == 4 and len(set(threads_used)) == 1
    np.testing.assert_array_equal(side_by_side.footprints, in_turn.footprints)
    for kind, traces in side_by_side.traces.items():
        np.testing.assert_array_equal(traces, in_turn.traces[kind])

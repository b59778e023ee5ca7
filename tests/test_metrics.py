"""bcct.metrics: hand-computed cases and agreement with a plain wsolevaluation-style loop."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bcct.boxes import RESIZE, prepare_scoremap, quantise
from bcct.metrics import (
    BoxCorrectness,
    choose_threshold,
    iou_hits,
    loc_accuracy_curve,
    summarize,
    threshold_grid,
)

sys.path.insert(0, str(Path(__file__).parent))
import wsol_reference as ref  # noqa: E402

FULL = (RESIZE, RESIZE)


def blob_map(*blobs: tuple[int, int, int, int, float]) -> np.ndarray:
    """224x224 map, zero except inclusive pixel rectangles ``(x0, y0, x1, y1, value)``."""
    cam = np.zeros(FULL)
    for x0, y0, x1, y1, value in blobs:
        cam[y0 : y1 + 1, x0 : x1 + 1] = value
    return cam


def correctness(maps, gt_boxes, image_sizes=None, thresholds=None, masks=None) -> BoxCorrectness:
    """Evaluator fed with one batch (224x224 images unless sizes are given)."""
    evaluator = BoxCorrectness(thresholds)
    sizes = image_sizes or [FULL] * len(maps)
    evaluator.add(maps, [np.asarray(b) for b in gt_boxes], sizes, masks)
    return evaluator


# Four images, 0.01 grid; dim blobs (0.5 -> uint8 127) vanish from tau = 0.50 on.
# img0: always right.  img1: dim blob on GT, bright decoy -> right only below 0.5.
# img2, img3: big dim decoy, bright blob on GT -> V1 right only from 0.5 (img3 IoU 1640/2441).
HAND_MAPS = np.stack(
    [
        blob_map((50, 50, 99, 99, 1.0)),
        blob_map((100, 100, 139, 139, 0.5), (10, 10, 29, 29, 1.0)),
        blob_map((0, 0, 79, 79, 0.5), (150, 150, 189, 189, 1.0)),
        blob_map((0, 0, 79, 79, 0.5), (100, 100, 139, 139, 1.0)),
    ]
)
HAND_GT = [[[50, 50, 100, 100]], [[100, 100, 140, 140]], [[150, 150, 190, 190]], [[100, 100, 139, 159]]]
HAND_TOP1 = np.array([True, True, False, True])
HAND_TOP5 = np.ones(4, dtype=bool)


def test_zero_constant_and_nan_maps_score_the_zero_box():
    nan_map = np.full((14, 14), np.nan)
    evaluator = correctness([np.zeros(FULL), np.ones((14, 14)), nan_map], [[[0, 0, 9, 9]]] * 3)
    np.testing.assert_allclose(evaluator.iou_v1, 1 / 100)  # box [0,0,0,0] is one pixel
    np.testing.assert_allclose(evaluator.iou_v2, 1 / 100)


def test_v1_and_v2_differ_on_two_components():
    cam = blob_map((10, 10, 49, 49, 0.5), (150, 150, 169, 169, 1.0))
    evaluator = correctness([cam], [[[150, 150, 169, 169]]])
    hit = 400 / 441  # box [150,150,170,170] vs GT 20x20
    np.testing.assert_allclose(evaluator.iou_v1[0], [0.0] * 50 + [hit] * 50, rtol=1e-6)
    np.testing.assert_allclose(evaluator.iou_v2[0], hit, rtol=1e-6)


def test_hole_box_counts_for_v2_only():
    ring = blob_map((20, 20, 79, 79, 1), (40, 40, 59, 59, 0))
    evaluator = correctness([ring], [[[40, 40, 59, 59]]])
    np.testing.assert_allclose(evaluator.iou_v1[0], 400 / 61**2, rtol=1e-6)
    np.testing.assert_allclose(evaluator.iou_v2[0], 400 / 23**2, rtol=1e-6)


def test_border_clipping_changes_iou():
    evaluator = correctness([blob_map((200, 200, 223, 223, 1))], [[[200, 200, 223, 223]]])
    np.testing.assert_array_equal(evaluator.iou_v1, 1.0)  # unclipped box would give 576/625


def test_iou_exactly_at_level_counts_despite_float32_storage():
    # Pixels x 0-5 of row 0 -> box [0,0,6,1] (14 px) inside GT [0,0,9,1] (20 px): IoU = 0.7 exactly.
    evaluator = correctness([blob_map((0, 0, 5, 0, 1))], [[[0, 0, 9, 1]]])
    assert np.float32(0.7) < np.float64(0.7) and summarize(evaluator, [1], [1])["maxboxacc_v2_iou70"] == 1.0


def test_gt_boxes_are_scaled_and_best_gt_wins():
    cam = blob_map((50, 50, 99, 99, 1))  # box [50,50,100,100]
    evaluator = correctness(
        [cam, cam, cam],
        [[[0, 0, 10, 10]], [[0, 0, 10, 10], [50, 50, 100, 100]], [[101, 101, 201, 201]]],
        image_sizes=[FULL, FULL, (448, 448)],  # 101*224/448=50.5 -> 50, 201 -> 100
    )
    np.testing.assert_array_equal(evaluator.iou_v1[:, 0], [0.0, 1.0, 1.0])


def test_summarize_hand_case_oracle():
    out = summarize(correctness(HAND_MAPS, HAND_GT), HAND_TOP1, HAND_TOP5)
    expected = {
        "n_images": 4,
        "cls_top1": 0.75,
        "cls_top5": 1.0,
        "threshold": 0.5,
        "threshold_source": "oracle",
        "top1_loc": 0.5,
        "top5_loc": 0.75,
        "gt_known": 0.75,
        "maxboxacc": 0.75,
        "maxboxacc_v2_iou30": 1.0,
        "maxboxacc_v2_iou50": 1.0,
        "maxboxacc_v2_iou70": 0.75,
        "maxboxacc_v2": (1.0 + 1.0 + 0.75) / 3,
        "oracle_threshold": 0.5,
        "oracle_top1_loc": 0.5,
        "oracle_gt_known": 0.75,
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key


def test_summarize_hand_case_given_threshold():
    evaluator = correctness(HAND_MAPS, HAND_GT)
    out = summarize(evaluator, torch.tensor(HAND_TOP1), HAND_TOP5.tolist(), threshold=0.2)
    assert out["threshold_source"] == "given" and out["threshold"] == 0.2
    assert (out["gt_known"], out["top1_loc"], out["top5_loc"]) == (0.5, 0.5, 0.5)
    assert (out["oracle_threshold"], out["oracle_gt_known"], out["oracle_top1_loc"]) == (0.5, 0.75, 0.5)


def test_threshold_from_another_grid_maps_by_cutoff():
    evaluator = correctness(HAND_MAPS, HAND_GT)
    # 0.499 (a 0.001-grid point) has cut-off 127, like tau = 0.50 of the 0.01 grid.
    assert summarize(evaluator, HAND_TOP1, HAND_TOP5, threshold=0.499)["gt_known"] == 0.75
    with pytest.raises(ValueError):
        summarize(evaluator, HAND_TOP1, HAND_TOP5, threshold=0.503)  # cut-off 128 is not on the 0.01 grid


def test_curve_and_choose_threshold():
    evaluator = correctness(HAND_MAPS, HAND_GT)
    thresholds, curve = loc_accuracy_curve(evaluator)
    np.testing.assert_array_equal(thresholds, threshold_grid(0.01))
    np.testing.assert_array_equal(curve, [0.5] * 50 + [0.75] * 50)
    assert choose_threshold(evaluator) == 0.5  # first of the tied best thresholds


def test_merge_concat_and_state_dict_round_trip():
    whole = correctness(HAND_MAPS, HAND_GT)
    first = correctness(HAND_MAPS[:1], HAND_GT[:1])
    rest = correctness(torch.from_numpy(HAND_MAPS[1:]).float(), HAND_GT[1:])
    combined = BoxCorrectness.concat([first.state_dict(), rest])
    np.testing.assert_array_equal(combined.iou_v1, whole.iou_v1)
    np.testing.assert_array_equal(combined.iou_v2, whole.iou_v2)
    assert summarize(combined, HAND_TOP1, HAND_TOP5) == summarize(whole, HAND_TOP1, HAND_TOP5)
    with pytest.raises(ValueError):
        first.merge(BoxCorrectness(threshold_grid(0.001)))


def test_empty_evaluator_and_misaligned_flags_raise():
    with pytest.raises(ValueError):
        summarize(BoxCorrectness(), [], [])
    with pytest.raises(ValueError):
        summarize(correctness(HAND_MAPS, HAND_GT), HAND_TOP1[:3], HAND_TOP5)


def pxap_case_mask(ignore_decoy: bool) -> np.ndarray:
    """Rows 0-19 foreground; rows 20-29 background (or ignore=255) where the map is 0.5."""
    mask = np.zeros(FULL, np.uint8)
    mask[:20] = 1
    mask[20:30] = 255 if ignore_decoy else 0
    return mask


def test_pxap_hand_case():
    # fg: rows 0-9 at 1.0, rows 10-19 at 0.5; bg: rows 20-29 at 0.5, rest 0.
    # PR points: (R=0.5, P=1) at tau>=1, (R=1, P=2/3) at tau<=0.5 -> AP = 0.5 + 0.5*2/3.
    cam = np.zeros(FULL)
    cam[:10], cam[10:30] = 1.0, 0.5
    box = [[0, 0, 223, 19]]
    for ignore_decoy, expected in ((False, 5 / 6), (True, 1.0)):
        evaluator = correctness([cam], [box], masks=[pxap_case_mask(ignore_decoy)])
        assert summarize(evaluator, [1], [1])["pxap"] == pytest.approx(expected)
    assert "pxap" not in summarize(correctness([cam], [box]), [1], [1])


def random_batch(n_each: int, seed: int):
    """Random smooth maps at 14x14 and 28x28 with GT boxes on random image sizes."""
    rng = np.random.default_rng(seed)
    small, big = ref.random_smooth_maps(rng, n_each, 14), ref.random_smooth_maps(rng, n_each, 28)
    return tuple(a + b for a, b in zip(small, big))


@pytest.mark.parametrize("step", [0.01, 0.001])
def test_agrees_with_plain_per_threshold_loop(step):
    maps, gt_boxes, image_sizes = random_batch(15, seed=7)
    maps[3] = np.ones_like(maps[3])  # one constant map in the mix
    thresholds = threshold_grid(step)
    evaluator = BoxCorrectness(thresholds)
    evaluator.add(maps[:10], gt_boxes[:10], image_sizes[:10])
    evaluator.add(torch.from_numpy(np.stack(maps[10:15])), gt_boxes[10:15], image_sizes[10:15])
    evaluator.add(maps[15:], gt_boxes[15:], image_sizes[15:])

    v1 = ref.box_correct_counts(maps, gt_boxes, image_sizes, thresholds, multi_contour=False)
    v2 = ref.box_correct_counts(maps, gt_boxes, image_sizes, thresholds, True, (0.3, 0.5, 0.7))
    np.testing.assert_array_equal(iou_hits(evaluator.iou_v1, 0.5).sum(0), v1[0.5])
    for level, counts in v2.items():
        np.testing.assert_array_equal(iou_hits(evaluator.iou_v2, level).sum(0), counts)

    out = summarize(evaluator, np.ones(len(maps)), np.ones(len(maps)))
    n = len(maps)
    assert out["maxboxacc"] == v1[0.5].max() / n
    assert out["maxboxacc_v2"] == pytest.approx(np.mean([c.max() / n for c in v2.values()]))
    assert 0 < out["maxboxacc"] < 1  # the random data is not degenerate


def test_pxap_agrees_with_reference():
    maps, _, image_sizes = random_batch(5, seed=3)
    rng = np.random.default_rng(4)
    masks = [rng.random((h, w)) < 0.3 for w, h in image_sizes]
    boxes = [np.array([[0, 0, w - 1, h - 1]]) for w, h in image_sizes]
    thresholds = threshold_grid(0.01)
    evaluator = BoxCorrectness(thresholds)
    evaluator.add(maps, boxes, image_sizes, masks)
    expected = ref.pxap(maps, masks, thresholds)
    assert summarize(evaluator, np.ones(10), np.ones(10))["pxap"] == pytest.approx(expected, abs=1e-12)


def reference_cells(maps, gt_boxes, thresholds, size):
    """float32 ``[N, T]`` V1 and V2 IoUs of the former evaluator (one findContours per distinct binary map)."""
    rows = [ref.grouped_image_ious(prepare_scoremap(m, size), np.asarray(g), thresholds) for m, g in zip(maps, gt_boxes)]
    return np.float32([r[0] for r in rows]), np.float32([r[1] for r in rows])


@pytest.mark.parametrize(
    "n_maps, sizes, frame, noise, seed",
    [
        (2000, (5, 7, 9, 14, 20, 28), None, True, 11),  # scored in their own frame: every structure survives
        (60, (7, 14, 28), RESIZE, True, 12),  # bicubic-resized to 224 first, as in evaluation
        (16, (224,), RESIZE, False, 13),
    ],
)
def test_every_cell_matches_contour_reference_on_hard_maps(n_maps, sizes, frame, noise, seed):
    """The component tree gives the former evaluator's V1 and V2 IoU in every image x
    threshold cell (0.001 grid) of hard maps: noise, plateaus, rings and holes, lines,
    diagonals, area ties, border contact, constant maps, smooth maps."""
    maps, gt_boxes, image_sizes = ref.hard_maps(np.random.default_rng(seed), n_maps, sizes, noise)
    thresholds = threshold_grid(0.001)
    cells = 0
    for s in sizes:
        idx = [i for i, m in enumerate(maps) if m.shape[0] == s]
        size = frame or s
        group_maps = [maps[i] for i in idx]
        group_gt = [ref_scaled(gt_boxes[i], image_sizes[i], size) for i in idx]
        evaluator = BoxCorrectness(thresholds, size=size, workers=2)
        evaluator.add(group_maps, [gt_boxes[i] for i in idx], [image_sizes[i] for i in idx])
        v1, v2 = reference_cells(group_maps, group_gt, thresholds, size)
        np.testing.assert_array_equal(evaluator.iou_v1, v1, err_msg=f"V1, maps of {s}x{s}")
        np.testing.assert_array_equal(evaluator.iou_v2, v2, err_msg=f"V2, maps of {s}x{s}")
        cells += v1.size
    assert cells == n_maps * len(thresholds)


def brute_levels(q: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill and peak levels by their definitions, one connected-component labelling per cut-off:
    ``fill[p] = q[p] + #{c >= q[p]: p in a hole of q > c}`` (4-connected background not reaching
    the border), ``peak[p] = #{c: p 8-connected to pixel seed in q > c}``."""
    fill, peak = q.astype(np.int64), np.zeros(q.shape, np.int64)
    sy, sx = divmod(seed, q.shape[1])
    for c in range(256):
        _, bg = cv2.connectedComponents(np.pad(q <= c, 1, constant_values=True).view(np.uint8), connectivity=4)
        fill += (bg[1:-1, 1:-1] != bg[0, 0]) & (q <= c)
        _, fg = cv2.connectedComponents((q > c).view(np.uint8), connectivity=8)
        peak += (fg == fg[sy, sx]) & (q > c) & (q[sy, sx] > c)
    return fill, peak


def test_reconstructions_match_their_definitions():
    """box_tree.reconstruct (scans until stable) gives the fill and peak levels of the
    definition on hard maps, spirals included (many scans)."""
    from bcct.box_tree import reconstruct

    maps, _, _ = ref.hard_maps(np.random.default_rng(21), 60, (5, 9, 14, 20))
    spiral = np.zeros((15, 15))
    for k in range(0, 8, 2):  # nested square rings with one gap each: a corridor winding inwards
        spiral[k, k:15 - k] = spiral[14 - k, k:15 - k] = spiral[k:15 - k, k] = spiral[k:15 - k, 14 - k] = 1
        spiral[k + 1, k] = 0 if k else 1
        spiral[k + 1, k + 1] = 1
    for cam in maps + [spiral, spiral.T[::-1]]:
        q = quantise(cam / max(cam.max(), 1e-9))
        height, width = q.shape
        qp = np.pad(q, 1).ravel()
        fp, hp = np.empty_like(qp), np.empty_like(qp)
        seed = int(np.argmax(q))
        reconstruct(qp, fp, hp, (seed // width + 1) * (width + 2) + seed % width + 1, height, width,
                    np.empty(height + 2, np.uint8))
        fill, peak = brute_levels(q, seed)
        np.testing.assert_array_equal(fp.reshape(height + 2, width + 2)[1:-1, 1:-1], fill)
        np.testing.assert_array_equal(hp.reshape(height + 2, width + 2)[1:-1, 1:-1], peak)


def test_compiled_quantisation_is_bit_identical():
    """metrics.quantised_maps (OpenCV resize + one compiled normalise/cast pass) equals
    quantise(prepare_scoremap(m)) bit for bit, NaN / constant / infinite maps included."""
    from bcct.metrics import quantised_maps

    rng = np.random.default_rng(5)
    maps = [rng.standard_normal((14, 14)) * 10.0 ** rng.uniform(-8, 8) + rng.uniform(-1e6, 1e6) for _ in range(40)]
    maps += [m.astype(np.float32) for m in maps[:5]] + [torch.rand(7, 9, dtype=torch.bfloat16)]
    maps += [np.full((14, 14), 3.0), np.ones((224, 224)), rng.random((224, 224)), rng.random((300, 20))]
    for bad in (np.nan, np.inf, -np.inf):
        cam = rng.random((14, 14))
        cam[3, 4] = bad
        maps.append(cam)
    for size in (RESIZE, 28):
        with np.errstate(invalid="ignore"):  # the infinite map: inf - inf in both paths
            expected = np.stack([quantise(prepare_scoremap(m, size)) for m in maps])
            np.testing.assert_array_equal(quantised_maps(maps, size), expected)


def ref_scaled(boxes, image_size, size):
    return np.array([ref.resized_box(b, image_size) for b in boxes]) if size == RESIZE else np.asarray(boxes)


def test_mask_iou50_and_bc_star_by_hand():
    from bcct.metrics import mask_iou50, mask_validity

    gt = [np.array([[10, 10, 30, 30]])] * 4
    boxes = np.array([[10, 10, 30, 30],     # the GT box itself: IoU 1
                      [0, 0, 100, 100],     # covers it: BC* yes, IoU 0.04: no
                      [10, 10, 30, 22],     # IoU 12/20 = 0.6
                      [10, 10, 30, 19]])    # IoU 9/20 = 0.45
    assert mask_iou50(boxes, gt).tolist() == [True, False, True, False]
    assert mask_validity(boxes, gt).tolist() == [True, True, True, False]

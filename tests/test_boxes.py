"""Hand-computed checks of bcct.boxes against the wsolevaluation protocol (Choe et al., CVPR 2020)."""

import cv2
import numpy as np
import pytest
import torch

from bcct.boxes import (
    RESIZE,
    box_at_threshold,
    box_iou,
    boxes_from_binary,
    cutoffs,
    prepare_scoremap,
    prepare_scoremaps,
    quantise,
    scale_boxes,
)


def blob_map(*blobs: tuple[int, int, int, int, float]) -> np.ndarray:
    """224x224 map, zero except inclusive pixel rectangles ``(x0, y0, x1, y1, value)``."""
    cam = np.zeros((RESIZE, RESIZE))
    for x0, y0, x1, y1, value in blobs:
        cam[y0 : y1 + 1, x0 : x1 + 1] = value
    return cam


def test_constant_nan_and_zero_maps_become_all_zero():
    for cam in (np.ones((14, 14)), np.full((14, 14), -3.0), np.zeros((28, 28))):
        out = prepare_scoremap(cam)
        assert out.shape == (RESIZE, RESIZE) and not out.any()
    with_nan = np.random.default_rng(0).random((14, 14))
    with_nan[3, 4] = np.nan
    assert not prepare_scoremap(with_nan).any()


def test_prepare_is_float64_bicubic_then_min_max():
    cam = np.random.default_rng(0).random((14, 14)).astype(np.float32)
    expected = cv2.resize(cam.astype(np.float64), (RESIZE, RESIZE), interpolation=cv2.INTER_CUBIC)
    expected = (expected - expected.min()) / (expected - expected.min()).max()
    out = prepare_scoremaps(torch.from_numpy(np.stack([cam, 2 * cam])))
    assert out.shape == (2, RESIZE, RESIZE) and out.dtype == np.float64
    np.testing.assert_array_equal(out[0], expected)
    assert out.min() == 0.0 and out.max() == 1.0


def test_quantise_truncates():
    np.testing.assert_array_equal(quantise(np.array([0.0, 0.5, 0.999, 1.0])), [0, 127, 254, 255])


def test_cutoffs_follow_python_int_of_float64_product():
    grid = np.arange(0, 1, 0.001)
    np.testing.assert_array_equal(cutoffs(grid), [int(t * np.max(np.array([255], np.uint8))) for t in grid])
    np.testing.assert_array_equal(cutoffs([0.0, 0.49, 0.5, 0.99]), [0, 124, 127, 252])
    np.testing.assert_array_equal(cutoffs([0.3, 0.9], max_value=0), [0, 0])
    assert len(np.unique(cutoffs(grid))) == 255


def test_empty_binary_gives_zero_box():
    empty = np.zeros((RESIZE, RESIZE), np.uint8)
    for multi in (False, True):
        np.testing.assert_array_equal(boxes_from_binary(empty, multi), [[0, 0, 0, 0]])


def test_box_is_bounding_rect_plus_size_and_clipped_at_border():
    # boundingRect gives w = 10 for pixels 0..9, so x1 = x + w = 10 (one past the blob).
    np.testing.assert_array_equal(boxes_from_binary(blob_map((0, 0, 9, 9, 1)) > 0, False), [[0, 0, 10, 10]])
    # x + w = 224 is clipped to 223.
    at_border = blob_map((200, 190, 223, 223, 1)) > 0
    np.testing.assert_array_equal(boxes_from_binary(at_border, False), [[200, 190, 223, 223]])


def test_v1_keeps_largest_contour_v2_keeps_all():
    binary = blob_map((10, 10, 49, 49, 1), (150, 150, 169, 169, 1)) > 0
    np.testing.assert_array_equal(boxes_from_binary(binary, False), [[10, 10, 50, 50]])
    v2 = boxes_from_binary(binary, True)
    assert sorted(map(tuple, v2.tolist())) == [(10, 10, 50, 50), (150, 150, 170, 170)]


def test_v1_tie_goes_to_first_contour_like_python_max():
    binary = (blob_map((5, 5, 7, 7, 1), (100, 100, 102, 102, 1)) > 0).astype(np.uint8)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    np.testing.assert_array_equal(boxes_from_binary(binary, False), [[x, y, x + w, y + h]])


def test_hole_borders_are_contours_too():
    ring = blob_map((20, 20, 79, 79, 1), (40, 40, 59, 59, 0)) > 0
    assert sorted(map(tuple, boxes_from_binary(ring, True).tolist())) == [(20, 20, 80, 80), (39, 39, 61, 61)]


def test_box_at_threshold_uses_strict_greater_than_cutoff():
    # Dim blob 0.5 -> uint8 127; cut-off int(0.49*255)=124 keeps it, int(0.5*255)=127 drops it.
    cam = blob_map((0, 0, 79, 79, 0.5), (150, 150, 169, 169, 1.0))
    np.testing.assert_array_equal(box_at_threshold(cam, 0.49), [[0, 0, 80, 80]])
    np.testing.assert_array_equal(box_at_threshold(cam, 0.5), [[150, 150, 170, 170]])
    assert len(box_at_threshold(cam, 0.49, multi_contour=True)) == 2
    np.testing.assert_array_equal(box_at_threshold(np.zeros((RESIZE, RESIZE)), 0.0), [[0, 0, 0, 0]])


def test_box_iou_inclusive_convention():
    ious = box_iou([[0, 0, 9, 9]], [[0, 0, 9, 9], [5, 5, 14, 14], [9, 0, 18, 9], [10, 10, 20, 20]])
    np.testing.assert_allclose(ious, [[1.0, 25 / 175, 10 / 190, 0.0]])
    # [0,0,0,0] is a one-pixel box, not an empty one.
    np.testing.assert_allclose(box_iou([[0, 0, 0, 0]], [[0, 0, 9, 9]]), [[1 / 100]])
    assert box_iou(np.zeros((3, 4)), np.zeros((2, 4))).shape == (3, 2)
    # Malformed boxes with a non-positive union score 0 instead of dividing by it.
    np.testing.assert_array_equal(box_iou([[5, 5, 3, 5]], [[5, 5, 3, 5]]), [[0.0]])


def test_scale_boxes_truncates():
    # 10*224/500=4.48, 20*224/375=11.95, 99*224/500=44.35, 199*224/375=118.87
    np.testing.assert_array_equal(scale_boxes([[10, 20, 99, 199]], (500, 375)), [[4, 11, 44, 118]])
    np.testing.assert_array_equal(scale_boxes(np.array([[0, 0, 448, 224]]), (448, 224)), [[0, 0, 224, 224]])
    assert scale_boxes([[1.9, 1.9, 3.0, 3.0]], (224, 224)).tolist() == [[1, 1, 3, 3]]


@pytest.mark.parametrize("tau", [0.0, 0.25, 0.73])
def test_box_at_threshold_matches_cv2_threshold(tau):
    cam = prepare_scoremap(np.random.default_rng(1).random((14, 14)))
    image = (cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(image, int(tau * image.max()), 255, cv2.THRESH_BINARY)
    np.testing.assert_array_equal(box_at_threshold(cam, tau, True), boxes_from_binary(binary, True))

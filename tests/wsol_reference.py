"""Plain per-threshold restatement of the wsolevaluation protocol (Choe et al., CVPR 2020).

Also keeps bcct's former evaluator, :func:`grouped_image_ious` (one ``findContours`` per
distinct binary map), as the cell-by-cell reference of the component-tree evaluator, and
:func:`hard_maps`, score maps built to be hard for it.

Written from reading clovaai/wsolevaluation (``inference.normalize_scoremap``,
``evaluation.compute_bboxes_from_scoremaps``, ``BoxEvaluator``,
``MaskEvaluator``) and deliberately unoptimised: one ``cv2.threshold`` +
``cv2.findContours`` per threshold, Python-level IoU.  It is the oracle that
``bcct.metrics.BoxCorrectness`` is checked against (tests) and timed against
(``bench/bench_evaluator.py``).  Also holds the random smooth-map generator the
two share.
"""

from __future__ import annotations

import cv2
import numpy as np

from bcct.boxes import QUANT_MAX, box_iou, contour_boxes, cutoffs, quantise

SIZE = 224


def normalized_scoremap(cam: np.ndarray) -> np.ndarray:
    """float64 bicubic resize to 224, then min-max; NaN or constant -> zeros."""
    cam = cv2.resize(np.asarray(cam, dtype=np.float64), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam = cam - cam.min()
    return cam / cam.max()


def boxes_at(scoremap: np.ndarray, tau: float, multi_contour: bool) -> list[list[int]]:
    """Estimated boxes at one threshold, step by step as wsolevaluation does."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return [[0, 0, 0, 0]]
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return boxes


def iou(box: list[int], gt: list[int]) -> float:
    """Inclusive (+1) IoU of two xyxy boxes, 0 for a non-positive union."""
    inter_w = max(0, min(box[2], gt[2]) - max(box[0], gt[0]) + 1)
    inter_h = max(0, min(box[3], gt[3]) - max(box[1], gt[1]) + 1)
    inter = inter_w * inter_h
    area_box = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    area_gt = (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1)
    union = area_box + area_gt - inter
    return inter / union if union > 0 else 0.0


def resized_box(box, image_size) -> list[int]:
    """GT box in original pixels -> 224 frame with int() truncation."""
    width, height = map(float, image_size)
    x0, y0, x1, y1 = map(float, box)
    return [int(x0 * SIZE / width), int(y0 * SIZE / height), int(x1 * SIZE / width), int(y1 * SIZE / height)]


def box_correct_counts(maps, gt_boxes, image_sizes, thresholds, multi_contour, iou_levels=(0.5,)):
    """``{level: number of correct images per threshold}``, one evaluator pass.

    An image is correct at a threshold when the best IoU over its estimated
    boxes and its GT boxes is >= level.
    """
    counts = {level: np.zeros(len(thresholds), dtype=np.int64) for level in iou_levels}
    for cam, boxes, image_size in zip(maps, gt_boxes, image_sizes):
        scoremap = normalized_scoremap(cam)
        gts = [resized_box(b, image_size) for b in boxes]
        for t, tau in enumerate(thresholds):
            best = max(iou(box, gt) for box in boxes_at(scoremap, tau, multi_contour) for gt in gts)
            for level in iou_levels:
                counts[level][t] += best >= level
    return counts


def max_box_acc(maps, gt_boxes, image_sizes, thresholds, multi_contour, iou_levels=(0.5,)):
    """``{level: MaxBoxAcc fraction}`` (V1 with ``multi_contour=False``, V2 parts with True)."""
    counts = box_correct_counts(maps, gt_boxes, image_sizes, thresholds, multi_contour, iou_levels)
    return {level: c.max() / len(maps) for level, c in counts.items()}


def pxap(maps, masks, thresholds) -> float:
    """PxAP fraction: histograms per image, then the MaskEvaluator.compute sweep."""
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    fg_hist = np.zeros(len(edges) - 1)
    bg_hist = np.zeros(len(edges) - 1)
    for cam, mask in zip(maps, masks):
        scoremap = normalized_scoremap(cam)
        labels = cv2.resize(np.float32(mask), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        fg_hist += np.histogram(scoremap[labels == 1], bins=edges)[0]
        bg_hist += np.histogram(scoremap[labels == 0], bins=edges)[0]
    tp = fg_hist[::-1].cumsum()
    fn = fg_hist.sum() - tp
    fp = bg_hist[::-1].cumsum()
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[((tp + fp) != 0)[1:]].sum())


def random_smooth_maps(rng: np.random.Generator, n: int, resolution: int):
    """``n`` random smooth score maps (sums of 1-4 Gaussians + noise) with matching GT.

    Returns ``(maps, gt_boxes, image_sizes)``: float32 ``[resolution, resolution]``
    maps, 1-3 xyxy GT boxes per image around Gaussian bumps (some off target)
    on random image sizes.
    """
    grid = (np.arange(resolution) + 0.5) / resolution
    maps, gt_boxes, image_sizes = [], [], []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(64, 640, size=2))
        cam = 0.05 * rng.standard_normal((resolution, resolution))
        boxes = []
        for bump in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0.1, 0.9, size=2)
            sx, sy = rng.uniform(0.04, 0.3, size=2)
            weight = rng.uniform(0.3, 1.0) * (1 if bump == 0 or rng.random() < 0.8 else -1)
            bump_x = np.exp(-((grid - cx) ** 2) / (2 * sx**2))
            bump_y = np.exp(-((grid - cy) ** 2) / (2 * sy**2))
            cam += weight * bump_y[:, None] * bump_x[None, :]
            if len(boxes) < 3 and (bump == 0 or rng.random() < 0.3):
                k = rng.uniform(1.0, 2.5)
                cx_j, cy_j = cx + rng.normal(0, 0.05), cy + rng.normal(0, 0.05)
                x0, x1 = np.clip([cx_j - k * sx, cx_j + k * sx], 0, 1) * (width - 1)
                y0, y1 = np.clip([cy_j - k * sy, cy_j + k * sy], 0, 1) * (height - 1)
                boxes.append([int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))])
        maps.append(cam.astype(np.float32))
        gt_boxes.append(np.array(boxes))
        image_sizes.append((width, height))
    return maps, gt_boxes, image_sizes


def grouped_image_ious(map01: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray):
    """Best V1 and V2 IoU ``([T], [T])`` of one prepared map: bcct's evaluator before the
    component tree.  Thresholds are grouped by the binary map they produce (the set of
    quantised values above the cut-off) and contours are extracted once per group."""
    quantised = quantise(map01)
    cuts = cutoffs(thresholds, int(quantised.max()))
    present = np.bincount(quantised.ravel(), minlength=QUANT_MAX + 1) > 0
    n_values_at_or_below = np.cumsum(present)[cuts]
    _, first, inverse = np.unique(n_values_at_or_below, return_index=True, return_inverse=True)

    group_boxes, largest = [], []
    for cut in cuts[first].tolist():  # Python ints: a numpy int64 would upcast the uint8 map
        boxes, k = contour_boxes(quantised > cut)
        group_boxes.append(boxes)
        largest.append(k)
    starts = np.cumsum([0] + [len(b) for b in group_boxes[:-1]])
    best_over_gt = box_iou(np.concatenate(group_boxes), gt_boxes).max(axis=1)
    v1 = best_over_gt[starts + np.asarray(largest)]
    v2 = np.maximum.reduceat(best_over_gt, starts)
    return v1[inverse], v2[inverse]


def _shapes(rng: np.random.Generator, s: int) -> np.ndarray:
    """Rectangles, rings (with holes, some nested), 1-pixel lines and diagonals on plateaus,
    some touching the border; a few shapes repeated at the same value (area ties)."""
    cam = np.full((s, s), rng.choice([0.0, rng.random()]))
    for _ in range(int(rng.integers(1, 7))):
        x0, y0 = (int(v) for v in rng.integers(0, s, 2))
        w, h = (int(v) for v in rng.integers(1, max(2, s // 2), 2))
        value = float(rng.choice([1.0, 0.5, rng.random()]))
        kind = int(rng.integers(0, 5))
        if kind == 0:
            cam[y0 : y0 + h, x0 : x0 + w] = value
        elif kind == 1:  # ring, possibly with a dimmer core
            cam[y0 : y0 + h, x0 : x0 + w] = value
            t = int(rng.integers(1, 3))
            cam[y0 + t : y0 + h - t, x0 + t : x0 + w - t] = rng.random() * value
        elif kind == 2:  # thin horizontal / vertical line
            if rng.random() < 0.5:
                cam[y0, x0 : x0 + w] = value
            else:
                cam[y0 : y0 + h, x0] = value
        elif kind == 3:  # diagonal (8-connected only) or a checkerboard patch
            n = min(w, s - x0, s - y0)
            if rng.random() < 0.5:
                cam[y0 + np.arange(n), x0 + np.arange(n)] = value
            else:
                yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
                patch = cam[y0 : y0 + h, x0 : x0 + w]
                patch[((yy + xx) % 2 == 0)[: patch.shape[0], : patch.shape[1]]] = value
        else:  # two copies of one shape at the same value: equal contour areas
            w, h = min(w, s // 2), min(h, s // 2)
            cam[:h, :w] = value
            cam[s - h :, s - w :] = value
            if w > 2 and h > 2 and rng.random() < 0.5:
                cam[1 : h - 1, 1 : w - 1] = 0
    return cam


def hard_maps(rng: np.random.Generator, n: int, sizes=(5, 7, 9, 14, 20, 28), noise: bool = True):
    """``(maps, gt_boxes, image_sizes)``: ``n`` float64 maps hard for contour-derived boxes
    (noise at few levels, plateaus, rings and holes, lines, diagonals, area ties, border
    contact, constant maps, smooth maps) at random ``sizes``, 1-3 GT boxes in the map's
    own frame (``image_sizes`` = the map size).  ``noise=False`` leaves out the noise maps
    (thousands of contours per cut-off at 224x224, slow for the reference)."""
    maps, gt_boxes = [], []
    for _ in range(n):
        s = int(rng.choice(sizes))
        kind = int(rng.integers(0 if noise else 3, 7))
        if kind == 0:  # noise, few levels
            cam = rng.integers(0, int(rng.integers(2, 6)), (s, s)) / 4.0
        elif kind == 1:  # sparse binary noise
            cam = (rng.random((s, s)) < rng.uniform(0.2, 0.8)).astype(np.float64)
        elif kind == 2:
            cam = rng.random((s, s))
        elif kind == 3:
            cam = np.full((s, s), rng.random())
        elif kind == 4:  # smooth
            cam = cv2.resize(rng.random((int(rng.integers(2, 5)),) * 2), (s, s), interpolation=cv2.INTER_CUBIC)
        else:
            cam = _shapes(rng, s)
        boxes = rng.integers(0, s, (int(rng.integers(1, 4)), 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        maps.append(cam.astype(np.float64))
        gt_boxes.append(boxes)
    return maps, gt_boxes, [(int(m.shape[1]), int(m.shape[0])) for m in maps]

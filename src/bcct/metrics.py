"""WSOL metrics: MaxBoxAcc, MaxBoxAccV2, Top-1/Top-5/GT-known Loc and PxAP.

One evaluator, :class:`BoxCorrectness`, is shared by every method.  It follows
the protocol of Choe et al., "Evaluating Weakly Supervised Object Localization
Methods Right", CVPR 2020 (clovaai/wsolevaluation ``BoxEvaluator`` and
``MaskEvaluator``), see :mod:`bcct.boxes` for the score map -> box steps:

* MaxBoxAcc: max over score-map thresholds of the fraction of images whose
  largest-contour box has IoU >= 0.5 with some GT box;
* MaxBoxAccV2: mean over IoU levels {0.3, 0.5, 0.7} of the max over thresholds
  of the fraction of images where some box of some contour matches some GT box
  (the best threshold is searched separately for every IoU level);
* PxAP: area under the pixel precision-recall curve built from per-threshold
  histograms of GT-foreground and GT-background scores.

Thresholds only act through the integer cut-off ``int(tau * 255)``, and the
foreground sets of successive cut-offs are nested: instead of one
``findContours`` per threshold, :mod:`bcct.box_tree` derives every contour box of
every cut-off from one component-tree pass per map (``findContours`` only runs
for the rare cut-offs where the largest contour cannot be told from the tree),
and the per-cut-off IoUs are gathered back onto the threshold grid.  The
results are identical to the per-threshold loop of wsolevaluation.  Maps are
scored on all the cores the process may use (threads; ``workers`` to change).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from bcct.box_tree import N_CUTS, QUANT_FALLBACK, batch_cut_ious, best_iou, quantise_maps
from bcct.boxes import (
    RESIZE,
    cutoffs,
    prepare_scoremap,
    quantise,
    scale_boxes,
    to_numpy,
)

IOU_THRESHOLD = 0.5
V2_IOU_LEVELS = (0.3, 0.5, 0.7)
MASK_FOREGROUND = 1
MASK_BACKGROUND = 0
_RESIZE_GROUP = 8  # maps resized per compiled quantisation call


def threshold_grid(step: float = 0.01) -> np.ndarray:
    """Score-map threshold grid ``np.arange(0, 1, step)``; wsolevaluation uses step 0.001."""
    return np.arange(0, 1, step)


def default_workers() -> int:
    """Cores this process may use (the evaluator's default thread count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cut_ious(quantised: np.ndarray, gt_boxes: Sequence[np.ndarray], need: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best V1 and V2 IoU ``([N, 256], [N, 256])`` of uint8 maps ``[N, H, W]`` at every cut-off
    ``c`` with ``need[n, c]`` (other entries are meaningless).

    All cut-offs of a map come from one component-tree pass (:mod:`bcct.box_tree`); the
    (rare) V1 cells the tree cannot decide run ``findContours`` on that binary map alone.
    """
    n = len(quantised)
    n_gt = np.array([len(g) for g in gt_boxes], dtype=np.int64)
    gts = np.zeros((n, max(1, int(n_gt.max(initial=1))), 4), dtype=np.int64)
    for i, g in enumerate(gt_boxes):
        gts[i, : len(g)] = g
    v1 = np.zeros((n, N_CUTS))
    v2 = np.zeros((n, N_CUTS))
    undecided = np.zeros((n, N_CUTS), dtype=bool)
    batch_cut_ious(np.ascontiguousarray(quantised), gts, n_gt, np.ascontiguousarray(need), v1, v2, undecided)
    height, width = quantised.shape[1:]
    for i, cut in np.argwhere(undecided).tolist():
        binary = (quantised[i] > cut).view(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
        v1[i, cut] = best_iou(x, y, min(x + w, width - 1), min(y + h, height - 1), gts[i, : n_gt[i]])
    return v1, v2


def quantised_maps(maps: Sequence[Any], size: int = RESIZE) -> np.ndarray:
    """uint8 ``[N, size, size]``: ``quantise(prepare_scoremap(m, size))`` for every map, with the
    float64 bicubic resize in OpenCV and the normalisation + cast in one compiled pass
    (bit-identical; maps holding an infinity take the numpy path)."""
    n = len(maps)
    quantised = np.empty((n, size, size), dtype=np.uint8)
    status = np.empty(n, dtype=np.int8)
    cams = np.empty((min(n, _RESIZE_GROUP), size, size))  # reused: fresh pages cost more than the resize
    for start in range(0, n, _RESIZE_GROUP):
        group = maps[start : start + _RESIZE_GROUP]
        for j, m in enumerate(group):
            cam = np.ascontiguousarray(to_numpy(m), dtype=np.float64)
            if cam.ndim != 2:
                raise ValueError(f"a score map must be 2-D, got shape {cam.shape}")
            cv2.resize(cam, (size, size), dst=cams[j], interpolation=cv2.INTER_CUBIC)
        quantise_maps(cams[: len(group)], quantised[start : start + len(group)], status[start : start + len(group)])
    for i in np.flatnonzero(status == QUANT_FALLBACK):
        quantised[i] = quantise(prepare_scoremap(maps[i], size))
    return quantised


def _score_chunk(maps: Sequence[Any], gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray, size: int):
    """``(v1, v2)`` ``[n, T]`` for already scaled GT boxes: prepare, quantise, one tree pass per map."""
    quantised = quantised_maps(maps, size)
    top = quantised.reshape(len(maps), -1).max(axis=1).astype(np.float64)
    cuts = (np.asarray(thresholds, dtype=np.float64)[None, :] * top[:, None]).astype(np.int64)  # = cutoffs()
    need = np.zeros((len(maps), N_CUTS), dtype=bool)
    np.put_along_axis(need, cuts, True, axis=1)
    v1, v2 = cut_ious(quantised, gt_boxes, need)
    return np.take_along_axis(v1, cuts, axis=1), np.take_along_axis(v2, cuts, axis=1)


def score_maps(
    maps: Sequence[Any], gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray, size: int = RESIZE,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Best V1 and V2 IoU ``([N, T], [N, T])`` float64 of raw score maps against GT boxes in
    the ``size`` frame, exactly wsolevaluation's per-threshold numbers.

    ``workers > 1`` splits the maps over threads (the tree pass, the resize and most numpy
    steps release the GIL).
    """
    n = len(maps)
    if n == 0:
        return np.zeros((0, len(thresholds))), np.zeros((0, len(thresholds)))
    workers = max(1, min(int(workers), n // 8 or 1))
    if workers == 1:
        return _score_chunk(maps, gt_boxes, thresholds, size)
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda ab: _score_chunk(maps[ab[0] : ab[1]], gt_boxes[ab[0] : ab[1]], thresholds, size),
                              zip(bounds[:-1], bounds[1:])))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def image_ious(
    map01: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best V1 and V2 IoU of one prepared map at every threshold, ``([T], [T])`` float64.

    ``gt_boxes`` are already in the map's frame.  V1 scores the largest contour's box, V2
    the best pair over all contour boxes and GT boxes; both take the max over GT boxes.
    """
    quantised = quantise(map01)[None]
    cuts = cutoffs(thresholds, int(quantised.max()))
    need = np.zeros((1, N_CUTS), dtype=bool)
    need[0, cuts] = True
    v1, v2 = cut_ious(quantised, [np.asarray(gt_boxes).reshape(-1, 4)], need)
    return v1[0, cuts], v2[0, cuts]


def prepare_mask(mask: Any, size: int = RESIZE) -> np.ndarray:
    """Resize a GT mask to ``size x size`` with nearest-neighbour interpolation (uint8 labels).

    Label convention of wsolevaluation's ``get_mask``: 1 (or True) foreground,
    0 background, 255 "ignore" (OpenImages ignore boxes minus foreground); any
    label other than 0/1 is left out of PxAP.  Nearest-neighbour picks the same
    source pixels whatever the dtype, so resizing the label map equals
    wsolevaluation's per-instance resizing.
    """
    labels = to_numpy(mask)
    if labels.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {labels.shape}")
    return cv2.resize(labels.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


def mask_histograms(map01: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Score histograms ``[2, T + 2]`` (row 0: GT foreground, row 1: GT background).

    Bins are ``[t_0, t_1), ..., [t_{T-1}, 1), [1, 2), [2, 3]`` as in
    wsolevaluation's ``MaskEvaluator`` (the float map, not the quantised one).
    """
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    return np.stack(
        [
            np.histogram(map01[labels == MASK_FOREGROUND], bins=edges)[0],
            np.histogram(map01[labels == MASK_BACKGROUND], bins=edges)[0],
        ]
    ).astype(np.int64)


def pxap_from_histograms(histograms: np.ndarray) -> float:
    """PxAP in [0, 1] from accumulated ``[2, T + 2]`` histograms; NaN without GT foreground.

    Sweeps the thresholds from high to low (cumulative sums of the reversed
    histograms), then sums ``precision[i] * (recall[i] - recall[i-1])`` over
    the thresholds with at least one positive prediction, exactly as
    wsolevaluation's ``MaskEvaluator.compute`` (which reports it x100).
    """
    fg_hist, bg_hist = np.asarray(histograms)
    n_foreground = fg_hist.sum()
    if n_foreground == 0:
        return float("nan")
    tp = fg_hist[::-1].cumsum()
    fp = bg_hist[::-1].cumsum()
    predicted = tp + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / predicted
    recall = tp / n_foreground
    terms = precision[1:] * np.diff(recall)
    return float(terms[predicted[1:] != 0].sum())


class BoxCorrectness:
    """Per-image, per-threshold localisation IoUs (and PxAP histograms), mergeable across ranks.

    ``iou_v1[n, t]`` is the IoU of image ``n``'s largest-contour box at
    threshold ``t`` (best over GT boxes) and ``iou_v2[n, t]`` the best IoU over
    all contour boxes and GT boxes; both are stored as float32, which cannot
    move an IoU across 0.3/0.5/0.7 because IoUs are ratios of pixel counts (see
    :func:`iou_hits`).  Rows are kept in the order images were added.
    """

    def __init__(self, thresholds: Any = None, size: int = RESIZE, workers: int | None = None) -> None:
        grid = threshold_grid() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError("thresholds must be a non-empty 1-D array")
        if (np.diff(grid) <= 0).any() or grid[0] < 0 or grid[-1] >= 1:
            raise ValueError("thresholds must be strictly increasing within [0, 1)")
        self.thresholds = grid
        self.size = int(size)
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self._v1: list[np.ndarray] = [np.zeros((0, grid.size), dtype=np.float32)]
        self._v2: list[np.ndarray] = [np.zeros((0, grid.size), dtype=np.float32)]
        self.mask_histograms = np.zeros((2, grid.size + 2), dtype=np.int64)
        self.n_mask_images = 0

    def add(
        self,
        scoremaps: Any,
        gt_boxes: Sequence[Any],
        image_sizes: Sequence[tuple[float, float]],
        gt_masks: Sequence[Any] | None = None,
    ) -> None:
        """Score a batch of GT-class score maps (any resolution) against their annotations.

        ``gt_boxes[i]`` is a ``[G_i, 4]`` xyxy array in original image pixels,
        ``image_sizes[i]`` the original ``(W, H)``; ``gt_masks[i]`` (optional) a
        2-D label mask at the original resolution (see :func:`prepare_mask`).
        """
        if not isinstance(scoremaps, Sequence):
            scoremaps = to_numpy(scoremaps)
        if not len(scoremaps) == len(gt_boxes) == len(image_sizes):
            raise ValueError("scoremaps, gt_boxes and image_sizes must have the same length")
        if gt_masks is not None and len(gt_masks) != len(scoremaps):
            raise ValueError("gt_masks must have one mask per score map")
        gts = [scale_boxes(boxes, wh, self.size) for boxes, wh in zip(gt_boxes, image_sizes)]
        v1, v2 = score_maps(list(scoremaps), gts, self.thresholds, self.size, self.workers)
        if gt_masks is not None:
            for scoremap, mask in zip(scoremaps, gt_masks):
                labels = prepare_mask(mask, self.size)
                self.mask_histograms += mask_histograms(prepare_scoremap(scoremap, self.size), labels, self.thresholds)
                self.n_mask_images += 1
        if len(v1):
            self._v1.append(v1.astype(np.float32))
            self._v2.append(v2.astype(np.float32))

    @property
    def iou_v1(self) -> np.ndarray:
        """float32 ``[N, T]`` best IoU of the largest-contour box (MaxBoxAcc)."""
        self._v1 = [np.concatenate(self._v1)] if len(self._v1) > 1 else self._v1
        return self._v1[0]

    @property
    def iou_v2(self) -> np.ndarray:
        """float32 ``[N, T]`` best IoU over all contour boxes (MaxBoxAccV2)."""
        self._v2 = [np.concatenate(self._v2)] if len(self._v2) > 1 else self._v2
        return self._v2[0]

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._v1)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy state, e.g. for ``torch.distributed.all_gather_object``."""
        return {
            "thresholds": self.thresholds.copy(),
            "size": np.array(self.size),
            "iou_v1": self.iou_v1.copy(),
            "iou_v2": self.iou_v2.copy(),
            "mask_histograms": self.mask_histograms.copy(),
            "n_mask_images": np.array(self.n_mask_images),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> BoxCorrectness:
        """Rebuild an evaluator from :meth:`state_dict`."""
        new = cls(state["thresholds"], int(state["size"]))
        new._v1 = [np.asarray(state["iou_v1"], dtype=np.float32)]
        new._v2 = [np.asarray(state["iou_v2"], dtype=np.float32)]
        new.mask_histograms = np.asarray(state["mask_histograms"], dtype=np.int64).copy()
        new.n_mask_images = int(state["n_mask_images"])
        return new

    def merge(self, other: BoxCorrectness | dict[str, np.ndarray]) -> None:
        """Append ``other``'s images after this one's and add its mask histograms."""
        if isinstance(other, dict):
            other = BoxCorrectness.from_state_dict(other)
        if other.size != self.size or not np.array_equal(other.thresholds, self.thresholds):
            raise ValueError("cannot merge evaluators built with different thresholds or sizes")
        self._v1.append(other.iou_v1)
        self._v2.append(other.iou_v2)
        self.mask_histograms = self.mask_histograms + other.mask_histograms
        self.n_mask_images += other.n_mask_images

    @classmethod
    def concat(cls, parts: Iterable[BoxCorrectness | dict[str, np.ndarray]]) -> BoxCorrectness:
        """Combine evaluators (or their state dicts, e.g. gathered from ranks) in the given order.

        Rows follow the order of ``parts``; gather per-image classification
        flags the same way so they stay aligned with the rows.
        """
        parts = [p if isinstance(p, cls) else cls.from_state_dict(p) for p in parts]
        if not parts:
            raise ValueError("nothing to concatenate")
        combined = cls(parts[0].thresholds, parts[0].size)
        for part in parts:
            combined.merge(part)
        return combined

    def threshold_index(self, threshold: float) -> int:
        """Grid index scoring exactly like ``threshold``: the first with the same cut-off.

        Thresholds only act through ``int(tau * 255)`` (or cut-off 0 for an
        all-zero map, for every tau), so a threshold chosen on another grid is
        evaluated exactly whenever this grid contains a point with its cut-off.
        """
        matches = np.flatnonzero(cutoffs(self.thresholds) == cutoffs([threshold])[0])
        if matches.size == 0:
            raise ValueError(f"threshold {threshold} has no equivalent point on this grid")
        return int(matches[0])


def iou_hits(ious: np.ndarray, level: float) -> np.ndarray:
    """``ious >= level`` for float32-stored IoUs, comparing in float32.

    IoUs are ratios of pixel counts (unions below ~10**5 pixels), so an IoU
    different from ``level`` is at least ~1e-6 away from it, far more than
    float32 rounding; comparing against ``float32(level)`` keeps IoU == level
    (e.g. exactly 0.7, whose float32 is below the float64 0.7) on the correct
    side.
    """
    return ious >= np.float32(level)


def loc_accuracy_curve(correctness: BoxCorrectness) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds, GT-known Loc per threshold)``: V1 box, IoU >= 0.5, fractions."""
    _require_images(correctness)
    return correctness.thresholds.copy(), iou_hits(correctness.iou_v1, IOU_THRESHOLD).mean(axis=0)


def choose_threshold(correctness: BoxCorrectness) -> float:
    """Threshold maximising GT-known Loc (V1, IoU 0.5); ties go to the smallest threshold.

    Meant for a held-out split carved from train, so the test split never
    selects its own operating point.
    """
    thresholds, curve = loc_accuracy_curve(correctness)
    return float(thresholds[int(np.argmax(curve))])


def max_box_acc(ious: np.ndarray, level: float) -> float:
    """Max over thresholds of the fraction of images with IoU >= ``level``."""
    return float(iou_hits(ious, level).mean(axis=0).max())


def summarize(
    correctness: BoxCorrectness,
    cls_top1: Any,
    cls_top5: Any,
    threshold: float | None = None,
) -> dict[str, float | int | str]:
    """All WSOL numbers as fractions in [0, 1].

    ``cls_top1``/``cls_top5`` None: a map without a classifier (a training-free
    reading); the class and top-k localisation entries are then left out.

    ``top1_loc``/``top5_loc``/``gt_known`` use the V1 box at the chosen
    threshold: ``threshold`` if given (``threshold_source: "given"``),
    otherwise the oracle threshold picked on this very split
    (``"oracle"``).  The ``oracle_*`` entries are always reported and are
    optimistic by construction.  ``pxap`` appears when masks were added.
    """
    _require_images(correctness)
    n = len(correctness)
    classifies = cls_top1 is not None
    top1 = _flags(cls_top1 if classifies else np.ones(n, bool), n, "cls_top1")
    top5 = _flags(cls_top5 if classifies else np.ones(n, bool), n, "cls_top5")
    v1_hits = iou_hits(correctness.iou_v1, IOU_THRESHOLD)
    oracle = int(np.argmax(v1_hits.mean(axis=0)))
    chosen = oracle if threshold is None else correctness.threshold_index(threshold)
    v2 = {level: max_box_acc(correctness.iou_v2, level) for level in V2_IOU_LEVELS}

    summary: dict[str, float | int | str] = {
        "n_images": n,
        "cls_top1": float(top1.mean()),
        "cls_top5": float(top5.mean()),
        "threshold": float(correctness.thresholds[oracle] if threshold is None else threshold),
        "threshold_source": "oracle" if threshold is None else "given",
        "top1_loc": float((top1 & v1_hits[:, chosen]).mean()),
        "top5_loc": float((top5 & v1_hits[:, chosen]).mean()),
        "gt_known": float(v1_hits[:, chosen].mean()),
        "maxboxacc": max_box_acc(correctness.iou_v1, IOU_THRESHOLD),
        "maxboxacc_v2": float(np.mean(list(v2.values()))),
        **{f"maxboxacc_v2_iou{round(level * 100)}": acc for level, acc in v2.items()},
        "oracle_threshold": float(correctness.thresholds[oracle]),
        "oracle_top1_loc": float((top1 & v1_hits[:, oracle]).mean()),
        "oracle_gt_known": float(v1_hits[:, oracle].mean()),
    }
    if not classifies:
        for key in ("cls_top1", "cls_top5", "top1_loc", "top5_loc", "oracle_top1_loc"):
            del summary[key]
    if correctness.n_mask_images:
        summary["pxap"] = pxap_from_histograms(correctness.mask_histograms)
    return summary


def _require_images(correctness: BoxCorrectness) -> None:
    """Refuse to summarise an empty evaluator (every metric would be 0/0)."""
    if len(correctness) == 0:
        raise ValueError("no images were added to the evaluator")


def _flags(values: Any, n: int, name: str) -> np.ndarray:
    """Per-image boolean flags as a ``[n]`` array, checked against the evaluator length."""
    flags = to_numpy(values).astype(bool).reshape(-1)
    if flags.size != n:
        raise ValueError(f"{name} has {flags.size} entries for {n} images")
    return flags


def _continuous_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of [G,4] boxes, continuous coordinates (as torchvision's box_iou)."""
    lo, hi = np.maximum(box[:2], gts[:, :2]), np.minimum(box[2:], gts[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    union = area + np.prod(gts[:, 2:] - gts[:, :2], axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou50(mask_boxes: Any, gt_boxes: Sequence[Any]) -> np.ndarray:
    """The strict mask score: the box of the BC mask has IoU >= 0.5 with a GT box (a
    full-image mask, which BC* always accepts, fails it). Boxes as in :func:`mask_validity`.
    Returns bool [N]."""
    pred = to_numpy(mask_boxes).astype(np.float64).reshape(-1, 4)
    return np.array([(_continuous_iou(pred[i], to_numpy(g).astype(np.float64).reshape(-1, 4)) >= IOU_THRESHOLD).any()
                     for i, g in enumerate(gt_boxes)], dtype=bool)


def mask_validity(mask_boxes: Any, gt_boxes: Sequence[Any]) -> np.ndarray:
    """BC* (paper 5.2, Table 2): a mask is valid when the IoU of its box with a GT box is at
    least 0.5, or its box covers that GT box whole. Boxes xyxy in the same (original pixel)
    frame, continuous coordinates. Returns bool [N]."""
    pred = to_numpy(mask_boxes).astype(np.float64).reshape(-1, 4)
    valid = np.zeros(len(pred), dtype=bool)
    for i, gt in enumerate(gt_boxes):
        g = to_numpy(gt).astype(np.float64).reshape(-1, 4)
        covers = (pred[i, :2] <= g[:, :2]).all(1) & (pred[i, 2:] >= g[:, 2:]).all(1)
        valid[i] = bool(((_continuous_iou(pred[i], g) >= IOU_THRESHOLD) | covers).any())
    return valid

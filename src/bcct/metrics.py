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

Instead of re-running ``findContours`` for every threshold of the grid, each
image is processed once per *distinct* binary map: thresholds only act through
the integer cut-off ``int(tau * 255)`` and two cut-offs with no quantised pixel
value between them give the same binary map.  The per-image IoUs are then
gathered back onto the threshold grid, so the results are identical to the
per-threshold loop of wsolevaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from bcct.boxes import (
    QUANT_MAX,
    RESIZE,
    box_iou,
    contour_boxes,
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


def threshold_grid(step: float = 0.01) -> np.ndarray:
    """Score-map threshold grid ``np.arange(0, 1, step)``; wsolevaluation uses step 0.001."""
    return np.arange(0, 1, step)


def image_ious(
    map01: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best V1 and V2 IoU of one prepared map at every threshold, ``([T], [T])`` float64.

    ``gt_boxes`` are already in the 224 frame.  V1 scores the largest contour's
    box, V2 the best pair over all contour boxes and GT boxes; both take the
    max over GT boxes.  Thresholds are grouped by the binary map they produce
    (the set of quantised values above the cut-off), and contours are
    extracted once per group.
    """
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

    def __init__(self, thresholds: Any = None, size: int = RESIZE) -> None:
        grid = threshold_grid() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError("thresholds must be a non-empty 1-D array")
        if (np.diff(grid) <= 0).any() or grid[0] < 0 or grid[-1] >= 1:
            raise ValueError("thresholds must be strictly increasing within [0, 1)")
        self.thresholds = grid
        self.size = int(size)
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
        v1_rows, v2_rows = [], []
        for i, scoremap in enumerate(scoremaps):
            map01 = prepare_scoremap(scoremap, self.size)
            gt = scale_boxes(gt_boxes[i], image_sizes[i], self.size)
            v1, v2 = image_ious(map01, gt, self.thresholds)
            v1_rows.append(v1)
            v2_rows.append(v2)
            if gt_masks is not None:
                labels = prepare_mask(gt_masks[i], self.size)
                self.mask_histograms += mask_histograms(map01, labels, self.thresholds)
                self.n_mask_images += 1
        if v1_rows:
            self._v1.append(np.asarray(v1_rows, dtype=np.float32))
            self._v2.append(np.asarray(v2_rows, dtype=np.float32))

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

    ``top1_loc``/``top5_loc``/``gt_known`` use the V1 box at the chosen
    threshold: ``threshold`` if given (``threshold_source: "given"``),
    otherwise the oracle threshold picked on this very split
    (``"oracle"``).  The ``oracle_*`` entries are always reported and are
    optimistic by construction.  ``pxap`` appears when masks were added.
    """
    _require_images(correctness)
    n = len(correctness)
    top1 = _flags(cls_top1, n, "cls_top1")
    top5 = _flags(cls_top5, n, "cls_top5")
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

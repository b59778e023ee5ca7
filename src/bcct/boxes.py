"""Score map -> bounding box(es), following the WSOL evaluation protocol.

The protocol is the one of Choe et al., "Evaluating Weakly Supervised Object
Localization Methods Right", CVPR 2020 (reference code: clovaai/wsolevaluation,
``inference.py`` and ``evaluation.py``).  Every step is reproduced exactly,
including its quirks, so that numbers computed here are comparable with the
published MaxBoxAcc / MaxBoxAccV2 tables:

1. the class score map is resized to 224x224 with bicubic interpolation, in
   float64 (wsolevaluation converts CAMs with ``t2n``, i.e. to ``np.float``),
   then min-max normalised; a map containing NaN or a constant map becomes all
   zeros;
2. the map is quantised to uint8 with ``(map * 255).astype(np.uint8)``;
3. at threshold ``tau`` a pixel is foreground when its quantised value is
   strictly greater than ``int(tau * max_quantised)`` (``cv2.THRESH_BINARY``);
4. boxes come from ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``
   (hole borders included) and ``cv2.boundingRect`` as ``[x, y, x + w, y + h]``
   with the right/bottom edge clipped to ``size - 1``; no contour gives the box
   ``[0, 0, 0, 0]``;
5. IoU uses the inclusive "+1 pixel" convention and GT boxes are rescaled to
   224x224 with ``int()`` truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

RESIZE = 224
QUANT_MAX = 255
EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to CPU.

    Floating tensors go through float64, which is exact for every torch float
    dtype (bfloat16 included) and is the precision wsolevaluation's ``t2n``
    uses.  The check is duck-typed so numpy-only callers never import torch.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


def prepare_scoremap(scoremap: Any, size: int = RESIZE) -> np.ndarray:
    """Bicubic-resize one 2-D score map to ``size x size`` and min-max normalise it.

    Works in float64 like wsolevaluation (resizing in float32 changes the
    uint8 value of about one pixel every few images).  A map with a NaN or with a
    single value carries no localisation information and becomes all zeros.
    """
    cam = to_numpy(scoremap).astype(np.float64)
    if cam.ndim != 2:
        raise ValueError(f"a score map must be 2-D, got shape {cam.shape}")
    cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam = cam - cam.min()
    return cam / cam.max()


def prepare_scoremaps(maps: Any, size: int = RESIZE) -> np.ndarray:
    """Apply :func:`prepare_scoremap` to a batch ``[N, h, w]`` (or a sequence of 2-D maps).

    Returns float64 ``[N, size, size]`` maps in [0, 1].
    """
    if not isinstance(maps, Sequence):
        maps = to_numpy(maps)
    prepared = [prepare_scoremap(m, size) for m in maps]
    return np.stack(prepared) if prepared else np.zeros((0, size, size))


def quantise(map01: np.ndarray) -> np.ndarray:
    """Quantise a [0, 1] map to uint8 by truncation, ``(map * 255).astype(uint8)``.

    Thresholds act on these integers, so the score-map threshold grid only has
    at most 255 distinct effective cut-offs (Choe et al., CVPR 2020, protocol).
    """
    return (np.asarray(map01) * QUANT_MAX).astype(np.uint8)


def cutoffs(thresholds: Any, max_value: int = QUANT_MAX) -> np.ndarray:
    """Integer cut-off ``int(tau * max_value)`` for every threshold ``tau``.

    ``max_value`` is the maximum of the quantised map: 255 for a normalised
    map, 0 for an all-zero one.  The product is taken in float64 and truncated,
    bit-for-bit what wsolevaluation computes for ``np.arange`` thresholds.
    """
    taus = np.asarray(thresholds, dtype=np.float64)
    return (taus * float(max_value)).astype(np.int64)


def contour_boxes(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """Boxes of every contour of a binary map, and the index of the largest contour.

    Contours come from ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``, so
    hole borders count as contours too (they matter for MaxBoxAccV2).  The
    largest contour is the first one of maximal ``cv2.contourArea``, as Python's
    ``max`` picks it in wsolevaluation.  Boxes are ``[x, y, x + w, y + h]`` with
    the right/bottom edge clipped to the last pixel.  No contour gives
    ``[[0, 0, 0, 0]]`` (index 0).
    """
    binary = np.ascontiguousarray(binary)
    if binary.dtype != np.uint8:
        binary = (binary != 0).view(np.uint8)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if not contours:
        return EMPTY_BOX.copy(), 0
    height, width = binary.shape
    boxes, areas = [], []
    for contour in contours:  # few contours per map: plain Python beats numpy here
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
        areas.append(cv2.contourArea(contour))
    return np.array(boxes, dtype=np.int64), areas.index(max(areas))


def boxes_from_binary(binary_uint8: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Boxes ``[K, 4]`` (K >= 1) of a binary map.

    ``multi_contour=False`` keeps the box of the largest contour only (MaxBoxAcc,
    "V1"); ``True`` keeps the boxes of all contours (MaxBoxAccV2's
    ``multi_contour_eval``).
    """
    boxes, largest = contour_boxes(binary_uint8)
    return boxes if multi_contour else boxes[largest : largest + 1]


def box_at_threshold(map01: np.ndarray, tau: float, multi_contour: bool = False) -> np.ndarray:
    """Predicted box(es) ``[K, 4]`` of a prepared map (see :func:`prepare_scoremap`) at ``tau``.

    For inference/visualisation with a threshold chosen beforehand; the result
    is the box the evaluator scores at that threshold.
    """
    quantised = quantise(map01)
    cut = int(cutoffs([tau], int(quantised.max()))[0])
    return boxes_from_binary(quantised > cut, multi_contour)


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU matrix ``[A, B]`` of xyxy boxes with the inclusive (+1 pixel) convention.

    A box ``[x0, y0, x1, y1]`` covers pixels ``x0..x1`` and ``y0..y1``, so its
    area is ``(x1 - x0 + 1) * (y1 - y0 + 1)``.  A non-positive union (only
    possible for malformed boxes) gives IoU 0, as in wsolevaluation.
    """
    a = to_numpy(a).reshape(-1, 4)
    b = to_numpy(b).reshape(-1, 4)
    inter_w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    inter_h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.maximum(inter_w, 0) * np.maximum(inter_h, 0)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    valid = union > 0
    return np.where(valid, inter / np.where(valid, union, 1), 0.0)


def scale_boxes(boxes_xyxy: Any, image_size_wh: tuple[float, float], size: int = RESIZE) -> np.ndarray:
    """Map xyxy boxes from original image pixels to the ``size x size`` frame.

    Computes ``int(coord * size / image_side)`` (multiply first, then divide,
    then truncate), the exact float operations of wsolevaluation's
    ``resize_bbox``.  Returns int64 ``[G, 4]``.
    """
    width, height = map(float, image_size_wh)
    boxes = to_numpy(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    return (boxes * float(size) / np.array([width, height, width, height])).astype(np.int64)


def unscale_boxes(boxes_xyxy: Any, image_size_wh: tuple[float, float], size: int = RESIZE) -> np.ndarray:
    """Map inclusive-pixel xyxy boxes from the ``size x size`` frame back to an image of
    ``image_size_wh``: a box covering pixels ``x0..x1`` covers ``[x0, x1 + 1)`` of the frame,
    so its image box is ``x0 * W / size .. (x1 + 1) * W / size - 1`` (a full-frame box ends at
    the image's last pixel, W - 1). The evaluator's "no box" ``[0, 0, 0, 0]`` stays as it is.
    Returns float64 ``[K, 4]``."""
    width, height = map(float, image_size_wh)
    boxes = to_numpy(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height]) / float(size)
    out = (boxes + np.array([0, 0, 1, 1])) * scale - np.array([0, 0, 1, 1])
    return np.where((boxes == 0).all(axis=1, keepdims=True), 0.0, out)

"""Test-time scales (``eval.scales``): the model reads each image at several input sides and
its outputs are averaged, as multi-scale testing does in detection and segmentation.

- The image, already resized to ``data.image_size`` and normalised by the test transform,
  is resized again (bilinear) to each side; every side's forward is the model's own
  (the backbones and heads are fully convolutional, so a 352-px input gives a 22x22 map).
- Class probabilities are the mean of every side's softmax.
- Each readout's map is min-max scaled per image (as the evaluator scales it), resized
  (bilinear) to the largest side's map size and averaged.

numpy and OpenCV only: the evaluator (:mod:`bcct.evaluate`) and the PyTorch localizer
(:mod:`bcct.api`) combine sides with the same code. An empty ``eval.scales`` reads one side,
``data.image_size``, exactly as before. The sides ``cub_cpu`` uses were chosen on cub_dev's
val split (docs/localizer.md, "Test-time scales").
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from bcct.errors import BadInput


def input_sides(scales: Sequence[int], image_size: int) -> list[int]:
    """The input sides to read: ``eval.scales``, or ``[data.image_size]`` when it is empty."""
    sides = [int(s) for s in scales] or [int(image_size)]
    if any(s < 32 for s in sides) or len(set(sides)) != len(sides):
        raise BadInput(f"eval.scales={list(scales)}: give distinct input sides of at least 32 px, e.g. [224, 288, 352]")
    return sides


def average_probabilities(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of every side's class probabilities ``[B, C]``."""
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in probs]), axis=0)


def minmax(maps: np.ndarray) -> np.ndarray:
    """Each ``[h, w]`` map of ``[B, h, w]`` scaled to [0, 1] (a flat map becomes 0)."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.maximum(span, 1e-12), 0.0).astype(np.float32)


def average_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Every side's ``[B, h_s, w_s]`` maps -> ``[B, h, w]`` at the largest side's size: the
    mean of the min-max scaled maps. One side is returned as it is (no rescaling)."""
    if len(maps) == 1:
        return np.asarray(maps[0])
    h = max(m.shape[-2] for m in maps)
    w = max(m.shape[-1] for m in maps)
    total = np.zeros((len(maps[0]), h, w), dtype=np.float32)
    for side in maps:
        for i, m in enumerate(minmax(side)):
            total[i] += m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return total / len(maps)

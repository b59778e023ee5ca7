"""From a model's outputs to what a user gets: class, top-k, box(es) and map per image.

numpy and OpenCV only (no torch), so that the PyTorch localizer (:mod:`bcct.api`) and the
ONNX one (:mod:`bcct.deploy`) share every step after the network: the map of the predicted
class is prepared exactly as the evaluator prepares it (bicubic to 224x224, min-max, uint8
quantisation; :mod:`bcct.boxes`), cut at the threshold chosen on val, and the box mapped
back from the 224x224 frame to the image's own pixels (:func:`bcct.boxes.unscale_boxes`).
A localizer subclass only turns images into class probabilities and raw score maps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from bcct.boxes import RESIZE, box_at_threshold, prepare_scoremap, unscale_boxes
from bcct.errors import BadInput


@dataclass
class Prediction:
    """What :meth:`Localizer.localize` returns for one image.

    ``boxes`` is ``[K, 4]`` float xyxy in the original image's pixels (K = 1 unless
    ``multi_box``); when no pixel of the map is above the threshold it holds the
    evaluator's "no box" ``[0, 0, 0, 0]``. ``map`` is the min-max normalised score map of the
    predicted class at the original size (float32 ``[H, W]`` in [0, 1]); ``size`` is (W, H).
    """

    class_index: int | None  # None (and class_name, score): a map without a classifier
    class_name: str | None
    score: float | None
    top5: list[tuple[int, str, float]]
    boxes: np.ndarray
    threshold: float
    readout: str
    map: np.ndarray = field(repr=False)
    size: tuple[int, int]

    @property
    def box(self) -> np.ndarray:
        """The first (with ``multi_box=False`` the only) box, ``[4]`` xyxy."""
        return self.boxes[0]

    def to_dict(self) -> dict:
        """JSON-ready fields (everything but the map)."""
        return {
            "class_index": self.class_index,
            "class_name": self.class_name,
            "score": self.score,
            "top5": [[i, name, p] for i, name, p in self.top5],
            "boxes": [[float(v) for v in box] for box in self.boxes],
            "size": list(self.size),
            "threshold": self.threshold,
            "readout": self.readout,
        }


class BaseLocalizer:
    """Class names, the val-chosen thresholds and the shared read-out of a localizer.

    Subclasses set the attributes below and implement :meth:`_image` (one input -> what
    :meth:`_scores` takes) and :meth:`_scores` (a batch -> class probabilities ``[B, C]``,
    ``{readout: raw maps of the predicted class [B, h, w]}`` with the primary readout first,
    and the images' (W, H)).
    """

    method_name: str = ""
    checkpoint: str = ""
    class_names: list[str]
    thresholds: dict[str, float]  # val-chosen, per readout, in the method's readout order (primary first)
    fixed_threshold: float | None = None  # the config's eval.threshold, used when no val-chosen one fits
    default_readout: str | None = None  # the readout best on val (best_on_val); None: the primary one

    # -- choices ----------------------------------------------------------------------------
    def resolve(self, threshold: float | None = None, readout: str | None = None) -> tuple[str | None, float]:
        """(readout, threshold) that :meth:`localize` will use; ``readout`` None means the
        method's primary one (known only after a forward pass when the checkpoint holds no
        thresholds)."""
        if readout is None and self.thresholds:
            readout = self.default_readout or next(iter(self.thresholds))
        if readout is not None and self.thresholds and readout not in self.thresholds:
            raise BadInput(f"readout {readout!r} unknown for this {self.method_name} checkpoint; "
                           f"choose one of {', '.join(self.thresholds)}")
        if threshold is not None:
            try:
                threshold = float(threshold)
            except (TypeError, ValueError):
                raise BadInput(f"threshold {threshold!r}: expected a number in [0, 1]") from None
            if not 0.0 <= threshold <= 1.0:
                raise BadInput(f"threshold {threshold}: must be in [0, 1] (a fraction of the map's maximum)")
            return readout, threshold
        if readout is not None and readout in self.thresholds:
            return readout, self.thresholds[readout]
        if self.fixed_threshold is not None:
            return readout, float(self.fixed_threshold)
        raise BadInput(f"{self.checkpoint or 'checkpoint'}: holds no val-chosen threshold for readout "
                       f"{readout or 'the primary'}; pass threshold=... (bcct localize --threshold T)")

    # -- inference ----------------------------------------------------------------------------
    def localize(self, images: Any, threshold: float | None = None, readout: str | None = None, topk: int = 5,
                 multi_box: bool = False, batch_size: int = 32) -> list[Prediction]:
        """Class, top-k, box(es) and map for each image.

        ``images``: one image or a list of them (what a localizer accepts: see its
        ``_image``); a 4-D array/tensor is a batch. ``threshold``: the fraction of the map's
        maximum (default: the one chosen on val during training); ``readout``: which score map
        (default: the one best on val, else the method's primary one: ``cam`` for CAM,
        ``feature_norm`` for ``imagenet``); ``multi_box``: one box per contour
        (MaxBoxAccV2 style) instead of the largest only. Always returns a list, one
        :class:`Prediction` per image, in order.
        """
        if int(batch_size) < 1:
            raise BadInput(f"batch_size {batch_size}: must be at least 1")
        readout, tau = self.resolve(threshold, readout)
        items = as_list(images)
        preds: list[Prediction] = []
        for start in range(0, len(items), int(batch_size)):
            chunk = [self._image(x) for x in items[start : start + int(batch_size)]]
            probs, maps, sizes = self._scores(chunk)
            name = readout or next(iter(maps))
            if name not in maps:
                raise BadInput(f"readout {name!r} unknown for this {self.method_name} checkpoint; "
                               f"choose one of {', '.join(maps)}")
            preds.extend(read_predictions(probs, maps[name], sizes, self.class_names, tau, name, topk, multi_box))
        return preds

    def _image(self, image: Any):
        raise NotImplementedError

    def _scores(self, images: list) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[int, int]]]:
        raise NotImplementedError


def best_on_val(val: dict, thresholds: dict[str, float]) -> str | None:
    """The readout with the best val top-1 localisation (GT-known for a map without a
    classifier) among those with a val-chosen threshold; None when val scored none (no boxes:
    the primary readout is used). Ties keep the method's order (primary first)."""
    scored = [(res.get("top1_loc", res.get("gt_known")), name) for name, res in val.items()
              if name in thresholds and isinstance(res, dict) and res.get("gt_known") is not None]
    if not scored:
        return None
    best = max(v for v, _ in scored)
    return next(name for v, name in scored if v == best)


def read_predictions(probs: np.ndarray, raw_maps: np.ndarray, sizes: list[tuple[int, int]], class_names: list[str],
                     tau: float, readout: str, topk: int = 5, multi_box: bool = False) -> list[Prediction]:
    """One :class:`Prediction` per image from its class probabilities ``[C]`` and the raw map
    of its predicted class ``[h, w]`` (what the evaluator hands to ``prepare_scoremap``).
    ``probs`` None: a map without a classifier; the class fields are None, top5 empty."""
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        k = max(1, min(int(topk), probs.shape[1]))
        top_i = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    preds = []
    for j, (width, height) in enumerate(sizes):
        map224 = prepare_scoremap(raw_maps[j], RESIZE)
        box224 = box_at_threshold(map224, tau, multi_contour=multi_box)
        ci = int(top_i[j, 0]) if probs is not None else None
        preds.append(Prediction(
            class_index=ci,
            class_name=class_names[ci] if ci is not None else None,
            score=float(probs[j, ci]) if ci is not None else None,
            top5=[(int(i), class_names[i], float(probs[j, i])) for i in top_i[j]] if ci is not None else [],
            boxes=unscale_boxes(box224, (width, height)),
            threshold=float(tau),
            readout=readout,
            map=map_at(map224, width, height),
            size=(int(width), int(height)),
        ))
    return preds


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (``[B, C]``)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def map_at(map224: np.ndarray, width: int, height: int) -> np.ndarray:
    """The prepared 224x224 map (the one the box comes from) resized to the image, min-max
    normalised again (bilinear never overshoots, so this only restores the exact 0 and 1)."""
    m = cv2.resize(map224.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        return np.zeros((int(height), int(width)), np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def as_list(images: Any) -> list:
    """One image or several -> a list; a 4-D array or tensor (duck-typed: no torch here) is a batch."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if hasattr(images, "ndim") and hasattr(images, "shape"):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple, Iterator)):
        return list(images)
    return [images]

"""The Python API: localise objects in any image with a trained checkpoint.

    import bcct
    loc = bcct.load("runs/bcct/best.pt")
    pred = loc.localize(Image.open("bird.jpg"))[0]
    print(pred.class_name, pred.score, pred.box)     # box: xyxy in the image's own pixels

Every image goes through the checkpoint's test transform (the one the evaluator uses), the
map of the *predicted* class is read out, prepared exactly as the evaluator prepares it
(bicubic to 224x224, min-max, uint8 quantisation; :mod:`bcct.boxes`) and cut at the
threshold chosen on the held-out val split during training. The box is therefore the box
the evaluator scores for that image, mapped back from the 224x224 frame to the original
pixels (inclusive pixel edges: ``x0 * W / 224`` .. ``(x1 + 1) * W / 224 - 1``; a box
reaching the frame's last pixel reaches the image's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from bcct.boxes import RESIZE, box_at_threshold, prepare_scoremap, unscale_boxes
from bcct.data.images import load_rgb, to_rgb
from bcct.data.transforms import test_transform
from bcct.errors import BadInput

__all__ = ["Localizer", "Prediction", "load"]

# A float image may overshoot [0, 1] a little after its own resampling; beyond this it is
# almost surely a 0..255 image stored as float.
_FLOAT_SLACK = 1e-3


@dataclass
class Prediction:
    """What :meth:`Localizer.localize` returns for one image.

    ``boxes`` is ``[K, 4]`` float xyxy in the original image's pixels (K = 1 unless
    ``multi_box``); when no pixel of the map is above the threshold it holds the
    evaluator's "no box" ``[0, 0, 0, 0]``. ``map`` is the min-max normalised score map of the
    predicted class at the original size (float32 ``[H, W]`` in [0, 1]); ``size`` is (W, H).
    """

    class_index: int
    class_name: str
    score: float
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


def load(ckpt_path: str | os.PathLike, device: str = "auto") -> "Localizer":
    """A :class:`Localizer` for a checkpoint written by ``bcct train`` (``best.pt`` / ``last.pt``).

    ``device``: ``auto`` (the checkpoint config's device, CUDA when available), ``cpu``,
    ``cuda``, ... Raises :class:`bcct.errors.BadInput` for a file that is not a bcct checkpoint.
    """
    from bcct.run import load_method  # heavy (the training loop's imports): only when loading

    method, cfg, ckpt = load_method(str(ckpt_path), device=device)
    return Localizer(method, cfg, ckpt, checkpoint=str(ckpt_path))


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


class Localizer:
    """A trained method in eval mode with its class names, test transform and val thresholds."""

    def __init__(self, method, cfg, ckpt: dict, checkpoint: str = ""):
        self.method = method.eval()
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.method_name = cfg.method
        self.class_names: list[str] = list(ckpt["class_names"])
        # Val-chosen threshold per readout, in the method's readout order (primary first).
        self.thresholds: dict[str, float] = {k: float(v) for k, v in (ckpt.get("thresholds") or {}).items()}
        self.default_readout = best_on_val(ckpt.get("val") or {}, self.thresholds)
        self.transform = test_transform(cfg.data)
        self.device = next(method.parameters()).device

    def __repr__(self) -> str:
        return (f"Localizer(method={self.method_name!r}, classes={len(self.class_names)}, "
                f"thresholds={self.thresholds}, device={str(self.device)!r})")

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
        if self.cfg.eval.threshold is not None:
            return readout, float(self.cfg.eval.threshold)
        raise BadInput(f"{self.checkpoint or 'checkpoint'}: holds no val-chosen threshold for readout "
                       f"{readout or 'the primary'}; pass threshold=... (bcct localize --threshold T)")

    # -- inference ----------------------------------------------------------------------------
    def localize(self, images: Any, threshold: float | None = None, readout: str | None = None, topk: int = 5,
                 multi_box: bool = False, batch_size: int = 32) -> list[Prediction]:
        """Class, top-k, box(es) and map for each image.

        ``images``: one image or a list of them; an image is a PIL image, a numpy ``HxWx3``
        (or ``HxW`` grayscale, ``HxWx4`` RGBA) uint8 array, a torch ``CxHxW`` tensor (uint8,
        or float in [0, 1]), or a path. A 4-D array/tensor is a batch. ``threshold``: the
        fraction of the map's maximum (default: the one chosen on val during training);
        ``readout``: which score map (default: the method's primary one, ``cam``);
        ``multi_box``: one box per contour (MaxBoxAccV2 style) instead of the largest only.
        Always returns a list, one :class:`Prediction` per image, in order.
        """
        if int(batch_size) < 1:
            raise BadInput(f"batch_size {batch_size}: must be at least 1")
        readout, tau = self.resolve(threshold, readout)
        items = _as_list(images)
        preds: list[Prediction] = []
        for start in range(0, len(items), int(batch_size)):
            chunk = [_as_chw(x) for x in items[start : start + int(batch_size)]]
            preds.extend(self._localize_batch(chunk, tau, readout, topk, multi_box))
        return preds

    @torch.no_grad()
    def _localize_batch(self, chws: list[torch.Tensor], tau: float, readout: str | None, topk: int,
                        multi_box: bool) -> list[Prediction]:
        batch = torch.stack([self.transform(tv_tensors.Image(x)).as_subclass(torch.Tensor) for x in chws])
        out = self.method(batch.to(self.device))
        probs = out["logits"].float().softmax(dim=1)
        k = max(1, min(int(topk), probs.shape[1]))
        top_p, top_i = probs.topk(k, dim=1)
        pred_classes = top_i[:, 0]
        maps = self.method.score_maps(out, pred_classes)
        name = readout or next(iter(maps))
        if name not in maps:
            raise BadInput(f"readout {name!r} unknown for this {self.method_name} checkpoint; "
                           f"choose one of {', '.join(maps)}")
        raw = maps[name].float().cpu().numpy()  # what the evaluator hands to prepare_scoremap
        top_p, top_i = top_p.cpu().tolist(), top_i.cpu().tolist()
        preds = []
        for j, chw in enumerate(chws):
            height, width = int(chw.shape[-2]), int(chw.shape[-1])
            map224 = prepare_scoremap(raw[j], RESIZE)
            box224 = box_at_threshold(map224, tau, multi_contour=multi_box)
            ci = top_i[j][0]
            preds.append(Prediction(
                class_index=int(ci),
                class_name=self.class_names[ci],
                score=float(top_p[j][0]),
                top5=[(int(i), self.class_names[i], float(p)) for i, p in zip(top_i[j], top_p[j])],
                boxes=unscale_boxes(box224, (width, height)),
                threshold=float(tau),
                readout=name,
                map=_map_at(map224, width, height),
                size=(width, height),
            ))
        return preds


def _map_at(map224: np.ndarray, width: int, height: int) -> np.ndarray:
    """The prepared 224x224 map (the one the box comes from) resized to the image, min-max
    normalised again (bilinear never overshoots, so this only restores the exact 0 and 1)."""
    m = cv2.resize(map224.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        return np.zeros((height, width), np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


# -- inputs -------------------------------------------------------------------------------
def _as_list(images: Any) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple, Iterator)):
        return list(images)
    return [images]


def _as_chw(image: Any) -> torch.Tensor:
    """One image -> a ``3xHxW`` tensor, uint8 (as the data sets feed the transform) or float32 in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        image = load_rgb(image)
    if isinstance(image, Image.Image):
        try:
            rgb = to_rgb(image)
            rgb.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadInput(f"cannot decode PIL image ({type(exc).__name__}: {exc})") from None
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    raise TypeError(f"cannot localise a {type(image).__name__}: pass a PIL image, a numpy HxWx3 uint8 array, "
                    "a torch CxHxW tensor or a path")


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4 and arr.dtype == np.uint8:
        return _as_chw(Image.fromarray(arr, "RGBA"))  # alpha on white, as for RGBA files
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadInput(f"numpy image of shape {arr.shape}: expected HxWx3 (RGB), HxWx4 (RGBA) or HxW (grayscale)")
    if arr.dtype == np.uint8:
        return _check_size(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())  # copy: may be read-only
    if np.issubdtype(arr.dtype, np.floating):
        return _float01(torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1), "numpy")
    raise BadInput(f"numpy image of dtype {arr.dtype}: expected uint8 (0..255) or float in [0, 1]")


def _from_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        hint = "; it looks HxWxC, use .permute(2, 0, 1)" if t.ndim == 3 and t.shape[-1] in (1, 3) else ""
        raise BadInput(f"tensor image of shape {tuple(t.shape)}: expected CxHxW with C = 3 (or 1){hint}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.dtype == torch.uint8:
        return _check_size(t.contiguous())
    if t.is_floating_point():
        return _float01(t.float(), "tensor")
    raise BadInput(f"tensor image of dtype {t.dtype}: expected uint8 (0..255) or float in [0, 1]")


def _float01(t: torch.Tensor, kind: str) -> torch.Tensor:
    _check_size(t)
    if not torch.isfinite(t).all():
        raise BadInput(f"float {kind} image holds NaN or inf values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
        raise BadInput(f"float {kind} image has values in [{lo:g}, {hi:g}]; expected [0, 1] "
                       "(divide a 0..255 image by 255)")
    return t.clamp(0, 1).contiguous()


def _check_size(t: torch.Tensor) -> torch.Tensor:
    if t.shape[-1] < 1 or t.shape[-2] < 1:
        raise BadInput(f"image of shape {tuple(t.shape)} is empty")
    return t

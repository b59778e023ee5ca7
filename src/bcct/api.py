"""The Python API: localise objects in any image with a trained checkpoint.

    import bcct
    loc = bcct.load("runs/bcct/best.pt")
    pred = loc.localize(Image.open("bird.jpg"))[0]
    print(pred.class_name, pred.score, pred.box)     # box: xyxy in the image's own pixels

Every image goes through the checkpoint's test transform (the one the evaluator uses), the
map of the *predicted* class is read out, prepared exactly as the evaluator prepares it
(bicubic to 224x224, min-max, uint8 quantisation; :mod:`bcct.boxes`) and cut at the
threshold chosen on the held-out val split during training (with ``eval.scales``, at every
side, averaged as the evaluator averages them). The box is therefore the box
the evaluator scores for that image, mapped back from the 224x224 frame to the original
pixels (inclusive pixel edges: ``x0 * W / 224`` .. ``(x1 + 1) * W / 224 - 1``; a box
reaching the frame's last pixel reaches the image's).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from bcct import test_time
from bcct.data.images import load_rgb, to_rgb
from bcct.data.transforms import test_transform
from bcct.errors import BadInput
from bcct.evaluate import resize
from bcct.prediction import BaseLocalizer, Prediction, best_on_val, softmax  # noqa: F401  (Prediction: part of the API)

__all__ = ["Localizer", "Prediction", "load"]

# A float image may overshoot [0, 1] a little after its own resampling; beyond this it is
# almost surely a 0..255 image stored as float.
_FLOAT_SLACK = 1e-3


def load(ckpt_path: str | os.PathLike, device: str = "auto") -> "Localizer":
    """A :class:`Localizer` for a checkpoint written by ``bcct train`` (``best.pt`` / ``last.pt``);
    for a ``.onnx`` file written by ``bcct export``, :class:`bcct.deploy.OnnxLocalizer` (same
    ``localize``, no PyTorch).

    ``device``: ``auto`` (the checkpoint config's device, CUDA when available), ``cpu``,
    ``cuda``, ... Raises :class:`bcct.errors.BadInput` for a file that is not a bcct checkpoint.
    """
    from bcct.deploy import is_onnx, load_onnx

    if is_onnx(ckpt_path):
        return load_onnx(ckpt_path, device=device)
    from bcct.run import load_method  # heavy (the training loop's imports): only when loading

    method, cfg, ckpt = load_method(str(ckpt_path), device=device)
    return Localizer(method, cfg, ckpt, checkpoint=str(ckpt_path))


class Localizer(BaseLocalizer):
    """A trained method in eval mode with its class names, test transform and val thresholds."""

    def __init__(self, method, cfg, ckpt: dict, checkpoint: str = ""):
        self.method = method.eval()
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.method_name = cfg.method
        self.class_names: list[str] = list(ckpt["class_names"])
        # Val-chosen threshold per readout, in the method's readout order (primary first).
        self.thresholds: dict[str, float] = {k: float(v) for k, v in (ckpt.get("thresholds") or {}).items()}
        self.fixed_threshold = cfg.eval.threshold
        self.default_readout = best_on_val(ckpt.get("val") or {}, self.thresholds)
        self.transform = test_transform(cfg.data)
        self.sides = test_time.input_sides(cfg.eval.scales, cfg.data.image_size)
        self.device = next(method.parameters()).device

    def __repr__(self) -> str:
        return (f"Localizer(method={self.method_name!r}, classes={len(self.class_names)}, "
                f"thresholds={self.thresholds}, device={str(self.device)!r})")

    def _image(self, image: Any) -> torch.Tensor:
        """A PIL image, a numpy ``HxWx3`` (or ``HxW`` grayscale, ``HxWx4`` RGBA) uint8 array, a
        torch ``CxHxW`` tensor (uint8, or float in [0, 1]), or a path."""
        return _as_chw(image)

    @torch.no_grad()
    def _scores(self, chws: list[torch.Tensor]) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[int, int]]]:
        batch = torch.stack([self.transform(tv_tensors.Image(x)).as_subclass(torch.Tensor) for x in chws])
        batch = batch.to(self.device)
        # eval.scales: every side's forward first, the class from their mean probabilities, then
        # every side's map of that class (bcct/test_time.py; the evaluator reads the GT class's)
        outs = [self.method(resize(batch, side)) for side in self.sides]
        probs = None
        if outs[0].get("logits") is not None:  # None: a training-free map, no class
            probs = test_time.average_probabilities([softmax(o["logits"].float().cpu().numpy()) for o in outs])
        classes = torch.as_tensor(probs.argmax(1) if probs is not None else np.zeros(len(batch), dtype=np.int64),
                                  device=self.device)
        per_side: dict[str, list[np.ndarray]] = {}
        for out in outs:
            for name, m in self.method.score_maps(out, classes).items():
                per_side.setdefault(name, []).append(m.float().cpu().numpy())
        # the raw maps, as the evaluator hands them to prepare_scoremap
        raw = {name: test_time.average_maps(maps) for name, maps in per_side.items()}
        sizes = [(int(x.shape[-1]), int(x.shape[-2])) for x in chws]
        return probs, raw, sizes


# -- inputs -------------------------------------------------------------------------------
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

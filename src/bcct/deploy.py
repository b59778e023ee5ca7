"""Localise with an exported ONNX file (``bcct export``) and onnxruntime: no PyTorch.

    from bcct.deploy import load_onnx
    loc = load_onnx("model.onnx")                    # also bcct.load("model.onnx"), bcct localize
    pred = loc.localize("bird.jpg")[0]               # the Prediction of bcct.api, same boxes

This module and what it imports (numpy, Pillow, OpenCV, onnxruntime; :mod:`bcct.prediction`,
:mod:`bcct.boxes`, :mod:`bcct.data.images`) never import torch or torchvision, so a
deployment image needs neither. The test transform is redone in numpy: resize the whole
image to the input size with Pillow's bilinear filter (antialiased when shrinking, as
torchvision's ``Resize(antialias=True)``; the two differ by at most one grey level on a few
pixels), scale to [0, 1], normalise with the file's mean and std. Everything after the
network is :mod:`bcct.prediction`, shared with the PyTorch localizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bcct.data.images import load_rgb, to_rgb
from bcct.errors import BadInput
from bcct.prediction import BaseLocalizer, softmax

ONNX_FORMAT = "bcct-onnx-1"  # bcct.export.ONNX_FORMAT (not imported: that module needs torch)


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether a ``--checkpoint`` names an ONNX file (by its suffix)."""
    return str(path).lower().endswith(".onnx")


def load_onnx(path: str | os.PathLike, device: str = "auto") -> "OnnxLocalizer":
    """An :class:`OnnxLocalizer` for a file written by ``bcct export``. ``device``: ``auto``
    (CUDA when onnxruntime has it), ``cpu`` or ``cuda``. BadInput for anything else."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BadInput(f"{path}: running an ONNX file needs onnxruntime: pip install 'bcct[onnx]'") from None
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: ONNX file not found; write one with bcct export --checkpoint CKPT --out {p.name}")
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device not in ("auto", "cpu", "cuda"):
        raise BadInput(f"device {device!r}: an ONNX file runs on auto, cpu or cuda")
    try:
        session = ort.InferenceSession(str(p), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for any unreadable model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BadInput(f"{p}: onnxruntime cannot load it ({first}); export it again with bcct export") from None
    return OnnxLocalizer(session, read_metadata(session.get_modelmeta().custom_metadata_map, p), checkpoint=str(p))


def read_metadata(props: dict[str, str], path: Path) -> dict:
    """The JSON values of ``bcct export``'s metadata; BadInput for a file without them."""
    if "bcct_format" not in props:
        raise BadInput(f"{path}: an ONNX file without bcct's metadata (class names, input size, thresholds); "
                       "write it with bcct export")
    try:
        meta = {k: json.loads(v) for k, v in props.items()}
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: its bcct metadata is not JSON ({exc}); export it again") from None
    if meta["bcct_format"] != ONNX_FORMAT:
        raise BadInput(f"{path}: written by another bcct version ({meta['bcct_format']}, expected {ONNX_FORMAT}); "
                       "export it again with this one")
    return meta


class OnnxLocalizer(BaseLocalizer):
    """An exported model in an onnxruntime session, with the metadata it was exported with."""

    def __init__(self, session, meta: dict, checkpoint: str = ""):
        self.session = session
        self.meta = meta
        self.checkpoint = checkpoint
        self.method_name = meta["method"]
        self.class_names = list(meta["class_names"])
        self.readouts = list(meta["readouts"])
        self.thresholds = {k: float(meta["thresholds"][k]) for k in self.readouts if k in meta["thresholds"]}
        self.fixed_threshold = meta.get("fixed_threshold")
        self.default_readout = meta.get("default_readout")
        self.size = int(meta["input_size"])
        self.mean = np.asarray(meta["mean"], np.float32).reshape(1, 1, 3)
        self.std = np.asarray(meta["std"], np.float32).reshape(1, 1, 3)

    def __repr__(self) -> str:
        return (f"OnnxLocalizer(method={self.method_name!r}, classes={len(self.class_names)}, "
                f"thresholds={self.thresholds}, file={self.checkpoint!r})")

    def _image(self, image: Any) -> np.ndarray:
        """A path, a PIL image or a numpy ``HxWx3`` (``HxW`` grayscale, ``HxWx4`` RGBA) uint8
        array -> ``HxWx3`` uint8 RGB."""
        if isinstance(image, (str, os.PathLike)):
            image = load_rgb(image)
        if isinstance(image, np.ndarray):
            arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
            if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
                raise BadInput(f"numpy image of shape {image.shape} and dtype {image.dtype}: the ONNX localizer takes "
                               "uint8 HxWx3 (RGB), HxWx4 (RGBA) or HxW (grayscale); for floats in [0, 1] pass "
                               "(x * 255).round().astype(np.uint8)")
            if arr.size == 0:
                raise BadInput(f"image of shape {image.shape} is empty")
            image = Image.fromarray(np.ascontiguousarray(arr))
        if not isinstance(image, Image.Image):
            raise BadInput(f"cannot localise a {type(image).__name__} with an ONNX file: pass a path, a PIL image "
                           "or a numpy uint8 array")
        try:
            return np.asarray(to_rgb(image))
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadInput(f"cannot decode PIL image ({type(exc).__name__}: {exc})") from None

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """The checkpoint's test transform in numpy: ``HxWx3`` uint8 -> ``3xSxS`` float32."""
        resized = np.asarray(Image.fromarray(rgb).resize((self.size, self.size), Image.Resampling.BILINEAR))
        return ((resized.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)

    def _scores(self, images: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[int, int]]]:
        batch = np.stack([self.preprocess(x) for x in images]).astype(np.float32)
        logits, *maps = self.session.run(["logits", *self.readouts], {"images": batch})
        sizes = [(int(x.shape[1]), int(x.shape[0])) for x in images]
        return softmax(logits), dict(zip(self.readouts, maps)), sizes

"""``bcct export``: a trained checkpoint as one ONNX file that localises without PyTorch.

The graph is the method at inference: normalised images ``[B, 3, S, S]`` -> class logits
``[B, C]`` and, for every forward readout, the raw score map of the predicted class (the
logits' argmax) ``[B, h, w]``: what :class:`bcct.api.Localizer` hands to the shared read-out
(:mod:`bcct.prediction`), so :mod:`bcct.deploy` gives the same boxes with onnxruntime. A
test-time flip or scale a readout uses is part of the method's forward and is exported with
it; the test-time input sides of ``eval.scales`` are not (the graph reads ``data.image_size``:
a checkpoint that averaged several sides has its thresholds chosen again for the one side on
its val split, which export then needs). What inference needs besides the graph rides in the file's metadata (:data:`METADATA`).

Gradient readouts (``Method.gradient_readouts``: backprop's saliency) differentiate the
score with respect to the image; a forward graph cannot, so they are left out, and a
checkpoint that has no other readout is refused.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcct import test_time
from bcct.errors import BadInput
from bcct.prediction import best_on_val

ONNX_FORMAT = "bcct-onnx-1"
OPSET = 17
# metadata_props keys of an exported file, each value JSON: what bcct.deploy reads back
METADATA = ("bcct_format", "method", "checkpoint", "class_names", "input_size", "mean", "std", "readouts",
            "thresholds", "fixed_threshold", "default_readout")


class ForwardReadouts(nn.Module):
    """The exported function: images -> (logits, predicted-class map of each readout)."""

    def __init__(self, method: nn.Module, readouts: list[str]):
        super().__init__()
        self.method = method
        self.readouts = list(readouts)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.method(images)
        logits = out["logits"].float()
        maps = self.method.score_maps(out, logits.argmax(dim=1))
        return (logits, *(maps[name].float() for name in self.readouts))


def readout_names(method: nn.Module, image_size: int) -> list[str]:
    """The method's readouts, primary first, from one forward pass on a blank image."""
    with torch.no_grad():
        out = method(torch.zeros(1, 3, image_size, image_size))
        if out.get("logits") is None:
            raise BadInput(f"method {method.name!r} has no classifier (a training-free map): export a checkpoint with "
                           "one (cam, bcct, ...); `bcct localize` reads this checkpoint as it is")
        return list(method.score_maps(out, out["logits"].argmax(dim=1)))


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write ``out`` (an ONNX file with :data:`METADATA`) for ``checkpoint`` and check it
    against PyTorch on one random batch of two images; returns what was exported and the
    largest difference between the two (``max_abs_diff``)."""
    try:
        import onnx
    except ImportError:
        raise BadInput("bcct export needs the onnx package: pip install 'bcct[onnx]' (onnx and onnxruntime)") from None

    from bcct.run import load_method

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise BadInput(f"--out {out}: name the file MODEL.onnx (bcct localize recognises ONNX files by the suffix)")
    method, cfg, ckpt = load_method(str(checkpoint), device="cpu")
    size = int(cfg.data.image_size)
    names = readout_names(method, size)
    readouts = [n for n in names if n not in method.gradient_readouts]
    if not readouts:
        several = len(names) > 1
        raise BadInput(f"{checkpoint}: the {cfg.method} readout{'s' if several else ''} {', '.join(names)} "
                       f"need{'' if several else 's'} gradients (d score / d image), which an ONNX forward graph "
                       "cannot compute; export a checkpoint of a method with a forward readout (cam, bcct, acol, ...)")
    saved = ckpt.get("thresholds") or {}
    if test_time.input_sides(cfg.eval.scales, size) != [size]:
        saved = _one_side_thresholds(method, cfg, checkpoint)
    meta = {
        "bcct_format": ONNX_FORMAT,
        "method": cfg.method,
        "checkpoint": str(checkpoint),
        "class_names": list(ckpt["class_names"]),
        "input_size": size,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "readouts": readouts,
        "thresholds": {name: float(saved[name]) for name in readouts if name in saved},
        "fixed_threshold": cfg.eval.threshold,
        "default_readout": best_on_val(ckpt.get("val") or {}, {n: saved[n] for n in readouts if n in saved}),
    }
    graph = ForwardReadouts(method, readouts).eval()
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32))
    outputs = ["logits", *readouts]
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice, tracer notes
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and traces every method as is
        torch.onnx.export(graph, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["images"],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
    model = onnx.load_model_from_string(buf.getvalue())
    for key in METADATA:
        model.metadata_props.add(key=key, value=json.dumps(meta[key]))
    _write_atomic(model.SerializeToString(), out)
    with torch.no_grad():
        expected = [t.numpy() for t in graph(example)]
    got = _run_onnxruntime(out, example.numpy())
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got)) if got else None
    left_out = [n for n in names if n not in readouts]
    return {**meta, "out": str(out), "bytes": out.stat().st_size, "left_out": left_out, "max_abs_diff": diff}


def _one_side_thresholds(method, cfg, checkpoint) -> dict[str, float]:
    """The graph reads one side (``data.image_size``); a checkpoint that averaged several
    (``eval.scales``) chose its thresholds for the averaged maps, so they are chosen again on
    the run's val split for the one side, as training chooses them."""
    from bcct.data.readers import read_dataset
    from bcct.run import thresholds_on_val

    root = cfg.data.root
    if not root or not Path(root).exists():
        raise BadInput(f"{checkpoint}: averages the input sides {list(cfg.eval.scales)} (eval.scales), which the ONNX "
                       f"graph cannot; its thresholds are chosen again for one side on the run's val split, but the "
                       f"data folder {root!r} is not here: export where the data is")
    cfg.eval.scales = []
    return thresholds_on_val(method, cfg, read_dataset(cfg.data, seed=cfg.seed), {})


def _run_onnxruntime(path: Path, images: np.ndarray) -> list[np.ndarray] | None:
    try:
        import onnxruntime as ort
    except ImportError:  # exporting needs only onnx; the check is skipped
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def _write_atomic(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Rebuild a trained method from its checkpoint, and evaluate it on a split."""

from __future__ import annotations

import torch

from bcct import checkpoint, imagenet, test_time
from bcct.config import from_dict, load_config, to_dict
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.errors import BadInput
from bcct.evaluate import evaluate, flatten
from bcct.imagenet import IMAGENET
from bcct.methods import build_method
from bcct.runtime import resolve_device, tune_kernels


def load_method(ckpt_path: str, overrides: list[str] | None = None, device: str = "auto"):
    """(method in eval mode, config, checkpoint dict). The weights come from the checkpoint,
    so the backbone is built without pretrained weights (nothing is downloaded), unless the
    checkpoint leaves frozen pieces out (``frozen``: e.g. BC-CT's BC backbone), which then
    come from ``model.pretrained`` as in training. ``imagenet`` is the pip-shipped ImageNet
    classifier with training-free maps (:mod:`bcct.imagenet`)."""
    if str(ckpt_path) == IMAGENET:
        if overrides:
            raise BadInput(f"--checkpoint {IMAGENET} takes no key=value overrides (got {' '.join(overrides)})")
        return imagenet.load(device=str(resolve_device(device)))
    ckpt = checkpoint.load(ckpt_path)
    cfg = from_dict(ckpt["config"])
    if overrides:
        cfg = load_config(None, overrides, **to_dict(cfg))
    if not ckpt.get("frozen"):
        cfg.model.pretrained = "none"
    method = build_method(cfg, len(ckpt["class_names"]))
    cfg.model.pretrained = "none"
    try:
        checkpoint.load_trained_state(method, ckpt["model"])
    except RuntimeError:
        saved = ckpt.get("method")
        if saved and saved != cfg.method:
            hint = f"it holds a {saved} model: evaluate it as {saved} (drop the method={cfg.method} override)"
        elif overrides:
            hint = "check the overrides: they must not change the model's shape"
        else:
            hint = "was it written by another bcct version?"
        raise BadInput(f"{ckpt_path}: weights do not fit a {cfg.method} model with {len(ckpt['class_names'])} "
                       f"classes ({_mismatch(method.state_dict(), ckpt['model'])}); {hint}") from None
    dev = resolve_device(device if device != "auto" else cfg.device)
    tune_kernels(dev)
    return method.to(dev).eval(), cfg, ckpt


def _mismatch(expected: dict, given: dict) -> str:
    """What differs between a model's state dict and a checkpoint's, in a few words."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shaped = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} of another shape, e.g. {k} {tuple(given[k].shape)} instead of "
                     f"{tuple(expected[k].shape)}")
    return ", ".join(parts) or "state dicts differ"


def eval_setup(ckpt_path: str, data: str | None = None, split: str = "test", oracle: bool = False,
               overrides: list[str] | None = None, fallback_oracle: bool = False):
    """(method, cfg, ckpt, dataset, thresholds) for evaluating a checkpoint on ``split``. The CAM
    threshold is the one chosen on the held-out val split during training (or
    ``eval.threshold``); ``oracle`` leaves it to be picked on ``split`` itself (None). A
    checkpoint without val-chosen thresholds (``data.val_fraction=0``, a mid-epoch last.pt)
    is refused unless ``oracle`` or ``fallback_oracle`` (then the results say
    ``threshold_source: oracle`` and the tables print ORACLE beside them)."""
    method, cfg, ckpt = load_method(ckpt_path, overrides)
    if data:
        cfg.data.root = data
    if not cfg.data.root:
        raise BadInput(f"--checkpoint {ckpt_path} was trained on no data folder: pass --data ROOT")
    # the ImageNet classifier's labels are ImageNet's standard indices, whatever classes the data holds
    wset = read_dataset(cfg.data, seed=cfg.seed, classes=ckpt.get("synsets"))
    if not ckpt.get("synsets") and wset.num_classes != len(ckpt["class_names"]):
        raise BadInput(f"{cfg.data.root}: has {wset.num_classes} classes but {ckpt_path} was trained on "
                       f"{len(ckpt['class_names'])}; evaluate it on the data it was trained for")
    ds = WSOLDataset(wset.split(split), test_transform(cfg.data))
    if len(ds) == 0:
        others = [name for name in ("train", "val", "test") if name != split and wset.split(name)]
        raise BadInput(f"{cfg.data.root}: the {split} split is empty; evaluate another with --split "
                       f"({' or '.join(others) or 'none has images'})")
    thresholds = None if oracle else ckpt.get("thresholds") or None
    trained_sides = test_time.input_sides(ckpt["config"].get("eval", {}).get("scales") or [], cfg.data.image_size)
    rescaled = test_time.input_sides(cfg.eval.scales, cfg.data.image_size) != trained_sides
    if (ckpt.get("threshold_source") == "fixed" or rescaled) and not oracle:
        # no training chose one, or it was chosen for other input sides (an eval.scales override): choose on val now
        thresholds = thresholds_on_val(method, cfg, wset, thresholds)
    if thresholds is None and not (oracle or fallback_oracle) and cfg.eval.threshold is None:
        raise BadInput(f"{ckpt_path}: holds no CAM threshold chosen on val (trained with data.val_fraction=0, or a "
                       f"mid-epoch last.pt), so it would be chosen on the {split} split itself; pass --oracle to accept "
                       "that (reported as ORACLE), eval.threshold=T to fix one, or evaluate a best.pt trained with a "
                       "val split")
    return method, cfg, ckpt, ds, thresholds


def thresholds_on_val(method, cfg, wset, fixed: dict[str, float]) -> dict[str, float]:
    """The CAM threshold of every readout chosen on ``wset``'s val split (as training chooses
    it; for a model that saw no training data); ``fixed`` when val is empty or has no boxes."""
    val = WSOLDataset(wset.split("val"), test_transform(cfg.data))
    if len(val) == 0 or not all(len(r.boxes) for r in val.records):
        return fixed
    results = evaluate(method, val, cfg, next(method.parameters()).device, thresholds=None)
    return {name: float(res["threshold"]) for name, res in results.items()}


def val_threshold(ckpt: dict, readout: str, ckpt_path) -> float:
    """The CAM threshold of ``readout`` chosen on val during training (what a figure cuts
    at); no made-up default: a checkpoint without one is refused."""
    thresholds = ckpt.get("thresholds") or {}
    if readout not in thresholds:
        raise BadInput(f"{ckpt_path}: holds no val-chosen CAM threshold for readout {readout!r} "
                       "(trained with data.val_fraction=0, or a mid-epoch last.pt)")
    return float(thresholds[readout])


def describe(metrics: dict, cfg, split: str, ckpt_path: str, ckpt: dict) -> dict:
    metrics.update({"method": cfg.method, "split": split, "checkpoint": str(ckpt_path), "epoch": ckpt["epoch"]})
    return metrics


def evaluate_checkpoint(ckpt_path: str, data: str | None = None, split: str = "test", oracle: bool = False,
                        overrides: list[str] | None = None, progress: bool = True, fallback_oracle: bool = False) -> dict:
    """Metrics of a checkpoint on ``split`` (see :func:`eval_setup` for the threshold)."""
    method, cfg, ckpt, ds, thresholds = eval_setup(ckpt_path, data, split, oracle, overrides, fallback_oracle)
    device = next(method.parameters()).device
    results = evaluate(method, ds, cfg, device, thresholds=thresholds, progress=progress)
    return describe(flatten(results), cfg, split, ckpt_path, ckpt)


def plain(obj):
    """numpy scalars -> Python numbers, recursively (for JSON and weights-only checkpoints)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor):
        return obj.item()
    return obj

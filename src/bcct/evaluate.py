"""Run a method over a split and score its maps with the shared evaluator (bcct.metrics)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct.config import Config
from bcct.data.dataset import WSOLDataset, collate
from bcct.metrics import BoxCorrectness, mask_validity, summarize


def make_loader(ds: WSOLDataset, cfg: Config) -> DataLoader:
    return DataLoader(ds, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available())


@torch.no_grad()
def predict(method, ds: WSOLDataset, cfg: Config, device: torch.device, progress: bool = False) -> dict:
    """GT-class score maps of every readout, and top-1/top-5 classification correctness."""
    method.eval()
    maps: dict[str, list[np.ndarray]] = {}
    top1, top5, mboxes = [], [], []
    for batch in tqdm(make_loader(ds, cfg), desc="eval", leave=False, disable=None if progress else True):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        out = method(images)
        k = min(5, out["logits"].shape[1])
        topk = out["logits"].topk(k, dim=1).indices
        top1.append((topk[:, 0] == labels).cpu().numpy())
        top5.append((topk == labels[:, None]).any(1).cpu().numpy())
        for name, m in method.score_maps(out, labels).items():
            maps.setdefault(name, []).append(m.float().cpu().numpy())
        boxes = method.mask_boxes(images)
        if boxes is not None:
            mboxes.append(boxes.cpu().numpy())
    return {
        "maps": {k: np.concatenate(v) for k, v in maps.items()},
        "top1": np.concatenate(top1),
        "top5": np.concatenate(top5),
        "mask_boxes": np.concatenate(mboxes) if mboxes else None,
    }


def to_original(boxes: np.ndarray, sizes: list[tuple[int, int]], input_size: int) -> np.ndarray:
    """Boxes in the resized input frame -> original image pixels."""
    scale = np.array([[w / input_size, h / input_size, w / input_size, h / input_size] for w, h in sizes])
    return boxes * scale


def correctness(pred: dict, ds: WSOLDataset, cfg: Config) -> dict[str, BoxCorrectness]:
    """One per-image x per-threshold IoU table per readout (bcct.metrics)."""
    sizes = ds.image_sizes()
    boxes = [r.boxes for r in ds.records]
    thresholds = np.arange(0, 1, cfg.eval.threshold_step)
    out = {}
    for name, maps in pred["maps"].items():
        corr = BoxCorrectness(thresholds=thresholds)
        corr.add(maps, boxes, sizes)
        out[name] = corr
    return out


def evaluate(method, ds: WSOLDataset, cfg: Config, device: torch.device,
             thresholds: dict[str, float] | None = None, progress: bool = False) -> dict:
    """Metrics per readout. ``thresholds`` (chosen on val) are used when given, else the
    config's fixed one, else the split's own best (reported as ``threshold_source: oracle``)."""
    pred = predict(method, ds, cfg, device, progress)
    results = {}
    for name, corr in correctness(pred, ds, cfg).items():
        tau = cfg.eval.threshold
        if tau is None and thresholds and name in thresholds:
            tau = thresholds[name]
        results[name] = summarize(corr, pred["top1"], pred["top5"], threshold=tau)
    if pred["mask_boxes"] is not None:
        boxes = to_original(pred["mask_boxes"], ds.image_sizes(), cfg.data.image_size)
        validity = mask_validity(boxes, [r.boxes for r in ds.records])
        for res in results.values():
            res["mask_validity"] = float(validity.mean())
    return results


def flatten(results: dict) -> dict:
    """The primary readout's keys at top level, the others nested under their names."""
    names = list(results)
    flat = dict(results[names[0]])
    flat["readout"] = names[0]
    for name in names[1:]:
        flat[name] = results[name]
    return flat

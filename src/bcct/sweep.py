"""The delta sweep (paper Table 3 and the BC* row of Table 2).

``mask_sweep`` cuts the BC gradient maps of a trained BC-CT model at every delta in
one pass (the maps are computed once) and reports BC* and the stricter box-IoU validity.
``train_sweep`` retrains the CT model for each delta, as Table 3 does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from bcct.data.dataset import WSOLDataset, collate
from bcct.errors import BadInput
from bcct.evaluate import to_original
from bcct.mask import bc_mask, mask_boxes
from bcct.metrics import mask_iou50, mask_validity
from bcct.runtime import ignore_sigint

DELTAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


@torch.no_grad()
def mask_sweep(method, ds: WSOLDataset, deltas=DELTAS, batch_size: int = 64, workers: int = 0) -> dict:
    """{delta: {"mask_validity": BC*, "mask_iou50": share with box IoU >= 0.5, "mask_area": mean
    fraction of the image}} for the masks the BC model gives at each delta."""
    if not hasattr(method, "gradient_maps"):
        raise BadInput(f"method {method.name!r} has no BC model; the delta sweep needs a bcct checkpoint")
    device = next(method.parameters()).device
    return maps_sweep(lambda x: method.gradient_maps(x.to(device))[0], ds, method.cfg.data.image_size,
                      deltas, batch_size, workers)


def pretrained_sweep(cfg, ds: WSOLDataset, deltas=DELTAS, batch_size: int = 64, workers: int = 0) -> dict:
    """The same sweep for the pretrained backbone alone, no Background Image Set (paper Fig. 3,
    row 2), read as ``cfg.bcct`` reads the BC model (:func:`bcct.gradient_map.pretrained_maps`)."""
    from bcct.backbones import build_backbone
    from bcct.gradient_map import pretrained_maps

    backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained).eval()
    return maps_sweep(lambda x: pretrained_maps(backbone, x, cfg.bcct), ds, cfg.data.image_size, deltas, batch_size,
                      workers)


def maps_sweep(maps_of, ds: WSOLDataset, size: int, deltas=DELTAS, batch_size: int = 64, workers: int = 0) -> dict:
    """:func:`mask_sweep` for any ``maps_of(images) -> [B,H,W] maps in [0, 1]``."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate, worker_init_fn=ignore_sigint)
    return score_maps((maps_of(batch["image"]).detach() for batch in loader), ds, size, deltas)


def score_maps(maps_batches, ds: WSOLDataset, size: int, deltas=DELTAS) -> dict:
    """The sweep's numbers for maps already made: ``maps_batches`` yields [B,H,W] maps in
    [0, 1] (``size`` x ``size``) for the images of ``ds``, in its order."""
    boxes = {d: [] for d in deltas}
    areas = {d: [] for d in deltas}
    for maps in maps_batches:
        for d in deltas:
            m = bc_mask(maps, d)
            boxes[d].append(mask_boxes(m).cpu().numpy())
            areas[d].append(m.float().mean((1, 2)).cpu().numpy())
    sizes, gts = ds.image_sizes(), [r.boxes for r in ds.records]
    out = {}
    for d in deltas:
        b = to_original(np.concatenate(boxes[d]), sizes, size)
        out[d] = {"mask_validity": float(mask_validity(b, gts).mean()), "mask_iou50": float(mask_iou50(b, gts).mean()),
                  "mask_area": float(np.concatenate(areas[d]).mean())}
    return out


def run_sweep(ckpt_path: str, deltas, data: str | None = None, split: str = "val", train_out: str | None = None) -> dict:
    """The mask sweep of a bcct checkpoint; with ``train_out``, BC-CT retrained per delta too."""
    from pathlib import Path

    from bcct.config import from_dict
    from bcct.data.readers import read_dataset
    from bcct.data.transforms import test_transform
    from bcct.run import evaluate_checkpoint, load_method
    from bcct.train import train

    method, cfg, ckpt = load_method(ckpt_path)
    if data:
        cfg.data.root = data
    ds = WSOLDataset(read_dataset(cfg.data, seed=cfg.seed).split(split), test_transform(cfg.data))
    result = {f"{d:g}": r for d, r in mask_sweep(method, ds, deltas, cfg.eval.batch_size, cfg.data.workers).items()}
    if train_out:
        for d in deltas:
            run_cfg = from_dict(ckpt["config"])  # with its pretrained weights, unlike ``cfg``
            run_cfg.data.root, run_cfg.bcct.delta = cfg.data.root, d
            run_dir = Path(train_out) / f"delta_{d:g}"
            train(run_cfg, run_dir, progress=False)
            m = evaluate_checkpoint(str(run_dir / "best.pt"), split=split, progress=False)
            result[f"{d:g}"].update(top1_loc=m["top1_loc"], top5_loc=m["top5_loc"], gt_known=m["gt_known"])
    return result


def format_sweep(sweep: dict, split: str = "val", normalize: str | None = None) -> str:
    """Markdown like the paper's Table 3 (errors in percent) plus mask statistics. A sweep on
    the test split is labelled ORACLE: read it, never choose delta from it. ``normalize``
    (the map scale) adds what each delta means on Eq. 2's raw scale (x max G)."""
    from bcct.gradient_map import raw_delta

    trained = any("top1_loc" in r for r in sweep.values())
    raw = normalize is not None and raw_delta(1.0, normalize) is not None
    head = ("| delta |" + (" raw (x max G) |" if raw else "") + " BC* err | mask box IoU>=0.5 | mask area |"
            + (" top-1 loc err | top-5 loc err |" if trained else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d, r in sweep.items():
        row = f"| {d} |" + (f" {raw_delta(float(d), normalize):.3g} |" if raw else "")
        row += f" {100 * (1 - r['mask_validity']):.2f} | {100 * r['mask_iou50']:.1f} | {100 * r['mask_area']:.1f} |"
        if trained:
            row += f" {100 * (1 - r['top1_loc']):.2f} | {100 * (1 - r['top5_loc']):.2f} |"
        lines.append(row)
    if split == "test":
        lines.insert(0, "ORACLE: this sweep is on the test split; choose delta on val (`--split val`), never here.\n")
    return "\n".join(lines)

"""The delta sweep (paper Table 3 and the BC* row of Table 2).

``mask_sweep`` thresholds the BC gradient maps of a trained BC-CT model at every delta in
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
from bcct.metrics import mask_validity

DELTAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


@torch.no_grad()
def mask_sweep(method, ds: WSOLDataset, deltas=DELTAS, batch_size: int = 64, workers: int = 0) -> dict:
    """{delta: {"mask_validity": BC*, "mask_iou50": share with box IoU >= 0.5, "mask_area": mean
    fraction of the image}} for the masks the BC model gives at each delta."""
    if not hasattr(method, "gradient_maps"):
        raise BadInput(f"method {method.name!r} has no BC model; the delta sweep needs a bcct checkpoint")
    from torchvision.ops import box_iou

    device = next(method.parameters()).device
    size = method.cfg.data.image_size
    boxes = {d: [] for d in deltas}
    areas = {d: [] for d in deltas}
    for batch in DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate):
        maps = method.gradient_maps(batch["image"].to(device))[0]
        for d in deltas:
            m = bc_mask(maps, d)
            boxes[d].append(mask_boxes(m).cpu().numpy())
            areas[d].append(m.float().mean((1, 2)).cpu().numpy())
    sizes, gts = ds.image_sizes(), [r.boxes for r in ds.records]
    out = {}
    for d in deltas:
        b = to_original(np.concatenate(boxes[d]), sizes, size)
        iou50 = [box_iou(torch.as_tensor(b[i : i + 1]), torch.as_tensor(g)).max().item() >= 0.5 for i, g in enumerate(gts)]
        out[d] = {"mask_validity": float(mask_validity(b, gts).mean()), "mask_iou50": float(np.mean(iou50)),
                  "mask_area": float(np.concatenate(areas[d]).mean())}
    return out


def run_sweep(ckpt_path: str, deltas, data: str | None = None, split: str = "test", train_out: str | None = None) -> dict:
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


def format_sweep(sweep: dict) -> str:
    """Markdown like the paper's Table 3 (errors in percent) plus mask statistics."""
    trained = any("top1_loc" in r for r in sweep.values())
    head = "| delta | BC* err | mask box IoU>=0.5 | mask area |" + (" top-1 loc err | top-5 loc err |" if trained else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d, r in sweep.items():
        row = f"| {d} | {100 * (1 - r['mask_validity']):.2f} | {100 * r['mask_iou50']:.1f} | {100 * r['mask_area']:.1f} |"
        if trained:
            row += f" {100 * (1 - r['top1_loc']):.2f} | {100 * (1 - r['top5_loc']):.2f} |"
        lines.append(row)
    return "\n".join(lines)

"""Which BC map localises best? The variant study of docs/bcct.md, on a split carved from
train (never test).

Trains the BC model of ``--config`` (the paper's: frozen ImageNet backbone, linear layer on
pooled features, BCE against the Background Image Set) once, then for every map variant
(``bcct.map``, ``bcct.flip``, post-processing) and every delta reports, on the images of
``--split`` (default val): mask IoU50 (the share of BC masks whose box has IoU >= 0.5 with a
GT box) and BC* (IoU >= 0.5 or the box covers the GT box). The pretrained-only gradient
(paper Fig. 3, row 2: no Background Image Set) and the literal Eq. 1-2 path are rows too.

    python bench/mask_study.py --data ../shared/data/cub_dev --backgrounds ../shared/data/backgrounds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bcct.backbones import build_backbone
from bcct.config import load_config
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform, train_transform
from bcct.gradient_map import postprocess, pretrained_gradcam, pretrained_gradient, reduce_channels, saliency
from bcct.methods import build_method
from bcct.sweep import score_maps
from bcct.two_stage import train_bc

DELTAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# (name, map, flip, pool_cells, blur, normalize); "literal" is Eq. 1-2 as printed.
VARIANTS = [
    ("literal (Eq. 1-2: input gradient, max)", "input_gradient", False, 0, 0, "max"),
    ("input gradient, 1 cell, blur 1/16, sqrt", "input_gradient", False, 1, 0.0625, "sqrt"),
    ("input gradient, 1 cell, blur 1/16, max", "input_gradient", False, 1, 0.0625, "max"),
    ("input gradient, 0.5 cell, blur 1/32, sqrt", "input_gradient", False, 0.5, 0.03125, "sqrt"),
    ("input gradient, 2 cells, blur 1/8, sqrt", "input_gradient", False, 2, 0.125, "sqrt"),
    ("input gradient + flip, 1 cell, blur 1/16, sqrt", "input_gradient", True, 1, 0.0625, "sqrt"),
    ("gradient x input, 1 cell, blur 1/16, sqrt", "grad_x_input", False, 1, 0.0625, "sqrt"),
    ("smoothgrad (8), 1 cell, blur 1/16, sqrt", "smoothgrad", False, 1, 0.0625, "sqrt"),
    ("gradcam (BC logit at features), max", "gradcam", False, 0, 0, "max"),
    ("gradcam, blur 1/32, max", "gradcam", False, 0, 0.03125, "max"),
    ("gradcam + flip, max", "gradcam", True, 0, 0, "max"),
    ("gradcam, sqrt", "gradcam", False, 0, 0, "sqrt"),
    ("gradcam + flip, sqrt", "gradcam", True, 0, 0, "sqrt"),
    ("gradcam, blur 1/32, sqrt", "gradcam", False, 0, 0.03125, "sqrt"),
]


def mask_scores(maps: torch.Tensor, ds: WSOLDataset, size: int, deltas=DELTAS) -> dict:
    """{delta: (IoU50, BC*, mean mask area)} of the largest-part masks of ``maps`` (all of ``ds``)."""
    r = score_maps([maps], ds, size, deltas)
    return {d: (v["mask_iou50"], v["mask_validity"], v["mask_area"]) for d, v in r.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--backgrounds", required=True)
    ap.add_argument("--config", default="cub_cpu")
    ap.add_argument("--split", default="val", choices=("train", "val"), help="never test: choices are made here")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--only", default="", help="only the variants whose name contains this text")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.overrides, method="bcct")
    cfg.data.root, cfg.data.backgrounds = args.data, args.backgrounds
    wset = read_dataset(cfg.data, seed=cfg.seed)
    method = build_method(cfg, wset.num_classes)
    t0 = time.time()
    stats = train_bc(method, WSOLDataset(wset.split("train"), train_transform(cfg.data)), args.backgrounds,
                     torch.device("cpu"), progress=True)
    print(f"BC trained in {time.time() - t0:.0f} s: {stats}", flush=True)
    bc = method.bc.eval()
    ds = WSOLDataset(wset.split(args.split), test_transform(cfg.data))
    images = torch.cat([b["image"] for b in DataLoader(ds, batch_size=32, collate_fn=collate)])
    size, stride = cfg.data.image_size, bc.features.stride

    with torch.no_grad():
        probs = torch.sigmoid(torch.cat([bc(images[i:i + 32]) for i in range(0, len(images), 32)]))
    print(f"BC on {args.split} targets: {float((probs > 0.5).float().mean()):.3f} called target", flush=True)

    raws: dict[tuple[str, bool], torch.Tensor] = {}

    def raw(how: str, flip: bool) -> torch.Tensor:
        if (how, flip) not in raws:
            t = time.time()
            parts = []
            for i in range(0, len(images), 16):
                x = images[i:i + 16]
                r = saliency(bc, x, how)[0]
                if flip:
                    r = (r + saliency(bc, x.flip(-1), how)[0].flip(-1)) / 2
                parts.append(r.detach())
            raws[how, flip] = torch.cat(parts)
            print(f"  {how}{' + flip' if flip else ''}: {1000 * (time.time() - t) / len(images):.0f} ms/image", flush=True)
        return raws[how, flip]

    rows = {}
    for name, how, flip, cells, blur, norm in VARIANTS:
        if args.only not in name:
            continue
        rows[name] = mask_scores(postprocess(raw(how, flip), stride, cells, blur, norm), ds, size)
    plain = build_backbone(cfg.model.backbone, cfg.model.pretrained).eval()
    pre = torch.cat([reduce_channels(pretrained_gradient(plain, images[i:i + 16])) for i in range(0, len(images), 16)])
    for name, cells, blur, norm in [("pretrained only (no Background Image Set), literal", 0, 0, "max"),
                                    ("pretrained only, 1 cell, blur 1/16, sqrt", 1, 0.0625, "sqrt"),
                                    ("pretrained only, 1 cell, blur 1/16, max", 1, 0.0625, "max")]:
        rows[name] = mask_scores(postprocess(pre, stride, cells, blur, norm), ds, size)
    pre_cam = torch.cat([pretrained_gradcam(plain, images[i:i + 16]) for i in range(0, len(images), 16)])
    pre_cam = F.interpolate(pre_cam.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    for name, norm in [("pretrained only, gradcam of its pooled-feature norm, max", "max"),
                       ("pretrained only, gradcam of its pooled-feature norm, sqrt", "sqrt")]:
        rows[name] = mask_scores(postprocess(pre_cam, stride, 0, 0, norm), ds, size)

    print(f"\n{args.split} split, {len(ds)} images; each cell: mask IoU50 / BC* (percent)")
    print("| variant | " + " | ".join(f"{d:g}" for d in DELTAS) + " | best IoU50 (delta) |")
    print("|---|" + "---|" * (len(DELTAS) + 1))
    for name, r in rows.items():
        best = max(DELTAS, key=lambda d: r[d][0])
        print(f"| {name} | " + " | ".join(f"{100 * r[d][0]:.0f} / {100 * r[d][1]:.0f}" for d in DELTAS)
              + f" | **{100 * r[best][0]:.1f}** ({best:g}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({n: {f"{d:g}": v for d, v in r.items()} for n, r in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

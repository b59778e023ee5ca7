"""Do BC-CT's readouts add up? Val only (issue 16 study, docs/localizer.md): each trained
BC-CT checkpoint (with its localizer) is evaluated on its own val split with extra readouts:
the student alone, the floor alone, the CT branch (and mirrored), the CT backbone's own
feature norm, and equal-weight blends of their min-max scaled maps. Thresholds are chosen
on the same val images (the rows rank variants and are not results); test is never read.

    python bench/readout_blend_study.py bench_out/scales/seed{0,1,2}/runs/bcct/best.pt
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections import defaultdict

import numpy as np
import torch

from bcct import class_maps, feature_maps
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.evaluate import evaluate
from bcct.localizer import minmax
from bcct.run import load_method

KEYS = ("top1_loc", "gt_known", "maxboxacc_v2")


def readouts(method, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every candidate map [B,h,w] in [0, 1] for one batch at one side."""
    out = method.model(images)
    head = method.localizer

    def read(f):
        return torch.stack([torch.sigmoid(head(f.float())), feature_maps.feature_norm(f)])

    student, floor = (minmax(m.float()) for m in feature_maps.with_flip(read, images, method.bc.features).unbind(0))
    branch = minmax(out["branch"].float())
    mirrored = (branch + minmax(method.model(images.flip(-1))["branch"].float().flip(-1))) / 2
    ct_norm = minmax(feature_maps.feature_norm(out["features"].float()))
    return {"box (student + floor)": (student + floor) / 2, "student": student, "floor": floor, "branch": branch,
            "branch, mirrored": mirrored, "CT feature norm": ct_norm,
            "student + floor + branch": (student + floor + branch) / 3,
            "student + floor + CT feature norm": (student + floor + ct_norm) / 3,
            "all four": (student + floor + branch + ct_norm) / 4, "_out": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="BC-CT best.pt files trained with localizer.enabled=true")
    ap.add_argument("--sides", default="224,288,352", help="eval.scales to read (default: %(default)s)")
    args = ap.parse_args(argv)
    rows: dict[str, list[dict]] = defaultdict(list)
    t0 = time.time()
    for path in args.checkpoints:
        method, cfg, _ = load_method(path, device="cpu")
        cfg.eval.scales = [int(v) for v in args.sides.split(",")]

        def forward(self, images):
            maps = readouts(self, images)
            return {**maps.pop("_out"), "blends": maps}

        def score_maps(self, out, classes):
            cam = class_maps.select(out["cams"], classes)
            return {"cam": cam, "cam + box": (minmax(cam.float()) + out["blends"]["box (student + floor)"]) / 2,
                    **out["blends"]}

        method.forward = types.MethodType(forward, method)
        method.score_maps = types.MethodType(score_maps, method)
        val = WSOLDataset(read_dataset(cfg.data, seed=cfg.seed).split("val"), test_transform(cfg.data))
        for name, res in evaluate(method, val, cfg, torch.device("cpu"), thresholds=None).items():
            rows[name].append(res)
        print(f"{path}: {time.time() - t0:.0f} s", flush=True)
    print("\n| map | runs | " + " | ".join(KEYS) + " |\n|---|---|" + "---|" * len(KEYS))
    for name, runs in rows.items():
        cells = []
        for key in KEYS:
            v = np.array([r[key] for r in runs if r.get(key) is not None], dtype=float) * 100
            cells.append("-" if v.size == 0 else f"{v.mean():.1f} +- {v.std(ddof=1) if v.size > 1 else 0:.1f}")
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

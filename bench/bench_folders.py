"""A user's own photos on a CPU: BC-CT trained on class folders with no box anywhere, scored
on the boxes of a CUB-layout test split.

CUB's training images become ``FOLDERS/train/<class>/`` (symlinks; no val folder, so the
recipe carves a box-less val from train), BC-CT trains on them with ``cub_cpu`` and the
Background Image Set (or reuses a finished run of the same config), and then:

* val (box-less during training; here given each image's CUB box only to judge): GT-known
  at the fixed CAM threshold 0.2 against the threshold chosen on the BC masks' boxes, and
  the threshold the boxes themselves would choose (val-oracle, for reference only);
* test (read once per rule): top-1 / top-5 loc, GT-known, MaxBoxAccV2, cls, BC* with either
  rule, every readout.

    python bench/bench_folders.py --data ../shared/data/cub_dev --backgrounds ../shared/data/backgrounds \\
        --out bench_out/folders
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bcct.config import NO_BOX_THRESHOLD, load_config
from bcct.data.cub import read_cub
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.evaluate import evaluate, predict
from bcct.metrics import BoxCorrectness, summarize
from bcct.run import load_method
from bcct.table import train_or_reuse


def class_folders(cub_root: Path, folders: Path) -> None:
    """CUB's train split as FOLDERS/train/<class>/<image> symlinks (its boxes are not copied)."""
    wset = read_cub(cub_root, val_fraction=0)
    for r in wset.split("train"):
        link = folders / "train" / wset.class_names[r.label] / r.path.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(r.path.resolve())


def val_judgement(method, cfg, cub_boxes: dict) -> tuple[dict, list[str]]:
    """The BC-mask thresholds chosen on box-less val, and lines comparing them with 0.2 on the
    val images' true boxes."""
    cfg.eval.threshold = None
    val = read_dataset(cfg.data, seed=cfg.seed).split("val")
    device = next(method.parameters()).device
    chosen = {k: v["threshold"] for k, v in evaluate(method, WSOLDataset(val, test_transform(cfg.data)), cfg,
                                                      device).items()}
    for r in val:
        r.boxes = cub_boxes[r.path.name]
    ds = WSOLDataset(val, test_transform(cfg.data))
    pred = predict(method, ds, cfg, device)
    lines = [f"val ({len(ds)} images, true boxes only to judge): GT-known at fixed {NO_BOX_THRESHOLD} / at the "
             "BC-mask threshold; the boxes' own choice (val-oracle)"]
    for name, tau in chosen.items():
        corr = BoxCorrectness(thresholds=np.arange(0, 1, cfg.eval.threshold_step))
        corr.add(pred["maps"][name], [r.boxes for r in ds.records], ds.image_sizes())
        fixed, masks = (summarize(corr, pred["top1"], pred["top5"], threshold=t)["gt_known"]
                        for t in (NO_BOX_THRESHOLD, tau))
        oracle = summarize(corr, pred["top1"], pred["top5"])["oracle_threshold"]
        lines.append(f"  {name}: {100 * fixed:.1f} / {100 * masks:.1f} at {tau:.2f}; val-oracle {oracle:.2f}")
    return chosen, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a CUB-layout folder (its train split becomes class folders)")
    ap.add_argument("--backgrounds", required=True, help="the Background Image Set")
    ap.add_argument("--out", required=True)
    ap.add_argument("--folders", default=None, help="where the class folders go (default OUT/folders)")
    ap.add_argument("--run", default=None, help="the run directory (default OUT/runs/bcct)")
    args = ap.parse_args()
    out = Path(args.out)
    folders = Path(args.folders or out / "folders")
    run = Path(args.run or out / "runs" / "bcct")
    class_folders(Path(args.data), folders)

    cfg = load_config("cub_cpu", method="bcct")
    cfg.data.root, cfg.data.backgrounds = str(folders), args.backgrounds
    status = train_or_reuse(cfg, run)
    method, cfg, _ = load_method(str(run / "best.pt"))
    cub = read_cub(args.data)
    chosen, lines = val_judgement(method, cfg, {r.path.name: r.boxes for r in cub.records})

    test = WSOLDataset(cub.split("test"), test_transform(cfg.data))
    device = next(method.parameters()).device
    results = {}
    lines += ["", f"test ({len(test)} images, read once per rule): top-1 loc / top-5 loc / GT-known / MaxBoxAccV2 / "
              "cls / BC*"]
    for rule, taus in (("bc_masks", chosen), ("fixed", {k: NO_BOX_THRESHOLD for k in chosen})):
        results[rule] = evaluate(method, test, cfg, device, thresholds=taus)
        for name, m in results[rule].items():
            lines.append(f"  {rule} {name} @{m['threshold']:.2f}: " + " / ".join(
                f"{100 * m[k]:.1f}" for k in ("top1_loc", "top5_loc", "gt_known", "maxboxacc_v2", "cls_top1",
                                              "mask_validity")))
    lines.append(f"run: {run} ({status})")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_folders.md").write_text(text + "\n")
    (out / "bench_folders.json").write_text(json.dumps({"val_thresholds": chosen, "test": results}, indent=2,
                                                       default=float))


if __name__ == "__main__":
    main()

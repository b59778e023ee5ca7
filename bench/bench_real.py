"""CAM, BC-CT and the baselines on real photos with real ImageNet features, on a CPU.

Trains (or reuses) every method with the ``cub_cpu`` recipe (EfficientNet-Lite0, weights
from pip) on a CUB-layout folder, evaluates each on test once with its CAM threshold chosen
on val, and prints the paper-style table with BC*, the mask IoU50, the pretrained-only mask
row (paper Fig. 3, row 2: the backbone without any Background Image Set) and each method's
train time. Writes OUT/table.md (+ csv/json), OUT/fig3_masks.png (input, pretrained map, BC
map, BC mask) and OUT/fig4_boxes.png (methods by row, same test images by column).

    python bench/bench_real.py --data ../shared/data/cub_dev --backgrounds ../shared/data/backgrounds \\
        --out bench_out/real --methods cam,bcct

Delta for the pretrained-only row is chosen on val (its own best IoU50), as BC-CT's is in
the recipe; test is read once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bcct.config import from_dict
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.demo import bc_figure
from bcct.run import load_method
from bcct.sweep import DELTAS, mask_sweep, pretrained_sweep
from bcct.table import run_table

DEFAULT = "cam,backprop,has,acol,spg_plain,spg,adl,bcct"


def _train_seconds(run_dir: Path) -> float | None:
    """Wall time of a finished run from its metrics log (so a reused run still reports it)."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    secs = [r["time_s"] for r in rows if "time_s" in r]  # every epoch and the BC stage (epoch -1)
    return round(sum(secs), 1) if secs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a CUB-layout folder")
    ap.add_argument("--backgrounds", required=True, help="the Background Image Set folder (or auto)")
    ap.add_argument("--out", default="bench_out/real")
    ap.add_argument("--methods", default=DEFAULT)
    ap.add_argument("--config", default="cub_cpu")
    ap.add_argument("overrides", nargs="*", help="key=value for every method")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = run_table(out, data=args.data, methods=methods, config=args.config,
                        overrides=[f"data.backgrounds={args.backgrounds}", *args.overrides])
    shutil.copyfile(out / "figure.png", out / "fig4_boxes.png")

    lines = ["| method (readout) | top-1 loc | top-5 loc | GT-known | MaxBoxAccV2 | cls top-1 | BC* | mask IoU50 | train min |",
             "|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    for label, m in results.items():
        secs = m.get("train_seconds") or _train_seconds(out / "runs" / label)
        for readout, r in [(m["readout"], m)] + [(k, v) for k, v in m.items() if isinstance(v, dict) and "top1_loc" in v]:
            lines.append(f"| {label} ({readout}) | {pct(r['top1_loc'])} | {pct(r['top5_loc'])} | {pct(r['gt_known'])} | "
                         f"{pct(r.get('maxboxacc_v2'))} | {pct(m.get('cls_top1'))} | {pct(m.get('mask_validity'))} | "
                         f"{pct(m.get('mask_iou50'))} | {'-' if secs is None else f'{secs / 60:.1f}'} |")

    bc_rows = [label for label in results if label == "bcct" or label.startswith("bcct")]
    if bc_rows:
        ckpt = out / "runs" / bc_rows[0] / "best.pt"
        method, cfg, saved = load_method(str(ckpt))
        cfg = from_dict(saved["config"])  # with the run's pretrained weights
        cfg.data.root = args.data
        wset = read_dataset(cfg.data, seed=cfg.seed)
        val = WSOLDataset(wset.split("val"), test_transform(cfg.data))
        test = WSOLDataset(wset.split("test"), test_transform(cfg.data))
        pre_val = pretrained_sweep(cfg, val, DELTAS, cfg.eval.batch_size)
        d = max(pre_val, key=lambda k: pre_val[k]["mask_iou50"])
        pre_test = pretrained_sweep(cfg, test, (d,), cfg.eval.batch_size)[d]
        lines.append(f"| pretrained only, no Background Image Set (masks at delta {d:g}, chosen on val) | - | - | - | - | - | "
                     f"{pct(pre_test['mask_validity'])} | {pct(pre_test['mask_iou50'])} | - |")
        bc_val = mask_sweep(method, val, DELTAS, cfg.eval.batch_size)
        bc_figure(ckpt, out / "fig3_masks.png")
        sweep_lines = ["| delta | BC mask IoU50 (val) | BC* (val) | pretrained IoU50 (val) | pretrained BC* (val) |",
                       "|---|---|---|---|---|"]
        sweep_lines += [f"| {k:g} | {pct(bc_val[k]['mask_iou50'])} | {pct(bc_val[k]['mask_validity'])} | "
                        f"{pct(pre_val[k]['mask_iou50'])} | {pct(pre_val[k]['mask_validity'])} |" for k in DELTAS]
        lines += ["", f"BC-CT trains with delta {cfg.bcct.delta:g} (map `{cfg.bcct.map}`, scale `{cfg.bcct.normalize}`); "
                  "masks over delta on val:", "", *sweep_lines]
    text = (f"Test split of {args.data}, {args.config} recipe; thresholds chosen on val; one run per method; "
            f"percent.\n\n" + "\n".join(lines) + f"\n\nbench_real total {time.time() - t0:.0f} s\n")
    (out / "bench_real.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

import numpy as np

from bcct.config import from_dict
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.demo import bc_figure
from bcct.files import write_text_atomic
from bcct.run import load_method
from bcct.sweep import DELTAS, mask_sweep, pretrained_sweep
from bcct.table import PAPER, paper_section, run_table

DEFAULT = "feature_norm,pc1,ddt,cam,backprop,has,acol,spg_plain,spg,adl,bcct"
METRICS = (("top1_loc", "top-1 loc"), ("top5_loc", "top-5 loc"), ("gt_known", "GT-known"),
           ("maxboxacc_v2", "MaxBoxAccV2"), ("cls_top1", "cls top-1"), ("mask_validity", "BC*"),
           ("mask_iou50", "mask IoU50"))


def _stage_seconds(run_dir: Path) -> dict[str, float] | None:
    """A finished run's training time from its own metrics log, the same for a run trained
    now and a reused one: ``{"total", "prepare", "epochs"}`` seconds, where ``prepare`` is the
    record before the first epoch (BC-CT's BC stage, its localizer and mask cache) and
    ``epochs`` every epoch (the last one with its val scoring). Process start-up, reading the
    data list and building the model (10-20 s) are not in the log."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    prepare = sum(r["time_s"] for r in rows if "time_s" in r and r.get("epoch") == -1)
    epochs = sum(r["time_s"] for r in rows if "time_s" in r and r.get("epoch", -1) >= 0)
    return {"total": round(prepare + epochs, 1), "prepare": round(prepare, 1), "epochs": round(epochs, 1)}


def readout_rows(label: str, m: dict) -> list[tuple[str, dict]]:
    """(row name, metrics) for every readout of one method's results: the primary one first."""
    subs = [(k, v) for k, v in m.items() if isinstance(v, dict) and "gt_known" in v]
    return [(f"{label} ({m['readout']})", m)] + [(f"{label} ({k})", {**v, "cls_top1": m.get("cls_top1"),
                                                                    "mask_validity": m.get("mask_validity"),
                                                                    "mask_iou50": m.get("mask_iou50")})
                                                for k, v in subs]


def mean_std(values: list[float]) -> str:
    """Percent, mean +- sample std over seeds ('-' when no seed has it)."""
    v = np.array([x for x in values if x is not None], dtype=float) * 100
    if not len(v):
        return "-"
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} +- {v.std(ddof=1):.1f}"


def seed_table(per_seed: list[dict], out: Path) -> list[str]:
    """The headline table: one row per (method, readout), every metric as mean +- std over
    the seeds, and train minutes (mean over seeds)."""
    rows: dict[str, dict[str, list]] = {}
    minutes: dict[str, list[float]] = {}
    staged: dict[str, list[dict]] = {}  # BC-CT runs: their BC stage, then the CT epochs
    for k, results in enumerate(per_seed):
        for label, m in results.items():
            stages = _stage_seconds(out / f"seed{k}" / "runs" / label)
            secs = stages["total"] if stages else m.get("train_seconds")
            if stages and stages["prepare"] > 0 and m.get("method") == "bcct":
                staged.setdefault(label, []).append(stages)
            for name, r in readout_rows(label, m):
                cols = rows.setdefault(name, {key: [] for key, _ in METRICS})
                for key, _ in METRICS:
                    cols[key].append(r.get(key))
                if secs is not None and name.startswith(f"{label} ({m['readout']})"):
                    minutes.setdefault(name, []).append(secs / 60)
    head = "| method (readout) | " + " | ".join(h for _, h in METRICS) + " | train min | runs |"
    lines = [head, "|---" * (len(METRICS) + 3) + "|"]
    for name, cols in rows.items():
        mins = minutes.get(name)
        lines.append(f"| {name} | " + " | ".join(mean_std(cols[key]) for key, _ in METRICS)
                     + f" | {'-' if not mins else f'{np.mean(mins):.1f}'} | {len(cols['gt_known'])} |")
    lines += ["", "Train min: the sum of each run's own logged stages (metrics.jsonl; for a training-free row, "
              "fitting it and choosing its threshold on val), mean over seeds; a time means something only if "
              "the run had the machine to itself."]
    for label, runs in staged.items():
        prep = np.array([r["prepare"] for r in runs]) / 60
        ep = np.array([r["epochs"] for r in runs]) / 60
        lines.append(f"{label}: the stage before its epochs (BC model, localizer, mask cache) "
                     f"{prep.mean():.1f} min, its epochs (the CT stage) {ep.mean():.1f} min "
                     f"(runs: {', '.join(f'{a:.1f} + {b:.1f}' for a, b in zip(prep, ep))}).")
    return lines


def _saved_table(seed_dir: Path, methods: list[str], every: bool) -> dict:
    """``{label: metrics}`` of ``methods`` from the table.json an earlier run wrote in ``seed_dir``;
    ``every``: each method must be there (seed 0), else a method missing counts one run fewer."""
    path = seed_dir / "table.json"
    if not path.is_file():
        sys.exit(f"{path}: no table to print; run bench_real.py without --from-tables first")
    saved = json.loads(path.read_text())
    missing = [m for m in methods if m not in saved]
    if missing and every:
        sys.exit(f"{path}: has no row for {', '.join(missing)}; run bench_real.py without --from-tables for them")
    return {m: saved[m] for m in methods if m in saved}


def ct_delta_rows(seed_dir: Path, data: str, config: str, deltas: list[float], overrides: list[str]) -> list[str]:
    """Paper Table 3 on real photos: a BC-CT trained per BC-mask delta (``bcct.delta``; the
    localizer off, as it does not change the CT model), its CAM readout on val (thresholds
    chosen on those same val images, as training does) and on test with them. A delta chosen
    from the test columns would be an oracle choice, so they are labelled so."""
    from bcct.config import load_config
    from bcct.run import evaluate_checkpoint, plain
    from bcct.table import train_or_reuse

    rows = ["Paper Table 3's CT rows: BC-CT (seed 0, CAM readout, no localizer) trained once per delta; val "
            "thresholds chosen on val; test read with them (test columns: oracle if a delta is picked from them).", "",
            "| delta | top-1 loc (val) | GT-known (val) | top-1 loc (test, oracle) | top-5 loc (test, oracle) "
            "| GT-known (test, oracle) | cls top-1 (test) | train min |", "|---|---|---|---|---|---|---|---|"]
    for d in deltas:
        cfg = load_config(config, [*overrides, f"bcct.delta={d}", "localizer.enabled=false"], method="bcct")
        cfg.data.root = str(data)
        run_dir = seed_dir / "runs" / f"bcct_delta{d:g}"
        print(f"[table 3] delta {d:g}: {run_dir}", flush=True)
        status = train_or_reuse(cfg, run_dir)
        ckpt, scales = str(run_dir / "best.pt"), [f"eval.scales={list(cfg.eval.scales)}"]
        saved = run_dir / "table3.json"  # a reused run with the same sides is not read again
        cached = json.loads(saved.read_text()) if saved.is_file() and status == "reused" else {}
        if cached.get("scales") != scales:
            cached = {"scales": scales, "val": plain(evaluate_checkpoint(ckpt, data=str(data), split="val", oracle=True,
                                                                         overrides=scales, progress=False)),
                      "test": plain(evaluate_checkpoint(ckpt, data=str(data), split="test", overrides=scales,
                                                        progress=False))}
            write_text_atomic(json.dumps(cached, indent=1) + "\n", saved)
        val, test = cached["val"], cached["test"]
        stages = _stage_seconds(run_dir)
        mins = "-" if stages is None else f"{stages['total'] / 60:.1f}"
        rows.append(f"| {d:g} | {100 * val['top1_loc']:.1f} | {100 * val['gt_known']:.1f} | {100 * test['top1_loc']:.1f} "
                    f"| {100 * test['top5_loc']:.1f} | {100 * test['gt_known']:.1f} | {100 * test['cls_top1']:.1f} | {mins} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a CUB-layout folder")
    ap.add_argument("--backgrounds", required=True, help="the Background Image Set folder (or auto)")
    ap.add_argument("--out", default="bench_out/real")
    ap.add_argument("--methods", default=DEFAULT)
    ap.add_argument("--config", default="cub_cpu")
    ap.add_argument("--seeds", type=int, default=1, help="runs per method, seeds 0..N-1 (each carves its own val split)")
    ap.add_argument("--from-tables", action="store_true",
                    help="no training and no test evaluation: print the table from the OUT/seedK/table.json files "
                         "an earlier run wrote (the BC-mask sweeps and figures are recomputed); a method seed 0 has and "
                         "seed K does not counts one run fewer (baselines run with --seeds 1 beside 3-seed rows)")
    ap.add_argument("--ct-deltas", default="",
                    help="paper Table 3's CT rows: train BC-CT (seed 0, no localizer) once per BC-mask delta, e.g. "
                         "0.5,0.6,0.7,0.8, and print its val and test (oracle) localisation per delta")
    ap.add_argument("overrides", nargs="*", help="key=value for every method")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    per_seed = []
    for k in range(args.seeds):
        if args.from_tables:
            per_seed.append(_saved_table(out / f"seed{k}", methods, every=k == 0))
            continue
        per_seed.append(run_table(out / f"seed{k}", data=args.data, methods=methods, config=args.config,
                                  overrides=[f"data.backgrounds={args.backgrounds}", f"seed={k}", *args.overrides]))
    shutil.copyfile(out / "seed0" / "figure.png", out / "fig4_boxes.png")
    lines = seed_table(per_seed, out)
    results = per_seed[0]
    out_seed0 = out / "seed0"

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    bc_rows = [label for label in results if label == "bcct" or label.startswith("bcct")]
    if bc_rows:
        ckpt = out_seed0 / "runs" / bc_rows[0] / "best.pt"
        method, cfg, saved = load_method(str(ckpt))
        cfg = from_dict(saved["config"])  # with the run's pretrained weights
        cfg.data.root = args.data
        wset = read_dataset(cfg.data, seed=cfg.seed)
        val = WSOLDataset(wset.split("val"), test_transform(cfg.data))
        test = WSOLDataset(wset.split("test"), test_transform(cfg.data))
        pre_val = pretrained_sweep(cfg, val, DELTAS, cfg.eval.batch_size)
        d = max(pre_val, key=lambda k: pre_val[k]["mask_iou50"])
        pre_test = pretrained_sweep(cfg, test, (d,), cfg.eval.batch_size)[d]
        lines += ["", f"Seed 0: the pretrained backbone alone, no Background Image Set, Grad-CAM masks at delta {d:g} "
                  f"(chosen on val): BC* {pct(pre_test['mask_validity'])}, mask IoU50 {pct(pre_test['mask_iou50'])} on test."]
        bc_val = mask_sweep(method, val, DELTAS, cfg.eval.batch_size)
        bc_test = mask_sweep(method, test, DELTAS, cfg.eval.batch_size)
        bc_figure(ckpt, out / "fig3_masks.png")
        sweep_lines = ["| delta | BC mask IoU50 (val) | BC* (val) | pretrained IoU50 (val) | pretrained BC* (val) "
                       "| BC mask IoU50 (test, oracle) | BC* (test, oracle) |", "|---|---|---|---|---|---|---|"]
        sweep_lines += [f"| {k:g} | {pct(bc_val[k]['mask_iou50'])} | {pct(bc_val[k]['mask_validity'])} | "
                        f"{pct(pre_val[k]['mask_iou50'])} | {pct(pre_val[k]['mask_validity'])} | "
                        f"{pct(bc_test[k]['mask_iou50'])} | {pct(bc_test[k]['mask_validity'])} |" for k in DELTAS]
        lines += ["", f"BC-CT trains with delta {cfg.bcct.delta:g} (map `{cfg.bcct.map}`, scale `{cfg.bcct.normalize}`, "
                  "chosen on val); BC masks over delta (paper Table 3's BC* column; its CT rows, a CT trained per "
                  f"delta, {'below' if args.ct_deltas else 'with --ct-deltas'}). The test columns are read for every "
                  "delta, so a delta picked from them would be an oracle choice:", "", *sweep_lines]
    if args.ct_deltas:
        deltas = [float(d) for d in args.ct_deltas.split(",") if d.strip()]
        lines += ["", *ct_delta_rows(out / "seed0", args.data, args.config, deltas,
                                     [f"data.backgrounds={args.backgrounds}", "seed=0", *args.overrides])]
    paper = [label for label in results if label in PAPER]
    if paper:
        lines += ["", "The paper's own numbers for orientation (VGG-16 / GoogLeNet at 224 px on the full data sets, "
                  "top-1 / top-5 localisation *errors*; not comparable to a 25-class subset on a Lite0):", "",
                  paper_section(paper)]
    text = (f"Test split of {args.data}, {args.config} recipe; every threshold chosen on a val split carved from "
            f"train (per seed); mean +- std over {args.seeds} seed(s) (runs column); percent. Training-free rows "
            f"(feature_norm, pc1, ddt) have no classifier: GT-known and MaxBoxAccV2 only.\n\n" + "\n".join(lines) + f"\n\nbench_real total {time.time() - t0:.0f} s\n")
    (out / "bench_real.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

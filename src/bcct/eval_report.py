"""``bcct eval --report DIR``: a checkpoint's metrics and what they come from, in one folder.

    DIR/curve.png   GT-known and top-1 loc at every CAM threshold, per readout; the
                    threshold in use marked
    DIR/best.png    the split's images with the highest IoU at that threshold (primary readout)
    DIR/worst.png   ... and those with the lowest
    DIR/report.md   the metric table, the threshold and where it came from, the figures, the
                    example images by name and, for methods with a BC model (bcct), the
                    BC-mask delta sweep

The metrics, the curve and the examples come from one evaluation pass
(:func:`bcct.evaluate.evaluate_detailed`): the numbers in the table are read off the very
per-image IoUs the figures show. Every file is written atomically and the figures before
report.md, so a report.md on disk always has its figures; nothing is written when the
evaluation fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bcct.checkpoint import write_text_atomic
from bcct.errors import BadInput
from bcct.evaluate import evaluate_detailed, flatten, has_boxes
from bcct.metrics import IOU_THRESHOLD, iou_hits

N_EXAMPLES = 6


def evaluate_and_report(ckpt_path: str, report_dir: str | Path, data: str | None = None, split: str = "test",
                        oracle: bool = False, overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Evaluate like :func:`bcct.run.evaluate_checkpoint` (same metrics dict) and write the
    report into ``report_dir``; returns the metrics."""
    out = Path(report_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder; --report needs a folder (it writes report.md and PNGs)")
    run = evaluate_checkpoint_detailed(ckpt_path, data, split, oracle, overrides, progress)
    write_report(out, run)
    return run["metrics"]


def evaluate_checkpoint_detailed(ckpt_path: str, data: str | None = None, split: str = "test", oracle: bool = False,
                                 overrides: list[str] | None = None, progress: bool = True) -> dict:
    """:func:`bcct.run.evaluate_checkpoint`'s steps, keeping the per-image rows: a dict of
    ``metrics`` (exactly what evaluate_checkpoint returns), ``detail``
    (:func:`bcct.evaluate.evaluate_detailed`), ``method``, ``cfg``, ``ckpt``, ``ds``, ``oracle``."""
    from bcct.run import describe, eval_setup

    method, cfg, ckpt, ds, thresholds = eval_setup(ckpt_path, data, split, oracle, overrides)
    if not has_boxes(ds):
        raise BadInput(f"{cfg.data.root}: the {split} split has no boxes, and the report (accuracy over the CAM "
                       "threshold, best and worst boxes) is about localisation; run bcct eval without --report for "
                       "its classification numbers, or bcct localize for boxes on the images")
    device = next(method.parameters()).device
    detail = evaluate_detailed(method, ds, cfg, device, thresholds=thresholds, progress=progress)
    metrics = describe(flatten(detail["results"]), cfg, split, ckpt_path, ckpt)
    return {"metrics": metrics, "detail": detail, "method": method, "cfg": cfg, "ckpt": ckpt, "ds": ds,
            "oracle": oracle, "thresholds": thresholds or {}}


def threshold_origin(name: str, run: dict) -> str:
    """Where the CAM threshold of readout ``name`` came from, in words."""
    if run["oracle"]:
        return "chosen on this split (--oracle: optimistic, not a fair test number)"
    if run["cfg"].eval.threshold is not None:
        return "fixed by eval.threshold"
    if name in run["thresholds"]:
        return "chosen on the held-out val split during training"
    return "chosen on this split, as the checkpoint holds no val-chosen threshold (optimistic)"


def curves(run: dict) -> dict[str, dict]:
    """Per readout: thresholds, GT-known and top-1 loc per threshold (fractions), the
    threshold in use and its grid index, all from the evaluation's BoxCorrectness."""
    detail = run["detail"]
    out = {}
    for name, corr in detail["correctness"].items():
        hits = iou_hits(corr.iou_v1, IOU_THRESHOLD)
        tau = float(detail["results"][name]["threshold"])
        out[name] = {"thresholds": corr.thresholds, "gt_known": hits.mean(axis=0),
                     "top1_loc": (hits & detail["top1"][:, None]).mean(axis=0),
                     "threshold": tau, "index": corr.threshold_index(tau)}
    return out


def examples(run: dict, n: int = N_EXAMPLES) -> tuple[list[int], list[int], np.ndarray]:
    """(indices of the ``n`` highest-IoU images, of the ``n`` lowest, IoU of every image) at
    the threshold in use, primary readout, largest-contour box (the one top-1/GT-known score)."""
    name = next(iter(run["detail"]["correctness"]))
    corr = run["detail"]["correctness"][name]
    iou = corr.iou_v1[:, corr.threshold_index(float(run["detail"]["results"][name]["threshold"]))].astype(np.float64)
    best = np.argsort(-iou, kind="stable")[:n].tolist()
    worst = np.argsort(iou, kind="stable")[:n].tolist()
    return best, worst, iou


def write_report(out: str | Path, run: dict) -> Path:
    """curve.png, best.png, worst.png, then report.md (see the module doc); returns report.md."""
    from bcct.report import format_table, overlay_grid, threshold_curve
    from bcct.sweep import DELTAS, format_sweep, mask_sweep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, detail, cfg, ds = run["metrics"], run["detail"], run["cfg"], run["ds"]
    primary = metrics["readout"]
    class_names = run["ckpt"]["class_names"]

    cur = curves(run)
    threshold_curve(cur, out / "curve.png", title=f"{cfg.method} on {metrics['split']} ({len(ds)} images)")

    best, worst, iou = examples(run)
    tau = cur[primary]["threshold"]
    maps, sizes, top1 = detail["maps"][primary], ds.image_sizes(), detail["top1"]

    def panels(indices: list[int]) -> list[list[dict]]:
        return [[{"record": ds.records[i], "map": maps[i], "threshold": tau, "size": sizes[i],
                  "title": f"IoU {iou[i]:.2f}, cls {'ok' if top1[i] else 'wrong'}"} for i in indices]]

    overlay_grid(panels(best), out / "best.png")
    overlay_grid(panels(worst), out / "worst.png")

    sweep = None
    if hasattr(run["method"], "gradient_maps"):  # a BC model: the delta sweep of its masks
        sweep = {f"{d:g}": r for d, r in
                 mask_sweep(run["method"], ds, DELTAS, cfg.eval.batch_size, cfg.data.workers).items()}

    lines = [
        "# bcct eval report",
        "",
        f"Checkpoint `{metrics['checkpoint']}`: method {cfg.method}, epoch {metrics['epoch']}. "
        f"Data `{cfg.data.root}`, {metrics['split']} split, {len(ds)} images.",
        "",
        "## CAM threshold",
        "",
    ]
    for name, c in cur.items():
        lines.append(f"- readout `{name}`: threshold **{c['threshold']:.2f}**, {threshold_origin(name, run)}")
    lines += [
        "",
        "## Metrics",
        "",
        "Percent; the paper's tables print errors = 100 - accuracy. top-1/top-5/GT-known loc use the "
        "threshold above; MaxBoxAcc and MaxBoxAccV2 take the best threshold by definition.",
        "",
        format_table({"": metrics}),
        "",
        f"On this split the best threshold for `{primary}` would be {metrics['oracle_threshold']:.2f} "
        f"(GT-known loc {100 * metrics['oracle_gt_known']:.2f}, top-1 loc {100 * metrics['oracle_top1_loc']:.2f}; "
        "oracle, optimistic).",
        "",
        "## Localisation accuracy vs CAM threshold",
        "",
        "![accuracy vs threshold](curve.png)",
        "",
        "Solid: GT-known loc (box IoU >= 0.5, class ignored); dotted: top-1 loc (box and class right). "
        "Dashed line: the threshold in use.",
    ]
    if sweep is not None:
        lines += [
            "",
            f"## BC-mask delta sweep ({metrics['split']} split)",
            "",
            f"Masks of the BC model cut at each delta (trained with delta {cfg.bcct.delta:g}); "
            "BC* err: share of masks whose box neither reaches IoU 0.5 with a GT box nor covers one.",
            "",
            format_sweep(sweep, metrics["split"], cfg.bcct.normalize),
        ]
    lines += ["", f"## Best and worst {metrics['split']} images", "",
              f"Readout `{primary}` at threshold {tau:.2f}. Green: GT box; red: the predicted box; colours: the "
              "score map of the GT class.", ""]
    for title, fig, indices in (("Highest IoU", "best.png", best), ("Lowest IoU", "worst.png", worst)):
        lines += [f"### {title}", "", f"![{title.lower()}]({fig})", "", "| image | class | IoU | classified |",
                  "|---|---|---|---|"]
        for i in indices:
            rec = ds.records[i]
            lines.append(f"| `{_relative(rec.path, cfg.data.root)}` | {class_names[rec.label]} | {iou[i]:.3f} | "
                         f"{'yes' if top1[i] else 'no'} |")
        lines.append("")
    report = out / "report.md"
    write_text_atomic("\n".join(lines), report)
    return report


def _relative(path: Path, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)

"""Tables and figures: the paper-style metric table and image overlays (GT green, predicted red)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bcct.boxes import RESIZE, box_at_threshold, prepare_scoremap, scale_boxes  # noqa: E402
from bcct.data.images import load_rgb  # noqa: E402

# (key, header, as error?) — the paper's tables print errors = 1 - accuracy.
COLUMNS = (
    ("top1_loc", "top-1 loc err", True),
    ("top5_loc", "top-5 loc err", True),
    ("gt_known", "GT-known loc", False),
    ("maxboxacc", "MaxBoxAcc", False),
    ("maxboxacc_v2", "MaxBoxAccV2", False),
    ("cls_top1", "top-1 cls err", True),
    ("mask_validity", "BC* err", True),
    ("threshold", "CAM thr.", None),
)


# The numbers that depend on the CAM threshold (MaxBoxAcc takes the best one by definition).
AT_THRESHOLD = ("top1_loc", "top5_loc", "gt_known", "threshold")
NO_BOX_NOTE = ("No boxes in this split: classification only. Localisation needs a ground-truth box per image "
               "(a CUB, ILSVRC or wsolevaluation layout); `bcct localize` still draws the boxes of new photos.")
ORACLE_NOTE = ("ORACLE: the CAM threshold was chosen on the evaluated split itself (no val-chosen threshold): "
               "optimistic, not a fair test number.")


def is_oracle(metrics: dict) -> bool:
    """The CAM threshold of these metrics was picked on the split they score."""
    return metrics.get("threshold_source") == "oracle"


def cell(metrics: dict, key: str, as_error: bool | None) -> str:
    """One table entry: percent (or the threshold), with ORACLE beside a threshold-dependent
    number whose threshold was chosen on the scored split."""
    if key not in metrics:
        return "-"
    v = float(metrics[key])
    text = f"{v:.2f}" if as_error is None else f"{100 * (1 - v if as_error else v):.2f}"
    return f"{text} ORACLE" if key in AT_THRESHOLD and is_oracle(metrics) else text


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one row per (method, readout); numbers in percent; a note below it
    when a row's threshold is an oracle one."""
    present = [c for c in COLUMNS if any(c[0] in m for m in rows.values())]
    lines = ["| method | " + " | ".join(h for _, h, _ in present) + " |",
             "|---|" + "---|" * len(present)]
    oracle = False
    for name, metrics in rows.items():
        label = name or metrics.get("method", "")
        readouts = [(label, metrics)] + [(f"{label} ({sub} map)", subm) for sub, subm in metrics.items()
                                         if isinstance(subm, dict) and "top1_loc" in subm]
        for row_label, m in readouts:
            oracle = oracle or is_oracle(m)
            lines.append(f"| {row_label} | " + " | ".join(cell(m, k, e) for k, _, e in present) + " |")
    if oracle:
        lines += ["", ORACLE_NOTE]
    if any(m.get("localization") for m in rows.values()):  # bcct.evaluate.NEEDS_BOXES: a split without boxes
        lines += ["", NO_BOX_NOTE]
    return "\n".join(lines)


def overlay(ax, record, scoremap: np.ndarray, threshold: float, image_size: tuple[int, int], title: str = "") -> None:
    """Draw one image at the evaluator's 224x224 frame with its CAM, GT (green) and predicted (red) boxes."""
    img = np.asarray(load_rgb(record.path).resize((RESIZE, RESIZE), Image.BILINEAR))
    map01 = prepare_scoremap(scoremap)
    ax.imshow(img)
    ax.imshow(map01, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for box in scale_boxes(record.boxes, image_size):
        _rect(ax, box, "lime")
    for box in box_at_threshold(map01, threshold):
        _rect(ax, box, "red")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _rect(ax, box, colour: str) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))


def overlay_grid(panels: list[list[dict]], path: str | Path, row_labels: list[str] | None = None) -> None:
    """``panels[row][col]`` = dict(record, map, threshold, size, title) -> one PNG."""
    rows, cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for r, row in enumerate(panels):
        for c in range(cols):
            ax = axes[r][c]
            if c < len(row):
                p = row[c]
                overlay(ax, p["record"], p["map"], p["threshold"], p["size"], p.get("title", ""))
            else:
                ax.axis("off")
        if row_labels:
            axes[r][0].text(-10, RESIZE / 2, row_labels[r], rotation=90, va="center", ha="right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def map_grid(images: np.ndarray, rows: dict[str, np.ndarray], path: str | Path) -> None:
    """Paper Fig. 3 style: the input images on top, then one row of maps per entry of ``rows``
    (each [N,H,W] in [0,1] or bool) at the input resolution."""
    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.5 * n, 1.55 * (1 + len(rows))), squeeze=False)
    for j in range(n):
        axes[0][j].imshow(images[j])
        for i, maps in enumerate(rows.values(), 1):
            axes[i][j].imshow(maps[j], cmap="gray" if maps.dtype == bool else "jet", vmin=0, vmax=1)
    for i, label in enumerate(["input", *rows]):
        axes[i][0].set_ylabel(label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def savefig_atomic(fig, path: str | Path, dpi: int = 110) -> None:
    """Save a matplotlib figure to a temporary file beside ``path``, then rename it."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def threshold_curve(curves: dict[str, dict], path: str | Path, title: str = "") -> None:
    """Localisation accuracy vs CAM threshold -> one PNG.

    ``curves[readout]`` = dict(thresholds [T], gt_known [T], top1_loc [T] (fractions),
    threshold (the chosen one, marked by a dashed line and dots on both curves), optional
    index (the grid point that scores like it; default: the nearest)).
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, c) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        t = np.asarray(c["thresholds"])
        gt, top1 = 100 * np.asarray(c["gt_known"]), 100 * np.asarray(c["top1_loc"])
        ax.plot(t, gt, color=colour, label=f"{name}: GT-known loc")
        ax.plot(t, top1, color=colour, linestyle=":", label=f"{name}: top-1 loc")
        tau = float(c["threshold"])
        k = int(c["index"]) if "index" in c else int(np.argmin(np.abs(t - tau)))
        ax.axvline(tau, color=colour, linestyle="--", linewidth=1)
        ax.plot([t[k], t[k]], [gt[k], top1[k]], "o", color=colour, markersize=4)
        ax.annotate(f"chosen {tau:.2f}", (tau, gt[k]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color=colour)
    ax.set_xlabel("CAM threshold (fraction of the map's maximum)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, path)

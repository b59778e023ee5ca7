"""``bcct table``: the paper's Tables 1-2 on one data set - every method trained with the
shared loop, evaluated on test with the threshold chosen on val, side by side.

DIR/runs/<method>/   one run directory per method (reused when finished with the same config)
DIR/table.md         the paper-style table (errors in percent), the delta sweep of BC-CT,
                     the paper's own numbers for reference, and the figure
DIR/table.csv        the same numbers, one row per (method, readout)
DIR/table.json       {method: {evaluation keys}} (fractions in [0, 1], as ``bcct eval``)
DIR/figure.png       the methods (rows) on the same test images (columns)
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from bcct.checkpoint import write_text_atomic
from bcct.config import Config, from_dict, load_config, to_dict
from bcct.errors import BadInput

DEFAULT_METHODS = ("cam", "backprop", "has", "acol", "spg", "adl", "bcct")
# Table rows that are a registered method with fixed overrides.
VARIANTS = {"spg_plain": ("spg", ["extra.spg.plain=true"])}
# --quick: two epochs; BC-CT's plain-CAM warm-up and two-stage BC epochs shortened to fit.
QUICK_OVERRIDES = ["epochs=2", "bcct.warmup_epochs=1", "bcct.bc_epochs=1"]
FULL_DATA = dict(n_classes=10, n_images=1000, n_backgrounds=120)  # the demo's embedded set
QUICK_DATA = dict(n_classes=5, n_images=250, n_backgrounds=40)
N_FIGURE = 8

# The paper's reported localisation errors (%), top-1 / top-5: Table 1 (ILSVRC val) and
# Table 2 (CUB-200-2011 test). Keys: our table rows; values: (paper row, ILSVRC, CUB).
PAPER = {
    "cam": ("VGGnet-GAP / GoogLeNet-GAP", "57.20 / 45.14 (VGG), 56.40 / 43.00 (GoogLeNet)", "59.00 / - (GoogLeNet)"),
    "backprop": ("Backprop on VGGnet / GoogLeNet", "61.12 / 51.46 (VGG), 61.31 / 50.55 (GoogLeNet)", "-"),
    "has": ("GoogLeNet-HaS-32", "54.53 / -", "-"),
    "acol": ("VGGnet-ACoL / GoogLeNet-ACoL; ACoL", "54.17 / 40.57 (VGG), 53.28 / 42.58 (GoogLeNet)", "54.08 / 43.49"),
    "spg_plain": ("SPG-plain", "53.71 / 41.84", "56.33 / 46.47"),
    "spg": ("SPG", "51.40 / 40.00", "53.36 / 42.28"),
    "adl": ("(not in the paper)", "-", "-"),
    "bcct": ("BC-CT (ours); BC*", "53.21 / 42.0", "51.21 / 40.70; BC* 16.95"),
}


def resolve_methods(methods: list[str]) -> list[tuple[str, str, list[str]]]:
    """(row label, registered method, its extra overrides) per requested name."""
    from bcct.methods import METHODS

    rows = []
    for name in methods:
        method, extra = VARIANTS.get(name, (name, []))
        if method not in METHODS:
            known = sorted(set(METHODS) | set(VARIANTS))
            raise BadInput(f"--methods: {name!r} unknown; choose from {', '.join(known)}")
        rows.append((name, method, list(extra)))
    if len({label for label, _, _ in rows}) != len(rows):
        raise BadInput(f"--methods {','.join(methods)}: a method is listed twice")
    return rows


def _comparable(cfg: Config) -> dict:
    """The parts of a config that change what a run trains (not evaluation or loading; not
    the training precision of a method that trains nothing)."""
    from bcct.methods import METHODS

    d = to_dict(cfg)
    for key in ("eval", "device"):
        d.pop(key, None)
    if not getattr(METHODS.get(cfg.method), "trainable", True):
        d.pop("amp", None)
    d["data"].pop("workers", None)
    for key in ("root", "backgrounds"):  # ../data and /home/me/data are the same folder: no retraining
        if d["data"].get(key) and d["data"][key] != "auto":
            d["data"][key] = os.path.realpath(d["data"][key])
    return d


def _saved_config(run_dir: Path) -> Config | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return from_dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except Exception:  # noqa: BLE001 - an unreadable config means "not this run"
        return None


def _finished_epochs(run_dir: Path) -> int:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(1 for r in lines if r.get("epoch", -1) >= 0)  # two-stage logs its BC stage as epoch -1


def train_or_reuse(cfg: Config, run_dir: Path, progress: bool = True) -> str:
    """Train ``cfg`` into ``run_dir`` unless a finished run of the same config is there:
    ``reused`` | ``resumed`` (same config, unfinished: continue from last.pt) | ``trained``."""
    from bcct.train import train

    from bcct.methods import METHODS

    saved = _saved_config(run_dir)
    same = saved is not None and _comparable(saved) == _comparable(cfg)
    epochs = cfg.optim.epochs if getattr(METHODS.get(cfg.method), "trainable", True) else 1  # a record-only run: 1
    if same and (run_dir / "best.pt").is_file() and _finished_epochs(run_dir) >= epochs:
        return "reused"
    resume = same and (run_dir / "last.pt").is_file()
    if saved is not None and not same and progress:
        print(f"[table] {run_dir}: config changed, training again")
    train(cfg, run_dir, progress=progress, resume=resume)
    return "resumed" if resume else "trained"


def run_table(out: str | Path, data: str | Path | None = None, methods: list[str] | None = None,
              config: str = "synth", quick: bool = False, overrides: list[str] | None = None,
              progress: bool = True) -> dict:
    """Train (or reuse) every method, evaluate on test, write the table files; returns
    ``{row label: metrics}``."""
    from bcct.run import evaluate_checkpoint, plain

    out = Path(out)
    t_start = time.time()
    rows = resolve_methods(list(methods or DEFAULT_METHODS))
    user = (QUICK_OVERRIDES if quick else []) + list(overrides or [])
    for label, method, extra in rows:  # bad keys and values fail here, before any training
        load_config(config, user + extra, method=method)
    if data is None:
        from bcct.data.synth import generate_once

        data = generate_once(out / "synth", "[table]", **(QUICK_DATA if quick else FULL_DATA))
    data = Path(data)

    results: dict[str, dict] = {}
    for label, method, extra in rows:
        cfg = load_config(config, user + extra, method=method)
        cfg.data.root = str(data)
        run_dir = out / "runs" / label
        t0 = time.time()
        if progress:
            print(f"[table] {label}: {run_dir}")
        status = train_or_reuse(cfg, run_dir, progress=progress)
        train_seconds = round(time.time() - t0, 1)  # the training alone: the test pass below is not counted
        # evaluation keys are the table's, not the run's (a reused run may predate them): with other
        # eval.scales than it trained with, its thresholds are chosen again on val (bcct/run.py)
        metrics = plain(evaluate_checkpoint(str(run_dir / "best.pt"), data=str(data), split="test", progress=False,
                                            overrides=[f"eval.scales={list(cfg.eval.scales)}"],
                                            fallback_oracle=True))  # marked ORACLE in the table
        metrics["run"] = status
        if status != "reused":
            metrics["train_seconds"] = train_seconds
        results[label] = metrics
        if progress:
            top1 = f"top-1 loc {metrics['top1_loc']:.3f}, " if "top1_loc" in metrics else ""
            print(f"[table] {label}: {status}; {top1}GT-known {metrics['gt_known']:.3f}")

    sweep_text = ""
    bc_rows = [label for label, method, _ in rows if method == "bcct"]
    if bc_rows:
        sweep = val_sweep(out / "runs" / bc_rows[0] / "best.pt")
        results[bc_rows[0]]["delta_sweep"] = sweep
        sweep_text = _sweep_section(bc_rows[0], sweep)

    figure = out / "figure.png"
    methods_figure(out, {label: {results[label]["readout"]: results[label]["threshold"]} for label, _, _ in rows}, figure)
    write_text_atomic(json.dumps(results, indent=2) + "\n", out / "table.json")
    write_text_atomic(to_csv(results), out / "table.csv")
    md = _markdown(results, data, config, user, sweep_text, figure.name, round(time.time() - t_start, 1))
    write_text_atomic(md, out / "table.md")
    return results


# -- outputs ------------------------------------------------------------------------------------

def _row_values(metrics: dict) -> dict[str, str]:
    from bcct.report import COLUMNS, cell

    return {header: cell(metrics, key, as_error) for key, header, as_error in COLUMNS if key in metrics}


def to_csv(results: dict[str, dict]) -> str:
    """One line per (method, readout); the columns and percent numbers of table.md."""
    from bcct.report import COLUMNS

    lines = []
    for label, m in results.items():
        lines.append((label, m.get("readout", ""), _row_values(m)))
        for sub, subm in m.items():
            if isinstance(subm, dict) and "top1_loc" in subm:
                lines.append((label, sub, _row_values(subm)))
    headers = [h for _, h, _ in COLUMNS if any(h in vals for _, _, vals in lines)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "readout", *headers])
    for label, readout, vals in lines:
        writer.writerow([label, readout, *(vals.get(h, "") for h in headers)])
    return buf.getvalue()


def val_sweep(ckpt: Path) -> dict:
    """BC* and mask IoU50 of a bcct checkpoint's BC masks over delta, on val (where delta is chosen)."""
    from bcct.data.dataset import WSOLDataset
    from bcct.data.readers import read_dataset
    from bcct.data.transforms import test_transform
    from bcct.run import load_method
    from bcct.sweep import mask_sweep

    method, cfg, _ = load_method(str(ckpt))
    ds = WSOLDataset(read_dataset(cfg.data, seed=cfg.seed).split("val"), test_transform(cfg.data))
    return {f"{d:g}": r for d, r in mask_sweep(method, ds, batch_size=cfg.eval.batch_size,
                                               workers=cfg.data.workers).items()}


def _sweep_section(label: str, sweep: dict) -> str:
    from bcct.sweep import format_sweep

    return (f"\n## BC-CT: mask validity over delta (paper Tables 2-3, val split, run `{label}`)\n\n"
            "BC* err: share of val images whose BC mask box is not a valid mask (paper 5.2); on val, where "
            "delta is chosen.\n\n" + format_sweep(sweep, "val") + "\n")


def readout_thresholds(metrics: dict) -> dict[str, float]:
    """{readout: the CAM threshold its numbers used} from one method's flattened metrics."""
    taus = {metrics["readout"]: metrics["threshold"]}
    taus.update({k: v["threshold"] for k, v in metrics.items() if isinstance(v, dict) and "threshold" in v})
    return taus


def methods_figure(out: Path, thresholds: dict[str, dict[str, float]], path: Path) -> None:
    """One row per (method, readout) in ``thresholds`` ({run label: {readout: tau}}), cut at
    the threshold its numbers used; columns: the same test images."""
    from bcct.data.dataset import WSOLDataset
    from bcct.data.readers import read_dataset
    from bcct.data.transforms import test_transform
    from bcct.evaluate import predict
    from bcct.report import overlay_grid
    from bcct.run import load_method

    rows, row_labels = [], []
    for label, taus in thresholds.items():
        method, cfg, _ = load_method(str(out / "runs" / label / "best.pt"))
        records = read_dataset(cfg.data, seed=cfg.seed).split("test")
        picks = np.unique(np.linspace(0, len(records) - 1, min(N_FIGURE, len(records))).astype(int))
        ds = WSOLDataset([records[i] for i in picks], test_transform(cfg.data))
        pred = predict(method, ds, cfg, next(method.parameters()).device)
        for readout, tau in taus.items():
            rows.append([{"record": r, "map": m, "threshold": tau, "size": s, "title": f"{label} ({readout})"}
                         for r, m, s in zip(ds.records, pred["maps"][readout], ds.image_sizes())])
            row_labels.append(label if len(taus) == 1 else f"{label}/{readout}")
    overlay_grid(rows, path, row_labels)


def paper_section(labels: list[str]) -> str:
    """The paper's own numbers (VGG-16 / GoogLeNet, full data sets) for the rows in ``labels``."""
    lines = ["| our row | paper row | ILSVRC val top-1 / top-5 loc err (Table 1) | CUB test top-1 / top-5 loc err (Table 2) |",
             "|---|---|---|---|"]
    for label in labels:
        if label in PAPER:
            row, ilsvrc, cub = PAPER[label]
            lines.append(f"| {label} | {row} | {ilsvrc} | {cub} |")
    return "\n".join(lines)


def _markdown(results: dict, data: Path, config: str, overrides: list[str], sweep_text: str, figure: str,
              seconds: float) -> str:
    from bcct.report import format_table

    epochs = {m.get("epoch") for m in results.values()}
    status = ", ".join(f"{k} {m['run']}" + (f" in {m['train_seconds']} s" if "train_seconds" in m else "")
                       for k, m in results.items())
    parts = [
        "# WSOL methods side by side (paper Tables 1-2)",
        "",
        f"Data: `{data}`, test split. Config: `{config}`" + (f" with `{' '.join(overrides)}`" if overrides else "")
        + ". Every method uses the same backbone, head, data, training loop and evaluator; the CAM threshold "
        "of each is chosen on the held-out val split. Errors and accuracies in percent "
        "(the paper prints errors = 100 - accuracy).",
        "",
        format_table(results),
        "",
        f"Runs: {status}. Best epochs (0-based): {sorted(e for e in epochs if e is not None)}. Table built in {seconds} s.",
        sweep_text,
        "## The paper's reported numbers (other data and backbones; for orientation only)",
        "",
        paper_section(list(results)),
        "",
        f"![methods]({figure})",
        "",
        "Rows: methods; columns: the same test images. Green: ground-truth box; red: the box at the method's "
        "val-chosen threshold; colours: its primary score map.",
    ]
    return "\n".join(parts) + "\n"

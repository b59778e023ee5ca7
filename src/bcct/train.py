"""The training loop, in the style of torchvision's classification reference: it reads top
to bottom (config, data, model, optimiser and schedule, ``train_one_epoch``, ``evaluate``,
checkpoint) and knows no method by name."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from bcct import checkpoint
from bcct.config import Config, to_dict, to_yaml
from bcct.data.background_set import make_background_set
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform, train_transform
from bcct.errors import BadInput
from bcct.evaluate import evaluate
from bcct.methods import build_method


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device={name} asked for but CUDA is not available; use device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def background_batches(cfg: Config, folder: str, batch_size: int, train_paths=()):
    """An endless stream of background batches, drawn with replacement (paper 3.2).
    ``folder`` = "auto" crops them from the training images' borders."""
    bg = make_background_set(folder, list(train_paths), train_transform(cfg.data))
    sampler = RandomSampler(bg, replacement=True, num_samples=10**9)
    loader = DataLoader(bg, batch_size=batch_size, sampler=sampler, num_workers=min(1, cfg.data.workers),
                        drop_last=True, pin_memory=torch.cuda.is_available())
    return iter(loader)


def train_one_epoch(method, loader, optimizer, device, epoch: int, backgrounds=None, progress: bool = True) -> dict:
    method.train()
    method.on_epoch_start(epoch)
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        if backgrounds is not None:
            batch["background"] = next(backgrounds).to(device, non_blocking=True)
        loss, logs = method.training_step(batch)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        bar.set_postfix(loss=f"{logs['loss']:.3f}")
    return {k: v / max(n, 1) for k, v in sums.items()}


def make_checkpoint(method, optimizer, scheduler, cfg: Config, epoch: int, class_names, thresholds, val) -> dict:
    return {
        "format": checkpoint.FORMAT,
        "method": cfg.method,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": to_dict(cfg),
        "class_names": list(class_names),
        "thresholds": thresholds,
        "val": val,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
    }


def train(cfg: Config, out_dir: str | Path, progress: bool = True, resume: bool = False) -> dict:
    """Train ``cfg.method`` on the train split; choose the CAM threshold and the best epoch on
    the held-out val split. Writes config.yaml, metrics.jsonl, last.pt and best.pt."""
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

    wset = read_dataset(cfg.data, seed=cfg.seed)
    train_ds = WSOLDataset(wset.split("train"), train_transform(cfg.data))
    val_ds = WSOLDataset(wset.split("val"), test_transform(cfg.data))
    if len(train_ds) == 0:
        raise BadInput(f"{cfg.data.root}: the train split is empty; check train_test_split.txt")
    val_ds.image_sizes()  # validate val images and boxes before any training time is spent
    loader = DataLoader(train_ds, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.optim.batch_size,
                        num_workers=cfg.data.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.data.workers > 0)

    method = build_method(cfg, wset.num_classes).to(device)
    folder = cfg.data.backgrounds or str(Path(cfg.data.root) / "backgrounds")
    train_paths = [r.path for r in train_ds.records]
    backgrounds = None
    if method.needs_backgrounds:  # half a batch: the BC model takes as many targets (bcct.py)
        backgrounds = background_batches(cfg, folder, max(1, cfg.optim.batch_size // 2), train_paths)

    optimizer = torch.optim.SGD(method.param_groups(), momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.optim.lr_step_epochs), gamma=cfg.optim.lr_gamma)

    start_epoch, best_score, thresholds, best_val = 0, -1.0, {}, {}
    if resume and (out_dir / "last.pt").is_file():
        ckpt = checkpoint.load(out_dir / "last.pt")
        method.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        random.setstate((3, tuple(ckpt["rng"]["python"]), None))
        start_epoch = ckpt["epoch"] + 1
        if (out_dir / "best.pt").is_file():
            best = checkpoint.load(out_dir / "best.pt")
            best_val, thresholds = best["val"], best["thresholds"]
            best_score = _score(best_val)

    prep_stats = method.prepare(train_ds, folder, device, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text_atomic(to_yaml(cfg), out_dir / "config.yaml")
    log_path = out_dir / "metrics.jsonl"
    _truncate_log(log_path, start_epoch)
    if prep_stats:
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"epoch": -1, "prepare": prep_stats}) + "\n")
    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.time()
        train_logs = train_one_epoch(method, loader, optimizer, device, epoch, backgrounds, progress)
        scheduler.step()
        val = evaluate(method, val_ds, cfg, device) if len(val_ds) else {}
        epoch_thresholds = {name: res["threshold"] for name, res in val.items()}
        record = {"epoch": epoch, "time_s": round(time.time() - t0, 2), "lr": scheduler.get_last_lr(),
                  "train": train_logs, "val": _brief(val)}
        ckpt = make_checkpoint(method, optimizer, scheduler, cfg, epoch, wset.class_names, epoch_thresholds, val)
        if _score(val) >= best_score:
            best_score, best_val, thresholds = _score(val), val, epoch_thresholds
            checkpoint.save_atomic(ckpt, out_dir / "best.pt")
        checkpoint.save_atomic(ckpt, out_dir / "last.pt")
        with open(log_path, "a") as fh:  # after last.pt: a resumed run never repeats a line
            fh.write(json.dumps(record) + "\n")
        if progress:
            print(_line(record), flush=True)
    return {"val": best_val, "thresholds": thresholds}


def _truncate_log(path: Path, start_epoch: int) -> None:
    """A fresh run starts a new log; a resumed one keeps only the epochs before it."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] < start_epoch]
    checkpoint.write_text_atomic("".join(line + "\n" for line in keep), path)


def _score(val: dict) -> float:
    """Model selection on val: top-1 localisation of the primary readout (0 when no val split)."""
    if not val:
        return 0.0
    return float(next(iter(val.values()))["top1_loc"])


def _brief(val: dict) -> dict:
    keys = ("cls_top1", "top1_loc", "gt_known", "maxboxacc_v2", "threshold")
    return {name: {k: round(float(res[k]), 4) for k in keys if k in res} for name, res in val.items()}


def _line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"{record['time_s']:.1f}s", f"loss {record['train'].get('loss', float('nan')):.3f}"]
    for name, res in record["val"].items():
        parts.append(f"val[{name}] cls {res.get('cls_top1', 0):.3f} top1-loc {res.get('top1_loc', 0):.3f} "
                     f"gt-known {res.get('gt_known', 0):.3f} @tau {res.get('threshold', 0):.2f}")
    return " | ".join(parts)

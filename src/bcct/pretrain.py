"""The CPU stand-in for ImageNet pretraining.

The embedded default mirrors the paper's pipeline (pretrained backbone: frozen in BC,
fine-tuned in CT), so the small backbone needs "pretrained" weights. We train it once on
a disjoint synthetic task (shape classes, never the benchmark's creatures; see
``bcct.data.standin_task.render_pretrain_batch``) and cache the weights under ``cache_dir()``.
The backbone comes from its builder (``bcct.backbones.make_vgg``, which asks for these
weights): this module knows the task, not the architecture.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcct import checkpoint
from bcct.config import IMAGENET_MEAN, IMAGENET_STD
from bcct.runtime import cache_dir

DEFAULTS = {"steps": 400, "batch_size": 64, "size": 64, "pool": 4000, "lr": 0.05, "seed": 1234}


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretrain_standin(build: Callable[[], nn.Module], steps: int = DEFAULTS["steps"], batch_size: int = DEFAULTS["batch_size"], size: int = DEFAULTS["size"],
                     pool: int = DEFAULTS["pool"], lr: float = DEFAULTS["lr"], seed: int = DEFAULTS["seed"],
                     log=print) -> tuple[dict, dict]:
    """Train ``build()`` (a backbone with ``out_channels``) + GAP + linear on the shape task.
    Returns (backbone state, stats)."""
    from bcct.data.standin_task import PRETRAIN_CLASSES, render_pretrain_batch

    t0 = time.time()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    images, labels = render_pretrain_batch(pool, size, rng)
    held_images, held_labels = render_pretrain_batch(512, size, rng)
    x_all, y_all = _to_tensor(images), torch.from_numpy(labels)
    backbone = build()
    model = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, len(PRETRAIN_CLASSES)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,))
        x = x_all[idx]
        if step % 2:  # cheap augmentation: flips
            x = x.flip(3)
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"stand-in pretraining: step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        acc = (model(_to_tensor(held_images)).argmax(1).numpy() == held_labels).mean()
    stats = {"held_out_acc": float(acc), "steps": steps, "seconds": round(time.time() - t0, 1), "classes": len(PRETRAIN_CLASSES)}
    return backbone.state_dict(), stats


def standin_path(steps: int | None = None) -> Path:
    return cache_dir() / f"small_vgg_standin_v2_s{steps or DEFAULTS['steps']}.pt"


def standin_weights(build: Callable[[], nn.Module], steps: int | None = None, log=print) -> dict:
    """The cached stand-in weights, pretraining once (about 1.5 minutes on 2 cores) if absent."""
    path = standin_path(steps)
    if not path.is_file():
        if log:
            log(f"pretraining the small backbone on the stand-in task (once; cached at {path})")
        state, stats = pretrain_standin(build, steps=steps or DEFAULTS["steps"], log=log)
        if log:
            log(f"stand-in pretraining done: held-out accuracy {stats['held_out_acc']:.3f} in {stats['seconds']} s")
        checkpoint.save_atomic({"backbone": state, "stats": stats}, path)
    return torch.load(path, map_location="cpu", weights_only=True)["backbone"]

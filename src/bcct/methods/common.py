"""Helpers shared by the baseline methods: per-method hyperparameters from ``cfg.extra``,
the backbone's layout (where it downsamples) and parameter groups."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

import torch
from torch import nn

from bcct.backbones import backbone_layers
from bcct.config import Config
from bcct.errors import BadInput

P = TypeVar("P")


def method_params(cfg: Config, name: str, cls: type[P]) -> P:
    """The method's hyperparameter dataclass with ``extra.<name>.<key>=value`` overrides."""
    given = dict((getattr(cfg, "extra", None) or {}).get(name) or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise BadInput(f"extra.{name}: unknown key(s) {', '.join(unknown)}; {name} takes {', '.join(known)}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"extra.{name}: {exc}") from None


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} must be in [{lo}, {hi}]")


@torch.no_grad()
def probe_shapes(backbone: nn.Module, size: int = 96) -> list[tuple[int, int, int]]:
    """(channels, h, w) after every layer of a backbone (``backbones.backbone_layers``: a
    VGG's modules, EfficientNet's blocks) for one zero image of ``size`` px, the input first.
    96 px is the smallest multiple of 32 that every registered backbone (inception_v3 too)
    accepts."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    shapes = [tuple(x.shape[1:])]
    for _, layer in backbone_layers(backbone):
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    backbone.train(was_training)
    return shapes


def downsampling_indices(shapes: list[tuple[int, int, int]]) -> list[int]:
    """Indices of the layers that downsample (output side <= 3/4 of the input side): the
    max-pools of a VGG, the strided stem/blocks of Inception and ResNet, the first block of
    an EfficientNet stage. Valid convolutions that only trim a border do not count."""
    return [i for i in range(len(shapes) - 1) if shapes[i + 1][-1] <= 0.75 * shapes[i][-1]]


def split_param_groups(module: nn.Module, backbone: nn.Module, cfg: Config) -> list[dict]:
    """Paper 5.1: pretrained conv layers at ``optim.lr_backbone``, every other trainable
    parameter of ``module`` at ``optim.lr``."""
    bb = {id(p) for p in backbone.parameters()}
    new = [p for p in module.parameters() if id(p) not in bb and p.requires_grad]
    return [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": cfg.optim.lr_backbone},
        {"params": new, "lr": cfg.optim.lr},
    ]


def cls_logs(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"acc": (logits.argmax(1) == labels).float().mean()}  # on the device: the loop reads logs every N steps

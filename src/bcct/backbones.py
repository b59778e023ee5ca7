"""Convolutional backbones by name (a registry, as in timm), each with its pretrained weights.

A backbone is an ``nn.Sequential`` of conv layers with two attributes: ``out_channels``
and ``stride``. The VGGs drop pool5 so that the CAM is 14x14 at 224 px, as in ACoL and
wsolevaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bcct.errors import BadInput

BACKBONES: dict[str, Callable[[str], nn.Sequential]] = {}


def register(name: str):
    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


def cache_dir() -> Path:
    """Where bcct keeps derived weights (the stand-in pretraining): $BCCT_CACHE or ~/.cache/bcct."""
    return Path(os.environ.get("BCCT_CACHE", Path.home() / ".cache" / "bcct"))


def build_backbone(name: str, pretrained: str = "none") -> nn.Sequential:
    """``pretrained``: ``imagenet`` (torchvision weights), ``standin`` (cached synthetic
    pretraining, small backbones), ``none``, or a path to a state-dict file."""
    if name not in BACKBONES:
        raise BadInput(f"backbone {name!r} unknown; choose one of {', '.join(sorted(BACKBONES))}")
    net = BACKBONES[name](pretrained)
    if pretrained not in ("imagenet", "none", "") and not pretrained.startswith("standin"):
        load_state_file(net, pretrained)
    return net


def load_state_file(net: nn.Module, path: str) -> None:
    """Offline weights: a state dict (or a bcct checkpoint holding ``backbone``) loaded weights-only."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: pretrained weights file not found; pass pretrained=imagenet|none|PATH")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise BadInput(f"{p}: not a loadable weights file ({type(exc).__name__}); use a torch state-dict file") from None
    state = state.get("backbone", state)
    state = {k.removeprefix("features."): v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if len(missing) == len(net.state_dict()):
        raise BadInput(f"{p}: none of its tensors match backbone layers; is it a weights file for this backbone?")


def _torchvision_vgg(builder, weights_enum, pretrained: str) -> nn.Sequential:
    weights = None
    if pretrained == "imagenet":
        weights = weights_enum.IMAGENET1K_V1
        try:
            model = builder(weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise BadInput(
                f"cannot fetch {weights} ({exc}); connect once so torchvision caches it under "
                f"{torch.hub.get_dir()}, or pass pretrained=PATH to a local state-dict file"
            ) from None
    else:
        model = builder(weights=None)
    feats = model.features[:-1]  # drop pool5: 14x14 maps at 224 px (ACoL / wsolevaluation)
    feats.out_channels = 512
    feats.stride = 16
    return feats


@register("vgg16")
def vgg16(pretrained: str = "none") -> nn.Sequential:
    from torchvision.models import VGG16_Weights, vgg16 as tv_vgg16

    return _torchvision_vgg(tv_vgg16, VGG16_Weights, pretrained)


@register("vgg16_bn")
def vgg16_bn(pretrained: str = "none") -> nn.Sequential:
    from torchvision.models import VGG16_BN_Weights, vgg16_bn as tv_vgg16_bn

    return _torchvision_vgg(tv_vgg16_bn, VGG16_BN_Weights, pretrained)


SMALL_VGG_CFG = (32, "M", 64, "M", 128, 128, "M", 256, 256)


def make_vgg(cfg=SMALL_VGG_CFG, batch_norm: bool = True) -> nn.Sequential:
    """A VGG-style stack; BatchNorm makes the small one trainable in minutes on a CPU."""
    layers: list[nn.Module] = []
    in_ch, stride = 3, 1
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            stride *= 2
            continue
        layers.append(nn.Conv2d(in_ch, v, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_ch = v
    net = nn.Sequential(*layers)
    net.out_channels = in_ch
    net.stride = stride
    return net


@register("small_vgg")
def small_vgg(pretrained: str = "none") -> nn.Sequential:
    """The CPU backbone of the embedded default (stride 8: 8x8 maps at 64 px)."""
    net = make_vgg()
    if pretrained.startswith("standin"):  # "standin" or "standin-<steps>" (shorter pretraining)
        from bcct.pretrain import standin_weights

        steps = int(pretrained.split("-")[1]) if "-" in pretrained else None
        net.load_state_dict(standin_weights(steps=steps))
    elif pretrained == "imagenet":
        raise BadInput("small_vgg has no ImageNet weights; use pretrained=standin (synthetic) or none")
    return net

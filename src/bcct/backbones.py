"""Convolutional backbones by name (a registry, as in timm), each with its pretrained weights.

A backbone is an ``nn.Sequential`` of conv layers with two attributes: ``out_channels``
and ``stride``. The VGGs drop pool5 so that the CAM is 14x14 at 224 px, as in ACoL and
wsolevaluation.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

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
        load_state_file(net, pretrained, name)
    return net


def load_state_file(net: nn.Module, path: str, name: str = "the backbone") -> None:
    """Offline weights: a state dict (or a bcct checkpoint holding ``backbone``) loaded
    weights-only. Keys may carry torchvision's ``features.`` prefix; tensors the backbone
    does not have (e.g. a VGG's classifier) are ignored, but every backbone tensor must be
    there with its shape."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: pretrained weights file not found; pass pretrained=imagenet|none|PATH")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise BadInput(f"{p}: not a loadable weights file ({type(exc).__name__}); use a torch state-dict file") from None
    if isinstance(state, dict):
        state = state.get("backbone", state)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BadInput(f"{p}: holds no state dict (name -> tensor); save one with torch.save(model.state_dict(), PATH)")
    state = {k.removeprefix("features."): v for k, v in state.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    if len(missing) == len(own):
        raise BadInput(f"{p}: none of its tensors match backbone layers; is it a weights file for {name}?")
    if missing:
        raise BadInput(f"{p}: lacks {len(missing)} of the {len(own)} tensors of {name} (e.g. {', '.join(missing[:3])}); "
                       "is it a complete weights file for this backbone?")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise BadInput(f"{p}: {len(wrong)} tensors have the wrong shape for {name} ({'; '.join(wrong[:2])}); "
                       "is it a weights file for this backbone?")
    net.load_state_dict(state, strict=False)


# What torchvision raises when it can neither download weights (URLError is an OSError) nor
# read its cached copy (a truncated or corrupt file).
TORCHVISION_LOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)


def _offline_error(weights, exc: Exception) -> BadInput:
    """One clear message when torchvision can neither read nor download ``weights``."""
    name = f"{type(weights).__name__}.{weights.name}"
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()[0][:160] or type(exc).__name__
    if cached.is_file():
        return BadInput(f"{cached}: torchvision's cached {name} cannot be loaded ({reason}); delete it so that it is "
                        "downloaded again, or pass model.pretrained=PATH to a local state-dict file")
    return BadInput(
        f"cannot download {name} ({weights.url}: {reason}) and it is not in torchvision's cache ({cached}). "
        f"Offline: copy {filename} there from a machine with internet access (or set TORCH_HOME to a folder "
        "holding hub/checkpoints/" + filename + "), or pass model.pretrained=PATH to a local state-dict file"
    )


def _torchvision_vgg(builder, weights_enum, pretrained: str) -> nn.Sequential:
    weights = None
    if pretrained == "imagenet":
        weights = weights_enum.IMAGENET1K_V1
        try:
            model = builder(weights=weights)
        except TORCHVISION_LOAD_ERRORS as exc:
            raise _offline_error(weights, exc) from None
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


def _torchvision_model(builder, weights, **kwargs) -> nn.Module:
    """Build a torchvision model, turning a failed weight download into a BadInput."""
    if weights is None:
        return builder(weights=None, **kwargs)
    try:
        return builder(weights=weights, **kwargs)
    except TORCHVISION_LOAD_ERRORS as exc:
        raise _offline_error(weights, exc) from None


class InceptionInput(nn.Module):
    """torchvision's ``transform_input`` as a layer: ImageNet-normalised input -> the
    (x - 0.5) / 0.5 scaling the Google Inception-v3 weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor((0.485, 0.456, 0.406), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5


@register("inception_v3")
def inception_v3(pretrained: str = "none") -> nn.Sequential:
    """torchvision Inception-v3 up to Mixed_6e (768 channels, stride 16: 12x12 at 224 px),
    standing in for the GoogLeNet of the paper's Tables 1-2 (as in SPG and wsolevaluation).
    Needs inputs of at least 75 px."""
    from torchvision.models import Inception_V3_Weights, inception_v3 as tv_inception_v3

    if pretrained == "imagenet":
        model = _torchvision_model(tv_inception_v3, Inception_V3_Weights.IMAGENET1K_V1)
    else:
        model = _torchvision_model(tv_inception_v3, None, aux_logits=False, init_weights=True)
    names = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")
    # Named like torchvision's modules, so pretrained=PATH takes a torchvision state dict.
    net = nn.Sequential(OrderedDict([("transform_input", InceptionInput()), *((n, getattr(model, n)) for n in names)]))
    net.out_channels = 768
    net.stride = 16
    return net


@register("resnet50")
def resnet50(pretrained: str = "none") -> nn.Sequential:
    """torchvision ResNet-50 conv1..layer4 with layer4's stride set to 1 (2048 channels,
    stride 16: 14x14 at 224 px, as wsolevaluation's ResNet50 for WSOL)."""
    from torchvision.models import ResNet50_Weights, resnet50 as tv_resnet50

    weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained == "imagenet" else None
    model = _torchvision_model(tv_resnet50, weights)
    first = model.layer4[0]
    first.conv2.stride = (1, 1)  # torchvision's Bottleneck strides in its 3x3 conv
    first.downsample[0].stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    net = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))  # torchvision names (pretrained=PATH)
    net.out_channels = 2048
    net.stride = 16
    return net

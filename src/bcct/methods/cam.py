"""CAM / VGG-GAP (Zhou et al., CVPR 2016) with the ACoL-style head: cross-entropy only,
localise from the ground-truth (or predicted) class map. Hyperparameters: paper 5.1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bcct import class_maps
from bcct.config import Config
from bcct.ct_model import CTModel
from bcct.methods.base import Method, register


@register("cam")
class CAM(Method):
    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        self.model = CTModel(cfg.model, num_classes)

    def forward(self, images: torch.Tensor) -> dict:
        return self.model(images)

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        out = self(batch["image"])
        loss = F.cross_entropy(out["logits"], batch["label"])
        acc = (out["logits"].argmax(1) == batch["label"]).float().mean()
        return loss, {"loss": loss.detach(), "cls_loss": loss.detach(), "acc": acc}  # on the device

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cam": class_maps.select(out["cams"], classes)}

    def param_groups(self) -> list[dict]:
        return self.model.param_groups(self.cfg.optim.lr_backbone, self.cfg.optim.lr)

"""The BC model (paper 3.2): a frozen pretrained backbone and a binary classifier that tells
target images (label 1) from Background Image Set images (label 0), trained with BCE (Eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bcct.backbones import build_backbone, vgg16_fc
from bcct.config import ModelConfig
from bcct.errors import BadInput


class BCModel(nn.Module):
    """``features`` (frozen, always in eval mode) -> binary classifier -> one logit.

    ``hidden`` = 0: GAP + linear (the paper's "fully connected layer"). ``hidden`` > 0: a
    1x1 conv with ReLU before GAP + linear, so positions the classifier finds no evidence
    at pass no gradient back to the image (cleaner gradient maps; our addition).
    ``head`` = ``fc``: the paper's reading of "replaces the final fully connected layer" of
    VGG-16: pool5, fc6 and fc7 kept (frozen, ImageNet weights), a new FC to one logit.
    """

    def __init__(self, cfg: ModelConfig, hidden: int = 0, head: str = "gap"):
        super().__init__()
        self.features = build_backbone(cfg.backbone, cfg.pretrained)
        self.features.requires_grad_(False)
        self.features.eval()  # from the start: a resumed two-stage run caches masks before any .train()
        c = self.features.out_channels
        self.fc = None
        if head == "fc":
            if not cfg.backbone.startswith("vgg16"):
                raise BadInput(f"bcct.bc_head=fc keeps VGG-16's fc6/fc7: it needs a vgg16 backbone, not {cfg.backbone}")
            self.fc = vgg16_fc(cfg.pretrained).requires_grad_(False).eval()  # dropout off from the start, as features
            self.local, self.classifier = nn.Identity(), nn.Linear(4096, 1)
        elif head == "gap":
            self.local = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=False)) if hidden else nn.Identity()
            self.classifier = nn.Linear(hidden or c, 1)
        else:
            raise BadInput(f"bcct.bc_head={head!r}: use gap or fc")

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: BatchNorm statistics stay those of pretraining
        if self.fc is not None:
            self.fc.eval()  # frozen fc6/fc7: dropout off, as in the pretrained network at test time
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B] logits of "holds a target object"."""
        return self.classify(self.features(images))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        if self.fc is not None:
            return self.classifier(self.fc(features)).squeeze(1)
        return self.classifier(self.local(features).mean(dim=(2, 3))).squeeze(1)


def bc_loss(model: BCModel, target_features: torch.Tensor, background_features: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 on equal numbers of target (1) and background (0) images; returns (loss, accuracy),
    the accuracy a 0-d tensor on the device (reading it would wait for the GPU).

    Features are detached: only the binary classifier learns, so the loss never reaches the
    frozen backbone or the input.
    """
    feats = torch.cat([target_features, background_features]).detach()
    labels = torch.cat([torch.ones(len(target_features)), torch.zeros(len(background_features))]).to(feats.device)
    logits = model.classify(feats)
    acc = ((logits > 0).float() == labels).float().mean()
    return F.binary_cross_entropy_with_logits(logits, labels), acc

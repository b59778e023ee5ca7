"""The CT model (paper 4.1): backbone + CAM head, and optionally the class-agnostic mask branch."""

from __future__ import annotations

import torch
from torch import nn

from bcct import class_maps
from bcct.backbones import build_backbone
from bcct.config import ModelConfig
from bcct.errors import BadInput


class MaskBranch(nn.Module):
    """Paper 4.1 / 5.1: "another convolution block similar [to the head] but only one 1x1
    unit in the final layer" — two 3x3 convs and a 1x1 conv to one channel (logits)."""

    def __init__(self, in_channels: int, width: int, batch_norm: bool = False):
        super().__init__()
        self.net = nn.Sequential(class_maps.conv_block(in_channels, width, batch_norm), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class CTModel(nn.Module):
    """Outputs a dict: ``features``, ``cams`` [B,C,h,w], ``logits`` [B,C] and, with a branch,
    ``branch`` [B,h,w] (mask logits at feature resolution)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, mask_branch: bool = False):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained)
        self.head = class_maps.CAMHead(self.backbone.out_channels, num_classes, cfg.head_width, cfg.head_bn)
        # The paper feeds the branch "the feature map after the top fully convolutional
        # layer"; we take the backbone features so it does not compete with the class maps.
        self.branch = MaskBranch(self.backbone.out_channels, cfg.head_width, cfg.head_bn) if mask_branch else None
        freeze_before(self.backbone, cfg.train_from)
        init = cfg.head_init if cfg.head_init != "auto" else ("xavier" if cfg.backbone == "vgg16_acol" else "default")
        if init == "xavier":  # ACoL's init of the new convs (xavier_uniform_, zero bias)
            for m in [*self.head.modules(), *(self.branch.modules() if self.branch is not None else [])]:
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        elif init != "default":
            raise BadInput(f"model.head_init={cfg.head_init!r}: use auto, default or xavier")

    def train(self, mode: bool = True):
        super().train(mode)
        for module in frozen_modules(self.backbone):
            module.eval()  # frozen layers keep their pretrained BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> dict:
        feats = self.backbone(images)
        cams = self.head(feats)
        out = {"features": feats, "cams": cams, "logits": class_maps.logits(cams)}
        if self.branch is not None:
            out["branch"] = self.branch(feats)
        return out

    def param_groups(self, lr_backbone: float, lr_new: float) -> list[dict]:
        """Paper 5.1: pretrained conv layers at 1e-4, new layers at 1e-3."""
        new = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr_backbone},
            {"params": new, "lr": lr_new},
        ]


def freeze_before(backbone: nn.Module, prefix: str) -> None:
    """Freeze ``backbone``'s leading layers: every parameter that comes before the first one
    named ``prefix...`` (:func:`frozen_modules` finds their modules, kept in eval mode)."""
    if not prefix:
        return
    names = [n for n, _ in backbone.named_parameters()]
    first = next((i for i, n in enumerate(names) if n.startswith(prefix)), None)
    if first is None:
        from bcct.errors import BadInput

        tops = sorted({n.split(".")[0] for n in names})
        raise BadInput(f"model.train_from={prefix!r} names no backbone parameter; its layers are: {', '.join(tops)}")
    frozen_names = set(names[:first])
    for n, p in backbone.named_parameters():
        if n in frozen_names:
            p.requires_grad_(False)


def frozen_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose own parameters are all frozen, found when asked rather than kept:
    a module swapped in later (SyncBatchNorm under DDP, bcct.distributed) holds the same
    frozen parameters and is found too."""
    return [m for m in backbone.modules()
            if list(m.parameters(recurse=False)) and all(not p.requires_grad for p in m.parameters(recurse=False))]

"""Class activation maps (Zhou et al. 2016) from a fully convolutional head (ACoL style),
and the operations every score map goes through in training (pick, upsample, normalise).

The head turns backbone features into one map per class; global average pooling of those
maps gives the logits, so the maps *are* the CAMs (paper 4.1 and 5.1). Evaluation's own
resizing and normalisation (float64, as wsolevaluation) is :func:`bcct.boxes.prepare_scoremap`.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class CAMHead(nn.Module):
    """Two 3x3 convs with ``width`` filters and a 1x1 conv to ``num_classes`` (paper 5.1; ACoL)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 1024, batch_norm: bool = False):
        super().__init__()
        self.body = conv_block(in_channels, width, batch_norm)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(features))


def conv_block(in_channels: int, width: int, batch_norm: bool = False) -> nn.Sequential:
    """Two 3x3 conv + ReLU layers; BatchNorm (our addition) lets small CPU models train in minutes."""
    layers: list[nn.Module] = []
    for c_in in (in_channels, width):
        layers.append(nn.Conv2d(c_in, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def logits(cams: torch.Tensor) -> torch.Tensor:
    """Global average pooling over the class maps: [B,C,h,w] -> [B,C]."""
    return cams.mean(dim=(2, 3))


def select(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The map of one class per image: [B,C,h,w], [B] -> [B,h,w]."""
    return cams[torch.arange(cams.shape[0], device=cams.device), classes]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B,h,w] maps to the image size (the "upsampled CAM" of Eq. 5)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def normalize_maps(maps: torch.Tensor, how: str = "minmax", percentile: float = 0.99) -> torch.Tensor:
    """Per-map scaling to [0, 1] over the last two dims (any leading dims).

    - ``minmax``: subtract the minimum, then divide by the range; a constant map becomes 0
      (ACoL / SPG ``normalize_atten_maps``).
    - ``max``: divide by the maximum (the literal reading of Eq. 2's ``delta * max(G)``).
    - ``percentile``: divide by the ``percentile`` quantile and clip at 1, so a few spiky
      pixels cannot set the scale.
    - ``sqrt``: square root of the max-normalised map: gradient magnitudes are heavy-tailed;
      delta on this scale is delta^2 on Eq. 2's raw scale (:func:`bcct.gradient_map.raw_delta`).

    Computed in at least fp32 and returned in the maps' dtype: under fp16 autocast the 1e-12
    floor of the scale would be 0, and a constant map 0/0 = NaN (which ACoL's erasing reads
    as "erase everything").
    """
    flat = maps.flatten(-2)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    if how == "minmax":
        lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        out = (flat - lo) / (hi - lo).clamp_min(1e-12)
    elif how == "max":
        out = flat / flat.amax(-1, keepdim=True).clamp_min(1e-12)
    elif how == "percentile":
        scale = torch.quantile(flat, percentile, dim=-1, keepdim=True)
        out = (flat / scale.clamp_min(1e-12)).clamp(max=1)
    elif how == "sqrt":
        out = (flat / flat.amax(-1, keepdim=True).clamp_min(1e-12)).sqrt()
    else:
        raise ValueError(f"normalisation {how!r}: use max, sqrt, percentile or minmax")
    return out.view_as(maps).to(maps.dtype)

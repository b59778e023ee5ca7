"""Gradient maps (paper Eq. 1): the gradient of the BC output with respect to the input image.

One backward pass serves the whole batch (each image's logit depends only on that image,
so the gradient of the summed logits is every image's own gradient). Post-processing
turns the raw [B,3,H,W] gradient into a [B,H,W] map in [0, 1]:
channel reduction -> absolute value -> Gaussian smoothing -> normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def input_gradient(bc, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient [B,3,H,W], features, logits) of ``bc`` at ``images``; the features are
    returned so that the BC classifier can be trained on them without a second forward.
    Always in fp32, autocast or not: a half-precision input gradient underflows (fp16)."""
    with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
        x = images.detach().float().requires_grad_(True)
        feats = bc.features(x)
        logits = bc.classify(feats)
        (grad,) = torch.autograd.grad(logits.sum(), x)
    return grad, feats.detach(), logits.detach()


def reduce_channels(grad: torch.Tensor, how: str = "max") -> torch.Tensor:
    """[B,3,H,W] -> [B,H,W] saliency: max of |g| over channels (Simonyan et al. 2014) or L2 norm."""
    if how == "max":
        return grad.abs().amax(dim=1)
    if how == "l2":
        return grad.norm(dim=1)
    raise ValueError(f"channel reduction {how!r}: use max or l2")


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [B,H,W] maps; ``sigma`` in pixels (0: none)."""
    if sigma <= 0:
        return maps
    k = int(2 * round(3 * sigma) + 1)
    return TF.gaussian_blur(maps.unsqueeze(1), [k, k], [sigma, sigma]).squeeze(1)


def normalize(maps: torch.Tensor, how: str = "max", percentile: float = 0.99) -> torch.Tensor:
    """Per-image scaling to [0, 1].

    - ``max``: divide by the maximum (the literal reading of Eq. 2's ``delta * max(G)``).
    - ``percentile``: divide by the ``percentile`` quantile and clip at 1, so a few spiky
      pixels cannot set the scale.
    - ``sqrt``: square root of the max-normalised map: gradient magnitudes are heavy-tailed,
      and on this scale delta around 0.8 (the paper's best) keeps the object (see docs).
    - ``minmax``: subtract the minimum, then divide by the range.
    """
    flat = maps.flatten(1)
    if how == "max":
        scale = flat.amax(1)
        out = flat / scale.clamp_min(1e-12)[:, None]
    elif how == "percentile":
        scale = torch.quantile(flat, percentile, dim=1)
        out = (flat / scale.clamp_min(1e-12)[:, None]).clamp(max=1)
    elif how == "sqrt":
        out = (flat / flat.amax(1).clamp_min(1e-12)[:, None]).sqrt()
    elif how == "minmax":
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        out = (flat - lo) / (hi - lo).clamp_min(1e-12)
    else:
        raise ValueError(f"normalisation {how!r}: use max, sqrt, percentile or minmax")
    return out.view_as(maps)


def gradient_map(grad: torch.Tensor, reduce: str = "max", sigma: float = 0.0, norm: str = "max",
                 pool: int = 1) -> torch.Tensor:
    """Raw input gradient -> [B,H,W] map in [0, 1]. ``pool`` > 1 averages the saliency over
    ``pool`` x ``pool`` cells first (a density of saliency rather than single pixels)."""
    maps = reduce_channels(grad, reduce)
    if pool > 1:
        h, w = maps.shape[-2:]
        maps = F.avg_pool2d(maps.unsqueeze(1), pool, stride=pool, ceil_mode=True)
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
    return normalize(smooth(maps, sigma), norm)


def pretrained_gradient(backbone, images: torch.Tensor) -> torch.Tensor:
    """Fig. 3's second row: the input gradient of a pretrained backbone alone (no Background
    Image Set), taken of the squared norm of its globally pooled features."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        pooled = backbone(x).mean(dim=(2, 3))
        (grad,) = torch.autograd.grad(pooled.pow(2).sum(), x)
    return grad

"""Gradient maps (paper Eq. 1): where the BC model's "target, not background" evidence lies.

The paper's map is the gradient of the BC output with respect to the input image. One
backward pass serves the whole batch (each image's logit depends only on that image, so the
gradient of the summed logits is every image's own gradient). bcct also offers the readings
that a careful researcher would compare it with (``bcct.map``):

- ``input_gradient``: Eq. 1 as printed, max of |dL/dx| over colour channels (Simonyan et al.).
- ``grad_x_input``: |dL/dx * x| (gradient times input, Shrikumar et al.).
- ``smoothgrad``: |dL/dx| averaged over noisy copies of the image (Smilkov et al.).
- ``gradcam``: the BC logit's gradient at the last feature map, Grad-CAM style
  (Selvaraju et al.): ReLU(sum_c mean(dL/dA_c) A_c), upsampled to the image. For the
  paper's linear layer on pooled features this is the BC model's own class activation map.

``bcct.flip`` averages each map with the map of the mirrored image. Post-processing turns
the [B,H,W] saliency into a map in [0, 1], in units that carry across resolutions and
backbones: average over ``pool_cells`` backbone cells, Gaussian blur with sigma
``blur`` x the image side, then normalisation. ``bcct.literal=true`` is the paper's path,
one switch away: input gradient, no pooling, no blur, divided by its maximum.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from bcct.class_maps import normalize_maps

MAPS = ("input_gradient", "grad_x_input", "smoothgrad", "gradcam")
SMOOTHGRAD_SAMPLES = 8  # Smilkov et al. use 50; 8 keeps the cost bounded (measured in docs/bcct.md)
SMOOTHGRAD_NOISE = 0.15  # noise std as a fraction of the image's value range (Smilkov et al.: 0.1-0.2)


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


def feature_gradcam(bc, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Grad-CAM of the BC logit [B,h,w] at feature resolution, features, logits)."""
    with torch.enable_grad():
        feats = bc.features(images.detach()).detach().requires_grad_(True)
        logits = bc.classify(feats)
        (grad,) = torch.autograd.grad(logits.sum(), feats)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * feats).sum(1)), feats.detach(), logits.detach()


def reduce_channels(grad: torch.Tensor, how: str = "max") -> torch.Tensor:
    """[B,3,H,W] -> [B,H,W] saliency: max of |g| over channels (Simonyan et al. 2014) or L2 norm."""
    if how == "max":
        return grad.abs().amax(dim=1)
    if how == "l2":
        return grad.norm(dim=1)
    raise ValueError(f"channel reduction {how!r}: use max or l2")


def saliency(bc, images: torch.Tensor, how: str = "input_gradient", reduce: str = "max"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(raw non-negative saliency [B,H,W] at the image size, BC features, BC logits)."""
    if how == "gradcam":
        cams, feats, logits = feature_gradcam(bc, images)
        size = images.shape[-2:]
        return F.interpolate(cams.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1), feats, logits
    grad, feats, logits = input_gradient(bc, images)
    if how == "input_gradient":
        return reduce_channels(grad, reduce), feats, logits
    if how == "grad_x_input":
        return reduce_channels(grad * images, reduce), feats, logits
    if how == "smoothgrad":
        sigma = SMOOTHGRAD_NOISE * (images.amax(dim=(1, 2, 3), keepdim=True) - images.amin(dim=(1, 2, 3), keepdim=True))
        total = reduce_channels(grad, reduce)
        for _ in range(SMOOTHGRAD_SAMPLES - 1):
            total = total + reduce_channels(input_gradient(bc, images + sigma * torch.randn_like(images))[0], reduce)
        return total / SMOOTHGRAD_SAMPLES, feats, logits
    raise ValueError(f"bcct.map={how!r}: use one of {', '.join(MAPS)}")


def pool_cells(maps: torch.Tensor, cell: int) -> torch.Tensor:
    """Average [B,H,W] saliency over ``cell`` x ``cell`` pixel cells, back at full size
    (a density of saliency rather than single pixels)."""
    if cell <= 1:
        return maps
    h, w = maps.shape[-2:]
    pooled = F.avg_pool2d(maps.unsqueeze(1), cell, stride=cell, ceil_mode=True)
    return F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False).squeeze(1)


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [B,H,W] maps; ``sigma`` in pixels (0: none)."""
    if sigma <= 0:
        return maps
    k = int(2 * round(3 * sigma) + 1)
    k = min(k, 2 * (min(maps.shape[-2:]) - 1) + 1)  # reflect padding needs k // 2 < side
    return TF.gaussian_blur(maps.unsqueeze(1), [k, k], [sigma, sigma]).squeeze(1)


def raw_delta(delta: float, how: str) -> float | None:
    """What ``delta`` on the ``how`` scale means on Eq. 2's raw scale, as a fraction of
    max(G): ``sqrt`` at 0.8 keeps G >= 0.64 max(G). None where no fixed fraction exists
    (``percentile``, ``minmax`` depend on each map)."""
    return {"max": delta, "sqrt": delta * delta}.get(how)


def postprocess(maps: torch.Tensor, stride: int, cells: float = 0.0, blur: float = 0.0, norm: str = "max") -> torch.Tensor:
    """Raw saliency [B,H,W] -> map in [0, 1]: pool over ``cells`` backbone cells of
    ``stride`` pixels, blur with sigma ``blur`` x the image side, normalise."""
    side = max(maps.shape[-2:])
    return normalize_maps(smooth(pool_cells(maps, round(cells * stride)), blur * side), norm)


def literal(b):
    """The paper's path (Eq. 1-2 as printed) for a BCCTConfig ``b``: the input gradient, no
    pooling, no blur, divided by its maximum."""
    return replace(b, map="input_gradient", flip=False, pool_cells=0.0, blur=0.0, normalize="max")


def bc_maps(bc, images: torch.Tensor, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps in [0, 1] [B,H,W], BC features, BC logits) for a batch, as BCCTConfig ``b`` says.
    Always in fp32, autocast or not, whatever the reading: a bf16 or fp16 run trains on the
    masks of an fp32 run (in half precision Grad-CAM moves pixels across delta, and gradients
    underflow in fp16)."""
    if b.literal:
        b = literal(b)
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        raw, feats, logits = saliency(bc, images, b.map, b.reduce)
        if b.flip:
            mirrored = saliency(bc, images.flip(-1), b.map, b.reduce)[0].flip(-1)
            raw = (raw + mirrored) / 2
        return postprocess(raw, bc.features.stride, b.pool_cells, b.blur, b.normalize), feats, logits


def pretrained_gradient(backbone, images: torch.Tensor) -> torch.Tensor:
    """Fig. 3's second row: the input gradient of a pretrained backbone alone (no Background
    Image Set), taken of the squared norm of its globally pooled features."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        pooled = backbone(x).mean(dim=(2, 3))
        (grad,) = torch.autograd.grad(pooled.pow(2).sum(), x)
    return grad


def pretrained_gradcam(backbone, images: torch.Tensor) -> torch.Tensor:
    """Fig. 3's second row in the ``gradcam`` reading: Grad-CAM of the squared norm of the
    pretrained backbone's pooled features (no Background Image Set), [B,h,w]."""
    with torch.enable_grad():
        feats = backbone(images.detach()).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(feats.mean(dim=(2, 3)).pow(2).sum(), feats)
    return F.relu((grad.mean(dim=(2, 3), keepdim=True) * feats).sum(1)).detach()


def pretrained_maps(backbone, images: torch.Tensor, b) -> torch.Tensor:
    """Fig. 3's second row as maps in [0, 1]: the pretrained backbone alone, read the way
    BCCTConfig ``b`` reads the BC model (input gradient or Grad-CAM, same post-processing)."""
    if b.literal:
        b = literal(b)
    if b.map == "gradcam":
        raw = F.interpolate(pretrained_gradcam(backbone, images).unsqueeze(1), size=images.shape[-2:],
                            mode="bilinear", align_corners=False).squeeze(1)
    else:
        raw = reduce_channels(pretrained_gradient(backbone, images), b.reduce)
    return postprocess(raw, backbone.stride, b.pool_cells, b.blur, b.normalize)

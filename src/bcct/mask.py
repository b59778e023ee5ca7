"""Masks from gradient maps (paper Eq. 2): pixels at or above ``delta * max``, then only the
largest connected part. Batched on the device: connected components are found by label
propagation (max-pooling of pixel ids inside the foreground), so no per-image Python loop
runs on the training hot path."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def threshold(maps: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 2: M = 1 where G >= delta * max(G) (per image)."""
    peak = maps.flatten(1).amax(1).view(-1, *([1] * (maps.dim() - 1)))
    return (maps >= delta * peak) & (peak > 0)


def component_labels(masks: torch.Tensor, connectivity: int = 8, max_iter: int | None = None) -> torch.Tensor:
    """Label connected components of boolean [B,H,W] masks: each foreground pixel gets the
    largest flat index in its component, background gets -1."""
    b, h, w = masks.shape
    ids = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float32).view(1, h, w).expand(b, h, w)
    labels = torch.where(masks, ids, torch.zeros_like(ids)).unsqueeze(1)
    fg = masks.unsqueeze(1)
    steps = max_iter or h * w
    for i in range(steps):
        if connectivity == 8:
            grown = F.max_pool2d(labels, 3, stride=1, padding=1)
        else:
            grown = torch.maximum(
                torch.maximum(F.pad(labels, (1, 0, 0, 0))[..., :, :-1], F.pad(labels, (0, 1, 0, 0))[..., :, 1:]),
                torch.maximum(F.pad(labels, (0, 0, 1, 0))[..., :-1, :], F.pad(labels, (0, 0, 0, 1))[..., 1:, :]),
            )
            grown = torch.maximum(grown, labels)
        grown = torch.where(fg, grown, torch.zeros_like(grown))
        # Check convergence every few steps only: the comparison costs a device sync.
        if i % 8 == 7 and torch.equal(grown, labels):
            break
        labels = grown
    return labels.squeeze(1).long() - 1


def largest_component(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Keep, per image, only the connected part with the most pixels (ties: the first found)."""
    b, h, w = masks.shape
    labels = component_labels(masks, connectivity)
    flat = labels.flatten(1)
    offset = torch.arange(b, device=masks.device).view(b, 1) * (h * w)
    valid = flat >= 0
    counts = torch.zeros(b * h * w, device=masks.device, dtype=torch.long)
    counts.scatter_add_(0, (flat + offset)[valid], torch.ones_like(flat[valid]))
    best = counts.view(b, h * w).argmax(1)
    keep = (flat == best[:, None]) & valid
    return keep.view(b, h, w)


def bc_mask(maps: torch.Tensor, delta: float, largest: bool = True) -> torch.Tensor:
    """Eq. 2 and "select the largest part": boolean [B,H,W]."""
    m = threshold(maps, delta)
    return largest_component(m) if largest else m


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[B,H,W] bool -> [B,4] xyxy pixel-edge boxes (x1 = last column + 1); empty -> zeros."""
    from torchvision.ops import masks_to_boxes

    boxes = torch.zeros(masks.shape[0], 4, device=masks.device)
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        boxes[nonempty] = masks_to_boxes(masks[nonempty]).float() + torch.tensor([0, 0, 1, 1], device=masks.device)
    return boxes

"""Masks from gradient maps (paper Eq. 2): pixels at or above ``delta * max``, then only the
largest connected part. Batched on the device: connected components are found by a
parallel algorithm of a fixed number of rounds (:func:`component_labels`), so no per-image
Python loop and no host sync runs on the training hot path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def delta_mask(maps: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 2: M = 1 where G >= delta * max(G) (per image)."""
    peak = maps.flatten(1).amax(1).view(-1, *([1] * (maps.dim() - 1)))
    return (maps >= delta * peak) & (peak > 0)


def component_labels(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Label connected components of boolean [B,H,W] masks: each foreground pixel gets the
    largest flat index in its component, background gets -1.

    Awerbuch and Shiloach's parallel algorithm (1987; Shiloach-Vishkin hooking of stars
    onto neighbouring trees, then pointer jumping) on a parent table of all pixels: at most
    log_{3/2}(H W) rounds, so a fixed number of rounds, each a fixed handful of kernels,
    labels every mask of that size exactly, whatever the length or shape of its parts (label
    propagation needs one round per pixel of a part's geodesic length: 5,944 for a winding
    224-px mask). No round reads anything back to the host: nothing waits for the GPU."""
    b, h, w = masks.shape
    n = h * w
    fg = masks.reshape(b, n)
    ids = torch.arange(1, n + 1, device=masks.device).expand(b, n)
    # parent[:, 1 + i] is pixel i's parent as 1 + its flat index; column 0 is background's
    # sentinel, its own parent, so every gather stays inside the table.
    parent = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=masks.device), torch.where(fg, ids, 0)], 1)
    for _ in range(shiloach_rounds(n)):
        # 1. conditional hooking: a star whose pixel sees a smaller parent next to it hooks its root there
        p = parent[:, 1:]
        lo, _ = _neighbour_parents(p, fg, h, w, connectivity)
        _hook(parent, p, lo, _stars(parent)[:, 1:] & fg & (lo < p))
        # 2. unconditional hooking: a star still left (no smaller parent next to it) hooks onto any other one
        p = parent[:, 1:]
        lo, hi = _neighbour_parents(p, fg, h, w, connectivity)
        other = torch.where(hi != p, hi, lo)
        _hook(parent, p, other, _stars(parent)[:, 1:] & fg & (other != p))
        # 3. pointer jumping
        parent = parent.gather(1, parent)
    root = parent[:, 1:]
    # Name every part by its largest flat index (the labels of the propagation this replaced).
    largest = torch.zeros_like(parent).scatter_reduce_(1, root, torch.where(fg, ids, 0), "amax")
    return (largest.gather(1, root) - 1).view(b, h, w)


def shiloach_rounds(n: int) -> int:
    """Rounds that label every mask of ``n`` pixels: log_{3/2} n (Awerbuch-Shiloach) + 1."""
    return max(1, math.ceil(math.log(max(n, 2)) / math.log(1.5))) + 1


def _stars(parent: torch.Tensor) -> torch.Tensor:
    """Which entries of the parent table sit in a tree of depth <= 1 (a star)."""
    grand = parent.gather(1, parent)
    flat = (grand == parent).to(torch.int32)
    flat = flat.scatter_reduce(1, grand, flat, "amin")  # a deep pixel's grandparent's tree is no star
    return (flat & flat.gather(1, parent)).bool()


def _hook(parent: torch.Tensor, p: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> None:
    """parent[p] = target wherever ``where`` (a root p: any of its stars' candidates wins)."""
    parent.scatter_reduce_(1, torch.where(where, p, 0), torch.where(where, target, 0), "amin", include_self=False)
    parent[:, 0] = 0


def _neighbour_parents(p: torch.Tensor, fg: torch.Tensor, h: int, w: int, connectivity: int):
    """(min, max) of the parents of each pixel and its foreground neighbours, [B, H W]."""
    b = p.shape[0]
    big = h * w + 1
    both = torch.stack([torch.where(fg, -p, -big), torch.where(fg, p, 0)], 1).view(b, 2, h, w)
    grown = _neighbour_max(both, connectivity).view(b, 2, h * w)
    return -grown[:, 0], grown[:, 1]


def _neighbour_max(x: torch.Tensor, connectivity: int) -> torch.Tensor:
    """Max over each pixel and its neighbours (3x3 box or the 4-neighbour cross) of [B,C,H,W]."""
    lowest = -(2**62)  # below any entry (exact as a float, which F.pad takes)
    if connectivity == 8:  # a 3x3 max as two shifted 1-D maxima (25x faster than max_pool2d on CPU)
        p = F.pad(x, (1, 1, 0, 0), value=lowest)
        rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
        p = F.pad(rows, (0, 0, 1, 1), value=lowest)
        return torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    p = F.pad(x, (1, 1, 1, 1), value=lowest)
    return torch.maximum(torch.maximum(torch.maximum(p[..., 1:-1, :-2], p[..., 1:-1, 2:]),
                                       torch.maximum(p[..., :-2, 1:-1], p[..., 2:, 1:-1])), x)


def largest_component(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Keep, per image, only the connected part with the most pixels; of tied parts, the one
    whose first pixel comes first in raster order (the same rule on both paths).

    On CPU one scipy.ndimage.label call labels the whole batch (3-D structure with no links
    across images); on GPU the batched parallel labelling above keeps the work on the device.
    """
    if masks.device.type == "cpu":
        return _largest_component_scipy(masks, connectivity)
    return _largest_component_propagation(masks, connectivity)


def _largest_component_propagation(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """The device path: :func:`component_labels`, then part sizes by one scatter (no boolean
    index, which would wait for the GPU)."""
    b, h, w = masks.shape
    flat = component_labels(masks, connectivity).flatten(1)
    valid = flat >= 0
    # every pixel counts into its part; background into a spare bin past the end
    counts = torch.zeros(b, h * w + 1, device=masks.device, dtype=torch.long)
    counts.scatter_add_(1, torch.where(valid, flat, h * w), torch.ones_like(flat))
    # The part of the first pixel (raster order) whose part has the most pixels, as scipy's path.
    size_at = torch.where(valid, counts.gather(1, flat.clamp_min(0)), torch.zeros_like(flat))
    first = size_at.argmax(1)  # the first maximal index (documented for CPU and CUDA)
    best = flat.gather(1, first[:, None])
    keep = (flat == best) & valid
    return keep.view(b, h, w)


def _largest_component_scipy(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    import numpy as np
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    labels, n = ndimage.label(masks.numpy(), structure=structure)
    flat = labels.reshape(masks.shape[0], -1)
    sizes = np.bincount(flat.ravel(), minlength=n + 1)
    sizes[0] = 0
    best = flat[np.arange(len(flat)), sizes[flat].argmax(1)]
    return torch.from_numpy(((flat == best[:, None]) & (best[:, None] > 0)).reshape(masks.shape))


def bc_mask(maps: torch.Tensor, delta: float, largest: bool = True) -> torch.Tensor:
    """Eq. 2 and "select the largest part": boolean [B,H,W]."""
    m = delta_mask(maps, delta)
    return largest_component(m) if largest else m


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[B,H,W] bool -> [B,4] xyxy pixel-edge boxes (x1 = last column + 1); empty -> zeros."""
    from torchvision.ops import masks_to_boxes

    boxes = torch.zeros(masks.shape[0], 4, device=masks.device)
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        boxes[nonempty] = masks_to_boxes(masks[nonempty]).float() + torch.tensor([0, 0, 1, 1], device=masks.device)
    return boxes


# Cached masks (two-stage BC-CT) as one uint8 map of codes: background, foreground, ignored.
MASK_BG, MASK_FG, MASK_IGNORE = 0, 1, 255


def mask_codes(masks: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(bool mask, weight) [B,H,W] -> uint8 codes: background, foreground, ignored (weight 0)."""
    codes = torch.where(masks, MASK_FG, MASK_BG).to(torch.uint8)
    return codes.masked_fill(weight == 0, MASK_IGNORE)


def decode_masks(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes -> (bool mask, float weight), the inverse of :func:`mask_codes`."""
    return codes == MASK_FG, (codes != MASK_IGNORE).float()

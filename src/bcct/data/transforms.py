"""Train and test presets on ``torchvision.transforms.v2``.

Images travel with their ``tv_tensors`` (boxes, masks) so a crop or flip moves them
together; that is what lets BC masks be cached at full resolution and follow the image.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from bcct.config import DataConfig


def train_transform(cfg: DataConfig) -> v2.Compose:
    """Paper 5.1: random crop resized to the input size, h/v flips at p=0.5, brightness and
    saturation scaled in [0.6, 1.4], then per-channel normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(cfg.hflip),
            v2.RandomVerticalFlip(cfg.vflip),
            v2.ColorJitter(brightness=tuple(cfg.brightness), saturation=tuple(cfg.saturation), hue=cfg.hue or None),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(list(cfg.mean), list(cfg.std)),
        ]
    )


def test_transform(cfg: DataConfig) -> v2.Compose:
    """Paper 5.1 and Choe et al.: resize the whole image to a square, normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((cfg.image_size, cfg.image_size), antialias=True),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(list(cfg.mean), list(cfg.std)),
        ]
    )


def denormalize(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Undo Normalize for display: [B,3,H,W] -> values in [0, 1]."""
    mean = torch.tensor(cfg.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)

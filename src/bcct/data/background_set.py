"""The Background Image Set (paper 3.1): a few images that hold none of the target objects."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from bcct.data.images import IMAGE_SUFFIXES, list_images, load_rgb
from bcct.errors import BadInput


def find_backgrounds(folder: str | Path) -> list[Path]:
    """Every image below ``folder``; one clear error when there is none to use."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(
            f"{folder}: Background Image Set folder not found; pass --backgrounds DIR "
            "(a folder of images without the target objects)"
        )
    paths = list_images(folder)
    if not paths:
        raise BadInput(
            f"{folder}: Background Image Set holds no image ({'/'.join(IMAGE_SUFFIXES)}); "
            "add some images without the target objects"
        )
    return paths


class BackgroundSet(Dataset):
    """Background images with the train transform; unreadable files raise BadInput naming them."""

    def __init__(self, folder: str | Path, transform: Callable):
        self.paths = find_backgrounds(folder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = load_rgb(self.paths[index])
        t = tv_tensors.Image(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous())
        return self.transform(t)

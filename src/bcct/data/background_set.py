"""The Background Image Set (paper 3.1): a few images that hold none of the target objects."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from bcct import distributed
from bcct.data.images import IMAGE_SUFFIXES, list_images, load_rgb
from bcct.data.transforms import train_transform
from bcct.errors import BadInput
from bcct.runtime import ignore_sigint


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
        others = sorted(p for p in folder.rglob("*") if p.is_file())
        found = (f"only {len(others)} other file(s), e.g. {others[0].relative_to(folder)}" if others
                 else "the folder is empty")
        raise BadInput(
            f"{folder}: Background Image Set holds no image ({'/'.join(IMAGE_SUFFIXES)}; {found}); "
            "add images without the target objects, or pass --backgrounds auto"
        )
    return paths


# Background files already read in full by this process, by (path, size, mtime): a set is
# built again every epoch, and each file need only be checked once.
_CHECKED: set[tuple[str, int, int]] = set()


def check_backgrounds(paths: list[Path]) -> None:
    """Read every file in full once (:func:`bcct.data.images.load_rgb`); the first
    unreadable one raises :class:`BadInput` naming it."""
    for path in paths:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _CHECKED:
            load_rgb(path)
            _CHECKED.add(key)


class BorderCrops(Dataset):
    """An automatic Background Image Set for users who have none: a random corner crop of
    ``fraction`` of each side of a training image (no box annotation is used). Objects tend
    to sit away from the corners, so most crops hold background only; see docs/bcct.md for
    how it compares with a real Background Image Set."""

    def __init__(self, paths: list[Path], transform: Callable, fraction: float = 0.3):
        if not paths:
            raise BadInput("automatic backgrounds: the train split holds no image to crop from")
        self.paths = paths
        self.transform = transform
        self.fraction = fraction

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = load_rgb(self.paths[index])
        w, h = img.size
        cw, ch = max(8, int(w * self.fraction)), max(8, int(h * self.fraction))
        corner = int(torch.randint(4, ()).item())
        x0 = 0 if corner in (0, 2) else w - cw
        y0 = 0 if corner in (0, 1) else h - ch
        crop = img.crop((x0, y0, x0 + cw, y0 + ch))
        t = tv_tensors.Image(torch.from_numpy(np.array(crop)).permute(2, 0, 1).contiguous())
        return self.transform(t)


def make_background_set(folder: str, train_paths: list[Path], transform: Callable, fraction: float = 0.3):
    """``folder`` = "auto": border crops of the training images; otherwise the folder's images."""
    if folder == "auto":
        return BorderCrops(train_paths, transform, fraction)
    return BackgroundSet(folder, transform)


class BackgroundSet(Dataset):
    """Background images with the train transform.

    A corrupt file is an error, never skipped: every file is read in full when the set is
    built (once per process and file version, :func:`check_backgrounds`), so an unreadable
    one stops the run with :class:`BadInput` naming it before any training time is spent;
    a file that breaks on disk during the run raises the same error when it is loaded.
    """

    def __init__(self, folder: str | Path, transform: Callable):
        self.paths = find_backgrounds(folder)
        check_backgrounds(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = load_rgb(self.paths[index])
        t = tv_tensors.Image(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous())
        return self.transform(t)


def background_batches(cfg, folder: str, batch_size: int, train_paths=(), key=None, skip: int = 0):
    """An endless stream of background batches of ``batch_size`` per process, drawn with
    replacement (paper 3.2). ``folder`` = "auto" crops them from the training images'
    borders. ``key`` (e.g. the seed) fixes the draws and their augmentation (default: from
    torch's generator); with several processes each takes its share of every global batch,
    so together they draw what one process would. ``skip`` passes over the first batches (a
    resumed run). As many loading workers as the main loader (``cfg.data.workers``); one
    stream serves the whole run (its workers stay alive across epochs)."""
    bg = make_background_set(folder, list(train_paths), train_transform(cfg.data))
    key = tuple(key) if key is not None else (int(torch.randint(2**62, ()).item()),)
    world = distributed.world_size()
    draws = distributed.Draws(len(bg), key, skip * batch_size * world, shard=(distributed.rank(), world, batch_size))
    loader = DataLoader(distributed.SeededSamples(bg, cfg.seed), batch_size=batch_size,
                        sampler=draws, num_workers=cfg.data.workers,
                        drop_last=True, pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_sigint,
                        generator=torch.Generator())
    return iter(loader)

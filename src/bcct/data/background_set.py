"""The Background Image Set (paper 3.1): a few images that hold none of the target objects."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
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


# Background Image Sets already decoded by this process, by their files' (path, size, mtime)
# and the side they were reduced to: a set is built more than once in a run (checked before
# training, then streamed), and a file need only be decoded once per version.
_DECODED: dict[tuple, tuple[torch.Tensor, list[tuple[int, int, int]]]] = {}


def check_backgrounds(paths: list[Path]) -> None:
    """Read every file in full once (:func:`bcct.data.images.load_rgb`); the first
    unreadable one raises :class:`BadInput` naming it."""
    decode_backgrounds(paths)


def crop_side(image_size: int, crop_scale=(0.25, 1.0)) -> int:
    """The shorter side an image needs so that the train transform's smallest crop
    (RandomResizedCrop: area ``crop_scale[0]``, aspect ratio down to 3/4) still holds
    ``image_size`` pixels a side: a larger photo only costs decoding and memory."""
    return math.ceil(image_size / math.sqrt(0.75 * max(float(crop_scale[0]), 1e-3)))


def decode_backgrounds(paths: list[Path], side: int | None = None) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Every image decoded once and, when ``side`` is given, reduced so its shorter side is at
    most ``side`` (JPEGs are decoded at a reduced scale directly): (one uint8 buffer in shared
    memory holding the [3,H,W] images one after the other, [(offset, H, W)] per image). The
    buffer is what DataLoader workers read: shared, not copied or pickled, whatever the start
    method."""
    keys = []
    for path in paths:
        st = path.stat()
        keys.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
    key = (tuple(keys), side)
    if key not in _DECODED:
        images, spans, offset = [], [], 0
        for path in paths:
            img = load_rgb(path, reduce_to=side)
            if side and min(img.size) > side:
                scale = side / min(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.BILINEAR, reducing_gap=2.0)
            arr = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
            images.append(arr.flatten())
            spans.append((offset, arr.shape[1], arr.shape[2]))
            offset += arr.numel()
        buffer = torch.cat(images) if images else torch.zeros(0, dtype=torch.uint8)
        _DECODED.clear()  # one set at a time: a new version of the folder replaces the old one
        _DECODED[key] = (buffer.share_memory_(), spans)
    return _DECODED[key]


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


def make_background_set(folder: str, train_paths: list[Path], transform: Callable, fraction: float = 0.3,
                        side: int | None = None):
    """``folder`` = "auto": border crops of the training images; otherwise the folder's images
    (decoded once, reduced to ``side``)."""
    if folder == "auto":
        return BorderCrops(train_paths, transform, fraction)
    return BackgroundSet(folder, transform, side)


class BackgroundSet(Dataset):
    """Background images with the train transform.

    Every file is decoded once, when the set is built (once per process and file version),
    reduced to the side the train crops need (``side``; see :func:`crop_side`) and kept in
    memory shared with the data-loading workers: a draw decodes nothing (a 12-megapixel
    photo took 156 ms to decode at every draw). A corrupt file is an error, never skipped:
    the first unreadable one stops the run with :class:`BadInput` naming it before any
    training time is spent.
    """

    def __init__(self, folder: str | Path, transform: Callable, side: int | None = None):
        self.paths = find_backgrounds(folder)
        self.pixels, self.spans = decode_backgrounds(self.paths, side)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        offset, h, w = self.spans[index]
        t = tv_tensors.Image(self.pixels[offset: offset + 3 * h * w].view(3, h, w))
        return self.transform(t)


def background_batches(cfg, folder: str, batch_size: int, train_paths=(), key=None, skip: int = 0):
    """An endless stream of background batches of ``batch_size`` per process, drawn with
    replacement (paper 3.2). ``folder`` = "auto" crops them from the training images'
    borders. ``key`` (e.g. the seed) fixes the draws and their augmentation (default: from
    torch's generator); with several processes each takes its share of every global batch,
    so together they draw what one process would. ``skip`` passes over the first batches (a
    resumed run). As many loading workers as the main loader (``cfg.data.workers``); one
    stream serves the whole run (its workers stay alive across epochs)."""
    bg = make_background_set(folder, list(train_paths), train_transform(cfg.data),
                             side=crop_side(cfg.data.image_size, cfg.data.crop_scale))
    key = tuple(key) if key is not None else (int(torch.randint(2**62, ()).item()),)
    world = distributed.world_size()
    draws = distributed.Draws(len(bg), key, skip * batch_size * world, shard=(distributed.rank(), world, batch_size))
    loader = DataLoader(distributed.SeededSamples(bg, cfg.seed), batch_size=batch_size,
                        sampler=draws, num_workers=cfg.data.workers,
                        drop_last=True, pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_sigint,
                        generator=torch.Generator())
    return iter(loader)

"""What every data-set reader produces: records of (image, label, GT boxes, optional mask) and splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bcct.errors import BadInput

SPLITS = ("train", "val", "test")


@dataclass
class Record:
    image_id: str
    path: Path
    label: int  # 0-based class index
    boxes: np.ndarray  # [G, 4] xyxy, original pixels
    mask_path: Path | None = None
    is_train: bool = True
    is_val: bool = False  # held out of train to choose the CAM threshold

    @property
    def split(self) -> str:
        if not self.is_train:
            return "test"
        return "val" if self.is_val else "train"


@dataclass
class WSOLSet:
    root: Path
    class_names: list[str]
    records: list[Record] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise BadInput(f"split {name!r}: choose one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == name]


def carve_val(wset: WSOLSet, fraction: float, seed: int) -> WSOLSet:
    """Mark a class-stratified ``fraction`` of the training images as the held-out val split.

    The CAM threshold is chosen there, never on test (Choe et al., CVPR 2020, sec. 4).
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Record]] = {}
    for r in wset.records:
        if r.is_train:
            by_class.setdefault(r.label, []).append(r)
    for recs in by_class.values():
        n_val = int(round(fraction * len(recs)))
        if fraction > 0 and len(recs) > 1:
            n_val = max(1, min(n_val, len(recs) - 1))
        for i in rng.permutation(len(recs))[:n_val]:
            recs[i].is_val = True
    return wset


def image_size(record: Record) -> tuple[int, int]:
    """(W, H) from the file header only; checks GT boxes lie inside the image."""
    try:
        with Image.open(record.path) as img:
            w, h = img.size
    except Image.DecompressionBombError:
        raise BadInput(f"{record.path}: image declares a size beyond Pillow's decompression-bomb limit; downscale it") from None
    except FileNotFoundError:
        raise BadInput(f"{record.path}: image listed in the annotations is missing; restore it or drop its rows") from None
    except OSError as exc:
        raise BadInput(f"{record.path}: cannot read image header ({exc}); the file is corrupt, replace it") from None
    b = record.boxes
    if (b[:, 2] > w + 1).any() or (b[:, 3] > h + 1).any():
        raise BadInput(
            f"{record.path}: GT box {b.round(1).tolist()} extends outside the {w}x{h} image; "
            "fix its row in bounding_boxes.txt"
        )
    return w, h

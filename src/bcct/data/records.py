"""What every data-set reader produces: records of (image, label, GT boxes, optional mask) and splits."""

from __future__ import annotations

import math
from collections import defaultdict
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
        for i in _pick(len(recs), fraction, rng):
            recs[i].is_val = True
    return wset


def _pick(n: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """Indices of the ``round(fraction * n)`` images of one class that go to val: at least
    one and at most ``n - 1`` when ``fraction > 0`` and the class has two or more images."""
    n_val = int(round(fraction * n))
    if fraction > 0 and n > 1:
        n_val = max(1, min(n_val, n - 1))
    return rng.permutation(n)[:n_val].tolist()


def image_size(record: Record) -> tuple[int, int]:
    """(W, H) from the file header only; checks GT boxes against the image and clips those
    that run a little past its edge (:func:`clip_boxes`)."""
    try:
        with Image.open(record.path) as img:
            w, h = img.size
    except Image.DecompressionBombError:
        raise BadInput(f"{record.path}: image declares a size beyond Pillow's decompression-bomb limit; downscale it") from None
    except FileNotFoundError:
        raise BadInput(f"{record.path}: image listed in the annotations is missing; restore it or drop its rows") from None
    except OSError as exc:
        raise BadInput(f"{record.path}: cannot read image header ({exc}); the file is corrupt, replace it") from None
    clip_boxes(record, w, h)
    return w, h


def clip_boxes(record: Record, w: int, h: int) -> None:
    """Clip ``record``'s GT boxes to the W x H image in place.

    The official CUB-200-2011 has boxes that end a few pixels past the image (14 of its
    first 2,889 images, e.g. Gray_Catbird_0032_21551: y + h = 380 on a 375-px image);
    wsolevaluation's metadata clips them to the image, and so do we. A box that is mostly
    outside the image (less than half of its area inside) is an annotation error, not a
    rounding one, and stays an error.
    """
    b = record.boxes
    inside = b.copy()
    inside[:, [0, 2]] = inside[:, [0, 2]].clip(0, w)
    inside[:, [1, 3]] = inside[:, [1, 3]].clip(0, h)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept = (inside[:, 2] - inside[:, 0]) * (inside[:, 3] - inside[:, 1])
    if (kept < 0.5 * area).any():
        raise BadInput(
            f"{record.path}: GT box {b.round(1).tolist()} lies mostly outside the {w}x{h} image; "
            "fix its row in bounding_boxes.txt"
        )
    record.boxes = inside


# One shared empty [0, 4] array for every image without boxes (ImageNet train has 1.28 M
# of them; an array each would cost ~100 MB). Left writable: torch warns on read-only
# arrays, and an empty array holds nothing to overwrite.
NO_BOXES = np.zeros((0, 4), dtype=np.float64)


def check_box(box: tuple[float, float, float, float], where: str, size: tuple[float, float] | None) -> None:
    """Raise BadInput (prefixed by ``where``, a file or file:line) for a malformed xyxy box."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise BadInput(f"{where}: box {list(box)} has a non-finite number; fix it")
    if x1 <= x0 or y1 <= y0:
        raise BadInput(f"{where}: box {list(box)} has xmax <= xmin or ymax <= ymin; fix or delete it")
    if x0 < 0 or y0 < 0:
        raise BadInput(f"{where}: box {list(box)} starts outside the image (negative coordinate); fix it")
    if size is not None:
        w, h = size
        if x1 > w + 1 or y1 > h + 1:  # 1 px tolerance, as records.image_size
            raise BadInput(f"{where}: box {list(box)} extends outside the {w:g}x{h:g} image; fix it")


def hold_out(records: list[Record], fraction: float, seed: int) -> None:
    """Mark a class-stratified ``fraction`` of ``records`` (box-annotated, not trained on)
    as the ``val`` split and the rest as ``test``, deterministically by ``seed``.

    Per class, ``round(fraction * n)`` images go to val, at least one and at most
    ``n - 1`` when ``fraction > 0`` and the class has two or more images (as ``carve_val``).
    """
    if not 0 <= fraction < 1:
        raise BadInput(f"data.val_fraction={fraction}: use a fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Record]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.image_id):
        by_class[r.label].append(r)
    for label in sorted(by_class):
        recs = by_class[label]
        chosen = set(_pick(len(recs), fraction, rng))
        for i, r in enumerate(recs):
            r.is_train = i in chosen  # Record.split: is_train and is_val -> "val"; not is_train -> "test"
            r.is_val = i in chosen

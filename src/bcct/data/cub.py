"""Reader for the official CUB-200-2011 layout (Wah et al. 2011).

    ROOT/images.txt               <image_id> <relative path under images/>
    ROOT/image_class_labels.txt   <image_id> <class_id, 1-based>
    ROOT/train_test_split.txt     <image_id> <1 train | 0 test>
    ROOT/bounding_boxes.txt       <image_id> <x> <y> <w> <h>   (pixels, top-left origin)
    ROOT/classes.txt              <class_id> <name>
    ROOT/images/...               the images
    ROOT/segmentations/...        optional masks (same relative path, .png)

Boxes become xyxy in original pixels. A file can repeat an image id in
``bounding_boxes.txt`` to give several boxes (ILSVRC-style); CUB has one per image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from bcct.data.records import Record, WSOLSet, carve_val
from bcct.errors import BadInput

REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")


def _rows(path: Path, n_fields: int, what: str):
    """Yield (line_number, fields) of a whitespace-separated file, checking the field count."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"{path}:{lineno}: not UTF-8 text; re-save the file as UTF-8") from None
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != n_fields:
                raise BadInput(
                    f"{path}:{lineno}: expected {n_fields} fields ({what}), got {len(fields)}: "
                    f"{line.strip()[:80]!r}; fix or delete that row"
                )
            yield lineno, fields


def _number(path: Path, lineno: int, text: str, kind=int):
    try:
        return kind(text)
    except ValueError:
        raise BadInput(f"{path}:{lineno}: {text!r} is not a number; fix that row") from None


def read_cub(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> WSOLSet:
    """Parse a CUB-layout folder into records (train / val / test); raise BadInput on any bad row."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: data folder not found; pass --data ROOT (a CUB-200-2011 layout folder)")
    for name in REQUIRED:
        if not (root / name).is_file():
            raise BadInput(f"{root / name}: missing; a CUB-layout ROOT needs {', '.join(REQUIRED)}")

    classes = {}
    for lineno, (cid, name) in _rows(root / "classes.txt", 2, "class_id name"):
        classes[_number(root / "classes.txt", lineno, cid)] = name
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise BadInput(f"{root / 'classes.txt'}: class ids must be 1..{len(classes)} without gaps")

    paths = {}
    for lineno, (iid, rel) in _rows(root / "images.txt", 2, "image_id path"):
        paths[_number(root / "images.txt", lineno, iid)] = rel

    labels = {}
    f = root / "image_class_labels.txt"
    for lineno, (iid, cid) in _rows(f, 2, "image_id class_id"):
        cid = _number(f, lineno, cid)
        if cid not in classes:
            raise BadInput(f"{f}:{lineno}: class id {cid} is not in classes.txt (1..{len(classes)}); fix that row")
        labels[_number(f, lineno, iid)] = cid - 1

    is_train = {}
    f = root / "train_test_split.txt"
    for lineno, (iid, flag) in _rows(f, 2, "image_id is_training_image"):
        if flag not in ("0", "1"):
            raise BadInput(f"{f}:{lineno}: split flag must be 0 or 1, got {flag!r}; fix that row")
        is_train[_number(f, lineno, iid)] = flag == "1"

    boxes = defaultdict(list)
    f = root / "bounding_boxes.txt"
    for lineno, (iid, *xywh) in _rows(f, 5, "image_id x y w h"):
        x, y, w, h = (_number(f, lineno, v, float) for v in xywh)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise BadInput(f"{f}:{lineno}: box has a non-finite number ({x}, {y}, {w}, {h}); fix that row")
        if w <= 0 or h <= 0:
            raise BadInput(f"{f}:{lineno}: box of zero or negative size (w={w}, h={h}); fix that row")
        if x < 0 or y < 0:
            raise BadInput(f"{f}:{lineno}: box starts outside the image (x={x}, y={y}); fix that row")
        boxes[_number(f, lineno, iid)].append((x, y, x + w, y + h))

    records = []
    for iid, rel in sorted(paths.items()):
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt"), (boxes, "bounding_boxes.txt")):
            if iid not in table:
                raise BadInput(f"{root / name}: no row for image id {iid} ({rel}); add it")
        seg = root / "segmentations" / Path(rel).with_suffix(".png")
        records.append(
            Record(
                image_id=str(iid),
                path=root / "images" / rel,
                label=labels[iid],
                boxes=np.asarray(boxes[iid], dtype=np.float64),
                mask_path=seg if seg.is_file() else None,
                is_train=is_train[iid],
            )
        )
    class_names = [classes[i] for i in range(1, len(classes) + 1)]
    return carve_val(WSOLSet(root=root, class_names=class_names, records=records), val_fraction, seed)

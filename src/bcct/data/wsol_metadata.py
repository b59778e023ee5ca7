"""Reader for the layout of clovaai/wsolevaluation's metadata (Choe et al., CVPR 2020).

``metadata/<DATASET>``::

    METADATA/{train,val,test}/image_ids.txt     <path>             (one image per line)
                              class_labels.txt  <path>,<label>     (0-based)
                              image_sizes.txt   <path>,<w>,<h>     (optional: checks boxes)
                              localization.txt  <path>,<x0>,<y0>,<x1>,<y1>
                                                (several lines per image = several boxes;
                                                required for val and test)
    ROOT/<path>                                 the images

Their ``train`` becomes train, ``val`` (their "train-fullsup": the held-out split that
chooses the threshold) val and ``test`` test. Without a ``val`` folder a ``val_fraction``
of ``test`` is held out as in :func:`bcct.data.ilsvrc.read_ilsvrc`.

Boxes are xyxy floats in original pixels, as given (both ILSVRC formats use inclusive
integer pixel coordinates, which the evaluator's +1-pixel IoU expects). An image may have
several boxes; the evaluator counts it localised when any of them is matched.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from bcct.data.images import subfolders
from bcct.data.records import NO_BOXES, Record, WSOLSet, check_box, hold_out
from bcct.errors import BadInput

SPLIT_DIRS = ("train", "val", "test")


def _lines(path: Path):
    """Yield (line_number, text) of the non-blank lines of a UTF-8 text file."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise BadInput(f"{path}:{lineno}: not UTF-8 text; re-save the file as UTF-8") from None
            if line.strip():
                yield lineno, line


def _csv_rows(path: Path, n_numbers: int, what: str, kind=int):
    """Yield (line_number, image path, numbers) of ``<path>,<n1>,...`` rows (commas in the
    path are kept: the numbers are split off from the right)."""
    for lineno, line in _lines(path):
        fields = line.rsplit(",", n_numbers)
        if len(fields) != n_numbers + 1 or not fields[0]:
            raise BadInput(
                f"{path}:{lineno}: expected {n_numbers + 1} comma-separated fields ({what}), "
                f"got {line[:80]!r}; fix or delete that row"
            )
        numbers = []
        for text in fields[1:]:
            try:
                numbers.append(kind(text.strip()))
            except ValueError:
                raise BadInput(f"{path}:{lineno}: {text.strip()!r} is not a number; fix that row") from None
        yield lineno, fields[0], numbers


def _read_split(split_dir: Path, needs_boxes: bool):
    """(image ids, {id: label}, {id: boxes list}) of one wsolevaluation split folder."""
    ids_file, labels_file = split_dir / "image_ids.txt", split_dir / "class_labels.txt"
    sizes_file, loc_file = split_dir / "image_sizes.txt", split_dir / "localization.txt"
    required = [ids_file, labels_file] + ([loc_file] if needs_boxes else [])
    for f in required:
        if not f.is_file():
            raise BadInput(
                f"{f}: missing; a wsolevaluation split folder needs "
                + ", ".join(p.name for p in required)
                + " (image_sizes.txt optional)"
            )

    ids: list[str] = []
    where: dict[str, int] = {}
    for lineno, line in _lines(ids_file):
        path = line.strip()
        if path in where:
            raise BadInput(f"{ids_file}:{lineno}: {path} is listed twice (first on line {where[path]}); delete one")
        where[path] = lineno
        ids.append(path)

    def known(f: Path, lineno: int, path: str) -> None:
        if path not in where:
            raise BadInput(f"{f}:{lineno}: {path} is not in {ids_file.name}; add it there or delete this row")

    labels: dict[str, int] = {}
    for lineno, path, (label,) in _csv_rows(labels_file, 1, "path,label"):
        known(labels_file, lineno, path)
        if label < 0:
            raise BadInput(f"{labels_file}:{lineno}: class label {label} is negative; labels are 0-based")
        if labels.setdefault(path, label) != label:
            raise BadInput(f"{labels_file}:{lineno}: {path} already has label {labels[path]}; an image has one label")

    sizes: dict[str, tuple[float, float]] = {}
    if sizes_file.is_file():
        for lineno, path, (w, h) in _csv_rows(sizes_file, 2, "path,width,height"):
            known(sizes_file, lineno, path)
            if w <= 0 or h <= 0:
                raise BadInput(f"{sizes_file}:{lineno}: image size {w}x{h} must be positive; fix that row")
            sizes[path] = (float(w), float(h))

    boxes: dict[str, list] = defaultdict(list)
    if loc_file.is_file():
        for lineno, path, box in _csv_rows(loc_file, 4, "path,x0,y0,x1,y1", float):
            known(loc_file, lineno, path)
            check_box(tuple(box), f"{loc_file}:{lineno}", sizes.get(path))
            boxes[path].append(box)

    for path in ids:
        if path not in labels:
            raise BadInput(f"{labels_file}: no row for {path} (line {where[path]} of {ids_file.name}); add it")
        if needs_boxes and path not in boxes:
            raise BadInput(f"{loc_file}: no box for {path} (line {where[path]} of {ids_file.name}); add one")
    return ids, labels, boxes


def _class_names(n: int, records: list[Record]) -> list[str]:
    """Names from the training images' folders (``train/<name>/x.jpg``) when every class has
    exactly one folder of its own there; otherwise the label numbers."""
    folders: dict[int, set[str]] = defaultdict(set)
    for r in records:
        if r.split == "train" and len(Path(r.image_id).parts) >= 2:
            folders[r.label].add(Path(r.image_id).parent.name)
    names = [next(iter(folders[k])) if len(folders.get(k, ())) == 1 else None for k in range(n)]
    if None in names or len(set(names)) != n:
        return [str(k) for k in range(n)]
    return names


def read_wsol_metadata(root: str | Path, metadata_dir: str | Path = "", val_fraction: float = 0.1,
                       seed: int = 0, classes: list[str] | None = None) -> WSOLSet:
    """Parse wsolevaluation metadata (see the module docstring); images are ``root/<path>``.

    ``metadata_dir`` empty means ``ROOT/metadata``. Errors name file and line. ``classes``: a
    model's class names, whose indices the labels are (ImageNet's standard order for an
    ImageNet classifier; the data may lack some classes).
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: data folder not found; pass --data ROOT (the folder the metadata paths start from)")
    meta = Path(metadata_dir) if str(metadata_dir) else root / "metadata"
    if not meta.is_dir():
        raise BadInput(f"{meta}: metadata folder not found; set data.metadata to wsolevaluation's metadata/<DATASET>")
    present = [s for s in SPLIT_DIRS if (meta / s).is_dir()]
    if not present:
        hint = ", ".join(d.name for d in subfolders(meta) if any((d / s).is_dir() for s in SPLIT_DIRS))
        raise BadInput(
            f"{meta}: no train/, val/ or test/ folder"
            + (f"; it holds data sets ({hint}): point data.metadata at one of them" if hint else "")
        )

    records: list[Record] = []
    seen: dict[str, str] = {}
    for split in present:
        ids, labels, boxes = _read_split(meta / split, needs_boxes=split != "train")
        for path in ids:
            if path in seen:
                raise BadInput(
                    f"{meta / split / 'image_ids.txt'}: {path} is also in {seen[path]}/; "
                    "an image must be in one split only (else test images leak into training)"
                )
            seen[path] = split
            records.append(
                Record(
                    image_id=path,
                    path=root / path,
                    label=labels[path],
                    boxes=np.asarray(boxes[path], dtype=np.float64).reshape(-1, 4) if path in boxes else NO_BOXES,
                    is_train=split != "test",
                    is_val=split == "val",
                )
            )
    if "val" not in present and "test" in present:
        hold_out([r for r in records if r.split == "test"], val_fraction, seed)
    n_classes = max((r.label for r in records), default=-1) + 1
    if classes is not None:
        if n_classes > len(classes):
            bad = next(r for r in records if r.label >= len(classes))
            raise BadInput(f"{meta}: {bad.image_id} has label {bad.label}, beyond the model's {len(classes)} classes; "
                           "labels are 0-based indices in the model's class order")
        return WSOLSet(root=root, class_names=list(classes), records=records)
    return WSOLSet(root=root, class_names=_class_names(n_classes, records), records=records)

"""Readers for ImageNet (ILSVRC) folders and for the wsolevaluation metadata layout.

``read_ilsvrc`` — the standard ImageNet (ILSVRC 2012 CLS-LOC) folder::

    ROOT/train/<wnid>/*.JPEG        training images; the sorted wnids are the classes
    ROOT/val/*.JPEG                 official validation images (flat), or
    ROOT/val/<wnid>/*.JPEG          the common "sorted val" layout
    ROOT/val_boxes/<stem>.xml       Pascal-VOC boxes, one file per val image
                                    (``val_boxes/<wnid>/<stem>.xml`` is accepted too)

Training images carry no boxes (an empty ``[0, 4]`` array): weak supervision needs none
and ILSVRC ships boxes for only part of train. The CAM threshold must be chosen on
images *with* boxes, so nothing is carved from train here. Instead the official val
images are split, per class and deterministically by ``seed``, into ``val``
(``val_fraction`` of each class: the held-out split that chooses the threshold) and
``test`` (the rest: the reported numbers). Choe et al. (CVPR 2020) choose it on a
separate box-annotated set instead (ImageNetV2); ``read_wsol_metadata`` reads theirs.
``val`` records have ``is_train=True, is_val=True`` only because that is how
:class:`~bcct.data.records.Record` spells the split ``val``; no val image is trained on.

``read_wsol_metadata`` — the layout of clovaai/wsolevaluation's ``metadata/<DATASET>``::

    METADATA/{train,val,test}/image_ids.txt     <path>             (one image per line)
                              class_labels.txt  <path>,<label>     (0-based)
                              image_sizes.txt   <path>,<w>,<h>     (optional: checks boxes)
                              localization.txt  <path>,<x0>,<y0>,<x1>,<y1>
                                                (several lines per image = several boxes;
                                                required for val and test)
    ROOT/<path>                                 the images

Their ``train`` becomes train, ``val`` (their "train-fullsup": the held-out split that
chooses the threshold) val and ``test`` test. Without a ``val`` folder a ``val_fraction``
of ``test`` is held out as in ``read_ilsvrc``.

Boxes are xyxy floats in original pixels, as given (both ILSVRC formats use inclusive
integer pixel coordinates, which the evaluator's +1-pixel IoU expects). An image may have
several boxes; the evaluator counts it localised when any of them is matched.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np

from bcct.data.images import IMAGE_SUFFIXES
from bcct.data.records import Record, WSOLSet
from bcct.errors import BadInput

# One shared empty [0, 4] array for every image without boxes (ImageNet train has 1.28 M
# of them; an array each would cost ~100 MB). Left writable: torch warns on read-only
# arrays, and an empty array holds nothing to overwrite.
NO_BOXES = np.zeros((0, 4), dtype=np.float64)
# A Pascal-VOC file of an ImageNet image is a few kB; anything this large is not one.
MAX_XML_BYTES = 1 << 20
SPLIT_DIRS = ("train", "val", "test")


# ---------------------------------------------------------------- shared helpers


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (no recursion), sorted; hidden files skipped."""
    with os.scandir(folder) as it:
        return sorted(
            Path(e.path)
            for e in it
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
        )


def _subdirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))


def _check_box(box: tuple[float, float, float, float], where: str, size: tuple[float, float] | None) -> None:
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
        n_val = int(round(fraction * len(recs)))
        if fraction > 0 and len(recs) > 1:
            n_val = max(1, min(n_val, len(recs) - 1))
        chosen = set(rng.permutation(len(recs))[:n_val].tolist())
        for i, r in enumerate(recs):
            r.is_train = i in chosen  # Record.split: is_train and is_val -> "val"; not is_train -> "test"
            r.is_val = i in chosen


# ---------------------------------------------------------------- ILSVRC folder + Pascal-VOC XML


def _xml_text(node: ET.Element, tag: str, xml: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise BadInput(f"{xml}: {what} has no <{tag}>; re-extract this file from the ILSVRC box archive")
    return child.text.strip()


def _xml_number(node: ET.Element, tag: str, xml: Path, what: str) -> float:
    text = _xml_text(node, tag, xml, what)
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"{xml}: <{tag}> of {what} is {text!r}, not a number; fix it") from None


def parse_voc_xml(xml: Path) -> tuple[str, np.ndarray]:
    """(wnid, boxes [G, 4] xyxy) of one ImageNet Pascal-VOC annotation; BadInput naming the file."""
    try:
        if xml.stat().st_size > MAX_XML_BYTES:
            raise BadInput(f"{xml}: {xml.stat().st_size} bytes is too large for a box annotation; replace the file")
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise BadInput(f"{xml}: not valid XML ({exc}); re-extract this file from the ILSVRC box archive") from None
    except OSError as exc:
        raise BadInput(f"{xml}: cannot read ({exc.strerror or exc}); check the file and its permissions") from None
    size = None
    node = root.find("size")
    if node is not None:
        try:
            w, h = float(node.findtext("width", "")), float(node.findtext("height", ""))
            size = (w, h) if w > 0 and h > 0 else None
        except ValueError:
            size = None  # <size> is informative only; the image header is checked later
    objects = root.findall("object")
    if not objects:
        raise BadInput(f"{xml}: no <object>; an ILSVRC val annotation lists at least one box, re-extract it")
    wnids, boxes = [], []
    for k, obj in enumerate(objects, 1):
        what = f"<object> {k}"
        wnids.append(_xml_text(obj, "name", xml, what))
        bnd = obj.find("bndbox")
        if bnd is None:
            raise BadInput(f"{xml}: {what} has no <bndbox>; re-extract this file from the ILSVRC box archive")
        box = tuple(_xml_number(bnd, t, xml, what) for t in ("xmin", "ymin", "xmax", "ymax"))
        _check_box(box, f"{xml}: {what}", size)
        boxes.append(box)
    if len(set(wnids)) > 1:
        raise BadInput(
            f"{xml}: objects name different classes ({', '.join(sorted(set(wnids)))}); an image has one "
            "label in ILSVRC CLS-LOC, keep the objects of its class only"
        )
    return wnids[0], np.asarray(boxes, dtype=np.float64)


def _find_xml(boxes_dir: Path, image: Path, val_dir: Path) -> Path:
    flat = boxes_dir / f"{image.stem}.xml"
    if flat.is_file():
        return flat
    mirrored = boxes_dir / image.relative_to(val_dir).with_suffix(".xml")
    if mirrored.is_file():
        return mirrored
    raise BadInput(
        f"{image}: no box annotation (looked for {flat}); put its Pascal-VOC XML there "
        "(from ILSVRC2012_bbox_val) or remove the image from val/"
    )


def read_ilsvrc(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> WSOLSet:
    """Parse an ImageNet folder (see the module docstring); raise BadInput on any bad input.

    Train: every image of ``train/<wnid>/``, no boxes. The official val images (with XML
    boxes) are split per class into ``val`` (``val_fraction``) and ``test`` by ``seed``.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: data folder not found; pass --data ROOT (an ImageNet folder with train/ and val/)")
    train_dir, val_dir, boxes_dir = root / "train", root / "val", root / "val_boxes"
    for d, what in ((train_dir, "train/<wnid>/*.JPEG"), (val_dir, "val/*.JPEG or val/<wnid>/*.JPEG"),
                    (boxes_dir, "val_boxes/*.xml (ILSVRC2012_bbox_val)")):
        if not d.is_dir():
            raise BadInput(f"{d}: missing; an ILSVRC-layout ROOT needs {what}")

    class_dirs = _subdirs(train_dir)
    if not class_dirs:
        raise BadInput(f"{train_dir}: no class folders; expected train/<wnid>/*.JPEG (one folder per class)")
    class_names = [d.name for d in class_dirs]
    label_of = {wnid: i for i, wnid in enumerate(class_names)}

    records: list[Record] = []
    for label, d in enumerate(class_dirs):
        images = _images_in(d)
        if not images:
            raise BadInput(
                f"{d}: class folder holds no image ({'/'.join(IMAGE_SUFFIXES)}); add its images or remove it"
            )
        records += [
            Record(image_id=p.relative_to(root).as_posix(), path=p, label=label, boxes=NO_BOXES, is_train=True)
            for p in images
        ]

    val_images = [(p, None) for p in _images_in(val_dir)]
    for d in _subdirs(val_dir):  # "sorted val": the folder names the class
        val_images += [(p, d.name) for p in _images_in(d)]
    if not val_images:
        raise BadInput(f"{val_dir}: no images; expected val/*.JPEG or val/<wnid>/*.JPEG")

    held_out: list[Record] = []
    for image, folder_wnid in val_images:
        xml = _find_xml(boxes_dir, image, val_dir)
        wnid, boxes = parse_voc_xml(xml)
        if wnid not in label_of:
            raise BadInput(
                f"{xml}: class {wnid!r} is not among the {len(class_names)} train/ class folders; "
                f"add train/{wnid}/ or remove this val image"
            )
        if folder_wnid is not None and folder_wnid != wnid:
            raise BadInput(
                f"{xml}: class {wnid!r} disagrees with the folder of {image} ({folder_wnid!r}); move the image"
            )
        held_out.append(
            Record(image_id=image.relative_to(root).as_posix(), path=image, label=label_of[wnid], boxes=boxes,
                   is_train=False)
        )
    hold_out(held_out, val_fraction, seed)
    return WSOLSet(root=root, class_names=class_names, records=records + held_out)


# ---------------------------------------------------------------- wsolevaluation metadata


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
            _check_box(tuple(box), f"{loc_file}:{lineno}", sizes.get(path))
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
                       seed: int = 0) -> WSOLSet:
    """Parse wsolevaluation metadata (see the module docstring); images are ``root/<path>``.

    ``metadata_dir`` empty means ``ROOT/metadata``. Errors name file and line.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: data folder not found; pass --data ROOT (the folder the metadata paths start from)")
    meta = Path(metadata_dir) if str(metadata_dir) else root / "metadata"
    if not meta.is_dir():
        raise BadInput(f"{meta}: metadata folder not found; set data.metadata to wsolevaluation's metadata/<DATASET>")
    present = [s for s in SPLIT_DIRS if (meta / s).is_dir()]
    if not present:
        hint = ", ".join(d.name for d in _subdirs(meta) if any((d / s).is_dir() for s in SPLIT_DIRS))
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
    return WSOLSet(root=root, class_names=_class_names(n_classes, records), records=records)

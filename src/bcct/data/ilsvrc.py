"""Reader for the standard ImageNet (ILSVRC 2012 CLS-LOC) folder::

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
separate box-annotated set instead (ImageNetV2); :mod:`bcct.data.wsol_metadata` reads theirs.
``val`` records have ``is_train=True, is_val=True`` only because that is how
:class:`~bcct.data.records.Record` spells the split ``val``; no val image is trained on.

Boxes are xyxy floats in original pixels, as given (both ILSVRC formats use inclusive
integer pixel coordinates, which the evaluator's +1-pixel IoU expects). An image may have
several boxes; the evaluator counts it localised when any of them is matched.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from bcct.data.class_folders import class_names_of, folder_records
from bcct.data.images import images_in, subfolders
from bcct.data.records import Record, WSOLSet, check_box, hold_out
from bcct.errors import BadInput

# A Pascal-VOC file of an ImageNet image is a few kB; anything this large is not one.
MAX_XML_BYTES = 1 << 20


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
        check_box(box, f"{xml}: {what}", size)
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


def read_ilsvrc(root: str | Path, val_fraction: float = 0.1, seed: int = 0, classes: list[str] | None = None) -> WSOLSet:
    """Parse an ImageNet folder (see the module docstring); raise BadInput on any bad input.

    Train: every image of ``train/<wnid>/``, no boxes. The official val images (with XML
    boxes) are split per class into ``val`` (``val_fraction``) and ``test`` by ``seed``.
    ``classes``: the WordNet IDs of a model's classes, in its order (an ImageNet classifier's
    standard order): they name the labels, train/ is neither needed nor read, and val/ may
    hold any subset of them.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: data folder not found; pass --data ROOT (an ImageNet folder with train/ and val/)")
    train_dir, val_dir, boxes_dir = root / "train", root / "val", root / "val_boxes"
    needed = [(val_dir, "val/*.JPEG or val/<wnid>/*.JPEG"), (boxes_dir, "val_boxes/*.xml (ILSVRC2012_bbox_val)")]
    for d, what in ([] if classes is not None else [(train_dir, "train/<wnid>/*.JPEG")]) + needed:
        if not d.is_dir():
            raise BadInput(f"{d}: missing; an ILSVRC-layout ROOT needs {what}")

    if classes is not None:
        class_names, records = list(classes), []
    else:
        class_names = class_names_of(train_dir, "train/<wnid>/*.JPEG")
    label_of = {wnid: i for i, wnid in enumerate(class_names)}
    if classes is None:
        records = folder_records(root, train_dir, label_of, is_train=True, find=images_in)

    val_images = [(p, None) for p in images_in(val_dir)]
    for d in subfolders(val_dir):  # "sorted val": the folder names the class
        val_images += [(p, d.name) for p in images_in(d)]
    if not val_images:
        raise BadInput(f"{val_dir}: no images; expected val/*.JPEG or val/<wnid>/*.JPEG")

    held_out: list[Record] = []
    for image, folder_wnid in val_images:
        xml = _find_xml(boxes_dir, image, val_dir)
        wnid, boxes = parse_voc_xml(xml)
        if wnid not in label_of:
            raise BadInput(
                f"{xml}: class {wnid!r} is not among the {len(class_names)} train/ class folders; "
                f"add train/{wnid}/ or remove this val image" if classes is None else
                f"{xml}: class {wnid!r} is not one of the model's {len(class_names)} classes (ImageNet's WordNet "
                "IDs); remove this val image"
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



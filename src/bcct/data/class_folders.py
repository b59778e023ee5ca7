"""Reader for plain class folders, torchvision's ``ImageFolder`` convention, without boxes::

    ROOT/train/<class>/*.jpg        training images; the sorted folder names are the classes
    ROOT/val/<class>/*.jpg          optional: the held-out split (never trained on)
    ROOT/test/<class>/*.jpg         optional: the split the numbers are reported on

Images may sit in sub-folders of a class folder (found recursively, as ImageFolder does).
Weak supervision needs no boxes, so none are read: BC-CT trains on the labels and a
Background Image Set. Without ``val/``, a class-stratified ``val_fraction`` of train is
held out as val (as for CUB). Val and test without boxes give classification numbers;
the CAM threshold, which needs boxes to be chosen, is chosen against BC-CT's own masks, or
fixed for other methods (:data:`bcct.config.NO_BOX_THRESHOLD`; docs/bcct.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bcct.data.images import IMAGE_SUFFIXES, images_in, list_images, subfolders
from bcct.data.records import NO_BOXES, Record, WSOLSet, carve_val
from bcct.errors import BadInput

SPLIT_FOLDERS = {"train": (True, False), "val": (True, True), "test": (False, False)}  # name: (is_train, is_val)


def is_class_folders(root: Path) -> bool:
    """``ROOT/train`` holds at least one class folder."""
    train = root / "train"
    return train.is_dir() and bool(subfolders(train))


def class_names_of(train: Path, example: str = "train/<class>/*.jpg") -> list[str]:
    """The sorted class-folder names under ``train`` (the classes); one clear error if none."""
    names = [d.name for d in subfolders(train)]
    if not names:
        raise BadInput(f"{train}: no class folders; expected {example} (one folder per class)")
    return names


def folder_records(root: Path, split_dir: Path, label_of: dict[str, int], is_train: bool, is_val: bool = False,
                   find: Callable[[Path], list[Path]] = list_images) -> list[Record]:
    """One box-less record per image of every ``split_dir/<class>/`` (``find`` lists a class
    folder's images); an unknown class or an empty class folder is one clear error."""
    records: list[Record] = []
    for d in subfolders(split_dir):
        if d.name not in label_of:
            raise BadInput(f"{d}: class {d.name!r} has no train/{d.name}/ folder; add its training images "
                           "or remove this folder")
        images = find(d)
        if not images:
            raise BadInput(f"{d}: class folder holds no image ({'/'.join(IMAGE_SUFFIXES)}); add its images "
                           "or remove it")
        records += [Record(image_id=p.relative_to(root).as_posix(), path=p, label=label_of[d.name], boxes=NO_BOXES,
                           is_train=is_train, is_val=is_val) for p in images]
    return records


def read_class_folders(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> WSOLSet:
    """Parse ``ROOT/{train,val,test}/<class>/`` (see the module docstring); raise BadInput on
    a missing train folder, an empty class folder, a loose image or an unknown class."""
    root = Path(root)
    train = root / "train"
    if not train.is_dir():
        raise BadInput(f"{train}: missing; a class-folder ROOT needs train/<class>/*.jpg (one folder per class)")
    class_names = class_names_of(train)
    label_of = {name: i for i, name in enumerate(class_names)}

    records: list[Record] = []
    for split, (is_train, is_val) in SPLIT_FOLDERS.items():
        folder = root / split
        if not folder.is_dir():
            continue
        loose = images_in(folder)
        if loose:
            raise BadInput(f"{loose[0]}: an image directly in {split}/; move it into {split}/<class>/ "
                           "(the folder names the class)")
        records += folder_records(root, folder, label_of, is_train, is_val)
    wset = WSOLSet(root=root, class_names=class_names, records=records)
    if not (root / "val").is_dir():
        carve_val(wset, val_fraction, seed)
    return wset

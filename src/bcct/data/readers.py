"""Pick the reader for a data-set layout, or recognise the layout from the folder."""

from __future__ import annotations

from pathlib import Path

from bcct.config import DataConfig
from bcct.data.class_folders import is_class_folders, read_class_folders
from bcct.data.cub import read_cub
from bcct.data.ilsvrc import read_ilsvrc
from bcct.data.records import WSOLSet
from bcct.data.wsol_metadata import read_wsol_metadata
from bcct.errors import BadInput

# Every reader takes (root, val_fraction=, seed=); those in NEEDS_METADATA also metadata_dir=.
READERS = {"cub": read_cub, "ilsvrc": read_ilsvrc, "wsol": read_wsol_metadata, "folders": read_class_folders}
KNOWS_CLASSES = {"ilsvrc", "wsol"}  # readers that take classes= (a model's class list)
NEEDS_METADATA = {"wsol"}  # data.metadata: wsolevaluation's metadata/<DATASET>; empty: ROOT/metadata


def detect_layout(root: str | Path, metadata: str = "") -> str:
    """The layout of ``root`` from what it holds (``data.layout=auto``): CUB's images.txt,
    wsolevaluation's metadata, ImageNet's val_boxes, or class folders under train/."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: data folder not found; pass --data ROOT")
    if (root / "images.txt").is_file():
        return "cub"
    if metadata or (root / "metadata").is_dir():
        return "wsol"
    if (root / "val_boxes").is_dir() and ((root / "train").is_dir() or (root / "val").is_dir()):
        return "ilsvrc"
    if is_class_folders(root):
        return "folders"
    raise BadInput(f"{root}: no data layout bcct knows: expected images.txt (CUB-200-2011), train/<class>/*.jpg "
                   "(class folders), train/ + val/ + val_boxes/ (ILSVRC) or metadata/ (wsolevaluation); or set "
                   f"data.layout to one of {', '.join(sorted(READERS))}")


def read_dataset(cfg: DataConfig, seed: int = 0, classes: list[str] | None = None) -> WSOLSet:
    """The data set under ``cfg.root``. ``classes``: a model's own class list (ImageNet's
    WordNet IDs in the standard order, for ``--checkpoint imagenet``): labels follow it, so only
    the layouts that name ImageNet classes qualify (ILSVRC folders by WordNet ID, wsolevaluation
    metadata by standard index), and train/ is not needed."""
    layout = detect_layout(cfg.root, cfg.metadata) if cfg.layout == "auto" else cfg.layout
    if layout not in READERS:
        raise BadInput(f"data.layout={cfg.layout!r} unknown; choose auto or one of {', '.join(sorted(READERS))}")
    extra = {"metadata_dir": cfg.metadata} if layout in NEEDS_METADATA else {}
    if classes is not None:
        if layout not in KNOWS_CLASSES:
            raise BadInput(f"{cfg.root}: a {layout} layout has classes of its own; the ImageNet classifier is scored "
                           "on ImageNet images: an ILSVRC folder (val/ + val_boxes/) or wsolevaluation metadata")
        extra["classes"] = classes
    return READERS[layout](cfg.root, val_fraction=cfg.val_fraction, seed=seed, **extra)

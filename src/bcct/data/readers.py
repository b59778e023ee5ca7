"""Pick the reader for a data-set layout."""

from __future__ import annotations

from bcct.config import DataConfig
from bcct.data.cub import read_cub
from bcct.data.ilsvrc import read_ilsvrc
from bcct.data.wsol_metadata import read_wsol_metadata
from bcct.data.records import WSOLSet
from bcct.errors import BadInput

# Every reader takes (root, val_fraction=, seed=); those in NEEDS_METADATA also metadata_dir=.
READERS = {"cub": read_cub, "ilsvrc": read_ilsvrc, "wsol": read_wsol_metadata}
NEEDS_METADATA = {"wsol"}  # data.metadata: wsolevaluation's metadata/<DATASET>; empty: ROOT/metadata


def read_dataset(cfg: DataConfig, seed: int = 0) -> WSOLSet:
    if cfg.layout not in READERS:
        raise BadInput(f"data.layout={cfg.layout!r} unknown; choose one of {', '.join(sorted(READERS))}")
    extra = {"metadata_dir": cfg.metadata} if cfg.layout in NEEDS_METADATA else {}
    return READERS[cfg.layout](cfg.root, val_fraction=cfg.val_fraction, seed=seed, **extra)

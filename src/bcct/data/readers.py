"""Pick the reader for a data-set layout."""

from __future__ import annotations

from bcct.config import DataConfig
from bcct.data.cub import read_cub
from bcct.data.records import WSOLSet
from bcct.errors import BadInput

READERS = {"cub": read_cub}


def read_dataset(cfg: DataConfig, seed: int = 0) -> WSOLSet:
    if cfg.layout not in READERS:
        raise BadInput(f"data.layout={cfg.layout!r} unknown; choose one of {', '.join(sorted(READERS))}")
    return READERS[cfg.layout](cfg.root, val_fraction=cfg.val_fraction, seed=seed)

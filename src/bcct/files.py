"""Text files written atomically (numpy-free, torch-free: the ONNX inference path writes with it too)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)

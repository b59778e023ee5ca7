"""Load any image file as 8-bit RGB, or fail with one line that names the file.

CUB and ILSVRC hold a few grayscale and CMYK JPEGs; users bring RGBA and 16-bit PNGs.
Every one of them becomes RGB here so nothing downstream needs to care.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bcct.errors import BadInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Pillow's own default (~89 Mpx) turned from a warning into an error: an image this
# large is almost surely a decompression bomb, never a photo worth localising.
MAX_PIXELS = 89_478_485


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (mode I or I;16) PNGs: scale to 8 bit by the full 16-bit range."""
    arr = np.asarray(img, dtype=np.float64)
    arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on white (a transparent PNG is not black)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        return _sixteen_bit_to_rgb(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_rgb(path: str | Path, reduce_to: int | None = None) -> Image.Image:
    """Read ``path`` fully and return an RGB PIL image; raise :class:`BadInput` otherwise.
    ``reduce_to``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    far cheaper than decoding in full) as long as its shorter side stays >= ``reduce_to``.

    An image over :data:`MAX_PIXELS` is refused from its header, before any pixel is
    decoded (Pillow itself refuses at twice that size, inside ``Image.open``), so a small
    file that declares a huge size allocates nothing."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: image file not found; check the path or the data root")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: file is empty (0 bytes); re-copy or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadInput(
                        f"{path}: image is {img.width}x{img.height} pixels, over the "
                        f"{MAX_PIXELS} pixel guard (possible decompression bomb); downscale it"
                    )
                if reduce_to:
                    scale = max(1, min(img.size) // reduce_to)
                    img.draft(img.mode, (img.width // scale, img.height // scale))
                img.load()
                return to_rgb(img)
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses in Image.open, from the header alone: nothing was decoded.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"has {int(found.group(1))} pixels" if found else "is too large"
        raise BadInput(
            f"{path}: image {size}, over the {MAX_PIXELS} pixel guard (possible decompression bomb); downscale it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInput(
            f"{path}: cannot decode image ({type(exc).__name__}: {exc}); the file is corrupt "
            "or truncated, re-download or remove it"
        ) from None


def list_images(folder: str | Path) -> list[Path]:
    """All image files below ``folder`` (recursive), sorted for reproducibility."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (no recursion), sorted; hidden files skipped."""
    with os.scandir(folder) as it:
        return sorted(
            Path(e.path)
            for e in it
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
        )


def subfolders(folder: Path) -> list[Path]:
    """The folders directly inside ``folder``, sorted; hidden ones skipped."""
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))

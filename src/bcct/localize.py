"""``bcct localize``: boxes for image files and folders -> ``OUT/boxes.json`` and overlays.

A thin layer over :mod:`bcct.api` (or :mod:`bcct.deploy` for an ONNX file, without torch;
the CLI and the Python API share every step): it
expands folders, reads each file (an unreadable one is skipped with a warning, not fatal),
feeds the images to :meth:`bcct.api.Localizer.localize` in batches and writes the results.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bcct.files import write_text_atomic
from bcct.data.images import IMAGE_SUFFIXES, list_images, load_rgb
from bcct.errors import BadInput

OVERLAY_MAX_SIDE = 640  # overlays are for looking at: big photos are drawn downscaled


def collect_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given and the images below every folder (recursive, sorted), without repeats.
    A path that does not exist is :class:`BadInput`; so is finding no image at all."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(list_images(p))
        elif p.is_file():
            files.append(p)
        else:
            raise BadInput(f"{p}: no such file or folder; pass image files or folders of images")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if not unique:
        raise BadInput(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, paths))}")
    return unique


def load_localizer(checkpoint: str | os.PathLike, device: str = "auto"):
    """An ONNX file's localizer (:mod:`bcct.deploy`: torch is never imported) or a checkpoint's
    (:func:`bcct.api.load`)."""
    from bcct.deploy import is_onnx, load_onnx

    if is_onnx(checkpoint):
        return load_onnx(checkpoint, device=device)
    from bcct.api import load

    return load(checkpoint, device=device)


def localize_paths(checkpoint: str | os.PathLike, paths: list[str | os.PathLike], out: str | os.PathLike,
                   threshold: float | None = None, readout: str | None = None, batch_size: int = 32,
                   overlays: bool = True, device: str = "auto", progress: bool = True) -> dict:
    """Localise every image under ``paths``; write ``out/boxes.json`` (and ``out/overlays/``).

    Returns the boxes.json content. Unreadable files are listed under ``skipped`` with the
    reason (and one ``warning:`` line on stderr each); if none is readable, :class:`BadInput`.
    Nothing is written before the checkpoint has loaded and at least one image was read.
    """
    if int(batch_size) < 1:
        raise BadInput(f"--batch-size {batch_size}: must be at least 1")
    files = collect_images(paths)
    loc = load_localizer(checkpoint, device=device)
    given_readout = readout is not None
    readout, tau = loc.resolve(threshold, readout)  # a bad readout/threshold fails before any work
    out = Path(out)
    entries: list[dict] = []
    skipped: list[dict] = []
    names: set[str] = set()
    with tqdm(total=len(files), desc="localize", unit="img", disable=None if progress else True) as bar:
        for start in range(0, len(files), int(batch_size)):
            chunk, images = [], []
            for path in files[start : start + int(batch_size)]:
                try:
                    images.append(load_rgb(path))
                    chunk.append(path)
                except BadInput as exc:
                    skipped.append({"path": str(path), "reason": str(exc)})
                    tqdm.write(f"warning: skipped {exc}", file=sys.stderr)
            if images:
                preds = loc.localize(images, threshold=tau, readout=readout, batch_size=batch_size)
                readout = preds[0].readout
                for path, img, pred in zip(chunk, images, preds):
                    entry = {"path": str(path), **_entry(pred)}
                    if overlays:
                        name = _unique_name(path.stem, names)
                        draw_overlay(np.asarray(img), pred, out / "overlays" / f"{name}.png")
                        entry["overlay"] = f"overlays/{name}.png"
                    entries.append(entry)
            bar.update(len(files[start : start + int(batch_size)]))
    if not entries:
        raise BadInput(f"none of the {len(files)} image file(s) could be read (see the warnings above); "
                       "nothing written")
    chosen = "given" if given_readout else "val" if loc.default_readout and readout == loc.default_readout else "primary"
    result = {"checkpoint": str(checkpoint), "method": loc.method_name, "readout": readout, "readout_choice": chosen,
              "threshold": tau,
              "images": entries, "skipped": skipped}
    write_text_atomic(dumps(result), out / "boxes.json")
    return result


def dumps(result: dict) -> str:
    """Indented JSON with one line per image (and per skipped file): readable and greppable."""
    lines = ["{"]
    for key, value in result.items():
        if isinstance(value, list):
            rows = ",\n".join(f"    {json.dumps(v)}" for v in value)
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]," if value else f"  {json.dumps(key)}: [],")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


def _entry(pred) -> dict:
    d = pred.to_dict()
    return {k: d[k] for k in ("class_index", "class_name", "score", "top5", "boxes", "size")}


def _unique_name(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when two inputs share a file name."""
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def draw_overlay(image: np.ndarray, pred, path: str | Path) -> None:
    """The image, the score map as heat and the predicted box(es) in red, titled with the
    class and its probability; drawn in original pixel coordinates, written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, any backend
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    step = max(1, int(np.ceil(max(width, height) / OVERLAY_MAX_SIDE)))  # display only
    extent = (0, width, height, 0)
    fig = Figure(figsize=(4.0 * width / max(width, height) + 0.2, 4.0 * height / max(width, height) + 0.5))
    ax = fig.add_subplot()
    ax.imshow(image[::step, ::step], extent=extent, interpolation="bilinear")
    ax.imshow(pred.map[::step, ::step], cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent, interpolation="bilinear")
    for x0, y0, x1, y1 in pred.boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=2))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(f"{pred.class_name} ({pred.score:.0%})" if pred.class_name is not None else "object (no classifier)",
                 fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

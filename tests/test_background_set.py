"""The Background Image Set in memory (issue 17, defect 8): every file is decoded once, at
the side the train crops need, into one buffer shared with the loading workers; a draw
decodes nothing. Counted (decodes), never timed."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bcct.config import load_config
from bcct.data import background_set
from bcct.data.background_set import BackgroundSet, background_batches, crop_side
from bcct.data.images import load_rgb
from bcct.data.transforms import train_transform


def _photos(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"bg{i}.jpg", quality=90)
    return folder


def test_a_draw_decodes_nothing(tmp_path, monkeypatch):
    folder = _photos(tmp_path / "bg", [(120, 90), (90, 120), (100, 100)])
    decodes = []
    monkeypatch.setattr(background_set, "load_rgb", lambda p, **kw: decodes.append(p) or load_rgb(p, **kw))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **kw: opened.append(a[0]) or real_open(*a, **kw))
    cfg = load_config("synth", ["image_size=32", "data.workers=0"])
    stream = background_batches(cfg, str(folder), 4, key=(0,))
    built = (len(decodes), len(opened))
    batches = [next(stream) for _ in range(5)]  # 20 draws
    assert built == (3, 3)  # each file once, when the set is built
    assert (len(decodes), len(opened)) == built  # and never again
    assert all(b.shape == (4, 3, 32, 32) for b in batches)


def test_photos_are_reduced_to_the_side_the_crops_need(tmp_path):
    side = crop_side(64, (0.25, 1.0))
    assert side == 148  # 64 / sqrt(0.75 * 0.25): the smallest crop still holds 64 px a side
    folder = _photos(tmp_path / "bg", [(1200, 900), (100, 80)])
    bg = BackgroundSet(folder, train_transform(load_config("synth", ["image_size=64"]).data), side=side)
    assert [s[1:] for s in bg.spans] == [(side, round(1200 * side / 900)), (80, 100)]  # (H, W); small ones kept
    assert bg.pixels.is_shared() and bg.pixels.dtype == torch.uint8
    assert bg.pixels.numel() == 3 * (side * round(1200 * side / 900) + 80 * 100)
    assert bg[0].shape == (3, 64, 64)

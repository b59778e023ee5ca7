"""Tests for the procedural CUB-layout WSOL set and the pretraining stand-in task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcct.data import standin_task, synth, synth_render

N_CLASSES, N_IMAGES, N_BACKGROUNDS, SEED = 3, 24, 5, 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny generated set shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth") / "set"
    summary = synth.generate(out, n_classes=N_CLASSES, n_images=N_IMAGES, n_backgrounds=N_BACKGROUNDS, seed=SEED)
    assert summary["n_images"] == N_IMAGES and summary["n_train"] + summary["n_test"] == N_IMAGES
    return out


def _table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def _iou(a, b) -> float:
    """IoU of two CUB (x, y, w, h) boxes."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_layout_and_line_formats(tiny: Path):
    for name in ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "README.txt"):
        assert (tiny / name).is_file(), name
    assert not list(tiny.parent.glob("set.tmp-*")), "temporary build folder left behind"

    classes = _table(tiny / "classes.txt")
    assert classes == [[str(k + 1), f"{k + 1:03d}.Class_{k + 1:03d}"] for k in range(N_CLASSES)]
    images = _table(tiny / "images.txt")
    assert [int(r[0]) for r in images] == list(range(1, N_IMAGES + 1))
    labels = {int(i): int(c) for i, c in _table(tiny / "image_class_labels.txt")}
    for iid, rel in images:
        cls = labels[int(iid)]
        assert rel.startswith(f"{cls:03d}.Class_{cls:03d}/Class_{cls:03d}_") and rel.endswith(".jpg")
        img = Image.open(tiny / "images" / rel)
        assert img.format == "JPEG" and img.mode == "RGB"
        seg = Image.open(tiny / "segmentations" / Path(rel).with_suffix(".png"))
        assert seg.mode == "L" and seg.size == img.size
        assert set(np.unique(np.asarray(seg)).tolist()) == {0, 255}
    for row in _table(tiny / "bounding_boxes.txt"):
        assert len(row) == 5 and all("." in v for v in row[1:])
    assert sorted(p.name for p in (tiny / "backgrounds").iterdir()) == [f"bg_{i:04d}.jpg" for i in range(1, N_BACKGROUNDS + 1)]
    assert str(SEED) in (tiny / "README.txt").read_text(encoding="utf-8")


def test_sizes_vary_and_boxes_match_masks(tiny: Path):
    images = dict(_table(tiny / "images.txt"))
    sizes = set()
    for iid, *xywh in _table(tiny / "bounding_boxes.txt"):
        x, y, w, h = map(float, xywh)
        rel = images[iid]
        W, H = Image.open(tiny / "images" / rel).size
        sizes.add((W, H))
        assert 72 <= W <= 128 and 72 <= H <= 128
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= W and y + h <= H
        mask = np.asarray(Image.open(tiny / "segmentations" / Path(rel).with_suffix(".png")))
        assert np.allclose((x, y, w, h), synth_render.mask_box(mask), atol=1.0)
    assert len({w for w, _ in sizes}) > 3 and len({h for _, h in sizes}) > 3
    assert any(w != h for w, h in sizes)


def test_backgrounds_are_object_free_scenes(tiny: Path):
    sizes = set()
    for i in range(N_BACKGROUNDS):
        on_disk = np.asarray(Image.open(tiny / "backgrounds" / f"bg_{i + 1:04d}.jpg"), dtype=float)
        rendered = synth_render.render_background(SEED, i)  # render_scene only: no creature is ever drawn
        assert on_disk.shape == rendered.shape
        assert np.abs(on_disk - rendered).mean() < 6.0  # equal up to JPEG loss of the pixel noise
        sizes.add(rendered.shape[:2])
    assert len(sizes) > 1 and all(72 <= s <= 128 for hw in sizes for s in hw)


def test_split_is_stratified(tiny: Path):
    labels = {int(i): int(c) for i, c in _table(tiny / "image_class_labels.txt")}
    flags = {int(i): int(f) for i, f in _table(tiny / "train_test_split.txt")}
    assert set(flags.values()) == {0, 1}
    for cls in range(1, N_CLASSES + 1):
        members = [flags[i] for i, c in labels.items() if c == cls]
        assert len(members) == N_IMAGES // N_CLASSES
        assert sum(members) == len(members) // 2


def test_head_box_is_a_small_part_of_the_object(tiny: Path):
    boxes = {r[0]: tuple(map(float, r[1:])) for r in _table(tiny / "bounding_boxes.txt")}
    heads = {r[0]: tuple(map(float, r[1:])) for r in _table(tiny / "head_boxes.txt")}
    ious = [_iou(heads[i], boxes[i]) for i in boxes]
    assert np.mean(ious) < 0.3 and max(ious) < 0.5


def test_render_sample_mask_covers_body_and_head():
    s = synth_render.render_sample(SEED, 3, 2)
    hx, hy, hw, hh = map(int, s.head_box)
    assert s.mask[hy : hy + hh, hx : hx + hw].mean() > 0.5 * 255  # the head belongs to the object
    assert (s.mask > 0).sum() > 6 * hw * hh  # ...but the body is much larger


def test_classes_differ_only_in_head_colour():
    """Same seed and index with two classes: pixels away from the head are identical."""
    a, b = synth_render.render_sample(SEED, 0, 0), synth_render.render_sample(SEED, 0, 1)
    assert a.box == b.box and a.head_box == b.head_box
    diff = np.abs(a.image.astype(int) - b.image.astype(int)).sum(2) > 0
    hx, hy, hw, hh = map(int, a.head_box)
    m = 5  # the blur kernel (radius <= 4 px) spreads the head a little
    diff[max(0, hy - m) : hy + hh + m, max(0, hx - m) : hx + hw + m] = False
    assert not diff.any()


def test_determinism_byte_identical(tmp_path: Path, tiny: Path):
    again = tmp_path / "again"
    synth.generate(again, n_classes=N_CLASSES, n_images=N_IMAGES, n_backgrounds=N_BACKGROUNDS, seed=SEED, workers=2)
    rels = [r[1] for r in _table(tiny / "images.txt")]
    files = ["bounding_boxes.txt", "train_test_split.txt", "README.txt", "backgrounds/bg_0003.jpg"]
    files += [f"images/{rels[0]}", f"images/{rels[-1]}", f"segmentations/{Path(rels[5]).with_suffix('.png')}"]
    for name in files:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name


def test_other_seed_differs(tmp_path: Path, tiny: Path):
    other = tmp_path / "other"
    synth.generate(other, n_classes=N_CLASSES, n_images=N_IMAGES, n_backgrounds=1, seed=SEED + 1)
    assert (tiny / "bounding_boxes.txt").read_bytes() != (other / "bounding_boxes.txt").read_bytes()


def test_refuses_to_overwrite(tmp_path: Path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        synth.generate(out, n_classes=2, n_images=4, n_backgrounds=1)
    assert (out / "keep.txt").read_text() == "precious"
    synth.generate(out, n_classes=2, n_images=4, n_backgrounds=1, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "images.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no tmp / old folders left


def test_empty_existing_folder_is_fine(tmp_path: Path):
    out = tmp_path / "empty"
    out.mkdir()
    synth.generate(out, n_classes=2, n_images=4, n_backgrounds=0)
    assert (out / "images.txt").is_file()


@pytest.mark.parametrize("kwargs", [{"n_classes": 0}, {"n_images": 1}, {"size_range": (16, 20)}, {"train_fraction": 1.5}])
def test_bad_arguments_rejected(tmp_path: Path, kwargs):
    args = {"n_classes": 2, "n_images": 4, "n_backgrounds": 0} | kwargs
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_render_pretrain_batch():
    images, labels = standin_task.render_pretrain_batch(32, 64, np.random.default_rng(0))
    assert images.shape == (32, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (32,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < len(standin_task.PRETRAIN_CLASSES) == 8
    again, labels2 = standin_task.render_pretrain_batch(32, 64, np.random.default_rng(0))
    assert np.array_equal(images, again) and np.array_equal(labels, labels2)
    assert images.std() > 10  # not blank

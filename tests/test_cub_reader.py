"""The CUB-layout reader, the image loader and the box/size check, on good and bad input.

Every bad input must raise BadInput (one ``error:`` line in the CLI) naming the file and,
for a bad row, its line number.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcct.data.cub import REQUIRED, read_cub
from bcct.data.dataset import WSOLDataset
from bcct.data.images import load_rgb
from bcct.data.records import Record, image_size
from bcct.errors import BadInput


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- the good fixture


def test_split_counts_and_stratified_val(tiny_data):
    wset = read_cub(tiny_data, val_fraction=0.1, seed=0)
    assert wset.num_classes == 3 and len(wset.records) == 48
    # 16 images per class, 8 train / 8 test each; val = round(0.1 * 8) = 1 per class, carved from train.
    per = Counter((r.split, r.label) for r in wset.records)
    for k in range(3):
        assert (per[("train", k)], per[("val", k)], per[("test", k)]) == (7, 1, 8)
    assert [len(wset.split(s)) for s in ("train", "val", "test")] == [21, 3, 24]
    assert all(r.is_train for r in wset.split("val"))
    assert not any(r.is_val for r in wset.records if not r.is_train)
    assert wset.class_names == ["001.Class_001", "002.Class_002", "003.Class_003"]


def test_val_fraction_quarter_gives_two_per_class(tiny_data):
    wset = read_cub(tiny_data, val_fraction=0.25, seed=0)
    per = Counter((r.split, r.label) for r in wset.records)
    assert [per[("val", k)] for k in range(3)] == [2, 2, 2]  # round(0.25 * 8)
    assert [per[("train", k)] for k in range(3)] == [6, 6, 6]


def test_val_is_deterministic_by_seed(tiny_data):
    def val_ids(seed):
        return sorted(r.image_id for r in read_cub(tiny_data, seed=seed).split("val"))

    assert val_ids(0) == val_ids(0)
    # 8^3 = 512 possible val sets; seeds 0..3 cannot all pick the same one.
    assert len({tuple(val_ids(s)) for s in range(4)}) > 1


def test_labels_are_zero_based(tiny_data):
    wset = read_cub(tiny_data)
    file_labels = {int(i): int(c) for i, c in _rows(tiny_data / "image_class_labels.txt")}
    assert {r.label for r in wset.records} == {0, 1, 2}
    for r in wset.records:
        assert r.label == file_labels[int(r.image_id)] - 1
    # Ids 1..16 are class 1 (label 0), 17..32 class 2, 33..48 class 3 (generator groups by class).
    by_id = {int(r.image_id): r.label for r in wset.records}
    assert (by_id[1], by_id[16], by_id[17], by_id[33], by_id[48]) == (0, 0, 1, 2, 2)


def test_boxes_are_xyxy_from_xywh(tiny_data):
    wset = read_cub(tiny_data)
    rows = {int(r[0]): [float(v) for v in r[1:]] for r in _rows(tiny_data / "bounding_boxes.txt")}
    for rec in wset.records:
        x, y, w, h = rows[int(rec.image_id)]
        assert rec.boxes.shape == (1, 4)
        np.testing.assert_allclose(rec.boxes[0], [x, y, x + w, y + h])


def test_box_hand_checked_and_multiple_boxes(tiny_data, tmp_path):
    root = _copy_tables(tiny_data, tmp_path)
    lines = (root / "bounding_boxes.txt").read_text().splitlines()
    lines[0] = "1 10.0 20.0 30.0 40.0"
    lines.append("1 2.5 3.5 4.0 5.0")  # a repeated id adds a second box (ILSVRC style)
    (root / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    rec = {r.image_id: r for r in read_cub(root).records}["1"]
    np.testing.assert_array_equal(rec.boxes, [[10, 20, 40, 60], [2.5, 3.5, 6.5, 8.5]])


def test_paths_and_masks_found(tiny_data):
    wset = read_cub(tiny_data)
    rels = dict(_rows(tiny_data / "images.txt"))
    for rec in wset.records:
        rel = rels[rec.image_id]
        assert rec.path == tiny_data / "images" / rel and rec.path.is_file()
        assert rec.mask_path == tiny_data / "segmentations" / Path(rel).with_suffix(".png")
        assert rec.mask_path.is_file()


def test_missing_mask_gives_none(tiny_data, tmp_path):
    root = _copy_tables(tiny_data, tmp_path)  # tables only: no segmentations folder
    assert all(r.mask_path is None for r in read_cub(root).records)


# ---------------------------------------------------------------- bad annotation files


def _copy_tables(src: Path, tmp_path: Path) -> Path:
    """The five annotation tables (all read_cub opens) copied to a fresh folder."""
    root = tmp_path / "cub"
    root.mkdir()
    for name in REQUIRED:
        shutil.copy(src / name, root / name)
    return root


def _edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "name, lineno, text, words",
    [
        ("images.txt", 3, "3 a.jpg extra", "expected 2 fields"),  # wrong field count
        ("bounding_boxes.txt", 5, "5 1.0 2.0 3.0", "expected 5 fields"),  # wrong field count
        ("images.txt", 4, "four 001.Class_001/x.jpg", "not a number"),  # non-numeric id
        ("bounding_boxes.txt", 7, "7 1.0 abc 3.0 4.0", "not a number"),  # non-numeric coordinate
        ("image_class_labels.txt", 9, "9 4", "class id 4"),  # class id out of range (3 classes)
        ("image_class_labels.txt", 10, "10 0", "class id 0"),  # CUB class ids are 1-based
        ("bounding_boxes.txt", 11, "11 5.0 5.0 0.0 10.0", "zero or negative size"),  # zero width
        ("bounding_boxes.txt", 12, "12 5.0 5.0 10.0 -2.0", "zero or negative size"),  # negative height
        ("bounding_boxes.txt", 13, "13 -1.0 5.0 10.0 10.0", "outside the image"),  # negative x
        ("train_test_split.txt", 6, "6 2", "split flag must be 0 or 1"),
        ("train_test_split.txt", 8, "8 yes", "split flag must be 0 or 1"),
    ],
)
def test_bad_row_names_file_and_line(tiny_data, tmp_path, name, lineno, text, words):
    root = _copy_tables(tiny_data, tmp_path)
    _edit_line(root / name, lineno, text)
    with pytest.raises(BadInput) as err:
        read_cub(root)
    msg = str(err.value)
    assert f"{root / name}:{lineno}:" in msg
    assert words in msg


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_annotation_file(tiny_data, tmp_path, name):
    root = _copy_tables(tiny_data, tmp_path)
    (root / name).unlink()
    with pytest.raises(BadInput, match="missing") as err:
        read_cub(root)
    assert str(root / name) in str(err.value)


@pytest.mark.parametrize("name", ["image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"])
def test_missing_image_id_in_a_table(tiny_data, tmp_path, name):
    root = _copy_tables(tiny_data, tmp_path)
    lines = (root / name).read_text().splitlines()
    (root / name).write_text("\n".join(line for line in lines if line.split()[0] != "20") + "\n")
    with pytest.raises(BadInput) as err:
        read_cub(root)
    msg = str(err.value)
    assert str(root / name) in msg and "image id 20" in msg
    assert "Class_002_0004.jpg" in msg  # id 20 = 4th image of class 2


def test_missing_data_root(tmp_path):
    with pytest.raises(BadInput, match="data folder not found") as err:
        read_cub(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_blank_lines_are_skipped(tiny_data, tmp_path):
    root = _copy_tables(tiny_data, tmp_path)
    text = (root / "images.txt").read_text()
    (root / "images.txt").write_text("\n" + text.replace("\n", "\n\n"))
    assert len(read_cub(root).records) == 48


def test_nan_box_is_refused(tiny_data, tmp_path):
    root = _copy_tables(tiny_data, tmp_path)
    _edit_line(root / "bounding_boxes.txt", 2, "2 nan 3.0 10.0 10.0")
    with pytest.raises(BadInput, match=r"bounding_boxes.txt:2:"):
        read_cub(root)


def test_non_utf8_table_is_bad_input(tiny_data, tmp_path):
    root = _copy_tables(tiny_data, tmp_path)
    raw = (root / "images.txt").read_bytes()
    (root / "images.txt").write_bytes(raw.replace(b"Class_001_0002", b"Class_001_\xe90002", 1))  # Latin-1 e-acute
    with pytest.raises(BadInput, match=r"images.txt:2"):
        read_cub(root)


# ---------------------------------------------------------------- image loading


def test_grayscale_to_rgb(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 77], [200, 255]], dtype=np.uint8), mode="L").save(p)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (2, 2)
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., 0], [[0, 77], [200, 255]])
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_cmyk_jpeg_to_rgb(tmp_path):
    cyan, grey = tmp_path / "cyan.jpg", tmp_path / "grey.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(cyan, quality=100)
    Image.new("CMYK", (16, 16), (0, 0, 0, 128)).save(grey, quality=100)
    assert Image.open(cyan).mode == "CMYK"
    a = np.asarray(load_rgb(cyan)).astype(int)
    assert load_rgb(cyan).mode == "RGB"
    # R = (255 - C)(255 - K)/255: full cyan, no black -> (0, 255, 255).
    np.testing.assert_allclose(a[8, 8], [0, 255, 255], atol=3)
    # K = 128 -> 255 - 128 = 127 in every channel.
    np.testing.assert_allclose(np.asarray(load_rgb(grey)).astype(int)[8, 8], [127, 127, 127], atol=3)


def test_rgba_png_composited_on_white(tmp_path):
    p = tmp_path / "a.png"
    rgba = np.array(
        [[[255, 0, 0, 255], [0, 0, 0, 0]],  # opaque red, fully transparent black
         [[0, 0, 255, 255], [0, 0, 0, 128]]],  # opaque blue, half-transparent black
        dtype=np.uint8,
    )
    Image.fromarray(rgba, mode="RGBA").save(p)
    img = load_rgb(p)
    assert img.mode == "RGB"
    arr = np.asarray(img).astype(int)
    np.testing.assert_array_equal(arr[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(arr[0, 1], [255, 255, 255])  # transparent -> white, not black
    np.testing.assert_array_equal(arr[1, 0], [0, 0, 255])
    np.testing.assert_allclose(arr[1, 1], [127, 127, 127], atol=1)  # 255 * (1 - 128/255)


def test_sixteen_bit_png_to_rgb(tmp_path):
    p = tmp_path / "d.png"
    Image.fromarray(np.array([[0, 2570], [51400, 65535]], dtype=np.uint16)).save(p)
    assert Image.open(p).mode == "I;16"
    img = load_rgb(p)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., 0], [[0, 10], [200, 255]])  # value / 257
    assert (arr[..., 0] == arr[..., 2]).all()


def test_rgb_jpeg_passes_through(tiny_data):
    path = next((tiny_data / "images").rglob("*.jpg"))
    img = load_rgb(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(path).convert("RGB")))


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, content, words",
    [
        ("empty", b"", "empty"),
        ("truncated", None, "truncated"),
        ("not_image", b"images.txt is not a picture\n" * 20, "cannot decode"),
    ],
)
def test_bad_image_files(tmp_path, kind, content, words):
    p = tmp_path / f"{kind}.jpg"
    if content is None:
        full = _jpeg_bytes()
        content = full[: len(full) // 2]
    p.write_bytes(content)
    with pytest.raises(BadInput) as err:
        load_rgb(p)
    assert str(p) in str(err.value) and words in str(err.value)


def test_missing_image_file(tmp_path):
    with pytest.raises(BadInput, match="not found") as err:
        load_rgb(tmp_path / "gone.jpg")
    assert str(tmp_path / "gone.jpg") in str(err.value)


# ---------------------------------------------------------------- image_size / box check


def _record(path: Path, box) -> Record:
    return Record(image_id="1", path=path, label=0, boxes=np.asarray([box], dtype=np.float64))


def test_image_size_and_box_inside(tmp_path):
    p = tmp_path / "i.png"
    Image.new("RGB", (40, 30)).save(p)
    assert image_size(_record(p, [0, 0, 40, 30])) == (40, 30)  # (W, H)
    rec = _record(p, [5, 5, 39, 29])
    assert image_size(rec) == (40, 30)
    assert rec.boxes.tolist() == [[5, 5, 39, 29]]  # inside: untouched


@pytest.mark.parametrize("box, clipped", [
    ([5, 5, 41, 31], [5, 5, 40, 30]),        # CUB rounding
    ([2, 24, 38, 35], [2, 24, 38, 30]),      # as Gray_Catbird_0032: y + h = 380 on a 375-px image
    ([0, 0, 50, 20], [0, 0, 40, 20]),        # 80% of its area inside
])
def test_image_size_clips_box_a_little_outside(tmp_path, box, clipped):
    p = tmp_path / "i.png"
    Image.new("RGB", (40, 30)).save(p)
    rec = _record(p, box)
    assert image_size(rec) == (40, 30)
    assert rec.boxes.tolist() == [clipped]


@pytest.mark.parametrize("box", [[30, 0, 100, 10], [0, 20, 10, 60], [45, 35, 60, 50]])
def test_image_size_refuses_box_mostly_outside(tmp_path, box):
    p = tmp_path / "i.png"
    Image.new("RGB", (40, 30)).save(p)
    with pytest.raises(BadInput, match="mostly outside the 40x30 image") as err:
        image_size(_record(p, box))
    assert str(p) in str(err.value)


def test_dataset_says_once_how_many_boxes_were_clipped(tmp_path, capsys):
    p = tmp_path / "i.png"
    Image.new("RGB", (40, 30)).save(p)
    recs = [_record(p, [0, 0, 42, 30]), _record(p, [0, 0, 10, 10]), _record(p, [3, 3, 40, 33])]
    ds = WSOLDataset(recs, lambda item: item)
    assert ds.image_sizes() == [(40, 30)] * 3
    ds.image_sizes()  # cached: no second note
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: 2 of 3 GT boxes ran past the image edge (by up to 3 px) and were clipped to it, "
                   "as wsolevaluation's metadata does (i, i)"]


def test_image_size_missing_and_corrupt(tmp_path):
    with pytest.raises(BadInput, match="missing"):
        image_size(_record(tmp_path / "gone.jpg", [0, 0, 1, 1]))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadInput, match="corrupt") as err:
        image_size(_record(bad, [0, 0, 1, 1]))
    assert str(bad) in str(err.value)

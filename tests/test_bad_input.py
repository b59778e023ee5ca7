"""Bad input that had no test yet: decompression bombs, 16-bit colour PNGs, unusable
Background Image Sets, checkpoints of another method.

Already covered elsewhere (not repeated here): 16-bit grayscale PNG, empty / truncated /
non-image files and missing images (test_cub_reader.py); class ids out of range in
image_class_labels.txt (test_cub_reader.py::test_bad_row_names_file_and_line); eval on a
data root with another class count (test_cli.py::test_error_eval_on_data_with_other_classes);
a checkpoint whose head has another class count (test_train_eval.py).

Every CLI-level test checks the contract: exit status 2, exactly one ``error:`` line on
stderr naming the file, no traceback.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from bcct import checkpoint
from bcct.cli import main
from bcct.data import background_set
from bcct.data.background_set import BackgroundSet, make_background_set
from bcct.data.images import MAX_PIXELS, load_rgb
from bcct.errors import BadInput
from bcct.run import load_method
from bcct.train import train

TINY = ["epochs=1", "image_size=32", "model.head_width=16", "data.workers=0", "optim.batch_size=8",
        "eval.batch_size=16", "bcct.warmup_epochs=0", "bcct.bc_epochs=1"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A real, tiny PNG (valid chunks and CRCs) whose IHDR declares ``width`` x ``height``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decoding fails the test: a guard must refuse from the header alone."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---------------------------------------------------------------- decompression bombs


@pytest.mark.parametrize("side", [20000, 10000])  # over Pillow's own error limit; between 1x and 2x the guard
def test_huge_declared_image_is_refused_before_decoding(tmp_path, no_decoding, side):
    bomb = _png_header_only(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 200 and side * side > MAX_PIXELS
    with pytest.raises(BadInput) as err:
        load_rgb(bomb)
    msg = str(err.value)
    assert msg == (f"{bomb}: image has {side * side} pixels, over the {MAX_PIXELS} pixel guard "
                   "(possible decompression bomb); downscale it")


def test_small_header_only_png_still_loads(tmp_path):
    """The helper makes real PNGs: at a sane size the same bytes decode."""
    assert load_rgb(_png_header_only(tmp_path / "ok.png", 4, 4)).size == (4, 4)


def test_eval_with_a_bomb_in_the_test_split(tiny_data, tmp_path, capsys, make_tiny_cfg):
    run = tmp_path / "run"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    test_ids = [line.split()[0] for line in (data / "train_test_split.txt").read_text().splitlines()
                if line.split()[1] == "0"]
    rows = (data / "images.txt").read_text().splitlines()
    i = next(n for n, row in enumerate(rows) if row.split()[0] == test_ids[0])
    rows[i] = f"{test_ids[0]} bomb.png"
    (data / "images.txt").write_text("\n".join(rows) + "\n")
    bomb = _png_header_only(data / "images" / "bomb.png", 20000, 20000)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(data)]) == 2
    line = _error_line(capsys)
    assert str(bomb) in line and "decompression bomb" in line


# ---------------------------------------------------------------- 16-bit colour PNGs


def test_sixteen_bit_rgb_png_to_rgb(tmp_path):
    """48-bit RGB (the 16-bit grayscale case is in test_cub_reader.py)."""
    p = tmp_path / "rgb16.png"
    bgr = np.zeros((2, 3, 3), np.uint16)
    bgr[0, 0] = (65535, 0, 0)  # OpenCV writes BGR: pure blue
    bgr[1, 2] = (257 * 30, 257 * 20, 257 * 10)
    assert cv2.imwrite(str(p), bgr)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (3, 2)
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(arr[1, 2], [10, 20, 30])


def test_sixteen_bit_rgba_png_composited_on_white(tmp_path):
    p = tmp_path / "rgba16.png"
    bgra = np.zeros((1, 2, 4), np.uint16)
    bgra[0, 0] = (0, 0, 65535, 65535)  # opaque red
    bgra[0, 1] = (0, 0, 0, 0)  # transparent
    assert cv2.imwrite(str(p), bgra)
    arr = np.asarray(load_rgb(p))
    np.testing.assert_array_equal(arr[0], [[255, 0, 0], [255, 255, 255]])


# ---------------------------------------------------------------- Background Image Set


def _identity(x):
    return x


def _jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


@pytest.mark.parametrize("content", ["empty", "text_only"])
def test_background_folder_without_images(tmp_path, content):
    folder = tmp_path / "bg"
    folder.mkdir()
    if content == "text_only":
        (folder / "notes.txt").write_text("no pictures here\n")
        (folder / "list.txt").write_text("bg1.jpg\n")
    for build in (lambda: BackgroundSet(folder, _identity), lambda: make_background_set(str(folder), [], _identity)):
        with pytest.raises(BadInput) as err:
            build()
        msg = str(err.value)
        assert msg.startswith(f"{folder}: Background Image Set holds no image (.jpg/.jpeg/.png/.webp/.bmp; ")
        assert ("the folder is empty" if content == "empty" else "only 2 other file(s), e.g. list.txt") in msg


@pytest.mark.parametrize("corruption", ["not_an_image", "truncated"])
def test_corrupt_background_among_good_ones_is_named_when_the_set_is_built(tmp_path, corruption):
    folder = tmp_path / "bg"
    folder.mkdir()
    for i in range(3):
        _jpeg(folder / f"good{i}.jpg", i)
    bad = folder / "bad.jpg"
    if corruption == "not_an_image":
        bad.write_text("this is not a JPEG\n" * 10)
    else:
        full = _jpeg(tmp_path / "full.jpg").read_bytes()
        bad.write_bytes(full[: len(full) // 2])
    with pytest.raises(BadInput) as err:
        BackgroundSet(folder, _identity)
    assert str(err.value).startswith(f"{bad}: cannot decode image")


def test_background_broken_during_the_run_is_not_read_again(tmp_path):
    """The set is decoded once when built (issue 17): a file broken on disk afterwards is
    not read again, the set keeps its decoded copy."""
    folder = tmp_path / "bg"
    folder.mkdir()
    paths = [_jpeg(folder / f"b{i}.jpg", i) for i in range(2)]
    bg = BackgroundSet(folder, _identity)
    want = bg[1]
    assert tuple(want.shape) == (3, 24, 24)
    paths[1].write_bytes(b"")  # replaced on disk after the set was built
    assert torch.equal(bg[1], want)


def test_backgrounds_are_read_once_per_file_version(tmp_path, monkeypatch):
    folder = tmp_path / "bg"
    folder.mkdir()
    for i in range(3):
        _jpeg(folder / f"b{i}.jpg", i)
    calls = []
    monkeypatch.setattr(background_set, "load_rgb", lambda p, **kw: calls.append(p) or load_rgb(p, **kw))
    BackgroundSet(folder, _identity)
    BackgroundSet(folder, _identity)  # every epoch builds the set again
    assert len(calls) == 3


@pytest.mark.parametrize("mode", ["end2end", "two_stage"])
@pytest.mark.parametrize("content", ["empty", "text_only", "corrupt"])
def test_train_bcct_with_unusable_backgrounds_writes_nothing(tiny_data, tmp_path, capsys, mode, content):
    folder = tmp_path / "bg"
    folder.mkdir()
    named = folder
    if content == "text_only":
        (folder / "readme.txt").write_text("backgrounds go here\n")
    elif content == "corrupt":
        shutil.copy(next((tiny_data / "backgrounds").iterdir()), folder / "good.jpg")
        named = folder / "zz_broken.jpg"
        named.write_bytes(b"\xff\xd8\xff garbage")
    run = tmp_path / "run"
    code = main(["train", "--method", "bcct", "--data", str(tiny_data), "--backgrounds", str(folder),
                 "--out", str(run), "--quiet", *TINY, f"bcct.mode={mode}"])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {named}: ")
    assert not run.exists() or not any(run.iterdir()), sorted(p.name for p in run.iterdir())


# ---------------------------------------------------------------- checkpoint of another method


@pytest.fixture(scope="module")
def cam_ckpt(make_tiny_cfg, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bad_input_runs") / "cam"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    return run / "best.pt"


def test_eval_cam_checkpoint_as_bcct(cam_ckpt, capsys):
    assert main(["eval", "--checkpoint", str(cam_ckpt), "method=bcct"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {cam_ckpt}: weights do not fit a bcct model with 3 classes (")
    assert "tensors missing, e.g. " in line
    assert line.endswith("it holds a cam model: evaluate it as cam (drop the method=bcct override)")


def test_cam_weights_in_a_bcct_checkpoint(cam_ckpt, tmp_path, capsys):
    ckpt = checkpoint.load(cam_ckpt)
    ckpt["config"]["method"] = "bcct"  # e.g. a hand-edited or mixed-up file
    bad = tmp_path / "mixed.pt"
    checkpoint.save_atomic(ckpt, bad)
    with pytest.raises(BadInput, match=f"^{bad}: weights do not fit a bcct model with 3 classes .*"
                                       "it holds a cam model"):
        load_method(str(bad), device="cpu")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert str(bad) in _error_line(capsys)


def test_override_that_changes_the_model(cam_ckpt, capsys):
    assert main(["eval", "--checkpoint", str(cam_ckpt), "model.head_width=32"]) == 2
    line = _error_line(capsys)
    assert str(cam_ckpt) in line and "of another shape" in line and "check the overrides" in line


def test_corrupt_training_image_read_by_a_worker_is_one_line(tiny_data, tmp_path, capsys):
    """A BadInput raised inside a DataLoader worker reaches the user as its own one line."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    rel = next(line.split()[1] for line, flag in zip((data / "images.txt").read_text().splitlines(),
                                                        (data / "train_test_split.txt").read_text().splitlines())
               if flag.split()[1] == "1")
    broken = data / "images" / rel
    broken.write_bytes(b"\xff\xd8\xff truncated")
    code = main(["train", "--method", "cam", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet",
                 *[o for o in TINY if not o.startswith("data.workers")], "data.workers=1"])
    assert code == 2
    assert _error_line(capsys).startswith(f"error: {broken}: cannot decode image")

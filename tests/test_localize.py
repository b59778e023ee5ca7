"""The Python API (``bcct.load(...).localize(...)``) and ``bcct localize``: any image in, boxes
in its own pixels out, the same boxes the evaluator scores; unreadable files skipped."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bcct
from bcct import checkpoint
from bcct.boxes import RESIZE, box_at_threshold, prepare_scoremap
from bcct.cli import main
from bcct.data.cub import read_cub
from bcct.data.dataset import WSOLDataset
from bcct.data.transforms import test_transform as make_test_transform
from bcct.errors import BadInput
from bcct.evaluate import predict
from bcct.run import load_method


@pytest.fixture(scope="module")
def ckpt(tiny_cam_checkpoint):
    return tiny_cam_checkpoint


@pytest.fixture(scope="module")
def loc(ckpt):
    return bcct.load(ckpt, device="cpu")


@pytest.fixture(scope="module")
def sample_paths(tiny_data):
    return [r.path for r in read_cub(tiny_data).split("test")]


def _scaled(box224, size):
    """Inclusive pixel edges: pixels x0..x1 of the 224 frame are [x0, x1 + 1) of it."""
    w, h = size
    s = np.array([w / RESIZE, h / RESIZE, w / RESIZE, h / RESIZE])
    out = (box224.astype(np.float64) + [0, 0, 1, 1]) * s - [0, 0, 1, 1]
    return np.where((box224 == 0).all(axis=1, keepdims=True), 0.0, out)


def test_a_full_frame_box_reaches_the_image_edge(loc, monkeypatch):
    """A map above the threshold everywhere gives the box [0, 0, 223, 223] in the 224 frame:
    in the image it must end at the last pixel (W - 1, H - 1), not 223 * W / 224."""
    import bcct.prediction

    monkeypatch.setattr(bcct.prediction, "box_at_threshold", lambda m, tau, multi_contour=False: np.array([[0, 0, 223, 223]]))
    pred = loc.localize(np.zeros((300, 448, 3), np.uint8))[0]
    np.testing.assert_allclose(pred.box, [0, 0, 447, 299])
    monkeypatch.setattr(bcct.prediction, "box_at_threshold", lambda m, tau, multi_contour=False: np.array([[112, 56, 167, 111]]))
    np.testing.assert_allclose(loc.localize(np.zeros((300, 448, 3), np.uint8))[0].box,  # pixels 224..335 x 75..149
                               [224, 75, 335, 149], rtol=0, atol=1e-9)


def _check(pred, loc, size):
    w, h = size
    assert pred.size == (w, h)
    assert pred.class_name == loc.class_names[pred.class_index]
    assert pred.readout == "cam" and pred.threshold == pytest.approx(loc.thresholds["cam"])
    assert 0.0 <= pred.score <= 1.0
    assert [t[0] for t in pred.top5][:1] == [pred.class_index] and len(pred.top5) == 3  # 3 classes
    assert [t[1] for t in pred.top5] == [loc.class_names[i] for i, _, _ in pred.top5]
    assert sum(p for _, _, p in pred.top5) == pytest.approx(1.0, abs=1e-5)
    assert pred.boxes.shape == (1, 4) and pred.boxes.dtype == np.float64
    x0, y0, x1, y1 = pred.box
    assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
    assert pred.map.shape == (h, w) and pred.map.dtype == np.float32
    assert 0.0 <= pred.map.min() and pred.map.max() <= 1.0


def test_load_reads_the_checkpoint(loc, ckpt):
    saved = checkpoint.load(ckpt)
    assert loc.class_names == ["001.Class_001", "002.Class_002", "003.Class_003"]
    assert loc.thresholds == saved["thresholds"] and loc.method_name == "cam"
    assert bcct.load is bcct.api.load


def test_every_input_kind(loc, sample_paths):
    path = sample_paths[0]
    pil = Image.open(path).convert("RGB")
    w, h = pil.size
    assert w != h  # the synthetic images are not square: the x and y scales differ
    arr = np.asarray(pil)
    gray = np.asarray(pil.convert("L"))
    t8 = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    inputs = [pil, arr, gray, t8, t8.float() / 255, str(path), path, pil.convert("RGBA")]
    preds = loc.localize(inputs)
    assert len(preds) == len(inputs)
    for pred in preds:
        _check(pred, loc, (w, h))
    # The same uint8 pixels give the same answer whatever the container.
    same = [preds[i] for i in (0, 1, 3, 5, 6, 7)]
    for p in same[1:]:
        assert p.class_index == same[0].class_index and p.score == pytest.approx(same[0].score)
        np.testing.assert_array_equal(p.boxes, same[0].boxes)
    # One image (not a list) still gives a list; a 4-D tensor is a batch.
    assert len(loc.localize(pil)) == 1
    assert len(loc.localize(torch.stack([t8, t8]))) == 2


def test_boxes_are_the_evaluators(loc, ckpt, sample_paths):
    """Recompute by hand: test transform, predicted-class map, prepare at 224, box, scale."""
    method, cfg, saved = load_method(str(ckpt), device="cpu")
    tau = saved["thresholds"]["cam"]
    tf = make_test_transform(cfg.data)
    images = [Image.open(p).convert("RGB") for p in sample_paths[:6]]
    with torch.no_grad():
        batch = torch.stack([tf(torch.from_numpy(np.array(im)).permute(2, 0, 1)) for im in images])
        out = method(batch)
        cls = out["logits"].argmax(1)
        maps = method.score_maps(out, cls)["cam"].float().numpy()
    preds = loc.localize(images, batch_size=4)  # two batches
    for im, m, c, pred in zip(images, maps, cls.tolist(), preds):
        assert pred.class_index == c
        map224 = prepare_scoremap(m)
        np.testing.assert_allclose(pred.boxes, _scaled(box_at_threshold(map224, tau), im.size))
        multi = loc.localize(im, multi_box=True)[0]
        np.testing.assert_allclose(multi.boxes, _scaled(box_at_threshold(map224, tau, multi_contour=True), im.size))
        for explicit in (0.1, 0.8):
            np.testing.assert_allclose(loc.localize(im, threshold=explicit)[0].boxes,
                                       _scaled(box_at_threshold(map224, explicit), im.size))


def test_boxes_match_evaluate_predict(loc, ckpt, tiny_data):
    """Where the predicted class is the label, the box equals the one from the evaluator's own maps."""
    method, cfg, saved = load_method(str(ckpt), device="cpu")
    ds = WSOLDataset(read_cub(tiny_data).split("test"), make_test_transform(cfg.data))
    pred = predict(method, ds, cfg, torch.device("cpu"))
    tau = saved["thresholds"]["cam"]
    ours = loc.localize([r.path for r in ds.records])
    checked = 0
    for i, (rec, size, p) in enumerate(zip(ds.records, ds.image_sizes(), ours)):
        if p.class_index == rec.label:
            want = _scaled(box_at_threshold(prepare_scoremap(pred["maps"]["cam"][i]), tau), size)
            np.testing.assert_allclose(p.boxes, want)
            checked += 1
    assert checked > 0


def test_explicit_threshold_and_bad_arguments(loc, sample_paths):
    pil = Image.open(sample_paths[1]).convert("RGB")
    for tau in (0.0, 0.3, 0.9):
        pred = loc.localize(pil, threshold=tau)[0]
        assert pred.threshold == tau
        assert pred.boxes.shape == (1, 4)
    with pytest.raises(BadInput, match="readout 'nosuch' unknown.*cam"):
        loc.localize(pil, readout="nosuch")
    with pytest.raises(BadInput, match="must be in \\[0, 1\\]"):
        loc.localize(pil, threshold=1.5)
    with pytest.raises(BadInput, match="expected \\[0, 1\\]"):
        loc.localize(torch.full((3, 8, 8), 200.0))
    with pytest.raises(BadInput, match="permute"):
        loc.localize(torch.zeros((8, 8, 3), dtype=torch.uint8))
    with pytest.raises(TypeError, match="cannot localise a dict"):
        loc.localize({"not": "an image"})


def test_import_bcct_stays_light():
    code = "import sys, bcct; assert 'torch' not in sys.modules; assert callable(bcct.load); print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ---------------------------------------------------------------- bcct localize


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_cli_writes_boxes_and_overlays(ckpt, sample_paths, tmp_path, capsys):
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    for p in sample_paths[:3]:
        shutil.copy(p, folder / p.name)
    (tmp_path / "in" / "notes.txt").write_text("not an image suffix: ignored")
    single = sample_paths[3]
    out = tmp_path / "out"
    assert main(["localize", "--checkpoint", str(ckpt), str(tmp_path / "in"), str(single), "--out", str(out),
                 "--batch-size", "2"]) == 0
    assert "localized 4 images (0 skipped)" in capsys.readouterr().out
    result = json.loads((out / "boxes.json").read_text())
    saved = checkpoint.load(ckpt)
    assert result["method"] == "cam" and result["readout"] == "cam" and result["checkpoint"] == str(ckpt)
    assert result["threshold"] == pytest.approx(saved["thresholds"]["cam"])
    assert len(result["images"]) == 4 and result["skipped"] == []
    assert result["images"][-1]["path"] == str(single)
    for entry in result["images"]:
        assert {"path", "class_index", "class_name", "score", "top5", "boxes", "size"} <= set(entry)
        w, h = entry["size"]
        assert entry["class_name"] in saved["class_names"] and len(entry["boxes"]) == 1
        x0, y0, x1, y1 = entry["boxes"][0]
        assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        assert (out / entry["overlay"]).is_file()
    pngs = sorted(p.name for p in (out / "overlays").iterdir())
    assert pngs == sorted(f"{p.stem}.png" for p in sample_paths[:4])
    with Image.open(out / "overlays" / pngs[0]) as im:
        assert im.format == "PNG"
    # The CLI's boxes are the API's.
    api = bcct.load(ckpt, device="cpu").localize([result["images"][0]["path"]])[0]
    np.testing.assert_allclose(result["images"][0]["boxes"], api.boxes)

    out2 = tmp_path / "out2"
    assert main(["localize", "--checkpoint", str(ckpt), str(single), "--out", str(out2), "--threshold", "0.3",
                 "--no-overlays", "--readout", "cam"]) == 0
    result2 = json.loads((out2 / "boxes.json").read_text())
    assert result2["threshold"] == 0.3 and len(result2["images"]) == 1
    assert not (out2 / "overlays").exists()


def test_cli_skips_unreadable_files(ckpt, sample_paths, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sample_paths[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "corrupt.jpg").write_bytes(sample_paths[0].read_bytes()[:200])
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["localize", "--checkpoint", str(ckpt), str(folder), "--out", str(out), "--no-overlays"]) == 0
    cap = capsys.readouterr()
    assert "localized 2 images (2 skipped)" in cap.out
    result = json.loads((out / "boxes.json").read_text())
    assert len(result["images"]) == 2
    assert sorted(s["path"] for s in result["skipped"]) == [str(folder / "corrupt.jpg"), str(folder / "empty.png")]
    assert all(s["reason"] for s in result["skipped"])
    warnings = [line for line in cap.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and not [line for line in cap.err.splitlines() if line.startswith("error:")]


def test_cli_all_unreadable_is_an_error(ckpt, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(random.Random(0).randbytes(300))
    (folder / "b.png").write_bytes(b"")
    (folder / "c.jpg").write_text("hello, not a JPEG")
    out = tmp_path / "out"
    assert main(["localize", "--checkpoint", str(ckpt), str(folder), "--out", str(out)]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "none of the 3 image file(s) could be read" in errors[0]
    assert not out.exists()


def test_cli_missing_path_and_bad_checkpoint(ckpt, sample_paths, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nope.jpg"
    assert main(["localize", "--checkpoint", str(ckpt), str(sample_paths[0]), str(missing), "--out", str(out)]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(missing) in errors[0]
    assert not out.exists()

    fake = tmp_path / "fake.pt"
    fake.write_bytes(random.Random(1).randbytes(1000))
    out.mkdir()
    assert main(["localize", "--checkpoint", str(fake), str(sample_paths[0]), "--out", str(out)]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(fake) in errors[0]
    assert not (out / "boxes.json").exists() and list(out.iterdir()) == []

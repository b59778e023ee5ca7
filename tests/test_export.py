"""``bcct export`` and the ONNX localizer (bcct.deploy): the same boxes.json as the checkpoint,
the metadata inference needs, no torch on the inference path, gradient readouts refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import bcct  # noqa: E402
from bcct import checkpoint  # noqa: E402
from bcct.cli import main  # noqa: E402
from bcct.data.cub import read_cub  # noqa: E402
from bcct.deploy import OnnxLocalizer  # noqa: E402
from bcct.errors import BadInput  # noqa: E402
from bcct.localize import localize_paths  # noqa: E402
from bcct.train import train  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tiny_cam_checkpoint):
    return tiny_cam_checkpoint


@pytest.fixture(scope="module")
def model(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "cam.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def photos(tiny_data):
    return [r.path for r in read_cub(tiny_data).split("test")][:8]


def test_export_says_what_it_wrote(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "readouts cam" in printed and "3 classes" in printed
    diff = float(printed.rsplit("max |diff| ", 1)[1].split()[0])
    assert diff < 1e-4  # onnxruntime reproduces the PyTorch forward


def test_metadata_holds_what_inference_needs(model, ckpt):
    saved = checkpoint.load(ckpt)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(model)).metadata_props}
    assert meta["class_names"] == ["001.Class_001", "002.Class_002", "003.Class_003"]
    assert meta["input_size"] == 32 and meta["method"] == "cam" and meta["readouts"] == ["cam"]
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["thresholds"] == pytest.approx(saved["thresholds"])


def test_onnx_boxes_json_matches_the_checkpoints(ckpt, model, photos, tmp_path):
    """Same classes, boxes within 1 px, the same readout and threshold, an overlay per photo."""
    by_pt = localize_paths(ckpt, photos, tmp_path / "pt", progress=False)
    by_onnx = localize_paths(model, photos, tmp_path / "onnx", progress=False)
    assert (by_onnx["method"], by_onnx["readout"], by_onnx["threshold"]) == \
           (by_pt["method"], by_pt["readout"], by_pt["threshold"])
    assert len(by_onnx["images"]) == len(by_pt["images"]) == len(photos)
    for a, b in zip(by_pt["images"], by_onnx["images"]):
        assert a["path"] == b["path"] and a["class_index"] == b["class_index"] and a["size"] == b["size"]
        assert [t[0] for t in a["top5"]] == [t[0] for t in b["top5"]]
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1.0)
        assert a["overlay"] == b["overlay"] and (tmp_path / "onnx" / b["overlay"]).is_file()
    assert json.loads((tmp_path / "onnx" / "boxes.json").read_text())["checkpoint"] == str(model)


def test_the_onnx_path_imports_neither_torch_nor_torchvision(model, photos, tmp_path):
    out = tmp_path / "loc"
    code = (
        "import sys\n"
        "from bcct.cli import main\n"
        f"assert main(['localize', '--checkpoint', {str(model)!r}, {str(photos[0])!r}, '--out', {str(out)!r}]) == 0\n"
        "import bcct\n"
        "pred = bcct.deploy.load_onnx(sys.argv[1]).localize(sys.argv[2])[0]\n"
        "loaded = sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code, str(model), str(photos[0])], check=True)
    assert (out / "boxes.json").is_file()


def test_bcct_load_takes_an_onnx_file(model, photos):
    loc = bcct.load(model, device="cpu")
    assert isinstance(loc, OnnxLocalizer) and loc.class_names[0] == "001.Class_001"
    pred = loc.localize(np.asarray(Image.open(photos[0]).convert("L")))[0]  # grayscale uint8
    assert pred.boxes.shape == (1, 4) and pred.readout == "cam"
    with pytest.raises(BadInput, match="uint8"):
        loc.localize(np.zeros((8, 8, 3), np.float32))


def test_gradient_readouts_are_refused_in_one_line(make_tiny_cfg, tmp_path, capsys):
    run = tmp_path / "backprop"
    train(make_tiny_cfg("epochs=1", method="backprop"), run, progress=False)
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "saliency" in err and "gradients" in err
    assert not (tmp_path / "b.onnx").exists()


def test_bad_files_are_one_line_errors(ckpt, model, tmp_path, photos, capsys):
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.bin")]) == 2
    assert "MODEL.onnx" in capsys.readouterr().err
    assert main(["localize", "--checkpoint", str(tmp_path / "none.onnx"), str(photos[0]), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert main(["localize", "--checkpoint", str(junk), str(photos[0]), "--out", str(tmp_path)]) == 2
    assert "cannot load" in capsys.readouterr().err
    bare = onnx.load(str(model))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert main(["localize", "--checkpoint", str(tmp_path / "bare.onnx"), str(photos[0]), "--out", str(tmp_path)]) == 2
    assert "metadata" in capsys.readouterr().err

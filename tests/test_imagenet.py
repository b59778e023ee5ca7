"""``--checkpoint imagenet``: the pip-shipped EfficientNet-Lite0 ImageNet classifier gives the
class, a training-free map the box (feature_norm by default, cam one option away); in bcct.load,
bcct localize and bcct eval (an ILSVRC folder without train/, or wsolevaluation metadata, in
ImageNet's standard class order)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

import bcct  # noqa: E402
from bcct import imagenet  # noqa: E402
from bcct.boxes import box_iou  # noqa: E402
from bcct.cli import main  # noqa: E402

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# Boxes drawn by hand on scikit-image's photos (xyxy, inclusive pixels)
CAT_BOX = [20, 0, 430, 299]  # chelsea, 451x300: the cat's head fills the frame
CUP_BOX = [75, 15, 480, 390]  # coffee, 600x400: cup and saucer
EGYPTIAN_CAT, ESPRESSO = "n02124075", "n07920052"


@pytest.fixture(scope="module")
def loc():
    return bcct.load(imagenet.IMAGENET, device="cpu")


def test_the_classes_are_imagenets_in_the_standard_order():
    wnids, names = imagenet.synsets(), imagenet.class_names()
    assert len(wnids) == len(names) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], wnids[285], names[285]) == ("n01440764", EGYPTIAN_CAT, "Egyptian cat")


def test_feature_norm_is_the_default_map_with_its_val_chosen_cut(loc):
    # feature_norm first (64.1 vs cam's 53.1 GT-known on cub_dev birds, bench/imagenet_maps.py),
    # cut where that run's val split put it; cam one option away, at its own val-chosen cut
    assert list(imagenet.MAPS) == list(loc.thresholds) == ["feature_norm", "cam"]
    assert loc.thresholds == {"feature_norm": 0.41, "cam": 0.27}
    assert loc.resolve() == ("feature_norm", 0.41) and loc.resolve(readout="cam") == ("cam", 0.27)


def test_chelsea_is_a_cat_and_the_box_is_on_it(loc):
    default = loc.localize(skimage_data.chelsea())[0]
    assert (default.readout, default.threshold) == ("feature_norm", 0.41)
    for readout in imagenet.MAPS:
        pred = loc.localize(skimage_data.chelsea(), readout=readout)[0]
        assert pred.readout == readout and pred.threshold == imagenet.THRESHOLDS[readout]
        assert any(i in CATS for i, _, _ in pred.top5)
        assert pred.class_index in CATS and "cat" in pred.class_name
        assert box_iou(pred.box, CAT_BOX)[0, 0] >= 0.5, (readout, pred.box)
    assert np.allclose(default.box, loc.localize(skimage_data.chelsea(), readout="feature_norm")[0].box)
    # the two maps are different maps: the class-agnostic norm is not the cat class's CAM
    assert not np.allclose(default.map, loc.localize(skimage_data.chelsea(), readout="cam")[0].map)


def test_localize_command_on_photos(tmp_path, capsys):
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "chelsea.png")
    out = tmp_path / "found"
    assert main(["localize", "--checkpoint", "imagenet", str(tmp_path / "chelsea.png"), "--out", str(out)]) == 0
    assert "with the feature_norm readout (primary) at threshold 0.41" in capsys.readouterr().out
    result = json.loads((out / "boxes.json").read_text())
    (entry,) = result["images"]
    assert result["method"] == "imagenet" and entry["class_index"] in CATS
    assert (result["readout"], result["readout_choice"], result["threshold"]) == ("feature_norm", "primary", 0.41)
    assert box_iou(entry["boxes"][0], CAT_BOX)[0, 0] >= 0.5
    assert (out / entry["overlay"]).is_file()
    cam_out = tmp_path / "found_cam"
    assert main(["localize", "--checkpoint", "imagenet", str(tmp_path / "chelsea.png"), "--out", str(cam_out),
                 "--readout", "cam"]) == 0
    assert "with the cam readout (given) at threshold 0.27" in capsys.readouterr().out
    cam = json.loads((cam_out / "boxes.json").read_text())
    assert (cam["readout"], cam["threshold"]) == ("cam", 0.27) and cam["images"][0]["class_index"] in CATS
    assert box_iou(cam["images"][0]["boxes"][0], CAT_BOX)[0, 0] >= 0.5


def _voc(path, wnid: str, box, size) -> None:
    x0, y0, x1, y1 = box
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size><object>"
                    f"<name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                    "</bndbox></object></annotation>")


def _photos():
    """Two photos per class, the second mirrored (with its box)."""
    for name, wnid, box in (("chelsea", EGYPTIAN_CAT, CAT_BOX), ("coffee", ESPRESSO, CUP_BOX)):
        rgb = getattr(skimage_data, name)()
        w = rgb.shape[1]
        yield f"{name}", wnid, rgb, box
        yield f"{name}_mirrored", wnid, rgb[:, ::-1].copy(), [w - 1 - box[2], box[1], w - 1 - box[0], box[3]]


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    """An ILSVRC folder with val/ and val_boxes/ only (no train/)."""
    root = tmp_path_factory.mktemp("ilsvrc")
    (root / "val").mkdir()
    (root / "val_boxes").mkdir()
    for stem, wnid, rgb, box in _photos():
        Image.fromarray(rgb).save(root / "val" / f"{stem}.JPEG", quality=95)
        _voc(root / "val_boxes" / f"{stem}.xml", wnid, box, (rgb.shape[1], rgb.shape[0]))
    return root


@pytest.fixture(scope="module")
def wsol(tmp_path_factory):
    """wsolevaluation metadata: metadata/val chooses the threshold, metadata/test is scored."""
    root = tmp_path_factory.mktemp("wsol")
    index = {EGYPTIAN_CAT: 285, ESPRESSO: 967}
    rows: dict[str, dict[str, list[str]]] = {}
    for k, (stem, wnid, rgb, box) in enumerate(_photos()):
        split = "val" if k % 2 else "test"
        Image.fromarray(rgb).save(root / f"{stem}.png")
        files = rows.setdefault(split, {"image_ids": [], "class_labels": [], "localization": []})
        files["image_ids"].append(f"{stem}.png")
        files["class_labels"].append(f"{stem}.png,{index[wnid]}")
        files["localization"].append(f"{stem}.png,{','.join(map(str, box))}")
    for split, files in rows.items():
        (root / "metadata" / split).mkdir(parents=True)
        for name, lines in files.items():
            (root / "metadata" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("layout", ["ilsvrc", "wsol"])
def test_eval_scores_imagenet_photos(layout, ilsvrc, wsol, tmp_path, capsys):
    root = ilsvrc if layout == "ilsvrc" else wsol
    js = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", "imagenet", "--data", str(root), "--split", "test", "--json", str(js)]) == 0
    m = json.loads(js.read_text())
    assert m["method"] == "imagenet" and m["n_images"] == 2 and m["readout"] == "feature_norm"
    assert m["cls_top1"] == 1.0 and m["gt_known"] == 1.0 and m["top1_loc"] == 1.0
    assert m["cam"]["gt_known"] == 1.0 and m["cam"]["top1_loc"] == 1.0  # the other map, nested under its name
    assert m["threshold_source"] == "given"  # chosen on the val split, not on test
    assert "top-1 loc" in capsys.readouterr().out


def test_imagenet_on_a_dataset_of_other_classes_is_refused(tiny_data, capsys):
    assert main(["eval", "--checkpoint", "imagenet", "--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ImageNet images" in err
    assert main(["eval", "--checkpoint", "imagenet"]) == 2
    assert "--data" in capsys.readouterr().err


def test_imagenet_maps_export(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "imagenet.onnx"
    assert main(["export", "--checkpoint", "imagenet", "--out", str(out)]) == 0
    onnx = bcct.load(out)
    assert onnx.readouts == list(imagenet.MAPS) and onnx.thresholds == imagenet.THRESHOLDS
    pred = onnx.localize(skimage_data.chelsea())[0]
    assert (pred.readout, pred.threshold) == ("feature_norm", 0.41)
    assert pred.class_index in CATS and box_iou(pred.box, CAT_BOX)[0, 0] >= 0.5


def test_the_demo_ends_on_real_photos(tmp_path):
    from bcct.demo import PHOTOS, localize_photos, photos_report

    photos = localize_photos(tmp_path)
    assert (photos["readout"], photos["threshold"]) == ("feature_norm", 0.41)
    by_name = {e["path"].rsplit("/", 1)[1]: e for e in photos["images"]}
    assert sorted(by_name) == sorted(f"{n}.png" for n in PHOTOS)
    assert by_name["chelsea.png"]["class_index"] in CATS
    assert "espresso" in by_name["coffee.png"]["class_name"] or "cup" in by_name["coffee.png"]["class_name"]
    report = photos_report(photos)
    assert "| chelsea.png |" in report and "(photos/overlays/chelsea.png)" in report
    assert "feature_norm map cut at 0.41" in report and "64.1%" in report and "bench/imagenet_maps.py" in report

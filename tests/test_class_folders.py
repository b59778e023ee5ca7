"""A user's own photos: class folders without boxes (torchvision's ImageFolder convention),
recognised by --data alone; train, evaluate (classification) and localize on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bcct.cli import main
from bcct.config import NO_BOX_THRESHOLD, DataConfig
from bcct.data.cub import read_cub
from bcct.data.readers import detect_layout, read_dataset
from bcct.errors import BadInput

TINY = ["epochs=1", "image_size=32", "model.head_width=16", "data.workers=0"]


def class_folders(tiny_data: Path, root: Path, splits=("train", "val")) -> Path:
    """The tiny CUB-layout set rewritten as ROOT/<split>/<class>/*.jpg: CUB train -> train,
    CUB test -> the first of the other ``splits`` (the rest get nothing)."""
    wset = read_cub(tiny_data, val_fraction=0)
    for r in wset.records:
        split = "train" if r.is_train else (splits[1] if len(splits) > 1 else None)
        if split is None:
            continue
        dst = root / split / wset.class_names[r.label] / r.path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, dst)
    return root


@pytest.fixture(scope="module")
def folders(tiny_data, tmp_path_factory) -> Path:
    return class_folders(tiny_data, tmp_path_factory.mktemp("folders") / "photos")


def test_layout_is_recognised_from_the_folder(folders, tiny_data):
    assert detect_layout(folders) == "folders"
    assert detect_layout(tiny_data) == "cub"
    wset = read_dataset(DataConfig(root=str(folders)))
    assert wset.class_names == sorted(p.name for p in (folders / "train").iterdir())
    counts = {s: len(wset.split(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 24, "test": 0}  # val/ is the held-out split; nothing carved from train
    assert all(len(r.boxes) == 0 for r in wset.records)
    assert all(r.path.parent.name == wset.class_names[r.label] for r in wset.records)


def test_without_val_folder_a_fraction_of_train_is_held_out(tiny_data, tmp_path):
    root = class_folders(tiny_data, tmp_path / "photos", splits=("train",))
    wset = read_dataset(DataConfig(root=str(root), val_fraction=0.25))
    assert {s: len(wset.split(s)) for s in ("train", "val", "test")} == {"train": 18, "val": 6, "test": 0}
    assert {r.label for r in wset.split("val")} == {0, 1, 2}  # stratified: every class held out


def test_test_folder_is_the_test_split(tiny_data, tmp_path):
    root = class_folders(tiny_data, tmp_path / "photos", splits=("train", "test"))
    wset = read_dataset(DataConfig(root=str(root)))
    assert len(wset.split("test")) == 24 and len(wset.split("val")) == 3  # 10% of train carved per class


@pytest.mark.parametrize("damage, message", [
    (lambda r: shutil.copy(next((r / "train").rglob("*.jpg")), r / "train" / "loose.jpg"), "directly in train/"),
    (lambda r: (r / "val" / "heron").mkdir(), "has no train/heron/ folder"),
    (lambda r: (r / "train" / "empty").mkdir(), "class folder holds no image"),
])
def test_bad_class_folders_are_one_clear_error(folders, tmp_path, damage, message):
    root = tmp_path / "photos"
    shutil.copytree(folders, root)
    damage(root)
    with pytest.raises(BadInput, match=message):
        read_dataset(DataConfig(root=str(root)))


def test_a_folder_of_nothing_known_names_the_layouts(tmp_path):
    (tmp_path / "misc").mkdir()
    with pytest.raises(BadInput, match="no data layout bcct knows.*images.txt.*train/<class>/"):
        detect_layout(tmp_path / "misc")


@pytest.fixture(scope="module")
def folder_run(folders, tmp_path_factory):
    run = tmp_path_factory.mktemp("folder_run") / "run"
    assert main(["train", "--method", "cam", "--data", str(folders), "--out", str(run), *TINY, "--quiet"]) == 0
    return run


def test_train_on_class_folders_says_which_threshold_and_selects_on_classification(folders, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "cam", "--data", str(folders), "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert f"eval.threshold={NO_BOX_THRESHOLD}" in out and "val split has no boxes" in out
    assert f"(no boxes: no localisation; tau {NO_BOX_THRESHOLD:.2f})" in out
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = log[-1]["val"]["cam"]
    assert set(val) == {"cls_top1", "threshold"} and val["threshold"] == NO_BOX_THRESHOLD


def test_eval_on_a_split_without_boxes_reports_classification(folder_run, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(folder_run / "best.pt"), "--split", "val", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 cls err" in printed and "classification only" in printed and "top-1 loc" not in printed
    metrics = json.loads(out_json.read_text())
    assert metrics["localization"] == "needs boxes" and metrics["n_images"] == 24 and 0 <= metrics["cls_top1"] <= 1
    assert "top1_loc" not in metrics


def test_eval_of_a_missing_test_split_points_to_the_others(folder_run, capsys):
    assert main(["eval", "--checkpoint", str(folder_run / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert "the test split is empty" in err and "--split (train or val)" in err


def test_eval_report_refuses_a_split_without_boxes(folder_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(folder_run / "best.pt"), "--split", "val",
                 "--report", str(tmp_path / "rep")]) == 2
    assert "has no boxes" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_localize_new_photos_with_the_fixed_threshold(folder_run, folders, tmp_path):
    out = tmp_path / "boxes"
    assert main(["localize", "--checkpoint", str(folder_run / "best.pt"), str(folders / "val"), "--out", str(out)]) == 0
    result = json.loads((out / "boxes.json").read_text())
    assert result["threshold"] == NO_BOX_THRESHOLD and len(result["images"]) == 24
    assert all(len(e["boxes"]) >= 1 and all(len(b) == 4 for b in e["boxes"]) for e in result["images"])
    assert len(list((out / "overlays").glob("*.png"))) == 24


def test_bcct_on_class_folders_chooses_its_threshold_against_the_bc_masks(folders, tmp_path, capsys):
    """No box anywhere: BC-CT's CAM threshold is chosen on val against its own BC masks'
    boxes (no annotation), kept in the checkpoint, and used by localize."""
    from bcct import checkpoint

    run = tmp_path / "bcct"
    assert main(["train", "--method", "bcct", "--data", str(folders), "--backgrounds", "auto", "--out", str(run),
                 *TINY]) == 0
    assert "chosen on val against the boxes of the BC masks" in capsys.readouterr().out
    ckpt = checkpoint.load(run / "best.pt")
    assert ckpt["config"]["eval"]["threshold"] is None
    assert set(ckpt["thresholds"]) == {"cam", "agnostic"}
    assert ckpt["val"]["cam"]["threshold_source"] == "bc_masks" and "top1_loc" not in ckpt["val"]["cam"]
    out = tmp_path / "boxes"
    assert main(["localize", "--checkpoint", str(run / "best.pt"), str(folders / "val"), "--out", str(out),
                 "--no-overlays"]) == 0
    assert json.loads((out / "boxes.json").read_text())["threshold"] == ckpt["thresholds"]["cam"]


def test_the_mask_threshold_is_the_one_that_matches_the_masks_best(make_tiny_cfg):
    """On a split without boxes the chosen CAM threshold maximises GT-known against the
    method's own mask boxes: scored here by hand with those boxes as GT."""
    import numpy as np
    import torch

    from bcct.data.dataset import WSOLDataset
    from bcct.data.readers import read_dataset
    from bcct.data.records import NO_BOXES
    from bcct.data.transforms import test_transform
    from bcct.evaluate import evaluate, predict, to_original
    from bcct.methods import build_method
    from bcct.metrics import BoxCorrectness, choose_threshold

    cfg = make_tiny_cfg(method="bcct")
    method = build_method(cfg, 3).eval()
    records = read_dataset(cfg.data).split("test")
    ds = WSOLDataset(records, test_transform(cfg.data))
    pred = predict(method, ds, cfg, torch.device("cpu"))
    gts = [b[None] for b in to_original(pred["mask_boxes"], ds.image_sizes(), cfg.data.image_size)]
    want = {}
    for name, maps in pred["maps"].items():
        corr = BoxCorrectness(thresholds=np.arange(0, 1, cfg.eval.threshold_step))
        corr.add(maps, gts, ds.image_sizes())
        want[name] = choose_threshold(corr)
    for r in records:
        r.boxes = NO_BOXES
    got = evaluate(method, WSOLDataset(records, test_transform(cfg.data)), cfg, torch.device("cpu"))
    assert {k: v["threshold"] for k, v in got.items()} == pytest.approx(want)
    assert all(v["threshold_source"] == "bc_masks" and "top1_loc" not in v for v in got.values())


def test_a_split_with_boxes_on_some_images_only_is_refused(tiny_data, tmp_path):
    from bcct.data.dataset import WSOLDataset
    from bcct.data.records import NO_BOXES
    from bcct.evaluate import has_boxes

    records = read_cub(tiny_data).split("test")
    assert has_boxes(WSOLDataset(records, None))
    records[3].boxes = NO_BOXES
    with pytest.raises(BadInput, match="has no box while 23 of the split's 24 images have one"):
        has_boxes(WSOLDataset(records, None))

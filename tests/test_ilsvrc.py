"""The ImageNet readers (bcct.data.ilsvrc) on tiny generated fixtures: the standard ILSVRC
folder with Pascal-VOC XML boxes (flat and "sorted" val), and wsolevaluation's metadata
layout. Every bad input raises BadInput naming the file (and line, for metadata rows).
The last tests run a parsed set through WSOLDataset and the evaluator: an image with two
GT boxes counts as localised when the prediction matches the second one.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcct.boxes import RESIZE, scale_boxes
from bcct.config import DataConfig, load_config
from bcct.data.dataset import WSOLDataset
from bcct.data.ilsvrc import read_ilsvrc
from bcct.data.wsol_metadata import read_wsol_metadata
from bcct.data.readers import READERS, read_dataset
from bcct.data.transforms import test_transform as eval_transform  # "test_*" would be collected
from bcct.errors import BadInput
from bcct.metrics import BoxCorrectness, iou_hits, summarize

WNIDS = ["n01440764", "n01443537", "n01484850"]
TRAIN_PER_CLASS, VAL_PER_CLASS = 2, 4
TRAIN_SIZE, VAL_SIZE = (48, 40), (64, 48)  # (W, H)
TWO_BOX_ID = 2  # ILSVRC2012_val_00000002 has two boxes
BOX_1, BOX_2 = (2.0, 2.0, 20.0, 20.0), (36.0, 20.0, 60.0, 44.0)


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=80)


def _xml(objects: list[tuple[str, tuple]], size: tuple[int, int] = VAL_SIZE, name: str = "x") -> str:
    """A Pascal-VOC annotation as ILSVRC2012_bbox_val ships it; coordinates may be any text."""
    objs = "".join(
        f"<object><name>{wnid}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for wnid, b in objects
    )
    return (
        f"<annotation><folder>val</folder><filename>{name}</filename><source><database>ILSVRC_2012</database>"
        f"</source><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objs}</annotation>\n"
    )


def _val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}"


def _val_label(i: int) -> int:
    return (i - 1) % len(WNIDS)


def _val_boxes(i: int) -> list[tuple]:
    return [BOX_1, BOX_2] if i == TWO_BOX_ID else [(4.0 + i, 6.0, 40.0 + i, 30.0)]


def make_ilsvrc(root: Path, sorted_val: bool = False) -> Path:
    """3 classes x (2 train + 4 val) images; val image i is class (i-1) % 3; image 2 has two boxes."""
    for k, wnid in enumerate(WNIDS):
        for j in range(TRAIN_PER_CLASS):
            _jpeg(root / "train" / wnid / f"{wnid}_{j + 1}.JPEG", TRAIN_SIZE, seed=10 * k + j)
    (root / "val_boxes").mkdir(parents=True)
    for i in range(1, VAL_PER_CLASS * len(WNIDS) + 1):
        wnid = WNIDS[_val_label(i)]
        sub = root / "val" / wnid if sorted_val else root / "val"
        _jpeg(sub / f"{_val_name(i)}.JPEG", VAL_SIZE, seed=100 + i)
        (root / "val_boxes" / f"{_val_name(i)}.xml").write_text(
            _xml([(wnid, b) for b in _val_boxes(i)], name=_val_name(i))
        )
    return root


@pytest.fixture
def ilsvrc(tmp_path) -> Path:
    return make_ilsvrc(tmp_path / "imagenet")


def _by_id(wset) -> dict:
    return {r.image_id: r for r in wset.records}


# ---------------------------------------------------------------- ILSVRC folder: good input


def _check_ilsvrc(wset, root: Path, sorted_val: bool = False) -> None:
    assert wset.class_names == WNIDS and wset.num_classes == 3
    counts = Counter(r.split for r in wset.records)
    # round(0.25 * 4) = 1 val image per class; train is never carved.
    assert (counts["train"], counts["val"], counts["test"]) == (6, 3, 9)
    for r in wset.split("train"):
        assert r.boxes.shape == (0, 4) and r.boxes.dtype == np.float64
        assert r.path.parent.name == WNIDS[r.label] and r.path.is_file()
    assert Counter(r.label for r in wset.split("val")) == {0: 1, 1: 1, 2: 1}
    held = wset.split("val") + wset.split("test")
    assert len(held) == 12
    for r in held:
        i = int(r.path.stem.rsplit("_", 1)[1])
        assert r.label == _val_label(i)
        np.testing.assert_array_equal(r.boxes, np.asarray(_val_boxes(i)))
        assert r.path.is_file()
        expected = f"val/{WNIDS[r.label]}/{r.path.name}" if sorted_val else f"val/{r.path.name}"
        assert r.image_id == expected and r.path == root / expected
    two = [r for r in held if r.path.stem == _val_name(TWO_BOX_ID)][0]
    assert two.boxes.shape == (2, 4)
    np.testing.assert_array_equal(two.boxes, [BOX_1, BOX_2])


def test_ilsvrc_counts_labels_boxes(ilsvrc):
    _check_ilsvrc(read_ilsvrc(ilsvrc, val_fraction=0.25, seed=0), ilsvrc)


def test_ilsvrc_sorted_val_layout(tmp_path):
    root = make_ilsvrc(tmp_path / "imagenet", sorted_val=True)
    _check_ilsvrc(read_ilsvrc(root, val_fraction=0.25, seed=0), root, sorted_val=True)


def test_ilsvrc_xml_in_class_subfolders(tmp_path):
    root = make_ilsvrc(tmp_path / "imagenet", sorted_val=True)
    for xml in list((root / "val_boxes").glob("*.xml")):  # val_boxes/<wnid>/<stem>.xml
        i = int(xml.stem.rsplit("_", 1)[1])
        (root / "val_boxes" / WNIDS[_val_label(i)]).mkdir(exist_ok=True)
        xml.rename(root / "val_boxes" / WNIDS[_val_label(i)] / xml.name)
    _check_ilsvrc(read_ilsvrc(root, val_fraction=0.25, seed=0), root, sorted_val=True)


def test_ilsvrc_val_test_split_is_deterministic(ilsvrc):
    def val_ids(seed, fraction=0.25):
        return tuple(sorted(r.image_id for r in read_ilsvrc(ilsvrc, val_fraction=fraction, seed=seed).split("val")))

    assert val_ids(0) == val_ids(0) and val_ids(3) == val_ids(3)
    # 4^3 = 64 possible val sets: seeds 0..5 cannot all pick the same one.
    assert len({val_ids(s) for s in range(6)}) > 1
    wset = read_ilsvrc(ilsvrc, val_fraction=0.5, seed=1)
    assert Counter(r.label for r in wset.split("val")) == {0: 2, 1: 2, 2: 2}
    val, test = {r.image_id for r in wset.split("val")}, {r.image_id for r in wset.split("test")}
    assert not val & test and len(val | test) == 12
    assert all(r.image_id.startswith("val/") for r in wset.split("val"))  # nothing from train


def test_ilsvrc_zero_fraction_keeps_all_of_val_for_test(ilsvrc):
    wset = read_ilsvrc(ilsvrc, val_fraction=0.0)
    assert (len(wset.split("val")), len(wset.split("test"))) == (0, 12)


def test_ilsvrc_ignores_non_image_files(ilsvrc):
    (ilsvrc / "val" / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n")
    (ilsvrc / "train" / WNIDS[0] / "notes.txt").write_text("x")
    assert len(read_ilsvrc(ilsvrc).records) == 18


# ---------------------------------------------------------------- ILSVRC folder: bad input


def _xml_path(root: Path, i: int) -> Path:
    return root / "val_boxes" / f"{_val_name(i)}.xml"


@pytest.mark.parametrize(
    "content, words",
    [
        ("<annotation><object><name>n01440764</name>", "not valid XML"),
        ("", "not valid XML"),
        (_xml([("n99999999", BOX_1)]), "not among the 3 train/ class folders"),
        (_xml([(WNIDS[0], (30, 5, 30, 20))]), "xmax <= xmin"),
        (_xml([(WNIDS[0], (30, 25, 40, 10))]), "ymax <= ymin"),
        (_xml([(WNIDS[0], (30, 5, 10, 20))]), "xmax <= xmin"),
        (_xml([]), "no <object>"),
        (_xml([(WNIDS[0], BOX_1), (WNIDS[1], BOX_2)]), "different classes"),
        (_xml([(WNIDS[0], (1, "abc", 10, 20))]), "not a number"),
        (_xml([(WNIDS[0], (-3, 2, 10, 20))]), "outside the image"),
        (_xml([(WNIDS[0], (1, 2, 90, 20))]), "outside the 64x48 image"),
        (_xml([(WNIDS[0], (1, 2, "nan", 20))]), "non-finite"),
        ("<annotation><object><name>n01440764</name></object></annotation>", "no <bndbox>"),
        ("<annotation><object><bndbox/></object></annotation>", "no <name>"),
    ],
)
def test_bad_xml_names_the_file(ilsvrc, content, words):
    xml = _xml_path(ilsvrc, 1)
    xml.write_text(content)
    with pytest.raises(BadInput) as err:
        read_ilsvrc(ilsvrc)
    msg = str(err.value)
    assert str(xml) in msg and words in msg


@pytest.mark.parametrize("folder", ["train", "val", "val_boxes"])
def test_missing_folder(ilsvrc, folder):
    shutil.rmtree(ilsvrc / folder)
    with pytest.raises(BadInput, match="missing") as err:
        read_ilsvrc(ilsvrc)
    assert str(ilsvrc / folder) in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(BadInput, match="data folder not found") as err:
        read_ilsvrc(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_image_without_xml(ilsvrc):
    _xml_path(ilsvrc, 5).unlink()
    with pytest.raises(BadInput, match="no box annotation") as err:
        read_ilsvrc(ilsvrc)
    msg = str(err.value)
    assert str(ilsvrc / "val" / f"{_val_name(5)}.JPEG") in msg and str(_xml_path(ilsvrc, 5)) in msg


def test_sorted_val_folder_disagrees_with_xml(tmp_path):
    root = make_ilsvrc(tmp_path / "imagenet", sorted_val=True)
    src = root / "val" / WNIDS[0] / f"{_val_name(1)}.JPEG"
    src.rename(root / "val" / WNIDS[1] / src.name)
    with pytest.raises(BadInput, match="disagrees") as err:
        read_ilsvrc(root)
    assert str(_xml_path(root, 1)) in str(err.value)


def test_empty_train_class_folder(ilsvrc):
    (ilsvrc / "train" / "n09999999").mkdir()
    with pytest.raises(BadInput, match="holds no image") as err:
        read_ilsvrc(ilsvrc)
    assert str(ilsvrc / "train" / "n09999999") in str(err.value)


def test_no_train_classes_or_val_images(tmp_path):
    root = tmp_path / "r"
    for d in ("train", "val", "val_boxes"):
        (root / d).mkdir(parents=True)
    with pytest.raises(BadInput, match="no class folders"):
        read_ilsvrc(root)
    _jpeg(root / "train" / WNIDS[0] / "a.JPEG", TRAIN_SIZE, 0)
    with pytest.raises(BadInput, match="no images") as err:
        read_ilsvrc(root)
    assert str(root / "val") in str(err.value)


def test_bad_val_fraction(ilsvrc):
    with pytest.raises(BadInput, match="val_fraction"):
        read_ilsvrc(ilsvrc, val_fraction=1.0)


# ---------------------------------------------------------------- wsolevaluation metadata


def make_wsol(root: Path, with_val: bool = True) -> Path:
    """Images under ROOT, metadata in ROOT/metadata/{train,val,test}; test image
    val/ILSVRC2012_val_00000002.JPEG has two boxes (two localization.txt lines)."""
    meta = root / "metadata"
    rows = {"train": [], "val": [], "test": []}  # (path, label, size, boxes)
    for k, wnid in enumerate(WNIDS):
        for j in range(TRAIN_PER_CLASS):
            rows["train"].append((f"train/{wnid}/{wnid}_{j + 1}.JPEG", k, TRAIN_SIZE, []))
        rows["val"].append((f"val2/{k}/img_{k}.jpeg", k, VAL_SIZE, [(1.0, 2.0, 30.0, 40.0)]))
    for i in range(1, 7):
        rows["test"].append((f"val/{_val_name(i)}.JPEG", _val_label(i), VAL_SIZE, _val_boxes(i)))
    splits = ("train", "val", "test") if with_val else ("train", "test")
    for s, n in enumerate(splits):
        d = meta / n
        d.mkdir(parents=True)
        for m, (path, _, size, _) in enumerate(rows[n]):
            _jpeg(root / path, size, seed=1000 * s + m)
        (d / "image_ids.txt").write_text("".join(f"{p}\n" for p, *_ in rows[n]))
        (d / "class_labels.txt").write_text("".join(f"{p},{lab}\n" for p, lab, *_ in rows[n]))
        (d / "image_sizes.txt").write_text("".join(f"{p},{w},{h}\n" for p, _, (w, h), _ in rows[n]))
        if n != "train":  # wsolevaluation's ILSVRC train has no boxes
            (d / "localization.txt").write_text(
                "".join(f"{p},{','.join(f'{v:g}' for v in b)}\n" for p, _, _, bs in rows[n] for b in bs)
            )
    return root


@pytest.fixture
def wsol(tmp_path) -> Path:
    return make_wsol(tmp_path / "wsol")


def test_wsol_counts_labels_boxes(wsol):
    wset = read_wsol_metadata(wsol)  # metadata_dir "" -> ROOT/metadata
    assert [len(wset.split(s)) for s in ("train", "val", "test")] == [6, 3, 6]
    assert wset.class_names == WNIDS  # from the train folders
    recs = _by_id(wset)
    r = recs[f"train/{WNIDS[1]}/{WNIDS[1]}_2.JPEG"]
    assert (r.label, r.split, r.boxes.shape, r.path) == (1, "train", (0, 4), wsol / r.image_id)
    assert recs["val2/2/img_2.jpeg"].split == "val" and recs["val2/2/img_2.jpeg"].label == 2
    np.testing.assert_array_equal(recs["val2/2/img_2.jpeg"].boxes, [[1, 2, 30, 40]])
    for i in range(1, 7):
        r = recs[f"val/{_val_name(i)}.JPEG"]
        assert (r.split, r.label) == ("test", _val_label(i))
        np.testing.assert_array_equal(r.boxes, np.asarray(_val_boxes(i)))
    assert recs[f"val/{_val_name(TWO_BOX_ID)}.JPEG"].boxes.shape == (2, 4)
    assert all(r.path.is_file() for r in wset.records)


def test_wsol_class_names_fall_back_to_numbers(wsol):
    shutil.rmtree(wsol / "metadata" / "train")  # no train folders to name the classes after
    wset = read_wsol_metadata(wsol)
    assert wset.class_names == ["0", "1", "2"] and len(wset.split("train")) == 0


def test_wsol_without_val_holds_out_part_of_test(tmp_path):
    root = make_wsol(tmp_path / "w", with_val=False)

    def val_ids(seed):
        return tuple(sorted(r.image_id for r in read_wsol_metadata(root, val_fraction=0.5, seed=seed).split("val")))

    wset = read_wsol_metadata(root, val_fraction=0.5, seed=0)
    assert [len(wset.split(s)) for s in ("train", "val", "test")] == [6, 3, 3]
    assert all(r.boxes.shape[0] >= 1 for r in wset.split("val"))
    assert val_ids(0) == val_ids(0) and len({val_ids(s) for s in range(6)}) > 1


def test_wsol_metadata_elsewhere_and_via_read_dataset(wsol, tmp_path):
    other = tmp_path / "meta_ILSVRC"
    shutil.move(str(wsol / "metadata"), other)
    with pytest.raises(BadInput, match="metadata folder not found"):
        read_dataset(DataConfig(root=str(wsol), layout="wsol"))
    wset = read_dataset(DataConfig(root=str(wsol), layout="wsol", metadata=str(other)))
    assert len(wset.records) == 15
    # wsolevaluation's metadata/ holds one folder per data set: say which to pick.
    parent = tmp_path / "metadata"
    parent.mkdir()
    shutil.move(str(other), parent / "ILSVRC")
    with pytest.raises(BadInput, match="ILSVRC"):
        read_wsol_metadata(wsol, parent)


def _edit_line(path: Path, lineno: int, text: str | None) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if lineno > len(lines):
        lines.append(text)
    else:
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


T2 = f"val/{_val_name(2)}.JPEG"


@pytest.mark.parametrize(
    "name, lineno, text, words",
    [
        ("test/localization.txt", 3, f"{T2},1,2,3", "expected 5 comma-separated fields"),
        ("test/localization.txt", 3, f"{T2},1,2,x,4", "not a number"),
        ("test/localization.txt", 3, f"{T2},30,2,30,40", "xmax <= xmin"),
        ("test/localization.txt", 3, f"{T2},3,40,30,40", "ymax <= ymin"),
        ("test/localization.txt", 3, f"{T2},3,4,80,40", "outside the 64x48 image"),  # image_sizes.txt: 64x48
        ("test/localization.txt", 8, "val/unknown.JPEG,1,2,3,4", "not in image_ids.txt"),
        ("test/class_labels.txt", 2, f"{T2},-1", "negative"),
        ("test/class_labels.txt", 7, f"{T2},0", "already has label"),
        ("test/class_labels.txt", 4, "val/ILSVRC2012_val_00000004.JPEG", "expected 2 comma-separated fields"),
        ("test/image_sizes.txt", 1, f"val/{_val_name(1)}.JPEG,64,zero", "not a number"),
        ("test/image_sizes.txt", 1, f"val/{_val_name(1)}.JPEG,0,48", "must be positive"),
        ("val/class_labels.txt", 2, "val2/9/img.jpeg,1", "not in image_ids.txt"),
        ("train/image_ids.txt", 4, f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG", "listed twice"),
    ],
)
def test_wsol_bad_row_names_file_and_line(wsol, name, lineno, text, words):
    path = wsol / "metadata" / name
    _edit_line(path, lineno, text)
    with pytest.raises(BadInput) as err:
        read_wsol_metadata(wsol)
    msg = str(err.value)
    assert f"{path}:{lineno}:" in msg and words in msg


@pytest.mark.parametrize("name", ["test/localization.txt", "val/localization.txt", "train/image_ids.txt",
                                  "test/class_labels.txt"])
def test_wsol_missing_file(wsol, name):
    (wsol / "metadata" / name).unlink()
    with pytest.raises(BadInput, match="missing") as err:
        read_wsol_metadata(wsol)
    assert str(wsol / "metadata" / name) in str(err.value)


def test_wsol_optional_files(wsol):
    (wsol / "metadata" / "test" / "image_sizes.txt").unlink()
    assert len(read_wsol_metadata(wsol).split("test")) == 6


def test_wsol_image_without_label_or_box(wsol):
    meta = wsol / "metadata" / "test"
    lines = (meta / "localization.txt").read_text().splitlines()
    (meta / "localization.txt").write_text("\n".join(x for x in lines if not x.startswith(T2)) + "\n")
    with pytest.raises(BadInput, match=f"no box for {T2}") as err:
        read_wsol_metadata(wsol)
    assert str(meta / "localization.txt") in str(err.value)
    lines = (meta / "class_labels.txt").read_text().splitlines()
    (meta / "class_labels.txt").write_text("\n".join(x for x in lines if not x.startswith(T2)) + "\n")
    with pytest.raises(BadInput, match=f"no row for {T2}") as err:
        read_wsol_metadata(wsol)
    assert str(meta / "class_labels.txt") in str(err.value)


def test_wsol_image_in_two_splits(wsol):
    with open(wsol / "metadata" / "val" / "image_ids.txt", "a") as fh:
        fh.write(f"{T2}\n")
    with open(wsol / "metadata" / "val" / "class_labels.txt", "a") as fh:
        fh.write(f"{T2},1\n")
    with open(wsol / "metadata" / "val" / "localization.txt", "a") as fh:
        fh.write(f"{T2},1,2,3,4\n")
    with pytest.raises(BadInput, match="one split only") as err:
        read_wsol_metadata(wsol)
    assert T2 in str(err.value)


def test_wsol_no_split_folder(tmp_path):
    (tmp_path / "metadata").mkdir()
    with pytest.raises(BadInput, match="no train/, val/ or test/") as err:
        read_wsol_metadata(tmp_path)
    assert str(tmp_path / "metadata") in str(err.value)


def test_wsol_blank_lines_and_crlf(wsol):
    f = wsol / "metadata" / "test" / "localization.txt"
    f.write_bytes(b"\r\n" + f.read_bytes().replace(b"\n", b"\r\n\r\n"))
    assert _by_id(read_wsol_metadata(wsol))[T2].boxes.shape == (2, 4)


# ---------------------------------------------------------------- registry, dataset, evaluator


def test_layouts_registered(ilsvrc, wsol):
    assert {"cub", "ilsvrc", "wsol"} <= set(READERS)
    assert len(read_dataset(DataConfig(root=str(ilsvrc), layout="ilsvrc", val_fraction=0.25)).split("val")) == 3
    assert len(read_dataset(DataConfig(root=str(wsol), layout="wsol")).split("test")) == 6
    with pytest.raises(BadInput, match="ilsvrc.*wsol"):
        read_dataset(DataConfig(root=str(ilsvrc), layout="imagenet"))


def test_image_sizes_read_from_headers(ilsvrc):
    wset = read_ilsvrc(ilsvrc)
    cfg = DataConfig(image_size=32)
    assert WSOLDataset(wset.split("test"), eval_transform(cfg)).image_sizes() == [VAL_SIZE] * len(wset.split("test"))
    assert WSOLDataset(wset.split("train"), eval_transform(cfg)).image_sizes() == [TRAIN_SIZE] * 6  # no boxes


def test_two_box_image_is_localised_by_its_second_box(ilsvrc):
    cfg = load_config("ilsvrc_vgg16_cam")
    wset = read_ilsvrc(ilsvrc, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    ds = WSOLDataset(wset.split("val") + wset.split("test"), eval_transform(cfg.data), with_targets=True)
    item = ds[0]
    assert tuple(item["image"].shape) == (3, cfg.data.image_size, cfg.data.image_size)
    sizes = ds.image_sizes()
    idx = next(i for i, r in enumerate(ds.records) if r.path.stem == _val_name(TWO_BOX_ID))
    rec = ds.records[idx]
    assert rec.boxes.shape == (2, 4)

    # Score maps: random for every image; for the two-box image a map whose box is GT box 2.
    rng = np.random.default_rng(0)
    maps = [rng.random((14, 14)) for _ in ds.records]
    x0, y0, x1, y1 = scale_boxes(rec.boxes[1], sizes[idx])[0]
    blob = np.zeros((RESIZE, RESIZE))
    blob[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    maps[idx] = blob

    grid = np.arange(0, 1, cfg.eval.threshold_step)
    corr = BoxCorrectness(grid)
    corr.add(maps, [r.boxes for r in ds.records], sizes)
    t = corr.threshold_index(0.5)
    assert iou_hits(corr.iou_v1, 0.5)[idx, t] and iou_hits(corr.iou_v2, 0.5)[idx, t]
    ones = np.ones(len(ds))
    summary = summarize(corr, ones, ones, threshold=0.5)
    assert summary["n_images"] == len(ds) == 12

    # The same map scored against each GT box alone: only box 2 is matched.
    for boxes, expected in ((rec.boxes, 1.0), (rec.boxes[1:], 1.0), (rec.boxes[:1], 0.0)):
        one = BoxCorrectness(grid)
        one.add([blob], [boxes], [sizes[idx]])
        s = summarize(one, [1], [1], threshold=0.5)
        assert s["gt_known"] == s["top1_loc"] == s["maxboxacc"] == expected

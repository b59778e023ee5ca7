"""The learned localizer (bcct/localizer.py): teacher maps, pseudo masks, and BC-CT's ``box``
readout through train, checkpoint, resume and eval."""

from __future__ import annotations

import json

import pytest
import torch

from bcct import checkpoint
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform as plain_transform
from bcct.errors import BadInput
from bcct.localizer import LocalizerHead, minmax, pseudo_masks, teacher_reading
from bcct.mask import MASK_BG, MASK_FG
from bcct.methods import build_method
from bcct.run import evaluate_checkpoint
from bcct.train import train


def test_minmax_scales_each_map_and_keeps_constant_maps_finite():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 2.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = minmax(maps)
    assert out[0].tolist() == [[0.0, 0.5], [1.0, 0.25]]
    assert out[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]


class _LinearBC(torch.nn.Module):
    """A BC model's classify(): GAP + linear with weights ``w``."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.tensor(w)

    def classify(self, feats):
        return (feats.mean((2, 3)) * self.w).sum(1)


def test_teacher_readings_by_hand():
    feats = torch.zeros(1, 2, 1, 3)
    feats[0, :, 0] = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])  # channel 0 / channel 1 per position
    bc = _LinearBC([1.0, -1.0])
    # Grad-CAM of a linear GAP classifier: relu(sum_c w_c / hw * A_c) = relu([1, -3, 2] / 3)
    assert torch.allclose(teacher_reading(bc, "bc")(feats), torch.tensor([[[0.5, 0.0, 1.0]]]))
    # feature norm [1, 3, 2] -> minmax [0, 1, 0.5]
    assert torch.allclose(teacher_reading(bc, "norm")(feats), torch.tensor([[[0.0, 1.0, 0.5]]]))
    assert torch.allclose(teacher_reading(bc, "bc+norm")(feats), torch.tensor([[[0.25, 0.5, 0.75]]]))
    with pytest.raises(ValueError, match="localizer.teacher"):
        teacher_reading(bc, "cam")


def test_pseudo_masks_cut_at_delta_and_keep_the_largest_part(make_tiny_cfg):
    cfg = make_tiny_cfg()  # 32 px: masks cached at 8 x 8
    ds = WSOLDataset(read_dataset(cfg.data, seed=0).split("train")[:2], plain_transform(cfg.data))

    def maps_of(images):  # two blobs at 8 x 8: a big one (value 1) and a small one (0.9)
        m = torch.zeros(len(images), 8, 8)
        m[:, 1:5, 1:5] = 1.0
        m[:, 6:8, 6:8] = 0.9
        return m

    codes = pseudo_masks(maps_of, ds, cfg, delta=0.5, device=torch.device("cpu"))
    assert len(codes) == 2 and codes[0].dtype == torch.uint8 and codes[0].shape == (8, 8)
    expected = torch.full((8, 8), MASK_BG, dtype=torch.uint8)
    expected[1:5, 1:5] = MASK_FG
    assert torch.equal(codes[0], expected)  # the small blob is dropped (largest part only)


def test_localizer_head_shapes():
    head = LocalizerHead(8, 4)
    assert head(torch.randn(2, 8, 5, 7)).shape == (2, 5, 7)


def test_localizer_needs_two_stage(make_tiny_cfg):
    cfg = make_tiny_cfg("localizer.enabled=true", "bcct.mode=end2end", method="bcct")
    with pytest.raises(BadInput, match="two_stage"):
        build_method(cfg, 3)
    cfg = make_tiny_cfg("localizer.enabled=true", "localizer.teacher=cam", method="bcct")
    with pytest.raises(BadInput, match="localizer.teacher='cam'"):  # refused before any training
        build_method(cfg, 3)


def test_bcct_trains_the_localizer_and_reports_its_box_readout(make_tiny_cfg, tmp_path):
    cfg = make_tiny_cfg("epochs=1", "bcct.warmup_epochs=0", "bcct.bc_epochs=1", "localizer.enabled=true",
                        "localizer.epochs=1", "localizer.rounds=2", method="bcct")
    run = tmp_path / "bcct"
    result = train(cfg, run, progress=False)
    assert {"cam", "agnostic", "box"} <= set(result["thresholds"])
    ckpt = checkpoint.load(run / "best.pt")
    assert bool(ckpt["model"]["localizer_ready"]) and any(k.startswith("localizer.") for k in ckpt["model"])
    prep = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["prepare"]["localizer"]
    assert {"teacher_area", "round0_loss", "round1_area", "round1_loss"} <= set(prep)
    metrics = evaluate_checkpoint(str(run / "best.pt"), split="test", progress=False)
    assert metrics["readout"] == "cam"  # the paper's readout stays the top level
    box = metrics["box"]
    assert box["threshold"] == ckpt["thresholds"]["box"] and box["threshold_source"] == "given"
    assert {"cls_top1", "top1_loc", "top5_loc", "gt_known", "maxboxacc_v2"} <= set(box)
    assert box["cls_top1"] == metrics["cls_top1"]  # the class comes from the CT classifier


def test_best_on_val_picks_the_best_top1_loc_readout_with_a_threshold():
    from bcct.api import best_on_val

    val = {"cam": {"top1_loc": 0.5, "gt_known": 0.6}, "agnostic": {"top1_loc": 0.7, "gt_known": 0.8},
           "box": {"top1_loc": 0.7, "gt_known": 0.9}}
    assert best_on_val(val, {"cam": 0.2, "agnostic": 0.3, "box": 0.4}) == "agnostic"  # tie: the earlier one
    assert best_on_val(val, {"cam": 0.2, "box": 0.4}) == "box"  # only readouts with a val threshold
    assert best_on_val({"feature_norm": {"gt_known": 0.7}}, {"feature_norm": 0.5}) == "feature_norm"
    assert best_on_val({"cam": {"n_images": 3, "localization": "needs boxes"}}, {"cam": 0.3}) is None
    assert best_on_val({}, {}) is None


def test_localize_defaults_to_the_readout_best_on_val_and_says_so(make_tiny_cfg, tmp_path, capsys):
    from bcct.api import best_on_val, load
    from bcct.cli import main
    from PIL import Image

    cfg = make_tiny_cfg("epochs=1", "bcct.warmup_epochs=0", "bcct.bc_epochs=1", "localizer.enabled=true",
                        "localizer.epochs=1", method="bcct")
    run = tmp_path / "bcct"
    train(cfg, run, progress=False)
    ckpt = checkpoint.load(run / "best.pt")
    expected = best_on_val(ckpt["val"], ckpt["thresholds"])
    loc = load(run / "best.pt", device="cpu")
    assert loc.default_readout == expected
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (120, 60, 30)).save(photo)
    assert loc.localize(str(photo))[0].readout == expected
    assert main(["localize", "--checkpoint", str(run / "best.pt"), str(photo), "--out", str(tmp_path / "loc"),
                 "--no-overlays"]) == 0
    out = capsys.readouterr().out
    assert f"with the {expected} readout (best on val)" in out
    result = json.loads((tmp_path / "loc" / "boxes.json").read_text())
    assert result["readout"] == expected and result["readout_choice"] == "val"

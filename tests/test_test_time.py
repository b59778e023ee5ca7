"""Test-time scales (``eval.scales``): the evaluator, the PyTorch localizer and the ONNX export
read the same sides and combine them with the same code."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bcct import checkpoint, test_time
from bcct.api import Localizer
from bcct.boxes import box_at_threshold, prepare_scoremap, unscale_boxes
from bcct.data.cub import read_cub
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform as make_test_transform
from bcct.errors import BadInput
from bcct.evaluate import predict
from bcct.run import evaluate_checkpoint, load_method, thresholds_on_val

SIDES = [32, 48]  # the tiny set's input side and one above it


def test_sides_default_to_the_input_size_and_are_checked():
    assert test_time.input_sides([], 224) == [224]
    assert test_time.input_sides([224, 288], 224) == [224, 288]
    for bad in ([224, 224], [16]):
        with pytest.raises(BadInput, match="eval.scales"):
            test_time.input_sides(bad, 224)


def test_maps_are_min_max_scaled_resized_to_the_largest_and_averaged():
    rng = np.random.default_rng(0)
    small, large = rng.random((2, 4, 4), dtype=np.float32) * 5, rng.random((2, 6, 6), dtype=np.float32) - 3
    one = test_time.average_maps([small])
    assert one is small or np.array_equal(one, small)  # one side: as it is
    got = test_time.average_maps([small, large])
    assert got.shape == (2, 6, 6)
    for i in range(2):
        s = (small[i] - small[i].min()) / np.ptp(small[i])
        big = (large[i] - large[i].min()) / np.ptp(large[i])
        np.testing.assert_allclose(got[i], (cv2.resize(s, (6, 6), interpolation=cv2.INTER_LINEAR) + big) / 2,
                                   rtol=1e-6, atol=1e-6)
    assert not test_time.minmax(np.ones((1, 3, 3))).any()  # a flat map is 0, not NaN
    p = test_time.average_probabilities([np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])])
    np.testing.assert_allclose(p, [[0.4, 0.6]])


@pytest.fixture(scope="module")
def tiny(tiny_cam_checkpoint, tiny_data):
    method, cfg, saved = load_method(str(tiny_cam_checkpoint), device="cpu")
    ds = WSOLDataset(read_cub(tiny_data).split("test"), make_test_transform(cfg.data))
    return method, cfg, saved, ds


def test_predict_reads_every_side_and_averages(tiny):
    method, cfg, _, ds = tiny
    cfg.eval.scales = SIDES
    try:
        pred = predict(method, ds, cfg, torch.device("cpu"))
    finally:
        cfg.eval.scales = []
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    labels = torch.tensor([r.label for r in ds.records])
    with torch.no_grad():
        outs = [method(F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)) for s in SIDES]
    probs = torch.stack([o["logits"].float().softmax(1) for o in outs]).mean(0)
    np.testing.assert_array_equal(pred["top1"], (probs.argmax(1) == labels).numpy())
    per_side = [method.score_maps(o, labels)["cam"].float().numpy() for o in outs]
    assert per_side[0].shape[1:] != per_side[1].shape[1:]
    maps = test_time.average_maps(per_side)
    assert maps.shape == per_side[1].shape  # the largest side's map size
    np.testing.assert_allclose(pred["maps"]["cam"], maps, rtol=1e-5, atol=1e-5)


def test_the_localizer_reads_the_sides_the_evaluator_reads(tiny, tiny_cam_checkpoint):
    method, cfg, saved, ds = tiny
    cfg.eval.scales = SIDES
    try:
        loc = Localizer(method, cfg, saved, checkpoint=str(tiny_cam_checkpoint))
        pred = predict(method, ds, cfg, torch.device("cpu"))
    finally:
        cfg.eval.scales = []
    tau = saved["thresholds"]["cam"]
    checked = 0
    for i, (rec, size, p) in enumerate(zip(ds.records, ds.image_sizes(), loc.localize([r.path for r in ds.records]))):
        if p.class_index == rec.label:  # the evaluator's map is the GT class's
            want = box_at_threshold(prepare_scoremap(pred["maps"]["cam"][i]), tau)
            np.testing.assert_allclose(p.boxes, unscale_boxes(want, size))
            checked += 1
    assert checked > 0


def test_other_sides_than_training_choose_the_threshold_on_val_again(tiny, tiny_cam_checkpoint):
    method, cfg, saved, _ = tiny
    same = evaluate_checkpoint(str(tiny_cam_checkpoint), split="test", progress=False)
    assert same["threshold"] == pytest.approx(saved["thresholds"]["cam"])  # the run's own sides: its threshold
    other = evaluate_checkpoint(str(tiny_cam_checkpoint), split="test", progress=False,
                                overrides=[f"eval.scales={SIDES}"])
    cfg.eval.scales = SIDES
    try:
        want = thresholds_on_val(method, cfg, read_dataset(cfg.data, seed=cfg.seed), {})["cam"]
    finally:
        cfg.eval.scales = []
    assert other["threshold"] == pytest.approx(want)


def test_export_of_a_multi_side_checkpoint_chooses_one_side_thresholds(tiny_cam_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    from bcct.export import export_onnx

    saved = checkpoint.load(tiny_cam_checkpoint)
    saved["config"]["eval"]["scales"] = SIDES
    multi = tmp_path / "multi.pt"
    checkpoint.save_atomic(saved, multi)
    saved["thresholds"] = {"cam": 0.99}  # what averaged sides chose (made up): the graph must not use it
    checkpoint.save_atomic(saved, multi)
    meta = export_onnx(multi, tmp_path / "m.onnx")
    method, cfg, _ = load_method(str(multi), device="cpu")
    cfg.eval.scales = []
    want = thresholds_on_val(method, cfg, read_dataset(cfg.data, seed=cfg.seed), {})
    assert meta["thresholds"] == pytest.approx(want)
    saved["config"]["data"]["root"] = str(tmp_path / "gone")
    checkpoint.save_atomic(saved, multi)
    with pytest.raises(BadInput, match="export where the data is"):
        export_onnx(multi, tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()

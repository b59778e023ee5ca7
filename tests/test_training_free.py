"""Training-free maps (bcct/feature_maps.py) against hand-worked values, and the
feature_norm / pc1 / ddt methods through train, checkpoint and eval."""

from __future__ import annotations

import json

import pytest
import torch

from bcct import checkpoint, feature_maps
from bcct.run import evaluate_checkpoint
from bcct.train import train


def test_feature_norm_is_the_channel_l2_norm():
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    feats[0, :, 1, 1] = torch.tensor([0.0, -2.0])
    assert feature_maps.feature_norm(feats).tolist() == [[[5.0, 0.0], [0.0, 2.0]]]


def test_pc1_recovers_a_rank_one_pattern_with_the_norms_sign():
    pattern = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    direction = torch.tensor([1.0, -2.0, 2.0]) / 3
    feats = (direction[:, None, None] * pattern)[None]  # [1,3,2,2], rank one over positions
    m = feature_maps.pc1(feats)[0]
    # the projection is the centred pattern (unit direction), oriented like the norm
    assert torch.allclose(m, pattern - pattern.mean(), atol=1e-5)
    assert torch.allclose(feature_maps.pc1(-feats)[0], m, atol=1e-5)  # sign fixed by the norm, not the data's


def test_descriptor_pca_finds_the_main_direction_and_orients_it():
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([0.6, 0.8, 0.0])
    t = torch.rand(4, 1, 5, 5, generator=g) * 10  # large spread along `direction`
    feats = direction[None, :, None, None] * t + 0.01 * torch.randn(4, 3, 5, 5, generator=g)
    pca = feature_maps.DescriptorPCA(3)
    pca.add(feats[:2])
    pca.add(feats[2:])  # accumulated batch by batch
    mean, comp = pca.fit()
    assert pca.count == 100
    assert torch.allclose(comp, direction, atol=1e-3)  # positive: the norm grows along it
    assert torch.allclose(mean, feats.mean((0, 2, 3)), atol=1e-5)
    m = feature_maps.ddt(feats, mean, comp)
    assert torch.allclose(m, (t[:, 0] - t.mean()), atol=0.05)


def test_with_flip_averages_with_the_mirrored_map():
    images = torch.arange(6.0).view(1, 1, 2, 3)
    identity = torch.nn.Identity()
    m = feature_maps.with_flip(lambda x: x[:, 0], images, identity)
    assert torch.equal(m, images[:, 0])  # a map that mirrors with the image is unchanged
    left = feature_maps.with_flip(lambda x: torch.zeros_like(x[:, 0]).index_fill(-1, torch.tensor([0]), 1.0),
                                  images, identity)
    assert left.tolist() == [[[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]]]


@pytest.mark.parametrize("name", ["feature_norm", "pc1", "ddt"])
def test_training_free_method_records_config_threshold_and_evaluates(name, make_tiny_cfg, tmp_path):
    run = tmp_path / name
    result = train(make_tiny_cfg(method=name), run, progress=False)
    assert {"config.yaml", "metrics.jsonl", "best.pt", "last.pt"} <= {p.name for p in run.iterdir()}
    ckpt = checkpoint.load(run / "best.pt")
    assert set(ckpt["thresholds"]) == {name} and ckpt["frozen"] == ["backbone."]
    assert not [k for k in ckpt["model"] if k.startswith("backbone.")]  # rebuilt from model.pretrained
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["train"] == {}  # no epoch of training
    val = result["val"][name]
    assert "cls_top1" not in val and "top1_loc" not in val  # no classifier: no class, no top-1 loc
    assert 0 <= val["gt_known"] <= 1 and 0 <= val["maxboxacc_v2"] <= 1
    if name == "ddt":
        assert log[0]["prepare"]["ddt_descriptors"] > 0 and bool(ckpt["model"]["ddt_fitted"])
    metrics = evaluate_checkpoint(str(run / "best.pt"), split="test", progress=False)
    assert metrics["readout"] == name and metrics["threshold"] == ckpt["thresholds"][name]
    assert metrics["threshold_source"] == "given" and "top1_loc" not in metrics


def test_localize_and_export_a_training_free_checkpoint(make_tiny_cfg, tmp_path, tiny_data):
    """localize reads the map (no class: null fields); export refuses in one line (no classifier)."""
    from bcct.cli import main
    from bcct.errors import BadInput
    from bcct.export import export_onnx

    run = tmp_path / "fn"
    train(make_tiny_cfg(method="feature_norm"), run, progress=False)
    photo = next((tiny_data / "images").rglob("*.jpg"))
    assert main(["localize", "--checkpoint", str(run / "best.pt"), str(photo), "--out", str(tmp_path / "loc")]) == 0
    entry = json.loads((tmp_path / "loc" / "boxes.json").read_text())["images"][0]
    assert entry["class_name"] is None and entry["score"] is None and entry["top5"] == []
    assert len(entry["boxes"]) == 1 and (tmp_path / "loc" / entry["overlay"]).is_file()
    with pytest.raises(BadInput, match="no classifier"):
        export_onnx(run / "best.pt", tmp_path / "fn.onnx")


def test_a_training_free_run_is_reused_whatever_the_training_precision(make_tiny_cfg, tmp_path):
    """bcct table / bench_real reuse a finished run of the same config; amp changes nothing
    a training-free method computes, so a run made in fp32 serves an amp=auto table."""
    from bcct.table import train_or_reuse

    run = tmp_path / "fn"
    assert train_or_reuse(make_tiny_cfg(method="feature_norm"), run, progress=False) == "trained"
    assert train_or_reuse(make_tiny_cfg("amp=auto", method="feature_norm"), run, progress=False) == "reused"
    cam = tmp_path / "cam"
    assert train_or_reuse(make_tiny_cfg("epochs=1"), cam, progress=False) == "trained"
    assert train_or_reuse(make_tiny_cfg("epochs=1", "amp=bf16"), cam, progress=False) == "trained"

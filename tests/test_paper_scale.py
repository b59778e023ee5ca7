"""Paper scale on GPUs (issue 17, defects 9 and 10), checked on the CPU: the ILSVRC recipe
keeps 8 GPUs busy, the two-stage mask cache is one uint8 tensor gathered without pickling,
checkpoints are written while training goes on, and the paper's VGG-16 variants (ACoL's
stride-8 CT, the BC that keeps pool5/fc6/fc7) are one key away. No weights are downloaded."""

from __future__ import annotations

import threading

import pytest
import torch

from bcct import checkpoint
from bcct.config import load_config
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import train_transform
from bcct.methods import build_method
from bcct.two_stage import cache_masks


@pytest.mark.parametrize("name", ["ilsvrc_vgg16_bcct", "ilsvrc_vgg16_cam"])
def test_ilsvrc_recipe_keeps_eight_gpus_busy(name):
    cfg = load_config(name)
    o = cfg.optim
    assert o.batch_size // 8 >= 32 and o.batch_size % 8 == 0  # 32 images per GPU, not 4
    scale = o.batch_size / 32  # the linear scaling rule, for every learning rate the recipe sets
    assert (o.lr, o.lr_backbone) == pytest.approx((1e-3 * scale, 1e-4 * scale))
    if cfg.method == "bcct":
        assert cfg.bcct.bc_lr == pytest.approx(1e-3 * scale)
    assert cfg.data.workers >= 8 and o.checkpoint_every >= 1000 and o.log_every >= 20


def test_mask_cache_is_one_uint8_tensor_in_shared_memory(make_tiny_cfg, monkeypatch):
    def pickled(*args, **kwargs):
        raise AssertionError("the mask cache must not go through all_gather_object")

    monkeypatch.setattr(torch.distributed, "all_gather_object", pickled)
    cfg = make_tiny_cfg("bcct.mode=two_stage", "model.pretrained=none", method="bcct")
    wset = read_dataset(cfg.data, seed=cfg.seed)
    ds = WSOLDataset(wset.split("train"), train_transform(cfg.data))
    masks = cache_masks(build_method(cfg, wset.num_classes), ds, torch.device("cpu"))
    assert torch.is_tensor(masks) and masks.dtype == torch.uint8 and masks.shape == (len(ds), 8, 8)
    assert masks.is_shared()  # workers read it without a copy
    ds.cached_masks = masks
    assert ds[0]["cached_mask"].shape == (32, 32)


def test_checkpoints_are_written_while_training_goes_on(tmp_path, monkeypatch):
    """BackgroundWriter returns before the write ends (the write is held here by an event,
    not timed) and writes the state as it was when save() was called."""
    release, written = threading.Event(), []
    save = checkpoint.save_atomic

    def held(obj, path):
        release.wait()
        written.append(path)
        save(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", held)
    writer = checkpoint.BackgroundWriter()
    state = {"format": checkpoint.FORMAT, "w": torch.zeros(3)}
    writer.save(state, tmp_path / "last.pt")
    state["w"] += 1  # the next steps change the weights
    assert written == []  # save() came back before the write
    release.set()
    writer.wait()
    assert written == [tmp_path / "last.pt"]
    assert torch.equal(checkpoint.load(tmp_path / "last.pt")["w"], torch.zeros(3))


def test_acol_ct_has_stride_8_and_xavier_initialised_new_convs():
    """model.backbone=vgg16_acol: ACoL's VGG-16 (3x3 stride-1 pool4 and pool5), 28x28 maps at
    224 px (here 8x8 at 64 px); head_init auto -> xavier (zero biases; PyTorch's are not)."""
    from bcct.ct_model import CTModel

    cfg = load_config("cub_vgg16_bcct", ["model.backbone=vgg16_acol", "model.pretrained=none", "model.head_width=16"])
    ct = CTModel(cfg.model, 5, mask_branch=True)
    assert ct.backbone.stride == 8
    out = ct(torch.zeros(1, 3, 64, 64))
    assert out["cams"].shape == (1, 5, 8, 8) and out["branch"].shape == (1, 8, 8)
    convs = [m for m in [*ct.head.modules(), *ct.branch.modules()] if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(float(m.bias.detach().abs().max()) == 0 for m in convs)
    plain = CTModel(load_config("cub_vgg16_bcct", ["model.pretrained=none", "model.head_width=16"]).model, 5)
    assert plain.backbone.stride == 16 and float(plain.head.classifier.bias.detach().abs().max()) > 0  # unchanged default


def test_paper_bc_keeps_pool5_fc6_fc7_and_trains_only_the_final_fc():
    cfg = load_config("cub_vgg16_bcct", ["model.pretrained=none", "bcct.bc_head=fc", "model.head_width=16"])
    method = build_method(cfg, 5)
    assert not method.bc.fc.training  # from construction: a resumed two-stage run caches masks before any .train()
    method.train()
    bc = method.bc
    assert [type(m).__name__ for m in bc.fc] == ["MaxPool2d", "AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU",
                                                 "Dropout", "Linear", "ReLU", "Dropout"]
    assert [n for n, p in bc.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    assert bc.classifier.in_features == 4096 and not bc.fc.training
    images = torch.randn(2, 3, 64, 64)
    maps, feats, logits = method.gradient_maps(images)
    assert maps.shape == (2, 64, 64) and feats.shape == (2, 512, 4, 4) and logits.shape == (2,)
    assert method.frozen == ()  # random init: nothing to rebuild from, everything is saved

"""The baselines of the paper's Tables 1-2 (backprop, HaS, ACoL, SPG, ADL): shapes, a loss that
falls on a fixed batch, and what makes each method itself, checked on constructed inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bcct import class_maps
from bcct.config import from_dict, load_config, to_dict
from bcct.errors import BadInput
from bcct.methods import build_method
from bcct.methods.acol import erase
from bcct.methods.adl import ADL
from bcct.methods.has import grid_pixels, hide_patches
from bcct.methods.spg import masked_bce, spg_mask

BASELINES = ("backprop", "has", "acol", "spg", "adl")
N_CLASSES = 3
PRIMARY = {"backprop": "saliency"}


@pytest.fixture(scope="module")
def batch():
    """A fixed batch of 8 normalised 32 px images, 3 classes."""
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(8, 3, 32, 32, generator=g), "label": torch.arange(8) % N_CLASSES}


def _method(make_tiny_cfg, name: str, *extra: str):
    torch.manual_seed(0)
    return build_method(make_tiny_cfg(*extra, method=name), N_CLASSES)


# -- every baseline --------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_shapes_and_readout(make_tiny_cfg, batch, name):
    method = _method(make_tiny_cfg, name).eval()
    with torch.no_grad():  # as the evaluator calls it
        out = method(batch["image"])
        maps = method.score_maps(out, batch["label"])
    assert out["logits"].shape == (8, N_CLASSES)
    assert out["cams"].shape == (8, N_CLASSES, 4, 4)  # small_vgg: stride 8 at 32 px
    primary = next(iter(maps))
    assert primary == PRIMARY.get(name, "cam")
    size = (32, 32) if name == "backprop" else (4, 4)
    assert maps[primary].shape == (8, *size) and torch.isfinite(maps[primary]).all()


@pytest.mark.parametrize("name", BASELINES)
def test_loss_falls_on_a_fixed_batch(make_tiny_cfg, batch, name):
    method = _method(make_tiny_cfg, name).train()
    opt = torch.optim.SGD(method.param_groups(), momentum=0.9)
    losses = []
    for _ in range(10):
        loss, logs = method.training_step(batch)
        assert logs["loss"] == pytest.approx(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


# -- method hyperparameters from cfg.extra ---------------------------------------------------

def test_extra_overrides_reach_the_method_and_survive_a_checkpoint(make_tiny_cfg):
    cfg = make_tiny_cfg("extra.acol.erase_threshold=0.7", method="acol")
    assert build_method(cfg, N_CLASSES).params.erase_threshold == 0.7
    assert from_dict(to_dict(cfg)).extra == {"acol": {"erase_threshold": 0.7}}
    with pytest.raises(BadInput, match="extra.acol: unknown key"):
        build_method(make_tiny_cfg("extra.acol.threshold=0.7", method="acol"), N_CLASSES)
    with pytest.raises(BadInput, match="erase_threshold"):
        build_method(make_tiny_cfg("extra.acol.erase_threshold=1.5", method="acol"), N_CLASSES)
    assert load_config("synth").extra == {}


# -- backprop (Simonyan et al.) --------------------------------------------------------------

@pytest.mark.parametrize("chunk", [16, 2])  # 2: the batch's gradients in several backward passes
def test_backprop_saliency_is_the_per_image_input_gradient(make_tiny_cfg, batch, chunk, monkeypatch):
    from bcct.methods import backprop

    monkeypatch.setattr(backprop, "SALIENCY_CHUNK", chunk)
    method = _method(make_tiny_cfg, "backprop").eval()
    with torch.no_grad():
        out = method(batch["image"])
        sal = method.score_maps(out, batch["label"])["saliency"]
    assert len(sal) == len(batch["image"]) > 2
    for i in range(len(sal)):
        x = batch["image"][i : i + 1].clone().requires_grad_(True)
        score = method.model(x)["logits"][0, batch["label"][i]]
        (g,) = torch.autograd.grad(score, x)
        torch.testing.assert_close(sal[i], g.abs().amax(dim=1)[0])
    assert sal.min() >= 0


# -- Hide-and-Seek -----------------------------------------------------------------------------

def test_has_grid_scales_with_the_input():
    assert grid_pixels(32, 224) == 32 and grid_pixels(32, 64) == 9 and grid_pixels(32, 32) == 5


def test_has_hides_grid_patches_with_the_fill_value():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 10, 10, generator=g)
    fill = torch.tensor([0.25, -0.5, 1.0])
    out, hidden = hide_patches(images, patch=4, prob=0.5, fill=fill, generator=g)
    assert 0 < hidden.float().mean() < 1
    # patches are aligned to a 4 px grid from the top-left corner (border cells clipped)
    for y0 in range(0, 10, 4):
        for x0 in range(0, 10, 4):
            cell = hidden[:, y0 : y0 + 4, x0 : x0 + 4].flatten(1)
            assert (cell == cell[:, :1]).all()
    # hidden pixels hold exactly the fill value, the others are untouched
    for c in range(3):
        assert (out[:, c][hidden] == fill[c]).all()
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~hidden], images.permute(1, 0, 2, 3)[:, ~hidden])


def test_has_fill_is_the_training_mean_and_nothing_is_hidden_at_test(make_tiny_cfg, batch):
    from bcct.data.dataset import WSOLDataset
    from bcct.data.readers import read_dataset
    from bcct.data.transforms import test_transform, train_transform

    cfg = make_tiny_cfg(method="has")
    method = build_method(cfg, N_CLASSES)
    records = read_dataset(cfg.data, seed=cfg.seed).split("train")
    stats = method.prepare(WSOLDataset(records, train_transform(cfg.data)), None, torch.device("cpu"), progress=False)
    assert stats["has_fill_images"] == len(records)  # fewer than 256: every one
    imgs = torch.stack([WSOLDataset(records, test_transform(cfg.data))[i]["image"] for i in range(len(records))])
    torch.testing.assert_close(method.fill, imgs.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)

    method.train()
    hidden_images, hidden = method.hide(batch["image"])
    assert hidden.any()
    assert (hidden_images[:, 0][hidden] == method.fill[0]).all()
    method.eval()
    same, none = method.hide(batch["image"])
    assert same is batch["image"] and not none.any()


# -- ACoL --------------------------------------------------------------------------------------

def test_acol_erases_where_the_normalised_cam_reaches_the_threshold():
    feats = torch.ones(1, 2, 3, 3)
    cam_a = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 10.0]]])  # normalised: /10
    erased = erase(feats, class_maps.normalize_maps(cam_a), 0.6)
    expected_zero = torch.tensor([[False, False, False], [False, False, False], [True, True, True]])
    assert (erased[0, :, expected_zero] == 0).all() and (erased[0, :, ~expected_zero] == 1).all()


class _Record(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes, self.seen = num_classes, None

    def forward(self, x):
        self.seen = x.detach().clone()
        return torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])


def test_acol_branch_b_sees_the_features_erased_by_classifier_a(make_tiny_cfg):
    method = _method(make_tiny_cfg, "acol", "extra.acol.erase_threshold=0.5")
    feats = torch.rand(2, 4, 3, 3) + 0.1
    cams_a = torch.zeros(2, N_CLASSES, 3, 3)
    cams_a[0, 1] = torch.arange(9.0).view(3, 3)  # image 0, class 1: normalised k/8
    cams_a[1, 2, 0, 0] = 5.0  # image 1, class 2: one peak
    method.head_b = _Record(N_CLASSES)
    method.branch_b(feats, cams_a, torch.tensor([1, 2]))
    seen = method.head_b.seen
    zero0 = (torch.arange(9.0).view(3, 3) / 8) >= 0.5
    assert (seen[0][:, zero0] == 0).all() and torch.equal(seen[0][:, ~zero0], feats[0][:, ~zero0])
    assert (seen[1][:, 0, 0] == 0).all() and (seen[1].flatten(1)[:, 1:] > 0).all()


def test_acol_erases_nothing_where_a_half_precision_map_is_flat(make_tiny_cfg):
    """Under fp16 autocast the class maps are fp16, where 1e-12 is 0: a constant map must still
    normalise to 0 (not 0/0 = NaN, which is never below the threshold, so every feature of
    the image would be erased); the other image is erased as in fp32."""
    method = _method(make_tiny_cfg, "acol", "extra.acol.erase_threshold=0.5")
    feats = (torch.rand(2, 4, 3, 3) + 0.1).half()
    cams_a = torch.full((2, N_CLASSES, 3, 3), 2.0, dtype=torch.float16)  # image 0: a constant map
    cams_a[1, 2] = torch.arange(9.0).view(3, 3)  # image 1, class 2: normalised k/8
    method.head_b = _Record(N_CLASSES)
    _, attention = method.branch_b(feats, cams_a, torch.tensor([1, 2]))
    assert attention.dtype == torch.float16 and torch.equal(attention[0], torch.zeros(3, 3, dtype=torch.float16))
    seen = method.head_b.seen
    zero1 = (torch.arange(9.0).view(3, 3) / 8) >= 0.5
    assert torch.equal(seen[0], feats[0])  # nothing erased
    assert (seen[1][:, zero1] == 0).all() and torch.equal(seen[1][:, ~zero1], feats[1][:, ~zero1])


def test_acol_has_two_classifiers_and_two_cross_entropies(make_tiny_cfg, batch):
    method = _method(make_tiny_cfg, "acol").train()
    assert isinstance(method.head_a, class_maps.CAMHead) and isinstance(method.head_b, class_maps.CAMHead)
    assert method.head_a is not method.head_b
    loss, logs = method.training_step(batch)
    logs = {k: float(v) for k, v in logs.items()}  # 0-d tensors on the device: the loop reads them every N steps
    assert logs["loss"] == pytest.approx(logs["cls_loss_a"] + logs["cls_loss_b"], rel=1e-5)
    loss.backward()
    assert method.head_a.classifier.weight.grad.abs().sum() > 0
    assert method.head_b.classifier.weight.grad.abs().sum() > 0
    method.eval()
    with torch.no_grad():
        m = method.score_maps(method(batch["image"]), batch["label"])["cam"]
    assert m.min() >= 0 and m.max() <= 1


# -- SPG ---------------------------------------------------------------------------------------

def test_spg_mask_thresholds_on_a_hand_map():
    m = torch.tensor([[[0.9, 0.7, 0.5], [0.3, 0.05, 0.01], [0.69, 0.06, 0.0]]])
    target, valid = spg_mask(m, high=0.7, low=0.05, min_fg_fraction=0)
    fg = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    bg = torch.tensor([[[0, 0, 0], [0, 1, 1], [0, 0, 1]]], dtype=torch.bool)
    assert torch.equal(target.bool(), fg)
    assert torch.equal(valid, fg | bg)  # 0.5, 0.3, 0.69, 0.06 are ignored


def test_spg_mask_falls_back_to_a_fraction_of_the_max():
    m = torch.tensor([[[0.5, 0.4, 0.3], [0.2, 0.1, 0.0], [0.0, 0.0, 0.0]]])
    target, valid = spg_mask(m, high=0.7, low=0.05, min_fg_fraction=1 / 9)  # nothing >= 0.7: use 0.7 * 0.5
    assert torch.equal(target[0, 0], torch.tensor([1.0, 1.0, 0.0])) and target[0, 1:].sum() == 0


def test_spg_bce_ignores_the_band():
    logits = torch.tensor([[[2.0, -1.0, 5.0]]])
    target = torch.tensor([[[1.0, 0.0, 0.0]]])
    valid = torch.tensor([[[True, True, False]]])
    expected = (torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(masked_bce(logits, target, valid), expected)


def test_spg_and_spg_plain(make_tiny_cfg, batch):
    spg = _method(make_tiny_cfg, "spg").train()
    _, logs = spg.training_step(batch)
    logs = {k: float(v) for k, v in logs.items()}  # 0-d tensors on the device
    assert {"cls_loss", "spg_deep", "spg_shallow", "spg_c"} <= set(logs)
    assert logs["loss"] == pytest.approx(logs["cls_loss"] + logs["spg_deep"] + logs["spg_shallow"] + logs["spg_c"],
                                         rel=1e-5)
    out = spg(batch["image"])
    assert out["side_shallow"].shape == (8, 8, 8) and out["side_deep"].shape == (8, 4, 4)  # stride 4 and 8
    plain = _method(make_tiny_cfg, "spg", "extra.spg.plain=true").train()
    _, logs = plain.training_step(batch)
    logs = {k: float(v) for k, v in logs.items()}
    assert not any(k.startswith("spg_") for k in logs) and logs["loss"] == pytest.approx(logs["cls_loss"])
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in spg.parameters())


# -- ADL ---------------------------------------------------------------------------------------

def test_adl_drop_mask_importance_map_and_identity_at_eval():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 8.0]], [[1.0, 0.0], [1.0, 2.0]]]])  # channel mean 1, 1, 2, 5
    att = torch.tensor([[[[1.0, 1.0], [2.0, 5.0]]]])
    drop = ADL(drop_rate=1.0, drop_threshold=0.8).train()  # always the drop mask: mean < 0.8 * 5
    assert torch.equal(drop.drop_mask(att), torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]]))
    torch.testing.assert_close(drop(x), x * torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]]))
    keep = ADL(drop_rate=0.0, drop_threshold=0.8).train()  # always the importance map
    torch.testing.assert_close(keep(x), x * torch.sigmoid(att))
    drop.eval()
    assert drop(x) is x


def test_adl_layers_sit_after_pool2_before_pool3_and_at_the_end(make_tiny_cfg):
    method = _method(make_tiny_cfg, "adl")
    layers = list(method.model.backbone)
    at = [i for i, m in enumerate(layers) if isinstance(m, ADL)]
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    assert len(at) == 3 and len(pools) == 3
    assert at[0] == pools[1] + 1  # after the 2nd max-pool
    assert at[1] == pools[2] - 1  # just before the 3rd (end of the 128-channel block)
    assert at[2] == len(layers) - 1  # at the end
    assert (method.model.backbone.out_channels, method.model.backbone.stride) == (256, 8)
    assert all(m.drop_threshold == 0.8 and m.drop_rate == 0.75 for m in layers if isinstance(m, ADL))


# -- backbones standing in for GoogLeNet / ResNet; ADL's VGG-16 positions -----------------------

@pytest.mark.slow
def test_inception_resnet_backbones_and_adl_on_vgg16():
    from bcct.backbones import build_backbone
    from bcct.methods.adl import adl_positions
    from bcct.methods.common import probe_shapes

    inc = build_backbone("inception_v3", "none").eval()
    res = build_backbone("resnet50", "none").eval()
    with torch.no_grad():
        assert inc(torch.zeros(1, 3, 75, 75)).shape == (1, 768, 3, 3)
        assert res(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 4, 4)  # layer4 at stride 1: 64 / 16
    assert (inc.out_channels, inc.stride, res.out_channels, res.stride) == (768, 16, 2048, 16)
    assert "Mixed_6e.branch_pool.conv.weight" in inc.state_dict() and "layer4.2.conv3.weight" in res.state_dict()

    vgg = build_backbone("vgg16", "none")
    # torchvision vgg16.features[:-1]: pool3 = 16, conv4_3's ReLU = 22, conv5_3's ReLU = 29 (ADL: 3, 43, 53)
    assert adl_positions("after_down:-2,before_down:-1,end", probe_shapes(vgg)) == [16, 22, 29]


# -- every baseline on EfficientNet-Lite0 (cub_cpu's backbone), placed by stride -----------------

LITE_METHODS = ("backprop", "has", "acol", "spg_plain", "spg", "adl")


def _lite_method(name: str):
    """``name`` built as ``--config cub_cpu`` builds it (frozen up to blocks.4, BN head), without
    the ImageNet weights and with a 16-wide head: the placement depends on the architecture only."""
    from bcct.config import load_config

    torch.manual_seed(0)
    extra = ["extra.spg.plain=true"] if name == "spg_plain" else []
    cfg = load_config("cub_cpu", ["model.pretrained=none", "model.head_width=16", *extra],
                      method="spg" if name == "spg_plain" else name)
    return build_method(cfg, N_CLASSES)


@pytest.fixture(scope="module")
def lite_batch():
    """4 normalised 64 px images: 4x4 maps at stride 16, 8x8 at stride 8."""
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(4, 3, 64, 64, generator=g), "label": torch.tensor([0, 1, 2, 0])}


@pytest.mark.parametrize("name", LITE_METHODS)
def test_every_baseline_trains_and_reads_out_on_efficientnet_lite0(name, lite_batch):
    method = _lite_method(name).train()
    loss, logs = method.training_step(lite_batch)
    assert torch.isfinite(loss) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    trained = [p for g in method.param_groups() for p in g["params"]]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    method.eval()
    with torch.no_grad():
        out = method(lite_batch["image"])
        maps = method.score_maps(out, lite_batch["label"])
    assert out["cams"].shape == (4, N_CLASSES, 4, 4)
    primary = maps[next(iter(maps))]
    assert primary.shape == ((4, 64, 64) if name == "backprop" else (4, 4, 4)) and torch.isfinite(primary).all()


def test_adl_on_efficientnet_lite0_sits_where_vgg16_has_it_by_stride():
    """After blocks.2.0 (the first block at stride 8: VGG's pool3), after blocks.2.1 (the end of
    the stride-8 stage, before blocks.3.0 downsamples: conv4_3) and after bn2 (the 1280-channel
    features: conv5_3); parameter-free, so the network and its state-dict keys are CAM's."""
    from bcct.backbones import backbone_layers
    from bcct.methods.common import probe_shapes

    method = _lite_method("adl")
    backbone = method.model.backbone
    assert [n for n, m in backbone.named_modules() if isinstance(m, ADL)] == ["blocks.2.adl_0", "blocks.2.adl_1", "adl_bn2"]
    layers = backbone_layers(backbone)
    shapes = probe_shapes(backbone)  # (channels, h, w) after each layer for a 96 px input
    before = {layers[i + 1][0]: (layers[i][0], shapes[i + 1][0], 96 // shapes[i + 1][-1])
              for i in range(len(layers) - 1) if isinstance(layers[i + 1][1], ADL)}
    # each ADL layer: (the layer it follows, channels, stride there)
    assert before == {"blocks.2.adl_0": ("blocks.2.0", 40, 8), "blocks.2.adl_1": ("blocks.2.1", 40, 8),
                      "adl_bn2": ("bn2", 1280, 16)}
    assert layers[-1][0] == "adl_bn2"  # the last layer: the CAM head reads its output
    assert all(m.drop_threshold == 0.8 and m.drop_rate == 0.75 for _, m in layers if isinstance(m, ADL))

    cam = _lite_method("cam").eval()
    assert list(method.state_dict()) == list(cam.state_dict())
    method.load_state_dict(cam.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # ADL is the identity at test time
        torch.testing.assert_close(method.eval()(x)["logits"], cam(x)["logits"])


def test_spg_on_efficientnet_lite0_reads_the_end_of_the_stride_8_stage_and_the_features(lite_batch):
    """Shallow tap: blocks.2.1 (40 channels, stride 8; SPG's Mixed_5d, the block before the
    last downsampling), deep tap: the 1280-channel backbone output at stride 16."""
    from bcct.backbones import backbone_layers

    method = _lite_method("spg").train()
    assert backbone_layers(method.model.backbone)[method.tap][0] == "blocks.2.1"
    assert method.side_shallow[0].in_channels == 40 and method.side_deep[0].in_channels == 1280
    out = method(lite_batch["image"])
    assert out["side_shallow"].shape == (4, 8, 8) and out["side_deep"].shape == (4, 4, 4)  # 64 px / 8, / 16
    torch.testing.assert_close(out["features"], method.model.backbone(lite_batch["image"]))

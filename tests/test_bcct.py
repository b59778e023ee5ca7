"""BC-CT: the BC model's input gradients (Eq. 1), gradient-map post-processing, Eq. 2 masks
and their largest part, the mask loss (Eq. 5, and why its literal form is flawed), the
ignore band, two-stage map caching, and the method end to end on the tiny set.

Every expected number below is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

from bcct import checkpoint, class_maps
from bcct.bc_model import BCModel, bc_loss
from bcct.config import ModelConfig, load_config
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.images import load_rgb
from bcct.data.readers import read_dataset
from bcct.data.transforms import denormalize, train_transform
from bcct.gradient_map import input_gradient, reduce_channels, smooth
from bcct import mask as mask_module
from bcct.mask import (_largest_component_propagation, _largest_component_scipy, component_labels, decode_masks,
                       largest_component, mask_boxes, mask_codes, delta_mask)
from bcct.methods import build_method
from bcct.methods.bc_ct import BCCT, mask_loss
from bcct.run import evaluate_checkpoint
from bcct.train import train

CONTRACT = ("cls_top1", "top1_loc", "gt_known", "maxboxacc", "maxboxacc_v2", "threshold", "n_images")


def _bc(hidden: int = 0, seed: int = 0) -> BCModel:
    """A small random BC model whose BatchNorm running statistics are not the defaults
    (so "features stay in eval mode" makes a visible difference)."""
    torch.manual_seed(seed)
    bc = BCModel(ModelConfig(backbone="small_vgg", pretrained="none"), hidden)
    for m in bc.features.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return bc


def _tiny_method_cfg(*extra: str):
    """A BC-CT config on small_vgg without any weights file (random init)."""
    cfg = load_config("synth", ["image_size=32", "model.head_width=16", *extra], method="bcct")
    cfg.model.pretrained = "none"
    return cfg


# ---------------------------------------------------------------------------------------
# Eq. 1: input gradients of the BC model
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [0, 8])
def test_batched_input_gradient_equals_per_image_loop(hidden):
    bc = _bc(hidden).train()  # train mode on purpose: the features must still act as in eval
    images = torch.randn(5, 3, 32, 32)
    grad, feats, logits = input_gradient(bc, images)
    assert grad.shape == images.shape and feats.shape[0] == 5 and logits.shape == (5,)
    for i in range(len(images)):
        x = images[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(bc(x).sum(), x)
        assert torch.allclose(grad[i], g[0], atol=1e-5, rtol=1e-4), (i, (grad[i] - g[0]).abs().max())
        assert torch.allclose(logits[i], bc(images[i : i + 1])[0].detach(), atol=1e-5)
    assert grad.abs().sum() > 0
    # Nothing in the frozen backbone learned or collected a gradient.
    assert all(not p.requires_grad for p in bc.features.parameters())
    assert all(p.grad is None for p in bc.parameters())
    assert not feats.requires_grad and not logits.requires_grad


def test_bc_gradient_runs_in_fp32_under_autocast():
    """AMP: the BC input gradient (and so the mask) is computed in fp32 even inside the
    training step's autocast block: under CPU bf16 autocast it equals the fp32 one."""
    torch.manual_seed(0)
    # Pixel-level maps (no pooling or blur), so any change to the gradient shows in the mask.
    method = BCCT(_tiny_method_cfg("bcct.delta=0.5", "bcct.pool_cells=0", "bcct.blur=0"), num_classes=3).train()
    images = torch.randn(4, 3, 32, 32)
    grad, _, _ = input_gradient(method.bc, images)
    maps, _, _ = method.gradient_maps(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad_amp, feats_amp, _ = input_gradient(method.bc, images)
        maps_amp, _, _ = method.gradient_maps(images)
        mask_amp = method.masks(maps_amp)[0]
    assert torch.equal(mask_amp, method.masks(maps)[0]) and mask_amp.any()
    assert torch.equal(grad_amp, grad)
    assert grad_amp.dtype == torch.float32 and feats_amp.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradcam_bc_masks_under_autocast_equal_fp32(dtype):
    """AMP: the Grad-CAM BC map (the paper recipes' and cub_cpu's reading: flipped, sqrt scale)
    is computed in fp32 inside the training step's autocast block too, so bf16 and fp16 runs
    train on the fp32 masks."""
    torch.manual_seed(0)
    cfg = _tiny_method_cfg("bcct.map=gradcam", "bcct.flip=true", "bcct.pool_cells=0", "bcct.blur=0",
                           "bcct.normalize=sqrt", "bcct.delta=0.5")
    method = BCCT(cfg, num_classes=3).train()
    images = torch.randn(4, 3, 32, 32)
    maps, feats, _ = method.gradient_maps(images)
    with torch.autocast("cpu", dtype=dtype):
        maps_amp, feats_amp, _ = method.gradient_maps(images)
        mask_amp = method.masks(maps_amp)[0]
    mask = method.masks(maps)[0]
    assert maps_amp.dtype == torch.float32 and feats_amp.dtype == torch.float32
    assert torch.equal(maps_amp, maps) and torch.equal(feats_amp, feats)
    assert torch.equal(mask_amp, mask) and mask.any() and not mask.all()


def test_bc_features_stay_in_eval_mode():
    bc = _bc()
    assert not any(m.training for m in bc.features.modules())  # from construction on, before any .train()
    bc.train()
    assert bc.training and bc.classifier.training
    assert not bc.features.training
    assert all(not m.training for m in bc.features.modules())
    before = {k: v.clone() for k, v in bc.features.state_dict().items()}
    bc(torch.randn(4, 3, 32, 32) * 3 + 1)  # a batch whose statistics are far from the running ones
    for k, v in bc.features.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in a train-mode forward"
    # The same through the method: Method.train() recurses into BCModel.train().
    method = BCCT(_tiny_method_cfg(), num_classes=3).train()
    assert not method.bc.features.training and method.model.backbone.training


def test_training_step_reaches_bc_classifier_but_not_bc_backbone():
    torch.manual_seed(0)
    method = BCCT(_tiny_method_cfg(), num_classes=3).train()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0]),
             "background": torch.randn(4, 3, 32, 32)}
    loss, logs = method.training_step(batch)
    loss.backward()
    assert {"bc_loss", "bc_acc", "cls_loss", "mask_loss", "loss"} <= set(logs)
    assert all(p.grad is None for p in method.bc.features.parameters())
    assert method.bc.classifier.weight.grad is not None and method.bc.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.model.backbone.parameters())
    # bc_loss on its own: features are detached, so only the classifier sees the gradient.
    bc = _bc()
    ft = bc.features(torch.randn(3, 3, 32, 32)).requires_grad_(True)
    fb = bc.features(torch.randn(2, 3, 32, 32))
    l, acc = bc_loss(bc, ft, fb)
    l.backward()
    assert torch.is_tensor(acc) and acc.dim() == 0  # stays on the device with the step's logs (issue 17, defect 6)
    acc = float(acc)
    assert ft.grad is None and 0 <= acc <= 1 and acc * 5 == pytest.approx(round(acc * 5))


# ---------------------------------------------------------------------------------------
# Gradient-map post-processing
# ---------------------------------------------------------------------------------------


def test_reduce_channels_by_hand():
    # One image, 2x2 pixels, 3 channels. Pixel (0,0): (1,-3,2) -> max|g| 3, L2 sqrt(14).
    g = torch.tensor([[[[1.0, 0.0], [0.0, -5.0]],
                       [[-3.0, 0.0], [4.0, 0.0]],
                       [[2.0, 0.0], [0.0, 0.0]]]])
    assert torch.allclose(reduce_channels(g, "max"), torch.tensor([[[3.0, 0.0], [4.0, 5.0]]]))
    assert torch.allclose(reduce_channels(g, "l2"), torch.tensor([[[math.sqrt(14), 0.0], [4.0, 5.0]]]))
    with pytest.raises(ValueError):
        reduce_channels(g, "mean")


def test_normalize_by_hand():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = class_maps.normalize_maps(maps, "max")  # / 5
    assert torch.allclose(out[0], torch.tensor([[0.2, 0.4], [0.6, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # an all-zero map stays zero (no NaN)
    out = class_maps.normalize_maps(maps, "minmax")  # (x - 1) / 4
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))
    # Median of (1,2,3,5) with linear interpolation = 2.5 -> 0.4, 0.8, then clipped to 1.
    out = class_maps.normalize_maps(maps, "percentile", percentile=0.5)
    assert torch.allclose(out[0], torch.tensor([[0.4, 0.8], [1.0, 1.0]]))
    # 99th percentile: position 0.99*3 = 2.97 between 3 and 5 -> 3 + 0.97*2 = 4.94.
    out = class_maps.normalize_maps(maps, "percentile")
    assert torch.allclose(out[0], torch.tensor([[1 / 4.94, 2 / 4.94], [3 / 4.94, 1.0]]))
    out = class_maps.normalize_maps(maps, "sqrt")  # sqrt(x / 5)
    assert torch.allclose(out[0], torch.tensor([[0.2, 0.4], [0.6, 1.0]]).sqrt())
    assert torch.equal(out[1], torch.zeros(2, 2))
    for how in ("max", "minmax", "percentile", "sqrt"):
        out = class_maps.normalize_maps(torch.randn(3, 7, 9).abs() * 100, how)
        assert out.min() >= 0 and out.max() <= 1 and torch.allclose(out.flatten(1).amax(1), torch.ones(3))
    with pytest.raises(ValueError):
        class_maps.normalize_maps(maps, "softmax")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_normalize_flat_maps_in_every_precision(dtype):
    """AMP: a constant (or all-zero) map normalises to 0 in fp16 too, where the 1e-12 floor
    of the scale would be 0 (0/0 = NaN); maps keep their dtype."""
    flat, zero = torch.full((2, 3, 3), 2.0, dtype=dtype), torch.zeros(2, 3, 3, dtype=dtype)
    for how, maps in [("minmax", flat), ("minmax", zero), ("max", zero), ("sqrt", zero), ("percentile", zero)]:
        out = class_maps.normalize_maps(maps, how)
        assert out.dtype == dtype and torch.equal(out, zero), (how, out)
    ramp = torch.arange(9.0).view(1, 3, 3).to(dtype)
    assert torch.equal(class_maps.normalize_maps(ramp, "minmax"), (ramp / 8).to(dtype))


def test_smooth_identity_and_mass():
    maps = torch.rand(2, 9, 11)
    assert torch.equal(smooth(maps, 0.0), maps)
    # A unit impulse far from the border (kernel 7x7 at sigma 1): its mass is kept and the
    # centre value is that of the normalised discrete Gaussian, 1 / (sum_k exp(-k^2/2))^2.
    impulse = torch.zeros(1, 21, 21)
    impulse[0, 10, 10] = 1.0
    out = smooth(impulse, 1.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    s = sum(math.exp(-k * k / 2) for k in range(-3, 4))
    assert out[0, 10, 10].item() == pytest.approx(1 / s**2, rel=1e-4)  # 0.1592
    assert torch.allclose(out[0], out[0].flip(0)) and torch.allclose(out[0], out[0].T)
    blob = torch.zeros(3, 30, 30)
    blob[:, 10:20, 12:18] = torch.rand(3, 10, 6)
    assert torch.allclose(smooth(blob, 1.5).sum((1, 2)), blob.sum((1, 2)), rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Eq. 2 masks and the largest part
# ---------------------------------------------------------------------------------------


def test_delta_mask_eq2_by_hand():
    # max 2.0, delta 0.5 -> keep G >= 1.0 (exactly representable, so ">=" is tested).
    maps = torch.tensor([[[0.0, 1.0, 0.999], [2.0, 1.5, 0.2]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    m = delta_mask(maps, 0.5)
    assert m.dtype == torch.bool
    assert m[0].tolist() == [[False, True, False], [True, True, False]]
    assert not m[1].any()  # all-zero map: empty mask (not "everything >= 0")
    assert delta_mask(maps, 1.0)[0].tolist() == [[False, False, False], [True, False, False]]


def _random_blobs(rng: np.random.Generator) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(16, 41, size=2))
    noise = rng.random((h, w))
    sigma = rng.choice([0.0, 0.8, 1.5, 2.5])  # 0: salt and pepper, many diagonal contacts
    if sigma:
        noise = ndimage.gaussian_filter(noise, sigma)
    return noise > np.quantile(noise, rng.uniform(0.45, 0.85))


def _reference_largest(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """The largest part by scipy, ties going to the part whose first pixel comes first in
    raster order (the rule both paths of largest_component follow)."""
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    best = min(np.flatnonzero(sizes == sizes.max()), key=lambda k: np.flatnonzero(labels.ravel() == k)[0])
    return labels == best


def _tied_parts() -> list[np.ndarray]:
    """Masks whose largest parts tie, placed so that "first in raster order" and "largest
    flat index" disagree."""
    a = np.zeros((6, 8), bool)
    a[0:3, 0] = True  # first pixel first in raster order (0), last pixel 16
    a[1, 3:6] = True  # same size, first pixel later (11), last pixel earlier (13)
    b = np.zeros((7, 7), bool)
    b[::2, ::2] = True  # 16 single pixels (4-connectivity; for 8 they are apart too)
    return [a, b]


LARGEST_PATHS = {"scipy": _largest_component_scipy, "propagation": _largest_component_propagation}


@pytest.mark.parametrize("path", list(LARGEST_PATHS))
@pytest.mark.parametrize("connectivity", [8, 4])
def test_largest_component_matches_scipy(connectivity, path):
    """Both paths (scipy on CPU, label propagation on GPUs: forced here) keep exactly the
    reference's part, ties included."""
    largest = LARGEST_PATHS[path]
    structure = np.ones((3, 3), int) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(connectivity)
    masks = [_random_blobs(rng) for _ in range(50)] + _tied_parts()
    masks += [np.zeros((16, 20), bool), np.ones((17, 16), bool)]
    for mask in masks:
        kept = largest(torch.from_numpy(mask)[None], connectivity=connectivity)[0].numpy()
        np.testing.assert_array_equal(kept, _reference_largest(mask, structure))
    # Batched: images of one size in one call give the same answer as one by one.
    same = np.stack([_random_blobs(np.random.default_rng(100 + i))[:16, :16] for i in range(6)])
    kept = largest(torch.from_numpy(same), connectivity=connectivity).numpy()
    for mask, k in zip(same, kept):
        np.testing.assert_array_equal(k, _reference_largest(mask, structure))


def test_largest_component_dispatches_by_device(monkeypatch):
    calls = []
    monkeypatch.setattr(mask_module, "_largest_component_propagation", lambda m, c=8: calls.append("prop") or m)
    monkeypatch.setattr(mask_module, "_largest_component_scipy", lambda m, c=8: calls.append("scipy") or m)
    mask_module.largest_component(torch.zeros(1, 4, 4, dtype=torch.bool))
    assert calls == ["scipy"]


@pytest.mark.parametrize("connectivity", [8, 4])
def test_component_labels_partition_matches_scipy(connectivity):
    """The batched label propagation itself (the device path): every part gets one label,
    the largest flat index inside it; background gets -1."""
    structure = np.ones((3, 3), int) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(10 + connectivity)
    for _ in range(20):
        mask = _random_blobs(rng)
        labels = component_labels(torch.from_numpy(mask)[None], connectivity)[0].numpy()
        ref, n = ndimage.label(mask, structure=structure)
        assert np.array_equal(labels == -1, ~mask)
        flat_ids = np.arange(mask.size).reshape(mask.shape)
        for k in range(1, n + 1):
            assert set(np.unique(labels[ref == k])) == {flat_ids[ref == k].max()}
        assert len(np.unique(labels[mask])) == n


def test_largest_component_diagonal_contact():
    # Two pixels touching at a corner: one part for 8-connectivity, two for 4.
    m = torch.zeros(1, 5, 5, dtype=torch.bool)
    m[0, 1, 1] = m[0, 2, 2] = True
    m[0, 4, 0] = True  # isolated
    assert largest_component(m, 8)[0].sum() == 2
    assert largest_component(m, 4)[0].sum() == 1


def test_mask_boxes_by_hand():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1..2, cols 2..4 -> x1 = 2, y1 = 1, x2 = 4 + 1, y2 = 2 + 1
    masks[0, 4, 4] = True  # -> y2 = 5
    boxes = mask_boxes(masks)
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------------------
# Eq. 5: the mask loss
# ---------------------------------------------------------------------------------------


def test_mask_loss_bce_by_hand():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
    target = torch.tensor([[[True, False], [True, False]]])
    weight = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    # Weighted pixels: -log s(0.5), -log(1 - s(-1)) = -log s(1), -log(1 - s(0)) = log 2; mean of 3.
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = (-math.log(sig(0.5)) - math.log(sig(1.0)) + math.log(2)) / 3
    got = mask_loss(logits, target, weight, "bce")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    keep = weight > 0
    ref = F.binary_cross_entropy_with_logits(logits[keep], target[keep].float())
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # All weights 0 (empty masks only): no loss, no NaN.
    assert mask_loss(logits, target, torch.zeros_like(weight), "bce").item() == 0.0


def test_mask_loss_paper_literal_and_its_flaw():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
    target = torch.tensor([[[True, False], [True, False]]])
    ones = torch.ones(1, 2, 2)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # -sum M log s(A) / N: only the two M = 1 pixels count, N = 4.
    expected = -(math.log(sig(0.5)) + math.log(sig(2.0))) / 4
    assert mask_loss(logits, target, ones, "paper").item() == pytest.approx(expected, rel=1e-6)
    # The flaw: push every logit to +inf (A -> 1 everywhere, also where M = 0). The literal
    # loss falls to its minimum 0; the full BCE grows without bound on the M = 0 pixels.
    paper, bce = [], []
    for v in (0.0, 2.0, 5.0, 10.0, 30.0):
        a = torch.full((1, 2, 2), v)
        paper.append(mask_loss(a, target, ones, "paper").item())
        bce.append(mask_loss(a, target, ones, "bce").item())
    assert all(x > y for x, y in zip(paper, paper[1:])) and paper[-1] < 1e-12
    assert paper[0] == pytest.approx(2 * math.log(2) / 4)
    assert all(x < y for x, y in zip(bce[1:], bce[2:])) and bce[-1] == pytest.approx(30 / 2, rel=1e-3)
    # A perfect map (+inf on M, -inf off M) scores no better than "all foreground" under "paper".
    perfect = torch.where(target, 30.0, -30.0)
    assert mask_loss(perfect, target, ones, "paper").item() == pytest.approx(paper[-1], abs=1e-12)
    assert mask_loss(perfect, target, ones, "bce").item() < 1e-12 < bce[-1]
    with pytest.raises(ValueError):
        mask_loss(logits, target, ones, "dice")


# ---------------------------------------------------------------------------------------
# BCCT.masks: ignore band and empty maps
# ---------------------------------------------------------------------------------------


def test_masks_ignore_band_and_empty_maps():
    # delta 0.5, band 0.5: mask = G >= 0.5, ignore 0.25 <= G < 0.5 (off the mask), rest weight 1.
    method = BCCT(_tiny_method_cfg("bcct.delta=0.5", "bcct.ignore_band=0.5"), num_classes=3)
    g = torch.zeros(2, 6, 6)
    g[0, 2:4, 2:4] = torch.tensor([[1.0, 0.5], [0.75, 0.5]])  # one part, all >= 0.5
    g[0, 1, 1:5] = torch.tensor([0.375, 0.25, 0.4999, 0.125])  # band, band, band, sure background
    g[0, 5, 5] = 0.2  # sure background
    m, weight = method.masks(g)
    assert m[0].tolist() == (g[0] >= 0.5).tolist() and int(m[0].sum()) == 4
    band = (g[0] >= 0.25) & (g[0] < 0.5) & ~m[0]
    assert int(band.sum()) == 3
    assert torch.equal(weight[0] == 0, band)
    assert torch.equal(weight[0][~band], torch.ones(int((~band).sum())))
    assert not m[1].any() and torch.equal(weight[1], torch.zeros(6, 6))  # all-zero map
    # Without the band every pixel of a non-empty image counts; empty images still weigh 0.
    method = BCCT(_tiny_method_cfg("bcct.delta=0.5"), num_classes=3)
    m, weight = method.masks(g)
    assert torch.equal(weight[0], torch.ones(6, 6)) and torch.equal(weight[1], torch.zeros(6, 6))


# ---------------------------------------------------------------------------------------
# Two-stage: cached maps follow the augmentation
# ---------------------------------------------------------------------------------------


def _gray(images: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(images)[..., 0, :, :].float()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm() + 1e-12))


def test_cached_mask_is_cropped_and_flipped_with_the_image(make_tiny_cfg):
    cfg = make_tiny_cfg()
    records = read_dataset(cfg.data).split("train")[:6]
    ds = WSOLDataset(records, train_transform(cfg.data))
    # The "cached mask" of each image is its own grayscale cut at its median, at 32x32: after
    # the transform it must still match the transformed image, which only holds if it was
    # cropped/flipped with it.
    own = []
    for r in records:
        img = torch.from_numpy(np.array(load_rgb(r.path))).permute(2, 0, 1)
        g = F.interpolate(_gray(img)[None, None], size=(32, 32), mode="bilinear", antialias=True)[0, 0]
        own.append((g > g.median()).to(torch.uint8))
    ds.cached_masks = own
    true_corrs, naive_corrs = [], []
    for seed in range(4):
        for i in range(len(ds)):
            torch.manual_seed(seed)
            item = ds[i]
            cm = item["cached_mask"]
            assert cm.dtype == torch.uint8 and cm.shape == (32, 32) and set(cm.unique().tolist()) <= {0, 1}
            gray = _gray(denormalize(item["image"][None], cfg.data))[0]
            c = _corr(cm, gray)
            assert c > max(_corr(cm.flip(-1), gray), _corr(cm.flip(-2), gray)), (seed, i)
            true_corrs.append(c)
            naive_corrs.append(_corr(own[i].float(), gray))  # the mask had it not been transformed
    assert np.mean(true_corrs) > 0.6 and np.mean(true_corrs) > np.mean(naive_corrs) + 0.2
    batch = collate([ds[0], ds[1]])
    assert batch["cached_mask"].shape == (2, 32, 32) and batch["cached_mask"].dtype == torch.uint8
    assert type(batch["cached_mask"]) is torch.Tensor


class _RightHalf(torch.nn.Module):
    """A fixed crop of the right half (image and mask alike), resized to 32x16."""

    def forward(self, item):
        from torchvision.transforms import v2

        h, w = item["image"].shape[-2:]
        item = {k: v2.functional.resize(v2.functional.crop(v, 0, w // 2, h, w - w // 2), [32, 16])
                for k, v in item.items()}
        item["image"] = item["image"].float() / 255
        return item


def test_a_crop_of_background_gets_a_background_mask(make_tiny_cfg):
    """Defect (issue 10.1): the cached map was re-thresholded at delta x max of each crop, so
    a crop holding only background got a "foreground" mask. The mask is now the whole
    image's, cut with the image: the right half of an image whose object is on the left is
    background, everywhere."""
    cfg = make_tiny_cfg("bcct.mode=two_stage", method="bcct")
    method = build_method(cfg, 3)
    records = read_dataset(cfg.data).split("train")[:2]
    maps = torch.zeros(2, 32, 32)
    maps[:, 8:24, 2:14] = 1.0  # the object: left half only
    maps[:, :, 16:] = 0.3 * torch.rand(2, 32, 16)  # faint background saliency on the right
    codes = mask_codes(*method.masks(maps))
    ds = WSOLDataset(records, _RightHalf())
    ds.cached_masks = list(codes)
    batch = collate([ds[0], ds[1]])
    m, weight = decode_masks(batch["cached_mask"])
    assert m.shape[0] == 2 and not m.any()  # the crop holds no object: no foreground
    assert weight.min() == 1  # and it is supervised as background, not ignored
    whole = decode_masks(codes)[0]
    assert whole[:, 8:24, 2:14].all() and not whole[:, :, 16:].any()


def test_mask_codes_round_trip():
    m = torch.tensor([[[True, False, True]]])
    w = torch.tensor([[[1.0, 0.0, 0.0]]])
    codes = mask_codes(m, w)
    assert codes.tolist() == [[[1, 255, 255]]]
    back_m, back_w = decode_masks(codes)
    assert back_m.tolist() == [[[True, False, False]]] and back_w.tolist() == [[[1.0, 0.0, 0.0]]]


# ---------------------------------------------------------------------------------------
# The method end to end
# ---------------------------------------------------------------------------------------

RUNS = [("end2end", "cam"), ("end2end", "branch"), ("end2end", "both"),
        ("two_stage", "cam"), ("two_stage", "branch"), ("two_stage", "both")]
SMOKE_RUNS = [("end2end", "cam"), ("two_stage", "both")]


def _known_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient maps [4,32,32], the Eq. 2 + largest-part mask of each at delta 0.5): a large
    blob (kept), a smaller one at the same height (dropped: not the largest part) and a
    low plateau (below delta); image 3's map is all zero (empty mask, weight 0)."""
    maps = torch.zeros(4, 32, 32)
    mask = torch.zeros(4, 32, 32, dtype=torch.bool)
    for i, (r, c) in enumerate([(4, 6), (12, 2), (18, 14)]):
        maps[i] += 0.2  # plateau below delta * max = 0.5
        maps[i, r:r + 8, c:c + 10] = 1.0
        maps[i, (r + 20) % 28:(r + 20) % 28 + 3, 26:29] = 0.9  # a smaller part
        mask[i, r:r + 8, c:c + 10] = True
    return maps, mask


@pytest.mark.parametrize("mode,target", RUNS)
def test_training_step_supervises_with_the_known_mask(mode, target):
    """A known gradient map (cached: two-stage; from the BC model: end-to-end) gives a known
    mask, and exactly that mask, with weight 0 on the empty image, is what the mask loss of
    each target (GT-class CAM, branch or both) is computed against."""
    torch.manual_seed(0)
    method = BCCT(_tiny_method_cfg(f"bcct.mode={mode}", f"bcct.mask_target={target}", "bcct.delta=0.5",
                                   "bcct.warmup_epochs=0"), num_classes=3).train()
    method.on_epoch_start(0)
    maps, mask = _known_maps()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    batch = {"image": images, "label": labels}
    if mode == "two_stage":
        batch["cached_mask"] = mask_codes(*method.masks(maps))  # as two_stage.cache_masks makes it
    else:
        batch["background"] = torch.randn(2, 3, 32, 32)
        real = method.gradient_maps
        method.gradient_maps = lambda x: (maps, *real(x)[1:])
    loss, logs = method.training_step(batch)
    assert logs["mask_area"] == pytest.approx(mask.float().mean().item())
    out = method.model(images)  # train mode, the same batch: the same outputs as in the step
    weight = torch.ones(4, 32, 32)
    weight[3] = 0
    readouts = {"cam": class_maps.select(out["cams"], labels), "branch": out.get("branch")}
    targets = ["cam", "branch"] if target == "both" else [target]
    want = sum(mask_loss(class_maps.upsample(readouts[t], (32, 32)), mask, weight).item() for t in targets)
    assert logs["mask_loss"] == pytest.approx(want, rel=1e-5)
    # A different mask would give a different loss: the comparison can fail.
    assert abs(sum(mask_loss(class_maps.upsample(readouts[t], (32, 32)), ~mask, weight).item() for t in targets)
               - want) > 1e-3


@pytest.mark.parametrize("mode,target", SMOKE_RUNS)
def test_train_and_evaluate_end_to_end(mode, target, make_tiny_cfg, tmp_path):
    epochs = 2 if target == "cam" else 1
    cfg = make_tiny_cfg(f"epochs={epochs}", f"bcct.mode={mode}", f"bcct.mask_target={target}", "bcct.bc_epochs=1",
                        "bcct.warmup_epochs=0", method="bcct")
    train(cfg, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    if mode == "two_stage":  # the BC stage logs its statistics first, as epoch -1
        prepare = lines.pop(0)
        assert prepare["epoch"] == -1 and 0 <= prepare["prepare"]["bc_acc"] <= 1
    assert [r["epoch"] for r in lines] == list(range(epochs))
    for r in lines:
        logs = r["train"]
        assert {"loss", "cls_loss", "mask_loss", "mask_area"} <= set(logs)
        assert math.isfinite(logs["mask_loss"]) and logs["mask_loss"] > 0
        if mode == "end2end":
            assert {"bc_loss", "bc_acc"} <= set(logs) and 0 <= logs["bc_acc"] <= 1 and logs["bc_loss"] > 0
        else:  # the batches carried cached maps, so no BC work ran in the CT steps
            assert "bc_loss" not in logs
    last = checkpoint.load(tmp_path / "last.pt")
    assert bool(last["model"]["bc_ready"]) == (mode == "two_stage")
    assert any(k.startswith("model.branch.") for k in last["model"]) == (target != "cam")

    metrics = evaluate_checkpoint(str(tmp_path / "best.pt"), split="test", progress=False)
    assert metrics["method"] == "bcct" and metrics["readout"] == "cam"
    assert set(CONTRACT) <= set(metrics) and metrics["n_images"] == 24
    assert 0 <= metrics["mask_validity"] <= 1
    assert abs(metrics["mask_validity"] * 24 - round(metrics["mask_validity"] * 24)) < 1e-9
    if target == "cam":
        assert "agnostic" not in metrics
    else:
        agn = metrics["agnostic"]
        assert isinstance(agn, dict) and set(CONTRACT) <= set(agn)
        for key in CONTRACT:
            if key != "n_images":
                assert 0 <= agn[key] <= 1, (key, agn[key])
        assert agn["n_images"] == 24 and agn["cls_top1"] == metrics["cls_top1"]
        assert agn["mask_validity"] == metrics["mask_validity"]


def _fixed_batch_run(steps: int, *extra: str) -> list[dict]:
    """``steps`` training steps of BC-CT end to end on one fixed batch with a fixed known
    mask (two-stage path: the cached map is the known one); the step logs."""
    torch.manual_seed(0)
    method = BCCT(_tiny_method_cfg("bcct.delta=0.5", "bcct.warmup_epochs=0", "optim.lr=0.05", *extra),
                  num_classes=3).train()
    method.on_epoch_start(0)
    maps, _ = _known_maps()
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=gen), "label": torch.tensor([0, 1, 2, 0]),
             "background": torch.rand(2, 3, 32, 32, generator=gen) + 1, "cached_mask": mask_codes(*method.masks(maps))}
    if method.cfg.bcct.mode == "end2end":
        del batch["cached_mask"]
    opt = torch.optim.SGD(method.param_groups(), momentum=0.9)
    history = []
    for _ in range(steps):
        loss, logs = method.training_step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(logs)
    return history


def test_mask_loss_trains_the_ct_maps_towards_the_mask():
    """The mask loss is what moves the CT maps to the mask: with mask_weight 1 it falls far
    below where the same training without it (mask_weight 0) leaves it. Fails if the mask
    term is cut from the graph, has the wrong sign or compares against another mask."""
    with_mask = [h["mask_loss"] for h in _fixed_batch_run(20, "bcct.mode=two_stage")]
    without = [h["mask_loss"] for h in _fixed_batch_run(20, "bcct.mode=two_stage", "bcct.mask_weight=0")]
    assert with_mask[0] == pytest.approx(without[0])  # the same start
    assert with_mask[-1] < 0.5 * with_mask[0], with_mask
    assert with_mask[-1] < 0.6 * without[-1], (with_mask, without)


def test_bc_loss_falls_only_through_the_bc_classifier():
    """End to end, the BC loss falls because its classifier learns (bcct.bc_lr); with
    bc_lr 0 it stays exactly where it was: nothing else (the CT steps, the frozen backbone)
    moves the BC model."""
    learning = [h["bc_loss"] for h in _fixed_batch_run(15, "bcct.mode=end2end", "bcct.bc_lr=5")]
    frozen = [h["bc_loss"] for h in _fixed_batch_run(15, "bcct.mode=end2end", "bcct.bc_lr=0")]
    assert learning[-1] < learning[0] - 0.02, learning  # random features: a slow but steady fall
    assert frozen == [frozen[0]] * len(frozen), frozen


def test_bc_at_half_scale_gives_full_size_maps_and_trains(make_tiny_cfg, tiny_data):
    """bcct.bc_scale=0.5: the BC model sees a half-size copy; maps and masks stay at the
    input size, background features come from half-size images too, and a step trains."""
    torch.manual_seed(0)
    cfg = make_tiny_cfg("bcct.warmup_epochs=0", "bcct.mode=end2end", "bcct.bc_scale=0.5", method="bcct")
    method = build_method(cfg, num_classes=3).train()
    images = torch.randn(4, 3, 32, 32)
    assert method.bc_input(images).shape == (4, 3, 16, 16)
    maps, feats, logits = method.gradient_maps(images)
    assert maps.shape == (4, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert feats.shape[-1] == 16 // method.bc.features.stride
    batch = {"image": images, "label": torch.tensor([0, 1, 2, 0]), "background": torch.randn(2, 3, 32, 32)}
    loss, logs = method.training_step(batch)
    loss.backward()
    assert math.isfinite(loss.item()) and "bc_loss" in logs and "mask_loss" in logs

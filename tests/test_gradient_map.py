"""BC map variants (bcct.map), post-processing in scale-free units, and the literal switch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bcct.bc_model import BCModel
from bcct.config import BCCTConfig, ModelConfig
from bcct.gradient_map import bc_maps, feature_gradcam, input_gradient, literal, postprocess, raw_delta, saliency
from bcct.mask import bc_mask


def _bc() -> BCModel:
    torch.manual_seed(0)
    bc = BCModel(ModelConfig(backbone="small_vgg", pretrained="none")).eval()
    bc.classifier.weight.data.normal_()
    return bc


def test_gradcam_of_linear_bc_is_its_own_cam():
    """For the paper's BC (linear layer on pooled features) Grad-CAM of the logit is
    ReLU(w . A(x, y)) / (h w): the BC model's class activation map."""
    bc = _bc()
    images = torch.randn(3, 3, 32, 32)
    cams, feats, logits = feature_gradcam(bc, images)
    h, w = feats.shape[-2:]
    by_hand = F.relu(torch.einsum("c,bchw->bhw", bc.classifier.weight[0], feats)) / (h * w)
    assert torch.allclose(cams, by_hand, atol=1e-6)
    assert torch.allclose(logits, bc(images).detach(), atol=1e-5)


def test_saliency_variants_by_hand():
    bc = _bc()
    images = torch.randn(2, 3, 32, 32)
    grad = input_gradient(bc, images)[0]
    assert torch.equal(saliency(bc, images, "input_gradient")[0], grad.abs().amax(1))
    assert torch.allclose(saliency(bc, images, "grad_x_input")[0], (grad * images).abs().amax(1))
    torch.manual_seed(1)
    sg = saliency(bc, images, "smoothgrad")[0]
    assert sg.shape == (2, 32, 32) and not torch.allclose(sg, grad.abs().amax(1))  # noise changed it
    cam = saliency(bc, images, "gradcam")[0]
    assert cam.shape == (2, 32, 32) and (cam >= 0).all()


def test_literal_switch_is_eq1_eq2_as_printed():
    bc = _bc()
    images = torch.randn(2, 3, 32, 32)
    b = BCCTConfig(map="gradcam", flip=True, pool_cells=2, blur=0.1, normalize="sqrt", literal=True)
    maps = bc_maps(bc, images, b)[0]
    g = input_gradient(bc, images)[0].abs().amax(1)
    assert torch.allclose(maps, g / g.flatten(1).amax(1).view(2, 1, 1))
    lit = literal(b)
    assert (lit.map, lit.flip, lit.pool_cells, lit.blur, lit.normalize) == ("input_gradient", False, 0, 0, "max")


def test_flip_averages_with_the_mirrored_image():
    bc = _bc()
    images = torch.randn(2, 3, 32, 32)
    b = BCCTConfig(map="input_gradient", flip=True, pool_cells=0, blur=0, normalize="max")
    raw = (saliency(bc, images)[0] + saliency(bc, images.flip(-1))[0].flip(-1)) / 2
    assert torch.allclose(bc_maps(bc, images, b)[0], raw / raw.flatten(1).amax(1).view(2, 1, 1), atol=1e-6)


def test_raw_delta():
    assert abs(raw_delta(0.8, "sqrt") - 0.64) < 1e-12
    assert raw_delta(0.8, "max") == 0.8
    assert raw_delta(0.8, "percentile") is None


def test_blur_is_a_fraction_of_the_side_so_masks_agree_across_resolutions():
    """The same saliency at 64 and at 224 px gives the same mask with one blur value
    (in pixels, sigma 4 at 64 px would be a much smaller blur at 224 px)."""
    torch.manual_seed(0)
    small = torch.rand(1, 64, 64) ** 8  # spiky, as raw gradients are
    small[:, 20:40, 10:30] += 0.5 * torch.rand(20, 20)
    big = F.interpolate(small[None], size=(224, 224), mode="nearest")[0]
    m_small = bc_mask(postprocess(small, stride=1, cells=0, blur=0.0625, norm="sqrt"), 0.7)
    m_big = bc_mask(postprocess(big, stride=1, cells=0, blur=0.0625, norm="sqrt"), 0.7)
    back = F.interpolate(m_big[None].float(), size=(64, 64), mode="area")[0] > 0.5
    assert (back == m_small).float().mean() > 0.97
    px = bc_mask(postprocess(big, stride=1, cells=0, blur=4 / 224 * 64 / 224, norm="sqrt"), 0.7)  # 4 px as at 64
    assert (F.interpolate(px[None].float(), size=(64, 64), mode="area")[0] > 0.5).ne(m_small).float().mean() > 0.05


def test_pool_cells_uses_the_backbone_stride():
    maps = torch.zeros(1, 16, 16)
    maps[0, 0, 0] = 1.0
    pooled = postprocess(maps, stride=8, cells=1, blur=0, norm="max")
    # One 8x8 cell averaged: the spike spreads over its cell (bilinear back to full size).
    assert pooled[0, :4, :4].min() > 0.5 and pooled[0, 12:, 12:].max() < 1e-6

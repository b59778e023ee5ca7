"""Train/test presets keep the image, its boxes and its mask aligned.

The image is a white rectangle on black with the matching box and mask; colour jitter is
off and normalisation is the identity (mean 0, std 1), so ``image > 0.5`` *is* the object
after any crop/flip/resize and must agree with the transformed mask and box.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from bcct.config import DataConfig
from bcct.data import transforms as T  # not `from ... import test_transform`: pytest would collect it

H, W = 60, 80
# Object pixels: rows 18..49, cols 24..63 -> xyxy box (24, 18, 64, 50). It contains the image
# centre (40, 30), and every RandomResizedCrop with area >= 50% of the image contains the
# centre too (w >= W/2 and h >= H/2), so the object is never cropped away.
X0, Y0, X1, Y1 = 24, 18, 64, 50
OUT = 48


def _item(mask_dtype=torch.bool) -> dict:
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[:, Y0:Y1, X0:X1] = 255
    mask = torch.zeros(H, W, dtype=mask_dtype)
    mask[Y0:Y1, X0:X1] = 1
    return {
        "image": tv_tensors.Image(img),
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[X0, Y0, X1, Y1]], dtype=torch.float32), format="XYXY",
                                          canvas_size=(H, W)),
        "mask": tv_tensors.Mask(mask),
    }


def _plain_cfg(**kw) -> DataConfig:
    base = dict(image_size=OUT, crop_scale=(0.5, 1.0), brightness=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    base.update(kw)
    return DataConfig(**base)


def _bbox(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _boundary_band(mask: torch.Tensor) -> torch.Tensor:
    """Pixels within one pixel (8-neighbourhood) of the mask's edge: dilation minus erosion.
    Outside the canvas counts as background, so an edge that lies on the border row counts."""
    m = F.pad(mask.float()[None, None], (1, 1, 1, 1))  # zero padding
    dil = F.max_pool2d(m, 3, stride=1)[0, 0] > 0
    ero = -F.max_pool2d(-m, 3, stride=1)[0, 0] > 0
    return dil & ~ero


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_keeps_image_box_mask_aligned(seed):
    torch.manual_seed(seed)
    out = T.train_transform(_plain_cfg())(_item())
    image, boxes, mask = out["image"], out["boxes"], out["mask"]

    assert isinstance(image, tv_tensors.Image) and image.shape == (3, OUT, OUT) and image.dtype == torch.float32
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and tuple(boxes.canvas_size) == (OUT, OUT)
    assert isinstance(mask, tv_tensors.Mask) and mask.shape == (OUT, OUT)
    assert 0.0 <= image.min() and image.max() <= 1.0  # identity normalisation, no jitter
    # Colour jitter off: the three channels stay equal.
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])

    mask = mask.bool()
    seen = image[0] > 0.5
    assert mask.sum() > 0.1 * OUT * OUT, "object should survive every >=50% crop"
    # Mask vs thresholded image: only pixels on the object's edge may differ (bilinear image vs
    # nearest-neighbour mask resampling), never anything in the interior or far background.
    diff = seen ^ mask
    assert not (diff & ~_boundary_band(mask)).any()
    assert diff.sum() <= 2 * (OUT + OUT)  # at most one ring of edge pixels
    iou = (seen & mask).sum() / (seen | mask).sum()
    assert iou > 0.85

    # Box vs the mask's bounding box (both in output pixels, xyxy).
    assert boxes.shape == (1, 4)
    box = boxes[0].as_subclass(torch.Tensor)
    assert (box >= 0).all() and (box <= OUT).all()
    assert torch.allclose(box, _bbox(mask), atol=1.5), (box, _bbox(mask))
    assert torch.allclose(box, _bbox(seen), atol=1.5), (box, _bbox(seen))


def test_train_transform_flips_move_box_and_mask():
    """With crop = whole image (scale 1, ratio W/H) and both flips certain, every target is
    mirrored: box (24, 18, 64, 50) in 80x60 -> flipped (16, 10, 56, 42) -> scaled to 48x48."""
    cfg = _plain_cfg(crop_scale=(1.0, 1.0), hflip=1.0, vflip=1.0)
    tf = T.train_transform(cfg)
    tf.transforms[1].ratio = (W / H, W / H)  # RandomResizedCrop: exactly the whole image
    out = tf(_item())
    sx, sy = OUT / W, OUT / H
    expected = torch.tensor([(W - X1) * sx, (H - Y1) * sy, (W - X0) * sx, (H - Y0) * sy])  # 9.6, 8, 33.6, 33.6
    assert torch.allclose(expected, torch.tensor([9.6, 8.0, 33.6, 33.6]))
    assert torch.allclose(out["boxes"][0].as_subclass(torch.Tensor), expected, atol=1e-4)
    assert torch.allclose(_bbox(out["mask"].bool()), expected, atol=1.0)
    assert torch.allclose(_bbox(out["image"][0] > 0.5), expected, atol=1.0)


def test_train_transform_uint8_mask_same_as_bool():
    torch.manual_seed(3)
    a = T.train_transform(_plain_cfg())(_item(torch.bool))
    torch.manual_seed(3)
    b = T.train_transform(_plain_cfg())(_item(torch.uint8))
    assert torch.equal(a["mask"].bool(), b["mask"].bool())
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["image"], b["image"])


def test_test_transform_size_and_box_scaling():
    out = T.test_transform(_plain_cfg())(_item())
    assert out["image"].shape == (3, OUT, OUT)
    assert out["mask"].shape == (OUT, OUT)
    # x * 48/80 = x * 0.6, y * 48/60 = y * 0.8
    expected = torch.tensor([[24 * 0.6, 18 * 0.8, 64 * 0.6, 50 * 0.8]])
    assert torch.allclose(expected, torch.tensor([[14.4, 14.4, 38.4, 40.0]]))
    assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), expected, atol=1e-4)
    assert tuple(out["boxes"].canvas_size) == (OUT, OUT)
    # Deterministic, and the image and mask agree up to the edge ring.
    again = T.test_transform(_plain_cfg())(_item())
    assert torch.equal(out["image"], again["image"]) and torch.equal(out["boxes"], again["boxes"])
    seen, mask = out["image"][0] > 0.5, out["mask"].bool()
    assert not ((seen ^ mask) & ~_boundary_band(mask)).any()


def test_test_transform_non_square_sizes():
    cfg = _plain_cfg(image_size=32)
    out = T.test_transform(cfg)(_item())
    assert out["image"].shape == (3, 32, 32)
    expected = torch.tensor([[24 * 32 / 80, 18 * 32 / 60, 64 * 32 / 80, 50 * 32 / 60]])  # 9.6, 9.6, 25.6, 26.667
    assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), expected, atol=1e-4)


def test_normalisation_and_denormalize():
    cfg = DataConfig(image_size=OUT)  # ImageNet mean/std
    out = T.test_transform(cfg)(_item())
    # A black pixel becomes -mean/std per channel: -0.485/0.229 = -2.1179, ...; white (1-mean)/std.
    corner = out["image"][:, 0, 0]
    assert torch.allclose(corner, torch.tensor([-2.1179, -2.0357, -1.8044]), atol=1e-3)
    centre = out["image"][:, 24, 24]
    assert torch.allclose(centre, torch.tensor([2.2489, 2.4286, 2.6400]), atol=1e-3)
    back = T.denormalize(out["image"][None], cfg)[0]
    assert torch.allclose(back[:, 0, 0], torch.zeros(3), atol=1e-5)
    assert torch.allclose(back[:, 24, 24], torch.ones(3), atol=1e-5)

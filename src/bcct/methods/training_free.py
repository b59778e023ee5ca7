"""Training-free rows, the floor every learned localizer must beat: maps read off the frozen
ImageNet backbone (``model.backbone``, ``model.pretrained``) with no training, no labels and
no Background Image Set (bcct/feature_maps.py).

- ``feature_norm``: the L2 norm over channels of the WSOL feature map (EfficientNet-Lite0 at
  stride 16 for ``cub_cpu``), averaged with the mirrored image's (``extra.<name>.flip``).
- ``pc1``: each image's first principal component of its features.
- ``ddt``: DDT (Wei et al., PR 2019): the projection on the first principal component of
  the training images' descriptors, fitted once in ``prepare`` (no label used).

They have no classifier: their rows report GT-known, MaxBoxAcc(V2) and the threshold, never
class or top-1 localisation. ``bcct train`` for them records the config, fits what they fit
and chooses the threshold on val like any method (``trainable = False``: no epoch runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from bcct import feature_maps
from bcct.backbones import build_backbone
from bcct.config import Config
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.transforms import test_transform
from bcct.methods.base import Method, register


@dataclass
class TrainingFreeParams:
    flip: bool = True  # average with the mirrored image's map (the measured floor of issue 16 uses it)


class TrainingFree(Method):
    """A frozen backbone and a reading of its features; subclasses define :meth:`read`."""

    trainable = False
    params_type = TrainingFreeParams

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained).requires_grad_(False)
        # rebuilt from model.pretrained when loaded, as BC-CT's BC backbone (none: kept)
        self.frozen = ("backbone.",) if cfg.model.pretrained != "none" else ()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics stay those of pretraining
        return self

    def read(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> dict:
        return {"map": feature_maps.with_flip(self.read, images, self.backbone, self.params.flip)}

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.name: out["map"]}

    def param_groups(self) -> list[dict]:
        return []


@register("feature_norm")
class FeatureNorm(TrainingFree):
    def read(self, feats: torch.Tensor) -> torch.Tensor:
        return feature_maps.feature_norm(feats)


@register("pc1")
class PC1(TrainingFree):
    def read(self, feats: torch.Tensor) -> torch.Tensor:
        return feature_maps.pc1(feats)


@register("ddt")
class DDT(TrainingFree):
    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        c = self.backbone.out_channels
        self.register_buffer("ddt_mean", torch.zeros(c))
        self.register_buffer("ddt_component", torch.zeros(c))
        self.register_buffer("ddt_fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def prepare(self, train_ds, background_folder, device, progress: bool = True) -> dict | None:
        """DDT's one PCA over every descriptor of the (un-augmented) training images."""
        if bool(self.ddt_fitted):
            return None
        plain = WSOLDataset(train_ds.records, test_transform(self.cfg.data))
        loader = DataLoader(plain, batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.data.workers,
                            collate_fn=collate)
        pca = feature_maps.DescriptorPCA(self.backbone.out_channels)
        self.eval()
        for batch in loader:
            pca.add(self.backbone(batch["image"].to(device)))
        mean, component = pca.fit()
        self.ddt_mean.copy_(mean)
        self.ddt_component.copy_(component)
        self.ddt_fitted.fill_(True)
        return {"ddt_descriptors": pca.count}

    def read(self, feats: torch.Tensor) -> torch.Tensor:
        return feature_maps.ddt(feats, self.ddt_mean, self.ddt_component)

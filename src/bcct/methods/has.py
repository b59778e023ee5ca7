"""Hide-and-Seek (Singh & Lee, "Hide-and-Seek: Forcing a Network to be Meticulous for
Weakly-supervised Object and Action Localization", ICCV 2017): the "GoogLeNet-HaS-32" row of
the paper's Table 1.

Model, loss and readout are CAM's (shared backbone + CAM head, cross-entropy, the class map);
only the training images change: each is divided into a grid of S x S patches aligned to its
top-left corner and every patch is hidden independently with probability p. Hidden pixels
take the mean pixel value of the training data, so that a convolution filter sees the same
expected activation at training time (some patches hidden) and at test time (none hidden)
(Singh & Lee, "Setting the hidden pixel values"). At test time nothing is hidden.

Hyperparameters (``extra.has.<key>=value``):
- ``grid_size`` = 32: patch side in pixels at 224 px input, "HaS-32" (Singh & Lee's ILSVRC
  experiments; the BC-CT paper's Table 1 row "GoogLeNet-HaS-32"). Scaled with the input side: round(32 * H / 224) px,
  e.g. 9 px at 64 px. (wsolevaluation's ``has_grid_size`` is the same patch side in pixels.)
- ``hide_prob`` = 0.5: probability of hiding a patch (Singh & Lee Sec. 3;
  wsolevaluation ``has_drop_rate`` 0.5).
- ``fill`` = ``train_mean``: the per-channel mean pixel of the training images (Singh & Lee,
  "Setting the hidden pixel values"), measured once before training on up to 256 evenly spaced training images with
  the test transform, stored with the checkpoint. ``zero``: 0 after normalisation, i.e. the
  normalisation mean ``data.mean`` (what wsolevaluation's ``has()`` writes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bcct.config import Config
from bcct.ct_model import CTModel
from bcct.methods.base import Method, register
from bcct.methods.common import check_range, cls_logs, split_param_groups
from bcct import class_maps

REFERENCE_SIZE = 224  # the input side the grid size is quoted at


@dataclass
class HaSParams:
    grid_size: int = 32  # Singh & Lee 2017, "HaS-32" (Table 1 of the BC-CT paper)
    hide_prob: float = 0.5  # Singh & Lee 2017 Sec. 3; wsolevaluation has_drop_rate
    fill: str = "train_mean"  # train_mean (Singh & Lee) | zero (wsolevaluation)

    def __post_init__(self):
        check_range("hide_prob", self.hide_prob, 0.0, 1.0)
        if self.grid_size < 1:
            raise ValueError(f"grid_size={self.grid_size} must be >= 1")
        if self.fill not in ("train_mean", "zero"):
            raise ValueError(f"fill={self.fill!r}: use train_mean or zero")


def grid_pixels(grid_size: int, image_side: int) -> int:
    """The patch side at this input size: ``grid_size`` is quoted at 224 px."""
    return max(1, round(grid_size * image_side / REFERENCE_SIZE))


def hide_patches(images: torch.Tensor, patch: int, prob: float, fill: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images with hidden patches, hidden [B,H,W] bool). The grid starts at the top-left
    pixel; border patches are clipped to the image. ``fill`` [C] is written into hidden pixels."""
    b, c, h, w = images.shape
    gh, gw = -(-h // patch), -(-w // patch)
    cells = torch.rand(b, gh, gw, generator=generator, device=images.device) < prob
    hidden = cells.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)[:, :h, :w]
    out = torch.where(hidden[:, None], fill.to(images.dtype).view(1, c, 1, 1), images)
    return out, hidden


@register("has")
class HaS(Method):
    params_type = HaSParams

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        self.model = CTModel(cfg.model, num_classes)
        self.register_buffer("fill", torch.zeros(3))  # in normalised units; 0 = data.mean

    def forward(self, images: torch.Tensor) -> dict:
        return self.model(images)

    def prepare(self, train_ds, background_folder, device, progress: bool = True) -> dict | None:
        if self.params.fill != "train_mean":
            return None
        from bcct.data.dataset import WSOLDataset
        from bcct.data.transforms import test_transform

        records = train_ds.records
        n = min(256, len(records))
        picks = torch.linspace(0, len(records) - 1, n).round().long().tolist() if n else []
        ds = WSOLDataset([records[i] for i in picks], test_transform(self.cfg.data))
        total = torch.zeros(3, dtype=torch.float64)
        pixels = 0
        for i in range(len(ds)):
            img = ds[i]["image"].as_subclass(torch.Tensor).double()
            total += img.sum(dim=(1, 2))
            pixels += img.shape[1] * img.shape[2]
        if pixels:
            self.fill.copy_((total / pixels).float().to(self.fill.device))
        return {"has_fill": [round(v, 4) for v in self.fill.tolist()], "has_fill_images": n}

    def hide(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hide-and-Seek on a training batch; identity (nothing hidden) in eval mode."""
        if not self.training:
            return images, torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        patch = grid_pixels(self.params.grid_size, images.shape[-2])
        return hide_patches(images, patch, self.params.hide_prob, self.fill)

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images, hidden = self.hide(batch["image"])
        out = self.model(images)
        loss = F.cross_entropy(out["logits"], batch["label"])
        return loss, {"loss": loss.detach(), "cls_loss": loss.detach(), "hidden": hidden.float().mean().detach(),
                      **cls_logs(out["logits"], batch["label"])}

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cam": class_maps.select(out["cams"], classes)}

    def param_groups(self) -> list[dict]:
        return split_param_groups(self, self.model.backbone, self.cfg)

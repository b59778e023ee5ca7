"""BC-CT (the paper): a BC model trained against the Background Image Set gives, through its
input gradient (Eq. 1) and the cut at delta (Eq. 2), a foreground mask per training image; the
mask supervises the CT model (Eq. 4-6) so that its maps cover the whole object.

Choices where the paper is silent or wrong (each a config key under ``bcct``; see docs):
- ``mask_loss``: ``bce`` full per-pixel BCE (default) — Eq. 5 as printed (``paper``,
  ``-sum M log A``) is minimised by A = 1 everywhere.
- ``mask_target``: what "A" is: ``cam`` (the upsampled ground-truth-class CAM, as Eq. 5
  says), ``branch`` (the separate 1-channel branch of section 4.1) or ``both``.
- ``mode``: ``end2end`` (paper 4.2: masks from the current BC on the augmented batch) or
  ``two_stage`` (BC trained first; masks cached per image and transformed with it).
- ``ignore_band``, ``warmup_epochs``: SPG/BGC-style ignore band and plain-CAM warm-up.

With ``localizer.enabled`` (two-stage), a class-agnostic localizer is trained after the BC
stage on pseudo masks (bcct/localizer.py) and read as a third readout, ``box``; the
primary readout stays the paper's CAM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bcct import class_maps
from bcct.bc_model import BCModel, bc_loss
from bcct.config import Config
from bcct.ct_model import CTModel
from bcct.errors import BadInput
from bcct.gradient_map import bc_maps
from bcct.localizer import TEACHERS, LocalizerHead, box_map, train_localizer
from bcct.mask import bc_mask, decode_masks, delta_mask, mask_boxes
from bcct.methods.base import Method, register
from bcct.two_stage import cache_masks, train_bc


def mask_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Pixel loss between map logits [B,H,W] (A = sigmoid(logits)) and the BC mask M.

    ``bce``: -(M log A + (1-M) log(1-A)) averaged over the pixels with ``weight`` 1.
    ``paper``: Eq. 5 literally, -sum M log A (averaged over all pixels).
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        return (per_pixel * weight).sum() / weight.sum().clamp_min(1)
    if kind == "paper":
        return -(target.float() * F.logsigmoid(logits) * weight).sum() / weight.numel()
    raise ValueError(f"bcct.mask_loss={kind!r}: use bce or paper")


@register("bcct")
class BCCT(Method):
    has_masks = True  # the BC masks (mask_boxes)

    @property
    def needs_backgrounds(self) -> bool:
        """Only end-to-end training draws background batches in the loop; two-stage trains
        its BC model in ``prepare``."""
        return self.cfg.bcct.mode == "end2end"

    @property
    def find_unused_parameters(self) -> bool:
        """Two-stage CT steps leave the BC classifier without a gradient; warm-up epochs leave
        the mask branch without one."""
        return self.cfg.bcct.mode == "two_stage" or self.cfg.bcct.warmup_epochs > 0

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__(cfg, num_classes)
        b = cfg.bcct
        self.model = CTModel(cfg.model, num_classes, mask_branch=b.mask_target in ("branch", "both"))
        self.bc = BCModel(cfg.model, b.bc_hidden, b.bc_head)
        # The BC backbone is never trained: checkpoints leave it out and loading rebuilds it from
        # the pretrained weights (a random one, model.pretrained=none, cannot be rebuilt: kept).
        frozen = ("bc.features.", "bc.fc.") if b.bc_head == "fc" else ("bc.features.",)
        self.frozen = frozen if cfg.model.pretrained != "none" else ()
        self.mask_on = True
        # two-stage: set once the BC model has been trained (saved with the checkpoint)
        self.register_buffer("bc_ready", torch.zeros((), dtype=torch.bool))
        self.localizer = None
        if cfg.localizer.enabled:
            if b.mode != "two_stage":
                raise BadInput("localizer.enabled=true needs bcct.mode=two_stage (the localizer learns from the trained "
                               "BC model's masks before the CT stage)")
            if cfg.localizer.teacher not in TEACHERS:
                raise BadInput(f"localizer.teacher={cfg.localizer.teacher!r}: use one of {', '.join(TEACHERS)}")
            self.localizer = LocalizerHead(self.bc.features.out_channels, cfg.localizer.width)
            self.register_buffer("localizer_ready", torch.zeros((), dtype=torch.bool))

    def forward(self, images: torch.Tensor) -> dict:
        out = self.model(images)
        if self.localizer is not None and bool(self.localizer_ready) and not self.training:
            out["box"] = box_map(self, images)
        return out

    def on_epoch_start(self, epoch: int) -> None:
        self.mask_on = epoch >= self.cfg.bcct.warmup_epochs

    # -- the BC side -------------------------------------------------------------------
    def gradient_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(maps in [0, 1] [B,H,W], BC features, BC logits) for a batch (bcct/gradient_map.py)."""
        maps, feats, logits = bc_maps(self.bc, self.bc_input(images), self.cfg.bcct)
        if self.cfg.bcct.bc_scale != 1:  # computed at the BC model's scale: back to the image
            maps = F.interpolate(maps.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
            maps = maps.squeeze(1).clamp(0, 1)
        return maps, feats, logits

    def bc_input(self, images: torch.Tensor) -> torch.Tensor:
        """The BC model's input: the image, or a downscaled copy (``bcct.bc_scale`` < 1), which
        cuts the cost of its forward and input-gradient passes by about bc_scale^2."""
        scale = self.cfg.bcct.bc_scale
        if scale == 1:
            return images
        return F.interpolate(images, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)

    def masks(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask M, weight): M from Eq. 2 + largest part. With ``ignore_band`` > 0 only pixels
        below ``delta * (1 - band) * max`` are sure background: the band and the parts that
        the largest-part rule dropped get weight 0 (SPG/BGC style). Images whose mask came out
        empty get weight 0 (their maps carry no foreground)."""
        b = self.cfg.bcct
        m = bc_mask(maps, b.delta)
        weight = torch.ones_like(maps)
        if b.ignore_band > 0:
            sure_bg = ~delta_mask(maps, b.delta * (1 - b.ignore_band))
            weight = (m | sure_bg).float()
        empty = ~m.flatten(1).any(1)
        weight = weight.masked_fill(empty.view(-1, 1, 1), 0)  # no boolean index: that would sync
        return m, weight

    # -- two-stage: BC first, then cached gradient maps ------------------------------------
    def prepare(self, train_ds, background_folder, device, progress: bool = True) -> dict | None:
        if self.cfg.bcct.mode != "two_stage":
            return None
        stats = None
        if not bool(self.bc_ready):
            stats = train_bc(self, train_ds, background_folder, device, progress)
            self.bc_ready.fill_(True)
        if self.localizer is not None and not bool(self.localizer_ready):
            stats = {**(stats or {}), "localizer": train_localizer(self, train_ds, device, progress)}
            self.localizer_ready.fill_(True)
        train_ds.cached_masks = cache_masks(self, train_ds, device)
        return stats

    # -- one training step -------------------------------------------------------------
    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images, labels = batch["image"], batch["label"]
        b = self.cfg.bcct
        logs = {}
        loss = torch.zeros((), device=images.device)
        if "cached_mask" in batch:  # two-stage: whole-image masks cached, transformed with the image
            m, weight = decode_masks(batch["cached_mask"])
        else:  # end-to-end (paper 4.2): BC learns on this batch and masks come from it
            maps, target_feats, _ = self.gradient_maps(images)
            with torch.no_grad():
                bg_feats = self.bc.features(self.bc_input(batch["background"]))
            # Equal numbers of target and background images (paper 3.2); the loop sends half
            # a batch of backgrounds, which halves the extra forward pass.
            l_bc, bc_acc = bc_loss(self.bc, target_feats[: len(bg_feats)], bg_feats)
            loss = loss + l_bc
            logs.update(bc_loss=l_bc.detach(), bc_acc=bc_acc)
            m, weight = self.masks(maps)

        out = self.model(images)
        l_cls = F.cross_entropy(out["logits"], labels)
        loss = loss + l_cls
        # logs stay on the device (0-d tensors): the loop reads them every optim.log_every steps
        logs.update(cls_loss=l_cls.detach(), acc=(out["logits"].argmax(1) == labels).float().mean(),
                    mask_area=m.float().mean())
        if self.mask_on:
            size = images.shape[-2:]
            l_mask = torch.zeros((), device=images.device)
            if b.mask_target in ("cam", "both"):
                a = class_maps.upsample(class_maps.select(out["cams"], labels), size)
                l_mask = l_mask + mask_loss(a, m, weight, b.mask_loss)
            if b.mask_target in ("branch", "both"):
                a = class_maps.upsample(out["branch"], size)
                l_mask = l_mask + mask_loss(a, m, weight, b.mask_loss)
            loss = loss + b.mask_weight * l_mask
            logs["mask_loss"] = l_mask.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def mask_boxes(self, images: torch.Tensor) -> torch.Tensor:
        return mask_boxes(bc_mask(self.gradient_maps(images)[0], self.cfg.bcct.delta))

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = {"cam": class_maps.select(out["cams"], classes)}
        if "branch" in out:
            maps["agnostic"] = out["branch"]
        if "box" in out:
            maps["box"] = out["box"]
        return maps

    def param_groups(self) -> list[dict]:
        o = self.cfg.optim
        groups = self.model.param_groups(o.lr_backbone, o.lr)
        groups.append({"params": [p for p in self.bc.parameters() if p.requires_grad], "lr": self.cfg.bcct.bc_lr, "weight_decay": 0.0})
        return groups

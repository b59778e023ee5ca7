"""The localizer: a class-agnostic map learned from pseudo masks, read as BC-CT's ``box``
readout (issue 16). PSOL's split (Zhang et al., CVPR 2020): the class comes from the CT
classifier, the box from a localizer that knows no class.

- **Teacher** (``localizer.teacher``): the map the pseudo masks are cut from, on the whole
  un-augmented training image, mirrored and averaged: ``bc`` (Grad-CAM of the trained BC
  logit, the BC mask's map), ``norm`` (the frozen backbone's feature norm, the training-free
  floor) or ``bc+norm`` (their mean after min-max scaling). Cut at ``localizer.delta`` and
  to its largest part (Eq. 2's rule), cached at a quarter of the input side.
- **Student**: a small head (1x1 conv, 3x3 conv, 1x1 conv to one channel) on the frozen BC
  backbone's features, trained with per-pixel BCE on random crops and flips of the training
  images (the masks are cropped with them, as two-stage BC-CT's are).
- **Self-training** (``localizer.rounds`` > 1): the train split is relabelled with the
  student's own mirrored-and-averaged maps, cut the same way, and a new student learns them.
- **Readout**: the student's map averaged with the mirrored image's; ``localizer.blend`` > 0
  mixes in the teacher's feature-norm map (the floor) with that weight.

No box of any image reaches a loss; ``delta`` and the other keys were chosen on cub_dev's
val split (bench/localizer_study.py, docs/bcct.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct import class_maps, distributed, feature_maps
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.transforms import test_transform
from bcct.evaluate import make_loader
from bcct.gradient_map import feature_gradcam
from bcct.mask import bc_mask, decode_masks, mask_codes

TEACHERS = ("bc", "norm", "bc+norm")
CACHE_REDUCTION = 4  # pseudo masks are cached at image_size / 4 per side, as two-stage BC masks


class LocalizerHead(nn.Module):
    """Features [B,C,h,w] -> object logits [B,h,w]."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).squeeze(1)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    return class_maps.normalize_maps(maps, "minmax")


def teacher_reading(bc, teacher: str):
    """``read(features) -> [B,h,w]`` for :func:`bcct.feature_maps.with_flip`."""
    if teacher not in TEACHERS:
        raise ValueError(f"localizer.teacher={teacher!r}: use one of {', '.join(TEACHERS)}")

    def read(feats: torch.Tensor) -> torch.Tensor:
        maps = []
        if teacher in ("bc", "bc+norm"):
            with torch.enable_grad():
                f = feats.detach().float().requires_grad_(True)
                (grad,) = torch.autograd.grad(bc.classify(f).sum(), f)
            maps.append(minmax(F.relu((grad.mean((2, 3), keepdim=True) * f).sum(1)).detach()))
        if teacher in ("norm", "bc+norm"):
            maps.append(minmax(feature_maps.feature_norm(feats)))
        return sum(maps) / len(maps)

    return read


@torch.no_grad()
def feature_norm_map(bc, images: torch.Tensor) -> torch.Tensor:
    """The floor: the frozen backbone's feature norm, mirrored and averaged, in [0, 1]."""
    return minmax(feature_maps.with_flip(feature_maps.feature_norm, images, bc.features))


@torch.no_grad()
def student_map(bc, head: LocalizerHead, images: torch.Tensor) -> torch.Tensor:
    """The student's object probability [B,h,w], mirrored and averaged."""
    return feature_maps.with_flip(lambda f: torch.sigmoid(head(f.float())), images, bc.features)


def pseudo_masks(maps_of, ds: WSOLDataset, cfg, delta: float, device) -> torch.Tensor:
    """uint8 codes [N, side, side], one map per image of ``ds`` (whole image, test transform):
    ``maps_of``'s map upsampled to a quarter of the input side, cut at ``delta`` x max,
    largest part. One tensor, as two-stage BC-CT's mask cache (workers get one block)."""
    side = max(1, cfg.data.image_size // CACHE_REDUCTION)
    codes = []
    for batch in make_loader(ds, cfg):
        maps = maps_of(batch["image"].to(device)).float()
        maps = F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        m = bc_mask(minmax(maps), delta)
        codes.append(mask_codes(m, torch.ones_like(maps)).cpu())
    return torch.cat(codes)


def fit_student(bc, head: LocalizerHead, train_ds: WSOLDataset, cfg, device, seed: int, progress: bool) -> dict:
    """Per-pixel BCE of the head's upsampled logits against ``train_ds.cached_masks`` (cropped
    and flipped with the images) for ``localizer.epochs`` epochs (SGD, cosine schedule); the
    features stay frozen. With several processes each takes its share of every global batch
    and the gradients are averaged, as in two-stage BC training."""
    L = cfg.localizer
    head.train()
    params = list(head.parameters())
    opt = torch.optim.SGD(params, lr=L.lr, momentum=0.9, weight_decay=cfg.optim.weight_decay)
    batch_size = distributed.per_process_batch(cfg.optim.batch_size, distributed.world_size())
    sampler = distributed.EpochSampler(train_ds, seed, batch_size)
    loader = DataLoader(distributed.SeededSamples(train_ds, seed), batch_size=batch_size, sampler=sampler,
                        drop_last=len(sampler) > batch_size, num_workers=cfg.data.workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, L.epochs * len(loader)))
    total, n = torch.zeros((), device=device), 0
    for epoch in range(L.epochs):
        sampler.set_epoch(epoch)
        for batch in tqdm(loader, desc=f"localizer epoch {epoch}", leave=False, disable=None if progress else True):
            images = batch["image"].to(device)
            with torch.no_grad():
                feats = bc.features(images).float()
            target, weight = decode_masks(batch["cached_mask"].to(device))
            logits = class_maps.upsample(head(feats), images.shape[-2:])
            loss = (F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none") * weight).sum() \
                / weight.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(params)
            opt.step()
            sched.step()
            total, n = total + loss.detach(), n + 1
    head.eval()
    return {"loss": float(total) / max(n, 1)}


def train_localizer(method, train_ds: WSOLDataset, device, progress: bool = True) -> dict:
    """The teacher's pseudo masks, ``localizer.rounds`` students (each later one learns the
    previous one's relabelling), ``method.localizer`` left holding the last. Every process
    trains the same head on all images (seeded) and then takes rank 0's weights."""
    cfg, L, bc = method.cfg, method.cfg.localizer, method.bc
    bc.eval()
    plain = WSOLDataset(train_ds.records, test_transform(cfg.data))
    augmented = WSOLDataset(train_ds.records, train_ds.transform)
    read = teacher_reading(bc, L.teacher)
    augmented.cached_masks = pseudo_masks(lambda x: feature_maps.with_flip(read, x, bc.features), plain, cfg,
                                          L.delta, device)
    stats = {"teacher_area": float(augmented.cached_masks.float().mean())}
    for r in range(L.rounds):
        if r:  # self-training: relabel with the student's own maps
            augmented.cached_masks = pseudo_masks(lambda x: student_map(bc, method.localizer, x), plain, cfg,
                                                  L.relabel_delta, device)
            stats[f"round{r}_area"] = float(augmented.cached_masks.float().mean())
        head = method.localizer
        for module in head.modules():  # each round's student starts afresh
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        torch.manual_seed(distributed.sample_seed(cfg.seed, 1000 + r) % 2**62)
        fit = fit_student(bc, head, augmented, cfg, device, distributed.sample_seed(cfg.seed, 2000 + r) % 2**62,
                          progress)
        stats[f"round{r}_loss"] = fit["loss"]
        if progress:
            print(f"localizer round {r}: loss {fit['loss']:.3f}", flush=True)
    distributed.broadcast_state(method.localizer)
    return stats


@torch.no_grad()
def box_map(method, images: torch.Tensor) -> torch.Tensor:
    """The ``box`` readout [B,h,w]: the student's map, blended with the floor by ``localizer.blend``;
    the frozen features of the image and its mirror are computed once for both."""
    blend, head = method.cfg.localizer.blend, method.localizer

    def read(feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sigmoid(head(feats.float())), feature_maps.feature_norm(feats)])

    student, norm = feature_maps.with_flip(read, images, method.bc.features).unbind(0)
    return (1 - blend) * student + blend * minmax(norm) if blend > 0 else student

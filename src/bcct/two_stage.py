"""Two-stage BC-CT: train the BC model first, then cache every training image's BC mask.

The mask (Eq. 2 and the largest part, with its ignored pixels) is made once on the whole,
un-augmented image and cached as one uint8 code map per image (:func:`bcct.mask.mask_codes`) at a quarter of the input side; the dataset resizes it
to the image and transforms it with the image (tv_tensors.Mask, nearest neighbour), so a
crop keeps exactly the pixels the whole image's mask had: a crop of background stays
background. Memory: (image_size / 4)^2 bytes per image, 3.1 KB at 224 px: 19 MB for CUB's
5,994 training images, 4.0 GB for ILSVRC's 1.28 M (per process).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct.bc_model import bc_loss
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.transforms import test_transform
from bcct.mask import mask_codes
from bcct.train import background_batches


def train_bc(method, train_ds: WSOLDataset, background_folder: str, device, progress: bool = True) -> dict:
    """Paper 3.2: BCE on target vs background images drawn in equal numbers, frozen features."""
    cfg = method.cfg
    bc = method.bc
    bc.train()
    params = [p for p in bc.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.bcct.bc_lr, momentum=cfg.optim.momentum)
    bgs = background_batches(cfg, background_folder, cfg.optim.batch_size, [r.path for r in train_ds.records])
    loader = DataLoader(train_ds, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.workers, collate_fn=collate)
    stats = {}
    for epoch in range(cfg.bcct.bc_epochs):
        accs = []
        for batch in tqdm(loader, desc=f"BC epoch {epoch}", leave=False, disable=None if progress else True):
            with torch.no_grad():
                ft = bc.features(batch["image"].to(device))
                fb = bc.features(next(bgs).to(device))
            loss, acc = bc_loss(bc, ft, fb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            accs.append(acc)
        stats = {"bc_epoch": epoch, "bc_loss": loss.item(), "bc_acc": sum(accs) / max(len(accs), 1)}
        if progress:
            print(f"BC epoch {epoch}: loss {stats['bc_loss']:.3f} acc {stats['bc_acc']:.3f}", flush=True)
    bc.eval()
    return stats


CACHE_REDUCTION = 4  # cached masks are stored at image_size / 4 per side


def cache_masks(method, train_ds: WSOLDataset, device) -> list[torch.Tensor]:
    """One uint8 code map per training image: its BC mask on the whole (resized,
    un-augmented) image, reduced to image_size / 4 per side with nearest neighbour."""
    cfg = method.cfg
    plain = WSOLDataset(train_ds.records, test_transform(cfg.data))
    loader = DataLoader(plain, batch_size=cfg.eval.batch_size, num_workers=cfg.data.workers, collate_fn=collate)
    side = max(1, cfg.data.image_size // CACHE_REDUCTION)
    codes = []
    for batch in loader:
        maps = method.gradient_maps(batch["image"].to(device))[0]
        c = mask_codes(*method.masks(maps))
        codes.extend(F.interpolate(c[:, None].float(), size=(side, side), mode="nearest")[:, 0].to(torch.uint8).cpu())
    return codes

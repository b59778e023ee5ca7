"""Two-stage BC-CT: train the BC model first, then cache every training image's gradient map.

The cache holds one uint8 map per image at the input resolution (``data.image_size``);
the dataset resizes it to the image and transforms it with the image (tv_tensors.Mask), so
the mask follows every crop and flip. Masks are then cut from the augmented map (Eq. 2).
Memory: image_size^2 bytes per image (50 KB at 224 px: 0.3 GB for CUB's 5,994 images).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct.bc_model import bc_loss
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.transforms import test_transform
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


def cache_gradient_maps(method, train_ds: WSOLDataset, device) -> list[torch.Tensor]:
    """One uint8 [S,S] gradient map per training image (un-augmented, resized input)."""
    cfg = method.cfg
    plain = WSOLDataset(train_ds.records, test_transform(cfg.data))
    loader = DataLoader(plain, batch_size=cfg.eval.batch_size, num_workers=cfg.data.workers, collate_fn=collate)
    maps = []
    for batch in loader:
        g = method.gradient_maps(batch["image"].to(device))[0]
        maps.extend((g * 255).round().to(torch.uint8).cpu())
    return maps

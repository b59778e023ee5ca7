"""Two-stage BC-CT: train the BC model first, then cache every training image's BC mask.

The mask (Eq. 2 and the largest part, with its ignored pixels) is made once on the whole,
un-augmented image and cached as uint8 code maps (:func:`bcct.mask.mask_codes`) at a quarter of the input side, one
``[N, side, side]`` tensor for the whole train split; the dataset resizes each
to the image and transforms it with the image (tv_tensors.Mask, nearest neighbour), so a
crop keeps exactly the pixels the whole image's mask had: a crop of background stays
background. Memory: (image_size / 4)^2 bytes per image, 3.1 KB at 224 px: 19 MB for CUB's
5,994 training images, 4.0 GB for ILSVRC's 1.28 M, per process (8 processes on one machine:
32 GB of host memory; loading workers share their process's copy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct import distributed
from bcct.bc_model import bc_loss
from bcct.data.background_set import background_batches
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.transforms import test_transform
from bcct.evaluate import make_loader
from bcct.mask import mask_codes
from bcct.runtime import ignore_sigint


def train_bc(method, train_ds: WSOLDataset, background_folder: str, device, progress: bool = True) -> dict:
    """Paper 3.2: BCE on target vs background images drawn in equal numbers, frozen features.

    With several processes each takes its share of every global batch (targets as the main
    loop shards them, backgrounds as :func:`bcct.data.background_set.background_batches` does) and the
    classifier's gradients are averaged, so every process takes one process's steps (up to
    float summation order); rank 0's weights are then broadcast, so all hold the same BC."""
    cfg = method.cfg
    bc = method.bc
    distributed.broadcast_state(bc)  # every process starts from rank 0's BC model
    bc.train()
    params = [p for p in bc.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.bcct.bc_lr, momentum=cfg.optim.momentum)
    batch = distributed.per_process_batch(cfg.optim.batch_size, distributed.world_size())
    seed = distributed.sample_seed(cfg.seed, 1) % 2**62  # draws apart from the CT epochs'
    bgs = background_batches(cfg, background_folder, batch, [r.path for r in train_ds.records], key=(seed,))
    sampler = distributed.EpochSampler(train_ds, seed, batch)
    loader = DataLoader(distributed.SeededSamples(train_ds, seed), batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_sigint)
    stats = {}
    for epoch in range(cfg.bcct.bc_epochs):
        sampler.set_epoch(epoch)
        sums, steps = torch.zeros(2, dtype=torch.float64, device=device), 0  # loss, accuracy: on the device
        for batch_ in tqdm(loader, desc=f"BC epoch {epoch}", leave=False, disable=None if progress else True):
            with torch.no_grad():
                ft = bc.features(batch_["image"].to(device))
                fb = bc.features(next(bgs).to(device))
            loss, acc = bc_loss(bc, ft, fb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(params)
            opt.step()
            sums, steps = sums + torch.stack([loss.detach(), acc]).double(), steps + 1
        loss_sum, acc_sum, steps = distributed.all_sum([*sums.tolist(), steps])  # one read an epoch
        stats = {"bc_epoch": epoch, "bc_loss": loss_sum / max(steps, 1), "bc_acc": acc_sum / max(steps, 1)}
        if progress:
            print(f"BC epoch {epoch}: loss {stats['bc_loss']:.3f} acc {stats['bc_acc']:.3f}", flush=True)
    distributed.broadcast_state(bc)
    bc.eval()
    return stats


CACHE_REDUCTION = 4  # cached masks are stored at image_size / 4 per side


def cache_masks(method, train_ds: WSOLDataset, device) -> torch.Tensor:
    """Every training image's uint8 code map as one ``[N, side, side]`` tensor (side =
    image_size / 4): its BC mask on the whole (resized, un-augmented) image, reduced with
    nearest neighbour. One tensor, not N: no per-tensor overhead (0.76 GB of it for ILSVRC's
    1.28 M images), and it sits in shared memory, which loading workers read without a copy
    (one shared block, also for a worker started by spawn or forkserver, Python 3.14's
    default). With several processes each masks its share of the batches into its rows and a
    sum over processes (zeros elsewhere) gives every process all of them, in chunks: no
    pickling."""
    cfg = method.cfg
    plain = WSOLDataset(train_ds.records, test_transform(cfg.data))
    batches = distributed.shard_batches(len(plain), cfg.eval.batch_size)
    side = max(1, cfg.data.image_size // CACHE_REDUCTION)
    masks = torch.zeros(len(plain), side, side, dtype=torch.uint8)
    for batch in make_loader(plain, cfg, batches):
        maps = method.gradient_maps(batch["image"].to(device))[0]
        codes = mask_codes(*method.masks(maps))
        small = F.interpolate(codes[:, None].float(), size=(side, side), mode="nearest")[:, 0].to(torch.uint8)
        masks[batch["index"]] = small.cpu()
    distributed.sum_shares(masks)
    return masks.share_memory_()

"""Where a `cub_cpu` training epoch spends its time on this machine (issue 18's profile).

Builds the method exactly as ``bcct train`` does (real photos, real ImageNet weights) and
times, one at a time, with nothing else sharing the cores:

- ``data``: one epoch of batches from the train loader alone (decode, crop, jitter, collate),
  with the config's workers and with none;
- ``step``: the model step alone (forward, backward, SGD) on one real batch already in
  memory, in fp32 / bf16 autocast and contiguous / channels_last layout (medians);
- ``val``: one evaluation of the val split (every readout, its threshold sweep).

Run it alone (the numbers are meaningless beside a test suite or a training):

    python bench/profile_epoch.py --data ../shared/data/cub_dev --backgrounds ../shared/data/backgrounds
        [--method cam] [--steps 6] [override=value ...]
    python bench/profile_epoch.py --data ... --method bcct --stand-in-masks   # the CT stage, no BC stage
    python bench/profile_epoch.py --data ... --malloc default                 # glibc's own malloc thresholds

It prints the process's page faults, user / kernel CPU seconds and peak memory with the times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
from torch.utils.data import DataLoader

from bcct import distributed
from bcct.config import load_config
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform, train_transform
from bcct.evaluate import evaluate
from bcct.mask import mask_codes
from bcct.methods import build_method
from bcct.runtime import autocast, keep_freed_memory
from bcct.two_stage import CACHE_REDUCTION


def time_loader(train_ds, batch_size: int, workers: int, seed: int) -> float:
    """Seconds to draw one epoch of batches (first batch included: worker start-up counts)."""
    sampler = distributed.EpochSampler(train_ds, seed, batch_size)
    loader = DataLoader(distributed.SeededSamples(train_ds, seed), batch_size=batch_size, sampler=sampler,
                        drop_last=True, num_workers=workers, collate_fn=collate)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def time_steps(method, batch: dict, amp: str, layout, steps: int) -> list[float]:
    """Per-step seconds of the model step on one batch (one warm-up step first)."""
    method = method.to(memory_format=layout)
    opt = torch.optim.SGD(method.param_groups(), lr=1e-4, momentum=0.9)  # tiny lr: timing only
    batch = dict(batch, image=batch["image"].contiguous(memory_format=layout))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast(amp, torch.device("cpu")):
            loss, _ = method.training_step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backgrounds", default=None)
    parser.add_argument("--config", default="cub_cpu")
    parser.add_argument("--method", default="cam")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per (precision, layout)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: data,step,val")
    parser.add_argument("--stand-in-masks", action="store_true",
                        help="bcct two-stage: random cached masks instead of the BC stage (the CT step's cost only)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: freed memory kept for the next batch, as bcct's training and evaluation do on CPU "
                             "(bcct.runtime.keep_freed_memory); default: glibc's own thresholds")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.malloc == "keep":
        keep_freed_memory()
    skip = set(filter(None, args.skip.split(",")))
    cfg = load_config(args.config, args.overrides, method=args.method)
    cfg.data.root = args.data
    cfg.data.backgrounds = args.backgrounds
    torch.manual_seed(cfg.seed)
    out = {"load_start": os.getloadavg()[0], "threads": torch.get_num_threads(), "method": args.method}

    wset = read_dataset(cfg.data, seed=cfg.seed)
    train_ds = WSOLDataset(wset.split("train"), train_transform(cfg.data))
    val_ds = WSOLDataset(wset.split("val"), test_transform(cfg.data))
    b = cfg.optim.batch_size
    steps_per_epoch = len(train_ds) // b
    out["train_images"], out["steps_per_epoch"] = len(train_ds), steps_per_epoch

    method = build_method(cfg, wset.num_classes)
    device = torch.device("cpu")
    if args.stand_in_masks and args.method == "bcct" and cfg.bcct.mode == "two_stage":
        # The CT stage's cost does not depend on which pixels the cached BC masks mark: random
        # codes at the cache's size stand in for the BC stage (bcct.two_stage.cache_masks).
        side = cfg.data.image_size // CACHE_REDUCTION
        fg = torch.rand(len(train_ds), side, side) < 0.4
        train_ds.cached_masks = mask_codes(fg, (torch.rand(fg.shape) < 0.9).float())
    elif method.needs_backgrounds or method.trainable is False:
        start = time.perf_counter()
        method.prepare(train_ds, cfg.data.backgrounds, device, False)
        out["prepare_s"] = round(time.perf_counter() - start, 2)

    if "data" not in skip:
        for workers in sorted({cfg.data.workers, 0}):
            out[f"data_epoch_s_workers{workers}"] = round(time_loader(train_ds, b, workers, cfg.seed), 2)
    if "step" not in skip:
        batch = collate([train_ds[i] for i in range(b)])  # with its cached masks, if any
        method.train()
        for amp in ("false", "bf16"):
            for name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
                times = time_steps(method, batch, amp, layout, args.steps)
                med = statistics.median(times)
                out[f"step_s_{amp}_{name}"] = round(med, 3)
                out[f"epoch_compute_s_{amp}_{name}"] = round(med * steps_per_epoch, 1)
                print(f"step {amp:5s} {name:13s} median {med:.3f} s over {len(times)} "
                      f"(min {min(times):.3f}, max {max(times):.3f}) -> {med * steps_per_epoch:.1f} s/epoch", flush=True)
        method.to(memory_format=torch.contiguous_format)
    if "val" not in skip:
        start = time.perf_counter()
        evaluate(method.eval(), val_ds, cfg, device)
        out["val_s"] = round(time.perf_counter() - start, 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["malloc"], out["page_faults"] = args.malloc, usage.ru_minflt
    out["cpu_user_s"], out["cpu_sys_s"] = round(usage.ru_utime, 1), round(usage.ru_stime, 1)
    out["peak_rss_gb"] = round(usage.ru_maxrss / 2**20, 2)  # Linux: KiB
    out["load_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

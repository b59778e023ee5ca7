"""Training throughput of CAM and BC-CT (end-to-end and two-stage) on one backbone.

Times the model step only (``training_step`` + backward + SGD step): every method gets
the same random-init backbone (``model.pretrained=none``), batch size and input size, and
its batch is already in memory (synthetic tensors, no data loading). Methods run
interleaved in rounds (A B C A B C ...) after a warm-up, and the median step time is
reported, so that load from other processes on the machine hits all of them alike.

- ``cam``: cross-entropy on the CAM head.
- ``bcct end2end``: also the BC input gradient, the BC classifier step on half a batch of
  backgrounds (and as many targets), Eq. 2 masks with their largest part, and the mask loss.
- ``bcct two-stage``: the batch carries ``cached_mask`` (uint8 codes [B,S,S], made once up front
  by the BC model, as ``bcct.two_stage.cache_masks`` does), so no BC work runs in
  the step: masks from the cached maps and the mask loss only.

    python bench/bench_methods.py [--size 64] [--batch 32] [--steps 20] [--threads 1]

``--config cub_cpu`` times every method of the paper's comparison instead (``cam``,
``backprop``, ``has``, ``acol``, ``spg_plain``, ``spg``, ``adl`` and BC-CT's two-stage CT step)
with that recipe's backbone (EfficientNet-Lite0, its frozen stages), input size, batch,
precision (``amp``) and memory layout, exactly as ``bcct.train`` steps them, and prints each
one's epoch time on ``--train-images`` images as steps x median step (data loading and val
are the same for every method: ``bench/profile_epoch.py`` times them):

    python bench/bench_methods.py --config cub_cpu --threads 2 --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bcct.config import load_config
from bcct.mask import mask_codes
from bcct.methods import build_method
from bcct.runtime import autocast, memory_format
from bcct.table import VARIANTS

NUM_CLASSES = 10
WARMUP = 3
# max ratio of step time to CAM's. The "(cam target)" rows train no mask branch, so their
# model is the CAM model and the ratio is the cost of BC-CT itself; the default rows add the
# class-agnostic branch (mask_target=both).
TARGETS = {"bcct two-stage": 1.05, "bcct two-stage (cam target)": 1.05,
           "bcct end2end": 1.6, "bcct end2end (cam target)": 1.6, "bcct end2end, BC at 0.5x": 1.6}


CPU = torch.device("cpu")
# The paper's comparison (Tables 1-2) plus ADL, every one with the cub_cpu recipe.
COMPARISON = ("cam", "backprop", "has", "acol", "spg_plain", "spg", "adl")


def make_method(size: int, batch: int, *overrides: str, method: str, config: str = "synth"):
    cfg = load_config(config, [f"image_size={size}", f"batch_size={batch}", *overrides], method=method)
    cfg.model.pretrained = "none"  # random init: no weights file, same backbone for all
    m = build_method(cfg, num_classes=NUM_CLASSES).train().to(memory_format=memory_format(CPU))
    opt = torch.optim.SGD(m.param_groups(), momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    return m, opt, cfg.amp


def step(method, opt, amp, batch: dict) -> float:
    """One timed training step (what ``bcct.train.train_one_epoch`` does per batch: the
    recipe's autocast, then backward and SGD in full precision); seconds."""
    start = time.perf_counter()
    with autocast(amp, CPU):
        loss, _ = method.training_step(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def comparison(config: str, batch: int, size: int | None) -> tuple[dict, dict, str]:
    """Every method of the comparison with ``config``'s recipe, and its batch."""
    cfg = load_config(config)
    s = size or cfg.data.image_size
    images = torch.randn(batch, 3, s, s).contiguous(memory_format=memory_format(CPU))
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    methods = {}
    for name in COMPARISON:
        method, extra = VARIANTS.get(name, (name, []))
        methods[name] = make_method(s, batch, *extra, method=method, config=config)
    methods["bcct two-stage (CT step)"] = make_method(s, batch, "bcct.mode=two_stage", method="bcct", config=config)
    batches = {name: {"image": images, "label": labels} for name in COMPARISON}
    # The CT step's cost does not depend on which pixels the cached BC masks mark: random
    # codes stand in for the BC stage (at the input's size, as the train transform crops and
    # resizes the cached masks with their images).
    fg = torch.rand(batch, s, s) < 0.4
    batches["bcct two-stage (CT step)"] = {"image": images, "label": labels,
                                           "cached_mask": mask_codes(fg, (torch.rand(fg.shape) < 0.9).float())}
    return methods, batches, f"{config} recipe (efficientnet_lite0 random init, amp={cfg.amp}), input {s}x{s}"


def interleaved(methods: dict, batches: dict, steps: int, what: str) -> dict[str, list[float]]:
    """Step times per method, in rounds (A B C A B C ...) after the warm-up rounds."""
    print(f"{what}, {WARMUP} warm-up + {steps} timed steps per method, interleaved")
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(WARMUP + steps):
        for name, (m, opt, amp) in methods.items():
            t = step(m, opt, amp, batches[name])
            if r >= WARMUP:
                times[name].append(t)
    return times


def report(times: dict[str, list[float]], batch: int, steps_per_epoch: int | None = None) -> dict[str, float]:
    """Print each method's median step (its IQR, images/s, ratio to CAM and, given
    ``steps_per_epoch``, the epoch it makes); returns the medians."""
    med = {name: statistics.median(ts) for name, ts in times.items()}
    epoch = f" {f'epoch s ({steps_per_epoch} steps)':>18}" if steps_per_epoch else ""
    print(f"\n{'method':<28} {'ms/step':>9} {'IQR ms':>13} {'images/s':>9} {'x CAM':>7}{epoch}")
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4)
        print(f"{name:<28} {1e3 * med[name]:9.1f} {f'{1e3 * q1:.0f}-{1e3 * q3:.0f}':>13} {batch / med[name]:9.1f} "
              f"{med[name] / med['cam']:7.2f}" + (f" {steps_per_epoch * med[name]:18.1f}" if steps_per_epoch else ""))
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="input size S (images S x S; 64, or the --config's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None,
                        help="e.g. cub_cpu: time every method of the comparison with that recipe (its input size "
                             "unless --size is given)")
    parser.add_argument("--train-images", type=int, default=600, help="epoch = train images // batch steps "
                        "(600: cub_dev's 750 train images less the 150 carved for val)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.config:
        methods, batches, what = comparison(args.config, args.batch, args.size)
        times = interleaved(methods, batches, args.steps, f"torch {torch.__version__}, {torch.get_num_threads()} "
                            f"thread(s), {what}, batch {args.batch}")
        report(times, args.batch, steps_per_epoch=args.train_images // args.batch)
        return
    b, s = args.batch, args.size or 64

    images = torch.randn(b, 3, s, s)
    labels = torch.randint(0, NUM_CLASSES, (b,))
    backgrounds = torch.randn(b // 2, 3, s, s)  # the loop sends half a batch (bcct.train)
    # Low lrs keep random-data training finite; the cost of a step does not depend on them.
    low_lr = ["optim.lr=0.001", "optim.lr_backbone=0.0001"]
    methods = {
        "cam": make_method(s, b, *low_lr, method="cam"),
        "bcct end2end": make_method(s, b, *low_lr, "bcct.mode=end2end", method="bcct"),
        "bcct two-stage": make_method(s, b, *low_lr, "bcct.mode=two_stage", method="bcct"),
        "bcct end2end (cam target)": make_method(s, b, *low_lr, "bcct.mode=end2end", "bcct.mask_target=cam", method="bcct"),
        "bcct two-stage (cam target)": make_method(s, b, *low_lr, "bcct.mode=two_stage", "bcct.mask_target=cam",
                                                   method="bcct"),
        "bcct end2end, BC at 0.5x": make_method(s, b, *low_lr, "bcct.mode=end2end", "bcct.bc_scale=0.5", method="bcct"),
    }
    # The two-stage cache: the BC masks of these images as uint8 codes (made once, outside
    # the timed steps, exactly like two_stage.cache_masks before the first epoch).
    two_stage = methods["bcct two-stage"][0]
    cached = mask_codes(*two_stage.masks(two_stage.gradient_maps(images)[0]))
    batches = {
        "cam": {"image": images, "label": labels},
        "bcct end2end": {"image": images, "label": labels, "background": backgrounds},
        "bcct two-stage": {"image": images, "label": labels, "cached_mask": cached},
        "bcct end2end (cam target)": {"image": images, "label": labels, "background": backgrounds},
        "bcct two-stage (cam target)": {"image": images, "label": labels, "cached_mask": cached},
        "bcct end2end, BC at 0.5x": {"image": images, "label": labels, "background": backgrounds},
    }

    times = interleaved(methods, batches, args.steps, f"torch {torch.__version__}, {torch.get_num_threads()} "
                        f"thread(s), small_vgg (random init), batch {b}, input {s}x{s}")

    med = report(times, b)
    print()
    for name, limit in TARGETS.items():
        ratio = med[name] / med["cam"]
        print(f"target {name:<28} <= {limit:.2f}x CAM: {ratio:.2f}x  {'PASS' if ratio <= limit else 'FAIL'}")


if __name__ == "__main__":
    main()

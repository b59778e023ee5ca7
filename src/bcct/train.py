"""The training loop, in the style of torchvision's classification reference: it reads top
to bottom (processes, config, data, model, optimiser and schedule, resume,
``train_one_epoch``, ``evaluate``, checkpoint) and knows no method by name.

One process or several (``torchrun ... -m bcct train``; see bcct.distributed): only rank 0
writes files and prints. A run stopped by Ctrl-C (or SIGTERM) writes ``last.pt`` at the
step it reached; ``resume=True`` continues from there, skipping the steps done. Every
sample's augmentation is seeded from (seed, epoch, index), so a resumed run, like a run on
more processes or data-loading workers, sees the same epochs.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct import checkpoint, distributed, runtime
from bcct.config import NO_BOX_THRESHOLD, RESUME_HARMLESS, Config, from_dict, resume_differences, to_dict, to_yaml
from bcct.data.background_set import background_batches, crop_side, make_background_set
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform, train_transform
from bcct.errors import BadInput
from bcct.evaluate import MASK_THRESHOLD, evaluate, has_boxes
from bcct.meters import Averages
from bcct.methods import METHODS, build_method
from bcct.runtime import GracefulStop, amp_dtype, autocast, ignore_sigint, memory_format, precision, resolve_device
from bcct.runtime import seed_everything, tune_kernels


def train_one_epoch(model, method, optimizer, scaler, loader, device, epoch: int, cfg: Config, meter: Averages,
                    first_step: int = 0, backgrounds=None, save_last=None, stop: GracefulStop | None = None,
                    progress: bool = True) -> dict:
    """One pass over this process's share of the epoch from step ``first_step``; returns the
    mean logs over every process. ``save_last(step, meter)`` writes last.pt: every
    ``optim.checkpoint_every`` steps, and when a stop was requested (then KeyboardInterrupt).

    A step never waits for the device: its logs and its finiteness check stay there and are
    read every ``optim.log_every`` steps, before any save and at the epoch end (a NaN loss
    stops the run at the next read, naming the step it happened at). With several
    processes a stop request is agreed on at those reads too (one process alone stops at
    the step it was asked)."""
    method.train()
    method.on_epoch_start(epoch)
    fmt = memory_format(device)
    every, several = max(1, cfg.optim.log_every), distributed.is_distributed()
    watch = LossWatch(device)
    bar = tqdm(loader, desc=f"epoch {epoch}", initial=first_step, total=first_step + len(loader), leave=False,
               disable=None if progress else True)
    for step, batch in enumerate(bar, start=first_step + 1):  # step: steps done once this one is
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["image"] = batch["image"].contiguous(memory_format=fmt)
        if backgrounds is not None:
            batch["background"] = next(backgrounds).to(device, non_blocking=True).contiguous(memory_format=fmt)
        with autocast(cfg.amp, device):
            loss, logs = model(batch)
        watch.update(loss, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        meter.update(logs)
        save_now = save_last is not None and bool(cfg.optim.checkpoint_every) and step % cfg.optim.checkpoint_every == 0
        asked = stop is not None and stop.requested
        stopping = False
        if step % every == 0 or save_now or (asked and not several):
            stopping = watch.check(epoch, asked)  # raises on a non-finite loss of any process
            if not bar.disable:
                bar.set_postfix(loss=f"{meter.mean('loss'):.3f}")
        if save_last is not None and (stopping or save_now):
            save_last(step, meter)
        if stopping:
            raise KeyboardInterrupt
    watch.check(epoch, False)
    return meter.reduced()


class LossWatch:
    """This process's first non-finite loss (its step and value), noted on the device without
    a host sync; :meth:`check` reads it back on every process at once."""

    def __init__(self, device: torch.device):
        self.first = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=device)  # (step, loss); step -1: none

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().double()
        bad = ~torch.isfinite(loss) & (self.first[0] < 0)
        self.first = torch.where(bad, torch.stack([torch.full_like(loss, step), loss]), self.first)

    def check(self, epoch: int, stop: bool = False) -> bool:
        """Stop on a NaN or infinite loss, on every process at once with the same message (a
        process that stopped alone would leave the others waiting in the gradient
        all-reduce). Else True when any process was asked to stop. One host sync, and one
        collective with several processes."""
        rows = distributed.all_rows(torch.cat([self.first, self.first.new_tensor([float(stop)])]))
        bad = [(int(s), v, r) for r, (s, v, _) in enumerate(rows) if s >= 0]
        if bad:
            step, value, _ = min(bad)
            ranks = ", ".join(str(r) for s, _, r in bad if s == step)
            on = f" on rank {ranks}" if len(rows) > 1 else ""
            raise FloatingPointError(f"loss is {value}{on} at epoch {epoch}, step {step}; lower the learning rate")
        return any(row[2] for row in rows)


def make_checkpoint(method, optimizer, scheduler, cfg: Config, epoch: int, class_names, thresholds, val,
                    step: int = 0, scaler=None, rng=None, logs=None) -> dict:
    """``epoch`` finished (``step`` 0), or ``step`` steps into ``epoch`` (a resume point).
    ``rng`` and ``logs`` hold one entry per process (rank order)."""
    return {
        "format": checkpoint.FORMAT,
        "method": cfg.method,
        "model": checkpoint.trained_state(method),
        "frozen": list(method.frozen),  # left out of "model": rebuilt from model.pretrained
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "lr_scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "step": step,
        "world_size": distributed.world_size(),
        "config": to_dict(cfg),
        "class_names": list(class_names),
        "thresholds": thresholds,
        "val": val,
        "rng": rng if rng is not None else [checkpoint.rng_state()],
        "epoch_logs": logs or [],
    }


def train(cfg: Config, out_dir: str | Path, progress: bool = True, resume: bool = False) -> dict:
    """Train ``cfg.method`` on the train split; choose the CAM threshold and the best epoch on
    the held-out val split. Rank 0 writes config.yaml, metrics.jsonl, last.pt and best.pt."""
    device = distributed.local_device(resolve_device(cfg.device))
    try:
        with distributed.process_group(device):
            return _train(cfg, Path(out_dir), device, progress and distributed.is_main(), resume)
    finally:  # the next run in this process (bcct table, bench_real) starts from what it holds
        runtime.release_freed_memory()


def _train(cfg: Config, out_dir: Path, device: torch.device, progress: bool, resume: bool) -> dict:
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    amp_dtype(cfg.amp)  # a bad value fails before any work
    tune_kernels(device)
    if progress:
        print(f"{cfg.method}: training steps in {precision(cfg.amp, device)} on {device}", flush=True)
    batch_size = distributed.per_process_batch(cfg.optim.batch_size, world)
    seed_everything(cfg.seed)

    wset = read_dataset(cfg.data, seed=cfg.seed)
    train_ds = WSOLDataset(wset.split("train"), train_transform(cfg.data))
    val_ds = WSOLDataset(wset.split("val"), test_transform(cfg.data))
    if len(train_ds) == 0:
        raise BadInput(f"{cfg.data.root}: the train split is empty; check train_test_split.txt")
    val_ds.image_sizes()  # validate val images and boxes before any training time is spent
    if len(val_ds) and not has_boxes(val_ds) and cfg.eval.threshold is None:
        best = "; best.pt is the epoch of best val classification" if cfg.eval.select == "top1_loc" else ""
        if getattr(METHODS.get(cfg.method), "has_masks", False):  # BC-CT: its BC masks need no annotation
            rule = ("the CAM threshold is chosen on val against the boxes of the BC masks (no annotation needed; "
                    "docs/bcct.md); pass eval.threshold=T to fix one")
        else:
            cfg.eval.threshold = NO_BOX_THRESHOLD  # saved with the run: evaluation and localize use it
            rule = (f"boxes use the fixed eval.threshold={NO_BOX_THRESHOLD} (CAM's 20%-of-max rule, Zhou et al. "
                    "2016; pass eval.threshold=T for another)")
        if main:
            print(f"note: {cfg.data.root}: the val split has no boxes, so no CAM threshold can be chosen against GT boxes; "
                  f"{rule}{best}", flush=True)
    if len(val_ds) == 0 and cfg.eval.threshold is None and main:
        warnings.warn(f"{cfg.data.root}: the val split is empty (data.val_fraction={cfg.data.val_fraction:g}): no CAM "
                      "threshold is chosen on val, so any evaluation must pick it on the split it scores (oracle, "
                      "`bcct eval --oracle`); set data.val_fraction > 0 or eval.threshold", UserWarning, stacklevel=2)
    sampler = distributed.EpochSampler(train_ds, cfg.seed, batch_size)
    loader = DataLoader(distributed.SeededSamples(train_ds, cfg.seed), batch_size=batch_size, sampler=sampler,
                        drop_last=len(sampler) > batch_size, num_workers=cfg.data.workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.data.workers > 0,
                        worker_init_fn=ignore_sigint, generator=torch.Generator())

    with distributed.main_first():  # rank 0 downloads (or pretrains) weights into the cache first
        method = build_method(cfg, wset.num_classes)
    method = distributed.sync_batchnorm(method, device).to(device, memory_format=memory_format(device))
    folder = cfg.data.backgrounds or str(Path(cfg.data.root) / "backgrounds")
    train_paths = [r.path for r in train_ds.records]
    if method.needs_backgrounds:  # a missing, empty or corrupt Background Image Set fails before anything is written
        make_background_set(folder, train_paths, train_transform(cfg.data),
                            side=crop_side(cfg.data.image_size, cfg.data.crop_scale))  # decoded once: the stream reuses it

    if not method.trainable:  # a training-free map: fit what it fits, choose its threshold on val, done
        return _record_only(method, cfg, out_dir, device, train_ds, val_ds, folder, wset.class_names, progress)
    optimizer = torch.optim.SGD(method.param_groups(), momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.optim.lr_step_epochs), gamma=cfg.optim.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg.amp, device) == torch.float16)

    start_epoch, start_step, resumed = 0, 0, None
    best_score, thresholds, best_val = -1.0, {}, {}
    _score({}, 0, cfg.eval.select)  # a bad eval.select fails before any training
    if resume and (out_dir / "last.pt").is_file():
        resumed = checkpoint.load(out_dir / "last.pt")
        changed = resume_differences(from_dict(resumed["config"]), cfg)
        if changed:
            raise BadInput(f"{out_dir / 'last.pt'}: --resume with a config that differs from the one it was trained "
                           f"with ({'; '.join(changed)}); resume with the same config (only "
                           f"{', '.join(RESUME_HARMLESS)} may change) or train into a new --out")
        checkpoint.load_trained_state(method, resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["lr_scheduler"])
        if resumed.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resumed["scaler"])
        start_step = resumed.get("step", 0)
        start_epoch = resumed["epoch"] + (0 if start_step else 1)
        if (out_dir / "best.pt").is_file():
            best = checkpoint.load(out_dir / "best.pt")
            best_val, thresholds = best["val"], best["thresholds"]
            best_score = _score(best_val, best["epoch"], cfg.eval.select)

    t_prepare = time.time()
    prep_stats = method.prepare(train_ds, folder, device, progress)
    t_prepare = round(time.time() - t_prepare, 2)
    model = distributed.wrap(method, device)  # DDP (rank 0's weights to all) or the plain step

    log_path = out_dir / "metrics.jsonl"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text_atomic(to_yaml(cfg), out_dir / "config.yaml")
        _truncate_log(log_path, start_epoch if resumed else None)
        if prep_stats:
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"epoch": -1, "prepare": prep_stats, "time_s": t_prepare}) + "\n")

    writer = checkpoint.BackgroundWriter()  # mid-epoch last.pt is written while training goes on

    def save_last(epoch: int, step: int, meter: Averages) -> None:
        """last.pt mid-epoch: every process's random state and partial logs go with it."""
        states = distributed.gather_objects({"rng": checkpoint.rng_state(), "logs": meter.state()})
        if main:
            ckpt = make_checkpoint(method, optimizer, scheduler, cfg, epoch, wset.class_names, {}, {}, step, scaler,
                                   rng=[s["rng"] for s in states], logs=[s["logs"] for s in states])
            writer.save(ckpt, out_dir / "last.pt")

    backgrounds = None
    if method.needs_backgrounds:  # half a batch: the BC model takes as many targets (bcct.py)
        sampler.set_epoch(start_epoch)
        drawn = start_epoch * len(loader) + start_step  # one batch per step of every epoch before
        backgrounds = background_batches(cfg, folder, max(1, batch_size // 2), train_paths, key=(cfg.seed,), skip=drawn)
    with GracefulStop() as stop, _finally(writer.wait):
        for epoch in range(start_epoch, cfg.optim.epochs):
            t0 = time.time()
            first_step = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, skip_batches=first_step)
            meter = _start_epoch_state(cfg.seed, epoch, rank, world, resumed if first_step else None)
            train_logs = train_one_epoch(model, method, optimizer, scaler, loader, device, epoch, cfg, meter,
                                         first_step, backgrounds, lambda step, m: save_last(epoch, step, m), stop, progress)
            scheduler.step()
            distributed.broadcast_state(method)  # evaluate and save rank 0's BatchNorm statistics
            judged = _evaluated_epoch(epoch, cfg)
            val = evaluate(method, val_ds, cfg, device) if len(val_ds) and judged else {}
            epoch_thresholds = _val_thresholds(val)
            record = {"epoch": epoch, "time_s": round(time.time() - t0, 2), "lr": scheduler.get_last_lr(),
                      "train": train_logs, "val": _brief(val)}
            if main:
                writer.wait()  # a mid-epoch last.pt still being written must not land after this one
                ckpt = make_checkpoint(method, optimizer, scheduler, cfg, epoch, wset.class_names, epoch_thresholds, val,
                                       scaler=scaler)
                if judged and _score(val, epoch, cfg.eval.select) >= best_score:
                    checkpoint.save_atomic(ckpt, out_dir / "best.pt")
                checkpoint.save_atomic(ckpt, out_dir / "last.pt")
                with open(log_path, "a") as fh:  # after last.pt: a resumed run never repeats a line
                    fh.write(json.dumps(record) + "\n")
                if progress:
                    print(_line(record), flush=True)
            if judged and _score(val, epoch, cfg.eval.select) >= best_score:
                best_score, best_val, thresholds = _score(val, epoch, cfg.eval.select), val, epoch_thresholds
            if distributed.any_rank(stop.requested) and epoch + 1 < cfg.optim.epochs:
                raise KeyboardInterrupt  # last.pt holds this finished epoch
    return {"val": best_val, "thresholds": thresholds}


def _evaluated_epoch(epoch: int, cfg: Config) -> bool:
    """Whether val is scored after ``epoch``: every ``eval.every`` epochs and after the last
    (``eval.every`` 0: after the last only). Skipping val on the other epochs saves its
    passes (BC-CT's include the BC maps for BC*) when the last epoch is kept anyway."""
    last = epoch + 1 == cfg.optim.epochs
    return last or (cfg.eval.every > 0 and (epoch + 1) % cfg.eval.every == 0)


def _val_thresholds(val: dict) -> dict[str, float]:
    """The thresholds chosen on val (against its boxes, or against the BC masks' boxes)."""
    return {name: res["threshold"] for name, res in val.items()
            if "gt_known" in res or res.get("threshold_source") == MASK_THRESHOLD}


def _record_only(method, cfg: Config, out_dir: Path, device, train_ds, val_ds, folder, class_names,
                 progress: bool) -> dict:
    """``bcct train`` for a method with nothing to train: its ``prepare`` (e.g. DDT's fit on the
    train images), the threshold chosen on val, and best.pt / last.pt as after an epoch."""
    t0 = time.time()
    prep_stats = method.prepare(train_ds, folder, device, progress)
    val = evaluate(method, val_ds, cfg, device) if len(val_ds) else {}
    thresholds = _val_thresholds(val)
    record = {"epoch": 0, "time_s": round(time.time() - t0, 2), "train": {}, "val": _brief(val),
              **({"prepare": prep_stats} if prep_stats else {})}
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text_atomic(to_yaml(cfg), out_dir / "config.yaml")
        ckpt = make_checkpoint(method, None, None, cfg, 0, class_names, thresholds, val)
        checkpoint.save_atomic(ckpt, out_dir / "best.pt")
        checkpoint.save_atomic(ckpt, out_dir / "last.pt")
        checkpoint.write_text_atomic(json.dumps(record) + "\n", out_dir / "metrics.jsonl")
        if progress:
            print(f"{cfg.method}: nothing to train; " + _line(record), flush=True)
    return {"val": val, "thresholds": thresholds}


@contextmanager
def _finally(fn):
    """Run ``fn`` when the block ends, however it ends (e.g. wait for a checkpoint write)."""
    try:
        yield
    finally:
        fn()


def _start_epoch_state(seed: int, epoch: int, rank: int, world: int, resumed: dict | None) -> Averages:
    """Seed the global generators from (seed, epoch, rank), for what a method draws in its
    step; a run resumed mid-epoch gets back its random state and its partial epoch logs."""
    seed_everything(distributed.sample_seed(seed, epoch, rank))
    if resumed is None:
        return Averages()
    rng, logs = resumed["rng"], resumed.get("epoch_logs") or []
    rng = [rng] if isinstance(rng, dict) else rng  # checkpoints before bcct-checkpoint-1 step resume
    if len(rng) == world:
        checkpoint.set_rng_state(rng[rank])
    return Averages(logs[rank] if len(logs) == world else None)


def _truncate_log(path: Path, start_epoch: int | None) -> None:
    """A fresh run (``start_epoch`` None) starts a new log; a resumed one keeps only the
    lines before ``start_epoch`` (the prepare stage's line -1 among them)."""
    if not path.is_file():
        return
    keep = [] if start_epoch is None else [
        line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] < start_epoch]
    checkpoint.write_text_atomic("".join(line + "\n" for line in keep), path)


def _score(val: dict, epoch: int, select: str) -> float:
    """Model selection for best.pt: ``top1_loc`` of the primary readout on val (its
    ``cls_top1`` when val has no boxes; 0 when there is no val split), or ``last`` (the
    latest epoch always wins)."""
    if select == "last":
        return float(epoch)
    if select != "top1_loc":
        raise BadInput(f"eval.select={select!r}: use top1_loc or last")
    if not val:
        return 0.0
    primary = next(iter(val.values()))
    return float(primary["top1_loc"] if "top1_loc" in primary else primary["cls_top1"])


def _brief(val: dict) -> dict:
    keys = ("cls_top1", "top1_loc", "gt_known", "maxboxacc_v2", "threshold")
    return {name: {k: round(float(res[k]), 4) for k in keys if k in res} for name, res in val.items()}


def _line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"{record['time_s']:.1f}s"]
    if "loss" in record["train"]:
        parts.append(f"loss {record['train']['loss']:.3f}")
    for name, res in record["val"].items():
        cls = f" cls {res['cls_top1']:.3f}" if "cls_top1" in res else ""
        top1 = f" top1-loc {res['top1_loc']:.3f}" if "top1_loc" in res else ""
        loc = (f"{top1} gt-known {res['gt_known']:.3f} @tau {res.get('threshold', 0):.2f}"
               if "gt_known" in res else f" (no boxes: no localisation; tau {res.get('threshold', float('nan')):.2f})")
        parts.append(f"val[{name}]{cls}" + loc)
    return " | ".join(parts)

"""Several processes on CPU (gloo): what is exact and what is within a stated tolerance.

- Distributed evaluation of one checkpoint equals one process's evaluation exactly (the
  same batches run, rows gathered back in dataset order).
- DDP training of a model without BatchNorm equals one process up to float summation order:
  weights within 1e-5 (relative to their size), losses within 1e-5, the same metrics.
- With BatchNorm (the synth recipe) on CPU each process normalises over its own half of the
  batch (PyTorch's SyncBatchNorm has no CPU kernel; on CUDA it is used): the runs differ
  and only the epoch loss is compared, within 10%.
- The speed settings (AMP, channels_last) are checked as far as a CPU allows.

Two processes cost a few seconds each time (starting Python and torch), so one spawned job
serves several tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bcct import backbones, checkpoint, distributed
from bcct.backbones import make_vgg
from bcct.run import evaluate_checkpoint
from bcct.distributed import per_process_batch
from bcct.runtime import amp_dtype, autocast, memory_format
from bcct.train import train

from conftest import TINY_OVERRIDES

# A backbone without BatchNorm: DDP's averaged gradients then equal one process's exactly
# (up to summation order), whatever the split of the batch.
PLAIN = "plain_tiny_vgg"
PLAIN_OVERRIDES = [f"model.backbone={PLAIN}", "model.pretrained=none", "model.head_bn=false", "epochs=2", "optim.lr=0.05"]
# BC-CT on the same backbone, both modes: masks from the BC model's input gradient.
# End to end, masks are cut from maps computed in each process's share of the batch: a pixel
# within float-order noise of delta x max could land on either side. A blur of 1/8 of the
# side (4 px at 32 px) keeps the tiny set's maps smooth enough that none does.
BCCT_RUNS = {"bcct_end2end": ["bcct.mode=end2end", "bcct.warmup_epochs=0", "bcct.blur=0.125"],
             "bcct_two_stage": ["bcct.mode=two_stage", "bcct.warmup_epochs=0", "bcct.bc_epochs=2"]}
# (split, overrides, oracle): 2 batches (one per rank), 3 batches (uneven), 1 batch (rank 1 idle)
EVAL_CASES = [("test", [], False), ("test", ["eval.batch_size=8"], False), ("val", [], True)]


def _plain_backbone(pretrained: str = "none"):
    return make_vgg((16, "M", 32, "M", 32), batch_norm=False)


# ------------------------------------------------------------------- one job, two processes


@contextmanager
def _count_bc_stage():
    """{"bc": target images the BC stage trained on, "maps": images whose gradient map was
    cached as a mask}, in this process (two-stage's prepare)."""
    import bcct.methods.bc_ct as bc_ct
    import bcct.two_stage as two_stage

    counts = {"bc": 0, "maps": 0}
    loss, cache = two_stage.bc_loss, two_stage.cache_masks

    def counted_loss(bc, ft, fb):
        counts["bc"] += len(ft)
        return loss(bc, ft, fb)

    def counted_cache(method, train_ds, device):
        maps = method.gradient_maps

        def counted_maps(images):
            counts["maps"] += len(images)
            return maps(images)

        method.gradient_maps = counted_maps
        try:
            return cache(method, train_ds, device)
        finally:
            del method.gradient_maps

    two_stage.bc_loss, bc_ct.cache_masks = counted_loss, counted_cache  # cache_masks where BC-CT calls it
    try:
        yield counts
    finally:
        two_stage.bc_loss, bc_ct.cache_masks = loss, cache


def _worker(rank: int, world: int, init_file: str, jobs: dict) -> None:
    """One of two gloo processes: evaluate the reference checkpoint in every case, then train
    the BatchNorm-free model with DDP. Rank 0 writes the results as JSON."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        backbones.BACKBONES[PLAIN] = _plain_backbone
        evals = [evaluate_checkpoint(jobs["checkpoint"], split=split, oracle=oracle, overrides=ov, progress=False)
                 for split, ov, oracle in EVAL_CASES]
        from bcct.config import load_config

        cfg = load_config("synth", TINY_OVERRIDES + PLAIN_OVERRIDES, method="cam")
        cfg.data.root = jobs["data"]
        result = train(cfg, jobs["run"], progress=False)
        for name, extra in BCCT_RUNS.items():
            cfg = load_config("synth", TINY_OVERRIDES + PLAIN_OVERRIDES + extra, method="bcct")
            cfg.data.root = jobs["data"]
            with _count_bc_stage() as counts:
                train(cfg, jobs[name], progress=False)
            Path(jobs[name] + f".rank{rank}.json").write_text(json.dumps(counts))
        if rank == 0:
            Path(jobs["out"]).write_text(json.dumps({"evals": evals, "train": result}, default=float))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def reference_run(make_tiny_cfg, tmp_path_factory) -> Path:
    """A 1-process CAM run (synth recipe, BatchNorm) whose best.pt is the checkpoint evaluated."""
    run = tmp_path_factory.mktemp("ref") / "cam"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    return run


@pytest.fixture(scope="module")
def two_process_job(reference_run, tiny_data, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    jobs = {"checkpoint": str(reference_run / "best.pt"), "data": str(tiny_data), "run": str(tmp / "plain_ddp"),
            "out": str(tmp / "result.json"), **{name: str(tmp / name) for name in BCCT_RUNS}}
    mp.spawn(_worker, args=(2, str(tmp / "init"), jobs), nprocs=2, join=True)
    return {**json.loads(Path(jobs["out"]).read_text()), "run": Path(jobs["run"]),
            **{name: Path(jobs[name]) for name in BCCT_RUNS}}


def test_distributed_evaluation_equals_one_process_exactly(two_process_job, reference_run):
    for (split, overrides, oracle), got in zip(EVAL_CASES, two_process_job["evals"]):
        want = evaluate_checkpoint(str(reference_run / "best.pt"), split=split, oracle=oracle, overrides=overrides,
                                   progress=False)
        assert json.loads(json.dumps(want, default=float)) == got, (split, overrides)


def test_ddp_training_equals_one_process(two_process_job, make_tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, PLAIN, _plain_backbone)
    one = tmp_path / "plain_one"
    train(make_tiny_cfg(*PLAIN_OVERRIDES), one, progress=False)
    _assert_same_run(one, two_process_job["run"])


@pytest.mark.parametrize("name", list(BCCT_RUNS))
def test_ddp_bcct_equals_one_process(name, two_process_job, make_tiny_cfg, tmp_path, monkeypatch):
    """BC-CT under 2 processes: end to end (each process draws its share of one process's
    background batch) and two-stage (the BC stage trained in step on both, the map cache
    computed in shares and gathered) take one process's steps, up to float order."""
    monkeypatch.setitem(backbones.BACKBONES, PLAIN, _plain_backbone)
    one = tmp_path / name
    with _count_bc_stage() as counts:
        train(make_tiny_cfg(*PLAIN_OVERRIDES, *BCCT_RUNS[name], method="bcct"), one, progress=False)
    _assert_same_run(one, two_process_job[name])
    if name == "bcct_two_stage":  # the BC stage and the map cache: each process does its share
        shares = [json.loads(Path(f"{two_process_job[name]}.rank{r}.json").read_text()) for r in range(2)]
        assert counts["bc"] > 0 and counts["maps"] > 0
        assert [s["bc"] for s in shares] == [counts["bc"] // 2] * 2
        assert sum(s["maps"] for s in shares) == counts["maps"] and min(s["maps"] for s in shares) > 0
        [a], [b] = ([json.loads(x)["prepare"] for x in (run / "metrics.jsonl").read_text().splitlines()
                     if json.loads(x)["epoch"] == -1] for run in (one, two_process_job[name]))
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)  # the BC stage's loss and accuracy


def _assert_same_run(one: Path, ddp: Path) -> None:
    """A 1-process and a 2-process run: the same weights (1e-5 of their size), the same
    per-epoch losses (1e-5) and the same val metrics."""
    a, b = checkpoint.load(one / "last.pt"), checkpoint.load(ddp / "last.pt")
    assert a["world_size"] == 1 and b["world_size"] == 2 and len(b["rng"]) == 1  # epoch end: rank 0's state
    for k, v in a["model"].items():
        scale = max(float(v.abs().max()), 1e-3) if v.is_floating_point() else 1.0
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=0, atol=1e-5 * scale), k
    lines_a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines() if '"prepare"' not in x]
    lines_b = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines() if '"prepare"' not in x]
    assert [r["epoch"] for r in lines_b] == [0, 1]  # rank 0 alone wrote the log
    for ra, rb in zip(lines_a, lines_b):
        for key, value in ra["train"].items():  # losses are averaged over both processes
            assert rb["train"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert ra["val"] == rb["val"]
    assert not [p.name for p in ddp.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------- torchrun, the command line


def test_torchrun_cli_with_batchnorm(tiny_data, standin_cache, make_tiny_cfg, tmp_path):
    """`torchrun --nproc_per_node=2 -m bcct train` end to end (synth recipe: BatchNorm). On CPU
    each rank normalises over its half batch, so only the loss is compared, within 10%."""
    run = tmp_path / "cli"
    env = dict(os.environ, BCCT_CACHE=str(standin_cache), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bcct", "train",
           "--config", "synth", "--method", "cam", "--data", str(tiny_data), "--out", str(run), "--quiet",
           *TINY_OVERRIDES, "epochs=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # only rank 0 prints
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"}
    [line] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    one = tmp_path / "one"
    train(make_tiny_cfg("epochs=1"), one, progress=False)
    [ref] = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert line["train"]["loss"] == pytest.approx(ref["train"]["loss"], rel=0.10)
    assert checkpoint.load(run / "best.pt")["world_size"] == 2
    assert evaluate_checkpoint(str(run / "best.pt"), split="test", progress=False)["n_images"] == 24


# ------------------------------------------------------------------- samplers (no processes)


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_shard_batches_cover_every_image_once(monkeypatch):
    for n, bs, world in [(24, 16, 2), (24, 8, 2), (6, 16, 2), (10, 3, 4), (0, 4, 2)]:
        shards = []
        for r in range(world):
            _as_rank(monkeypatch, r, world)
            shards.append(distributed.shard_batches(n, bs))
        batches = sorted(b for shard in shards for b in shard)
        assert batches == [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]  # one process's batches


def test_epoch_sampler_steps_match_one_process(monkeypatch):
    data = list(range(19))
    _as_rank(monkeypatch, 0, 1)
    one = distributed.EpochSampler(data, seed=3, batch_size=8)
    one.set_epoch(5)
    keys = list(one)
    assert len(set(keys)) == 19 and {e for e, _ in keys} == {5}
    steps = [keys[i:i + 8] for i in range(0, 16, 8)]  # drop_last: 2 full steps
    per_rank = []
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        s = distributed.EpochSampler(data, seed=3, batch_size=4)
        s.set_epoch(5)
        per_rank.append(list(s))
    for k, step in enumerate(steps):
        union = per_rank[0][4 * k:4 * k + 4] + per_rank[1][4 * k:4 * k + 4]
        assert sorted(union) == sorted(step)
    s.set_epoch(5, skip_batches=1)  # a resumed run skips whole steps without loading them
    assert list(s) == per_rank[1][4:] and len(s) == len(per_rank[1]) - 4


def test_seeded_samples_depend_on_key_only():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = distributed.SeededSamples(Noise(), seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[(1, 2)]
    torch.rand(5)  # whatever was drawn in between
    assert torch.equal(ds[(1, 2)], a) and not torch.equal(ds[(2, 2)], a)
    torch.set_rng_state(before)
    ds[(1, 2)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left alone


def test_draws_skip_without_changing_the_stream():
    full = distributed.Draws(6, (0, 1, 0))
    it = iter(full)
    first = [next(it) for _ in range(10)]
    skipped = iter(distributed.Draws(6, (0, 1, 0), skip=4))
    assert [next(skipped) for _ in range(6)] == first[4:]


def test_global_batch_must_divide_over_processes():
    assert per_process_batch(32, 8) == 4
    from bcct.errors import BadInput

    with pytest.raises(BadInput, match="optim.batch_size=10 is the global batch .* 4 processes"):
        per_process_batch(10, 4)


# ------------------------------------------------------------------- speed settings


def test_amp_values():
    assert amp_dtype(False) is None and amp_dtype("false") is None and amp_dtype("False") is None
    assert amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    from bcct.errors import BadInput

    with pytest.raises(BadInput, match="amp=true: use false, auto .*, bf16"):
        amp_dtype("true")


def test_bf16_autocast_runs_a_training_step_on_cpu(make_tiny_cfg, tmp_path):
    from bcct.methods import build_method

    cfg = make_tiny_cfg("amp=bf16")
    method = build_method(cfg, 3).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with autocast(cfg.amp, torch.device("cpu")):
        out = method(images)
        loss, logs = method.training_step({"image": images, "label": labels})
    assert out["logits"].dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in method.parameters())
    train(make_tiny_cfg("amp=bf16", "epochs=1"), tmp_path / "bf16", progress=False)
    assert checkpoint.load(tmp_path / "bf16" / "last.pt")["config"]["amp"] == "bf16"


def test_fp16_uses_a_grad_scaler_that_is_saved_and_restored(make_tiny_cfg, tmp_path):
    """fp16 is for GPUs; CPU autocast runs it too, which exercises the GradScaler path."""
    run = tmp_path / "fp16"
    train(make_tiny_cfg("amp=fp16", "epochs=1"), run, progress=False)
    scaler = checkpoint.load(run / "last.pt")["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    train(make_tiny_cfg("amp=fp16", "epochs=2"), run, progress=False, resume=True)
    assert checkpoint.load(run / "last.pt")["scaler"]["_growth_tracker"] > scaler["_growth_tracker"]


def test_channels_last_on_cuda_and_cpu(make_tiny_cfg, tmp_path):
    assert memory_format(torch.device("cuda")) is torch.channels_last
    assert memory_format(torch.device("cuda", 1)) is torch.channels_last
    assert memory_format(torch.device("cpu")) is torch.channels_last
    assert memory_format(torch.device("mps")) is torch.contiguous_format
    run = tmp_path / "cpu"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    weights = [v for v in checkpoint.load(run / "last.pt")["model"].values() if v.dim() == 4 and v.shape[-1] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    from bcct.methods import build_method

    fresh = build_method(make_tiny_cfg(), 3)  # a contiguous model loads channels_last weights
    checkpoint.load_trained_state(fresh, checkpoint.load(run / "last.pt")["model"])


def test_amp_auto_is_bf16_only_where_the_device_has_it_natively(monkeypatch, make_tiny_cfg, tmp_path, capsys):
    from bcct import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    assert amp_dtype("auto", cpu) is torch.bfloat16 and "bf16 autocast (amp=auto" in runtime.precision("auto", cpu)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert amp_dtype("auto", cpu) is None and runtime.precision("auto", cpu).startswith("fp32")
    assert amp_dtype("auto") is None  # without a device the value is only checked
    assert runtime.native_bf16(torch.device("mps")) is False
    train(make_tiny_cfg("amp=auto", "epochs=1"), tmp_path / "auto")
    assert "training steps in fp32 (amp=auto: this CPU has no native bf16)" in capsys.readouterr().out


def test_cudnn_autotuning_only_on_cuda(monkeypatch):
    from bcct import runtime

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime.tune_kernels(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    runtime.tune_kernels(torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark is True


def test_cpu_runs_keep_freed_memory_for_the_next_batch(monkeypatch):
    """On glibc, tune_kernels(cpu) raises malloc's mmap and trim thresholds (a 250 MB
    activation is then reused, not page-faulted in afresh every batch); elsewhere it is a no-op."""
    import ctypes
    import platform

    from bcct import runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    runtime.tune_kernels(torch.device("cpu"))
    runtime.tune_kernels(torch.device("cuda", 1))
    assert calls == [1]
    monkeypatch.undo()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime.keep_freed_memory() is True  # glibc took both settings
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
    assert runtime.keep_freed_memory() is False


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_kept_memory_goes_back_when_a_run_ends(monkeypatch):
    """With the thresholds raised, a freed 256 MB tensor stays resident (the next batch reuses
    it) until release_freed_memory, which train() and every evaluation call when they end (a
    process that trains run after run otherwise carried each run's high-water mark)."""
    import ctypes
    import platform

    from bcct import runtime

    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc's malloc only")
    assert runtime.keep_freed_memory()
    x = torch.ones(64 << 20)  # 256 MB, written: resident
    held = _resident_bytes()
    del x
    kept = _resident_bytes()
    assert kept > held - (64 << 20)  # freed, but kept for the next batch
    runtime.release_freed_memory()
    assert _resident_bytes() < kept - (192 << 20)  # back to the system
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
    assert runtime.release_freed_memory() is False


# ------------------------------------------------------------------- a diverged process


def _nan_worker(rank: int, world: int, init_file: str, jobs: dict) -> None:
    """Rank 1 alone sees a NaN loss at its 2nd step: both processes must stop there."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        backbones.BACKBONES[PLAIN] = _plain_backbone
        from bcct.config import load_config
        from bcct.methods.cam import CAM

        step, calls = CAM.training_step, {"n": 0}

        def nan_on_rank_1(self, batch):
            loss, logs = step(self, batch)
            calls["n"] += 1
            return (loss * float("nan") if rank == 1 and calls["n"] == 2 else loss), logs

        CAM.training_step = nan_on_rank_1
        cfg = load_config("synth", TINY_OVERRIDES + PLAIN_OVERRIDES, method="cam")
        cfg.data.root = jobs["data"]
        try:
            train(cfg, jobs["run"], progress=False)
            message = "no error"
        except FloatingPointError as exc:
            message = str(exc)
        Path(jobs["out"], f"rank{rank}.txt").write_text(message)
    finally:
        torch.distributed.destroy_process_group()


def test_nan_on_one_rank_stops_every_rank(tiny_data, tmp_path):
    jobs = {"data": str(tiny_data), "run": str(tmp_path / "run"), "out": str(tmp_path)}
    ctx = mp.spawn(_nan_worker, args=(2, str(tmp_path / "init"), jobs), nprocs=2, join=False)
    deadline = time.time() + 120
    while not ctx.join(timeout=5):
        if time.time() > deadline:  # a process left waiting in the gradient all-reduce
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank is still running 2 minutes after rank 1's NaN loss")
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1], messages
    assert messages[0].startswith("loss is nan on rank 1 at epoch 0, step 2"), messages[0]


def test_cli_reports_a_diverged_run_in_one_line(monkeypatch, capsys, tmp_path):
    import bcct.train
    from bcct.cli import main

    def diverge(*args, **kwargs):
        raise FloatingPointError("loss is nan on rank 1 at epoch 0, step 2; lower the learning rate")

    monkeypatch.setattr(bcct.train, "train", diverge)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: loss is nan on rank 1 at epoch 0, step 2; lower the learning rate"]


# ------------------------------------------------------------------- find_unused_parameters


def _unused_after_steps(method, epochs=(0, 1, 5, 100)) -> set[str]:
    """Trainable parameters some training step leaves without a gradient."""
    method.train()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0]),
             "background": torch.randn(2, 3, 32, 32)}
    if getattr(method.cfg.bcct, "mode", "") == "two_stage" and method.cfg.method == "bcct":
        batch["cached_mask"] = torch.randint(0, 2, (4, 32, 32), dtype=torch.uint8)
    unused = set()
    for epoch in epochs:
        method.on_epoch_start(epoch)
        method.zero_grad(set_to_none=True)
        loss, _ = method.training_step(batch)
        loss.backward()
        unused |= {n for n, p in method.named_parameters() if p.requires_grad and p.grad is None}
    return unused


CASES = [(m, []) for m in ("cam", "backprop", "has", "acol", "spg", "adl")] + [
    ("bcct", ["bcct.mode=end2end", "bcct.warmup_epochs=0"]), ("bcct", ["bcct.mode=end2end", "bcct.warmup_epochs=2"]),
    ("bcct", ["bcct.mode=two_stage", "bcct.warmup_epochs=0"])]


@pytest.mark.parametrize("name,extra", CASES)
def test_find_unused_parameters_exactly_where_a_step_leaves_some(name, extra):
    """DDP's search for unused parameters (a graph walk every step) only for a method and
    setting whose steps leave trainable parameters without a gradient; without it DDP would
    fail on such a step."""
    from bcct.config import load_config
    from bcct.methods import build_method

    torch.manual_seed(0)
    cfg = load_config("synth", ["image_size=32", "model.head_width=16", "model.pretrained=none", *extra], method=name)
    method = build_method(cfg, 3)
    assert bool(_unused_after_steps(method)) == method.find_unused_parameters, _unused_after_steps(method)


# ------------------------------------------------------------------- SyncBatchNorm, frozen layers


def test_syncbatchnorm_conversion_keeps_frozen_layers_in_eval_mode(monkeypatch):
    """Several CUDA processes convert BatchNorm to SyncBatchNorm; the CT backbone's layers
    below ``model.train_from`` must still run in eval mode (pretrained statistics, never
    updated), as in one process. The conversion and ``.train()`` run on the CPU; only
    SyncBatchNorm's forward needs CUDA."""
    from bcct.config import load_config
    from bcct.methods import build_method

    cfg = load_config("synth", ["image_size=32", "model.head_width=16", "model.pretrained=none",
                                "model.train_from=8"], method="bcct")  # small_vgg: layers 0-7 frozen
    one = build_method(cfg, 3).train()
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    synced = distributed.sync_batchnorm(build_method(cfg, 3), torch.device("cuda")).train()

    def bn_modes(method):
        return {n: m.training for n, m in method.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert bn_modes(synced) == bn_modes(one)
    assert not bn_modes(one)["model.backbone.1"] and not bn_modes(one)["model.backbone.5"]  # frozen
    assert bn_modes(one)["model.backbone.9"] and bn_modes(one)["model.head.body.1"]  # trained


# ------------------------------------------------------------------- RANK without torchrun


def test_a_rank_left_in_the_environment_without_torchrun_is_ignored(reference_run, make_tiny_cfg, tmp_path,
                                                                     monkeypatch, capsys):
    """Cluster launchers and notebooks export RANK. Without torchrun (no WORLD_SIZE > 1, no
    process group) bcct is one process whatever RANK says: eval scores the whole split,
    train trains, and a diverged run's error is printed."""
    want = evaluate_checkpoint(str(reference_run / "best.pt"), split="test", progress=False)
    monkeypatch.setenv("RANK", "1")
    assert evaluate_checkpoint(str(reference_run / "best.pt"), split="test", progress=False) == want
    train(make_tiny_cfg("epochs=1"), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best.pt").is_file()

    import bcct.train
    from bcct.cli import main

    def diverge(*args, **kwargs):
        raise FloatingPointError("loss is nan at epoch 0, step 2; lower the learning rate")

    monkeypatch.setattr(bcct.train, "train", diverge)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run2")]) == 1
    assert capsys.readouterr().err.strip() == "error: loss is nan at epoch 0, step 2; lower the learning rate"
    assert distributed.rank() == 0 and distributed.is_main()


# ------------------------------------------------------------------- downloads on several nodes


def _main_first_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """One of 4 processes on 2 "nodes" (LOCAL_RANK 0, 1 on each): a download into a cache
    folder shared by all, then into one folder per node, each under ``main_first``."""
    os.environ["LOCAL_RANK"] = str(rank % 2)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        found = {}
        for kind, cache in (("shared", Path(out, "shared")), ("per_node", Path(out, f"node{rank // 2}"))):
            with distributed.main_first():
                found[kind] = (cache / "weights").is_file()
                if not found[kind]:  # the download: slow, then written in one step
                    time.sleep(2)
                    cache.mkdir(exist_ok=True)
                    (cache / f"weights.{rank}").write_text(str(rank))
                    (cache / f"weights.{rank}").replace(cache / "weights")
        Path(out, f"rank{rank}.json").write_text(json.dumps(found))
    finally:
        torch.distributed.destroy_process_group()


def test_main_first_downloads_once_per_cache_on_several_nodes(tmp_path):
    """Global rank 0 first, then the first process of each other node, then the rest: one
    download in all where the nodes share the cache, one per node where each has its own
    (not one per process of the node, racing for the same file)."""
    mp.start_processes(_main_first_worker, args=(4, str(tmp_path / "init"), str(tmp_path)), nprocs=4,
                       start_method="fork")  # nothing to import again: the processes start at once
    found = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert [f["shared"] for f in found] == [False, True, True, True]
    assert [f["per_node"] for f in found] == [False, True, False, True]

"""Host syncs in the training loop (issue 17, defect 6): every ``.item()``, boolean index or
collective is a point where the CPU waits for the GPU, so it cannot queue the next step.
The loop keeps its logs and its finiteness check on the device and reads them every
``optim.log_every`` steps. Counted on the CPU with :func:`bcct.host_syncs.count_host_syncs`
(on a GPU ``bench/gpu_check.py`` counts with CUDA's sync debug mode): never timed."""

from __future__ import annotations

import pytest
import torch

from bcct import mask
from bcct.config import load_config
from bcct.distributed import TrainingStep
from bcct.host_syncs import count_host_syncs
from bcct.mask import mask_codes
from bcct.meters import Averages
from bcct.methods import build_method
from bcct.train import train_one_epoch

STEPS, LOG_EVERY = 12, 6
# Syncs allowed for a whole epoch of STEPS steps: at most 2 reads each time the logs are read
# (every LOG_EVERY steps and at the epoch end).
ALLOWED = 2 * (STEPS // LOG_EVERY + 1)


def _cfg(method: str, *extra: str):
    cfg = load_config("synth", ["image_size=32", "model.head_width=16", "optim.batch_size=4", *extra], method=method)
    cfg.model.pretrained = "none"
    cfg.optim.log_every = LOG_EVERY
    return cfg


def _epoch(method, batches, backgrounds=None):
    """One epoch of ``train_one_epoch`` over prepared batches (no data loading counted)."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(method.param_groups(), momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with count_host_syncs(cuda=False) as n:
        logs = train_one_epoch(TrainingStep(method), method, opt, scaler, batches, torch.device("cpu"), 0, method.cfg,
                               Averages(), backgrounds=backgrounds, progress=False)
    return n, logs


def _batches(n=STEPS, codes=None):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        b = {"image": torch.randn(4, 3, 32, 32, generator=gen), "label": torch.randint(3, (4,), generator=gen)}
        if codes is not None:
            b["cached_mask"] = codes
        out.append(b)
    return out


def test_cam_epoch_reads_the_device_only_every_log_every_steps():
    method = build_method(_cfg("cam"), 3)
    n, logs = _epoch(method, _batches())
    assert n["total"] <= ALLOWED and n["collectives"] == 0, dict(n)
    assert set(logs) == {"loss", "cls_loss", "acc"} and all(isinstance(v, float) for v in logs.values())


@pytest.mark.parametrize("mode", ["end2end", "two_stage"])
def test_bcct_epoch_reads_the_device_only_every_log_every_steps(mode, monkeypatch):
    """BC-CT on the device path (label propagation for the largest part, as on a GPU)."""
    monkeypatch.setattr(mask, "largest_component", mask._largest_component_propagation)
    method = build_method(_cfg("bcct", f"bcct.mode={mode}", "bcct.warmup_epochs=0"), 3)
    method.train()
    codes = None
    if mode == "two_stage":
        m = torch.zeros(4, 32, 32, dtype=torch.bool)
        m[:, 8:24, 8:24] = True
        codes = mask_codes(m, torch.ones(4, 32, 32))
    gen = torch.Generator().manual_seed(1)
    backgrounds = iter([torch.randn(2, 3, 32, 32, generator=gen) for _ in range(STEPS)]) if mode == "end2end" else None
    n, logs = _epoch(method, _batches(codes=codes), backgrounds)
    assert n["total"] <= ALLOWED and n["collectives"] == 0, dict(n)
    assert {"loss", "cls_loss", "mask_loss", "mask_area"} <= set(logs)
    assert all(isinstance(v, float) for v in logs.values())


def test_logs_read_every_n_steps_average_as_every_step():
    """The meter keeps device sums: its means equal those of the per-step floats."""
    values = [torch.tensor(float(i)) for i in range(7)]
    meter = Averages()
    for v in values:
        meter.update({"loss": v, "acc": 1.0})
    assert meter.reduced() == pytest.approx({"loss": 3.0, "acc": 1.0})
    assert meter.state() == {"sums": {"loss": 21.0, "acc": 7.0}, "n": 7}


def test_a_nan_loss_stops_at_the_next_read_naming_its_step(monkeypatch):
    """Found on the device without a sync, reported at the next read with the step it
    happened at (and before any checkpoint is written)."""
    method = build_method(_cfg("cam"), 3)
    step, calls = method.training_step, {"n": 0}

    def nan_at_step_3(batch):
        loss, logs = step(batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    method.training_step = nan_at_step_3
    with pytest.raises(FloatingPointError, match=r"^loss is nan at epoch 0, step 3; lower the learning rate"):
        _epoch(method, _batches())
    assert calls["n"] == LOG_EVERY  # stopped at the first read after step 3

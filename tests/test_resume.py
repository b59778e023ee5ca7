"""Resume: a run stopped by Ctrl-C mid-epoch writes last.pt at the step it reached and a
resumed run finishes it; with data.workers=0 and the same seed the resumed run's final
weights equal an uninterrupted run's exactly (augmentations are seeded per sample from
(seed, epoch, index), the optimiser, schedule and random states are restored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bcct import checkpoint
from bcct.cli import main
from bcct.methods.cam import CAM
from bcct.train import train

from conftest import TINY_OVERRIDES

# Batches of 2: about 9 steps per epoch, so there is a middle of an epoch to stop in.
SMALL_STEPS = ["epochs=3", "optim.batch_size=2"]


def _weights(run) -> dict:
    return checkpoint.load(run / "last.pt")["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(make_tiny_cfg, tmp_path_factory):
    """The reference: 3 epochs of batches of 2, never stopped."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(make_tiny_cfg(*SMALL_STEPS), run, progress=False)
    return run


def test_ctrl_c_mid_epoch_then_resume_finishes(make_tiny_cfg, tiny_data, standin_cache, uninterrupted, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, BCCT_CACHE=str(standin_cache), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bcct", "train", "--config", "synth", "--method", "cam", "--data", str(tiny_data),
           "--out", str(run), "--quiet", *TINY_OVERRIDES, *SMALL_STEPS, "optim.checkpoint_every=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, seen, deadline = run / "last.pt", None, time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:  # wait for a mid-epoch last.pt
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                if 1 <= checkpoint.load(last)["step"] <= 4:  # early in an epoch: stops before its end
                    proc.send_signal(signal.SIGINT)
                    break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]  # the CLI's exit status for Ctrl-C
    assert "interrupted" in err and "Traceback" not in err
    stopped = checkpoint.load(last)
    assert stopped["step"] > 0 and stopped["epoch"] < 2, "the run ended before it could be stopped mid-epoch"
    assert len(stopped["rng"]) == 1 and stopped["epoch_logs"][0]["n"] == stopped["step"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"

    result = train(make_tiny_cfg(*SMALL_STEPS, "optim.checkpoint_every=1"), run, progress=False, resume=True)
    assert _epochs(run) == [0, 1, 2]  # each epoch exactly once
    final = checkpoint.load(last)
    assert final["epoch"] == 2 and final["step"] == 0
    assert result["thresholds"] == checkpoint.load(run / "best.pt")["thresholds"]
    _assert_same_weights(final["model"], _weights(uninterrupted))
    # The epoch cut in two logs the same means as the uninterrupted one.
    want = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(want, got):
        assert a["train"] == pytest.approx(b["train"], rel=1e-9) and a["val"] == b["val"]


def test_interrupt_in_process_without_periodic_checkpoints(make_tiny_cfg, uninterrupted, tmp_path, monkeypatch):
    """checkpoint_every=0: last.pt is written only at epoch ends and when stopped."""
    run = tmp_path / "run"
    calls = {"n": 0}
    step = CAM.training_step

    def ctrl_c_at_step_12(self, batch):
        calls["n"] += 1
        if calls["n"] == 12:  # epoch 1, step 3 (9 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch)

    monkeypatch.setattr(CAM, "training_step", ctrl_c_at_step_12)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    with pytest.raises(KeyboardInterrupt):
        train(make_tiny_cfg(*SMALL_STEPS), run, progress=False)
    stopped = checkpoint.load(run / "last.pt")
    assert (stopped["epoch"], stopped["step"]) == (1, 12 - 9) and _epochs(run) == [0]
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    monkeypatch.setattr(CAM, "training_step", step)
    train(make_tiny_cfg(*SMALL_STEPS), run, progress=False, resume=True)
    assert _epochs(run) == [0, 1, 2]
    _assert_same_weights(_weights(run), _weights(uninterrupted))


def test_resume_at_an_epoch_end_reproduces_the_uninterrupted_run(make_tiny_cfg, uninterrupted, tmp_path):
    run = tmp_path / "run"
    train(make_tiny_cfg(*SMALL_STEPS, "epochs=1"), run, progress=False)
    train(make_tiny_cfg(*SMALL_STEPS, "epochs=2"), run, progress=False, resume=True)
    train(make_tiny_cfg(*SMALL_STEPS), run, progress=False, resume=True)
    assert _epochs(run) == [0, 1, 2]
    _assert_same_weights(_weights(run), _weights(uninterrupted))


def test_checkpoint_every_writes_resume_points(make_tiny_cfg, tmp_path, monkeypatch):
    written = []
    save = checkpoint.save_atomic

    def spy(obj, path):
        if path.name == "last.pt":
            written.append((obj["epoch"], obj["step"]))
        save(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", spy)
    train(make_tiny_cfg(*SMALL_STEPS, "epochs=1", "optim.checkpoint_every=4"), tmp_path / "run", progress=False)
    assert written == [(0, 4), (0, 8), (0, 0)]  # steps 4 and 8 of 9, then the finished epoch


def test_rng_state_roundtrips_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    random.gauss(0, 1)  # Python keeps a spare gaussian: part of the state
    path = tmp_path / "rng.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "rng": checkpoint.rng_state()}, path)
    want = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])  # load() is weights-only
    got = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))
    assert torch.equal(want[0], got[0]) and want[1:3] == got[1:3] and (want[3] == got[3]).all()


def test_cli_resume_takes_the_run_dir(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--config", "synth", "--method", "cam", "--data", str(tiny_data), "--quiet"]
    assert main([*base, "--out", str(run), *TINY_OVERRIDES, "epochs=1"]) == 0
    assert main([*base, "--resume", str(run), *TINY_OVERRIDES]) == 0  # --resume RUNDIR = --out RUNDIR --resume
    assert _epochs(run) == [0, 1]
    # A bare --resume followed by key=value: the override is not taken for a run dir.
    assert main([*base, "--out", str(run), "--resume", *TINY_OVERRIDES, "epochs=3"]) == 0
    assert _epochs(run) == [0, 1, 2]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "other"), "--resume", str(run)]) == 2
    assert "name different run directories" in capsys.readouterr().err
    assert main(base) == 2
    assert "--out RUNDIR" in capsys.readouterr().err


def test_resume_refuses_a_changed_config(make_tiny_cfg, uninterrupted, tmp_path, capsys):
    """--resume with another learning rate or method setting is another run: refused, naming
    the keys; epochs (and loading settings) may change."""
    import shutil

    from bcct.errors import BadInput

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    with pytest.raises(BadInput, match=r"data\.image_size: 32 -> 48; optim\.lr: 0\.1 -> 0\.01\)"):
        train(make_tiny_cfg(*SMALL_STEPS, "optim.lr=0.01", "image_size=48"), run, progress=False, resume=True)
    with pytest.raises(BadInput, match=r"optim\.lr"):
        train(make_tiny_cfg(*SMALL_STEPS, "optim.lr=0.01"), run, progress=False, resume=True)
    train(make_tiny_cfg(*SMALL_STEPS, "epochs=4", "data.workers=0", "device=cpu"), run, progress=False, resume=True)
    assert _epochs(run) == [0, 1, 2, 3]

"""Integration: train CAM on the tiny set, evaluate the checkpoint, resume, and refuse
checkpoints that are not bcct's (weights-only loading: a malicious pickle never runs)."""

from __future__ import annotations

import json
import os
import pickle
import random

import pytest
import torch

from bcct import checkpoint
from bcct.data.cub import read_cub
from bcct.errors import BadInput
from bcct.run import evaluate_checkpoint, load_method
from bcct.train import train

CONTRACT = ("cls_top1", "cls_top5", "top1_loc", "top5_loc", "gt_known", "maxboxacc", "maxboxacc_v2", "threshold",
            "n_images")


@pytest.fixture(scope="module")
def trained(make_tiny_cfg, tmp_path_factory):
    """(run dir, train() result) of a 2-epoch CAM run on the tiny set."""
    run = tmp_path_factory.mktemp("runs") / "cam"
    result = train(make_tiny_cfg(), run, progress=False)
    return run, result


def test_run_dir_contents(trained):
    run, result = trained
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for r in lines:
        assert r["train"]["loss"] > 0 and 0 <= r["train"]["acc"] <= 1
        assert 0 <= r["val"]["cam"]["top1_loc"] <= 1
    text = (run / "config.yaml").read_text()
    assert "method: cam" in text and "image_size: 32" in text and "head_width: 16" in text


def test_checkpoints_hold_what_resume_and_eval_need(trained, tiny_data):
    run, result = trained
    last = checkpoint.load(run / "last.pt")
    best = checkpoint.load(run / "best.pt")
    assert last["format"] == checkpoint.FORMAT and last["epoch"] == 1 and last["method"] == "cam"
    assert best["epoch"] in (0, 1)
    assert last["class_names"] == ["001.Class_001", "002.Class_002", "003.Class_003"]
    assert last["config"]["optim"]["epochs"] == 2 and last["config"]["data"]["root"] == str(tiny_data)
    # The threshold train() reports is best.pt's, chosen on val from the 0.00..0.99 grid.
    assert result["thresholds"] == best["thresholds"] and set(best["thresholds"]) == {"cam"}
    tau = best["thresholds"]["cam"]
    assert 0 <= tau < 1 and abs(tau * 100 - round(tau * 100)) < 1e-6
    assert {"model", "optimizer", "lr_scheduler", "rng"} <= set(last)


def test_evaluate_checkpoint_contract(trained, tiny_data):
    run, _ = trained
    metrics = evaluate_checkpoint(str(run / "best.pt"), split="test", progress=False)
    assert set(CONTRACT) <= set(metrics)
    n_test = len(read_cub(tiny_data).split("test"))
    assert n_test == 24 and metrics["n_images"] == n_test
    for key in CONTRACT:
        if key != "n_images":
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    # Internal consistency: top-1 loc needs a correct class *and* a good box; top-5 >= top-1.
    assert metrics["top1_loc"] <= min(metrics["cls_top1"], metrics["gt_known"]) + 1e-9
    assert metrics["top5_loc"] >= metrics["top1_loc"] and metrics["cls_top5"] >= metrics["cls_top1"]
    assert metrics["cls_top5"] == 1.0  # 3 classes: the top-5 always holds the label
    assert metrics["gt_known"] <= metrics["maxboxacc"] + 1e-9  # MaxBoxAcc maximises over thresholds
    # Scores are multiples of 1/24.
    for key in ("cls_top1", "top1_loc", "gt_known", "maxboxacc"):
        assert abs(metrics[key] * 24 - round(metrics[key] * 24)) < 1e-9
    # The val-chosen threshold is used, not one picked on test.
    best = checkpoint.load(run / "best.pt")
    assert metrics["threshold"] == pytest.approx(best["thresholds"]["cam"])
    assert metrics["threshold_source"] == "given"
    assert metrics["split"] == "test" and metrics["epoch"] == best["epoch"] and metrics["method"] == "cam"


def test_evaluate_other_split_and_oracle(trained):
    run, _ = trained
    val = evaluate_checkpoint(str(run / "best.pt"), split="val", oracle=True, progress=False)
    assert val["n_images"] == 6 and val["threshold_source"] == "oracle"  # synth recipe: 20% of 30 train images
    assert val["top1_loc"] == pytest.approx(val["oracle_top1_loc"])


def test_load_method_rebuilds_weights(trained):
    run, _ = trained
    method, cfg, ckpt = load_method(str(run / "best.pt"), device="cpu")
    assert not method.training and cfg.model.pretrained == "none"
    for k, v in method.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_resume_continues_from_last(make_tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    after_one = checkpoint.load(run / "last.pt")
    first_line = (run / "metrics.jsonl").read_text().splitlines()
    assert after_one["epoch"] == 0 and len(first_line) == 1

    train(make_tiny_cfg("epochs=2"), run, progress=False, resume=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0] == first_line[0]  # epoch 0 was not trained again
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    last = checkpoint.load(run / "last.pt")
    assert last["epoch"] == 1
    changed = [k for k, v in last["model"].items() if v.is_floating_point() and not torch.equal(v, after_one["model"][k])]
    assert changed, "resumed training did not update any weight"
    assert last["optimizer"]["state"], "optimizer momentum should be carried over"


def test_resume_without_last_starts_fresh(make_tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_tiny_cfg("epochs=1"), run, progress=False, resume=True)
    assert checkpoint.load(run / "last.pt")["epoch"] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_fresh_train_into_used_run_dir_restarts_the_log(make_tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    train(make_tiny_cfg("epochs=1"), run, progress=False)  # not a resume: a new run
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]


def test_unknown_method_is_bad_input(make_tiny_cfg, tmp_path):
    with pytest.raises(BadInput, match="method 'nosuch' unknown; choose one of .*cam"):
        train(make_tiny_cfg(method="nosuch"), tmp_path / "run", progress=False)


# ---------------------------------------------------------------- refusing bad checkpoints


class _Evil:
    """Unpickling this would run a shell command (pickle calls os.system(cmd))."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "PWNED"
    payload = {"format": checkpoint.FORMAT, "model": _Evil(f"touch {marker}")}
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    assert not marker.exists()  # building the file did not run it
    with pytest.raises(BadInput, match="refused by weights-only loading") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the malicious pickle was executed"


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(BadInput) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("obj", [{"model": {"w": torch.zeros(2)}}, {"format": "other-format-1"}, [1, 2, 3]])
def test_torch_file_without_marker_is_refused(tmp_path, obj):
    path = tmp_path / "plain.pt"
    torch.save(obj, path)
    with pytest.raises(BadInput, match="not a bcct checkpoint") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value) and checkpoint.FORMAT in str(err.value)


def test_missing_and_truncated_checkpoint(trained, tmp_path):
    with pytest.raises(BadInput, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.pt")
    run, _ = trained
    cut = tmp_path / "cut.pt"
    data = (run / "best.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput) as err:
        checkpoint.load(cut)
    assert str(cut) in str(err.value)


def test_save_atomic_roundtrip(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    obj = {"format": checkpoint.FORMAT, "epoch": 3, "w": torch.arange(4.0)}
    checkpoint.save_atomic(obj, path)
    back = checkpoint.load(path)
    assert back["epoch"] == 3 and torch.equal(back["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]


def test_weights_mismatch_is_bad_input(trained, tmp_path):
    run, _ = trained
    ckpt = checkpoint.load(run / "best.pt")
    ckpt["class_names"] = ckpt["class_names"] + ["004.extra"]  # head would need 4 outputs
    bad = tmp_path / "bad.pt"
    checkpoint.save_atomic(ckpt, bad)
    with pytest.raises(BadInput, match="weights do not fit a cam model with 4 classes"):
        load_method(str(bad), device="cpu")


def test_standin_weights_come_from_the_session_cache(standin_cache):
    """The autouse fixture's 5-step weights are what `pretrained: standin` loads (no ~/.cache)."""
    from bcct import backbones, pretrain, runtime

    assert runtime.cache_dir() == standin_cache
    saved = torch.load(pretrain.standin_path(), map_location="cpu", weights_only=True)
    assert saved["stats"]["steps"] == 5
    net = backbones.build_backbone("small_vgg", "standin")
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved["backbone"][k]), k


def test_val_only_on_the_epochs_eval_every_names(make_tiny_cfg, tmp_path):
    """eval.every=0: val is scored after the last epoch only, and best.pt is that epoch's."""
    run = tmp_path / "every"
    result = train(make_tiny_cfg("epochs=3", "eval.every=0"), run, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [bool(r["val"]) for r in lines] == [False, False, True]
    best = checkpoint.load(run / "best.pt")
    assert best["epoch"] == 2 and set(best["thresholds"]) == {"cam"} == set(result["thresholds"])
    run2 = tmp_path / "every2"
    train(make_tiny_cfg("epochs=3", "eval.every=2"), run2, progress=False)
    lines = [json.loads(line) for line in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [bool(r["val"]) for r in lines] == [False, True, True]

"""``bcct eval --report DIR`` on tiny trained runs (cam and bcct), and the detailed
evaluation it reads (one pass: the table's numbers are the curve's and the examples')."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bcct import checkpoint
from bcct.cli import main
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform as eval_transform
from bcct.eval_report import N_EXAMPLES, curves, evaluate_checkpoint_detailed, examples
from bcct.evaluate import evaluate, evaluate_detailed
from bcct.run import evaluate_checkpoint, load_method
from bcct.sweep import DELTAS
from bcct.train import train

FILES = ("report.md", "curve.png", "best.png", "worst.png")


@pytest.fixture(scope="module")
def cam_ckpt(make_tiny_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("report_runs") / "cam"
    train(make_tiny_cfg(), run, progress=False)
    return run / "best.pt"


@pytest.fixture(scope="module")
def bcct_ckpt(make_tiny_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("report_runs") / "bcct"
    cfg = make_tiny_cfg("epochs=1", "bcct.warmup_epochs=0", "bcct.bc_epochs=1", method="bcct")
    train(cfg, run, progress=False)
    return run / "best.pt"


def _report(ckpt, out, capsys, *extra) -> tuple[str, dict]:
    js = out.parent / f"{out.name}.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--report", str(out), "--json", str(js), *extra]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    for name in FILES:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "temporary files left behind"
    for name in FILES[1:]:
        with Image.open(out / name) as img:
            img.verify()
    return (out / "report.md").read_text(), json.loads(js.read_text())


def test_report_for_cam(cam_ckpt, tmp_path, capsys):
    text, metrics = _report(cam_ckpt, tmp_path / "rep", capsys)
    tau = checkpoint.load(cam_ckpt)["thresholds"]["cam"]
    assert metrics["threshold"] == pytest.approx(tau)
    assert f"readout `cam`: threshold **{tau:.2f}**, chosen on the held-out val split during training" in text
    assert "| method | top-1 loc err |" in text  # bcct.report.format_table
    assert "![accuracy vs threshold](curve.png)" in text and "![highest iou](best.png)" in text
    assert "![lowest iou](worst.png)" in text
    assert "delta sweep" not in text.lower() and "| delta |" not in text  # cam has no BC model
    # --json with --report holds exactly what plain eval gives.
    plain = evaluate_checkpoint(str(cam_ckpt), progress=False)
    assert metrics == json.loads(json.dumps(plain))
    # Both example tables list N_EXAMPLES images of the test split, by name.
    rows = [line for line in text.splitlines() if line.startswith("| `images/")]
    assert len(rows) == 2 * N_EXAMPLES


def test_report_for_bcct_has_the_sweep(bcct_ckpt, tmp_path, capsys):
    text, metrics = _report(bcct_ckpt, tmp_path / "rep", capsys)
    assert metrics["method"] == "bcct"
    tau = checkpoint.load(bcct_ckpt)["thresholds"]["cam"]
    assert f"threshold **{tau:.2f}**" in text
    assert "## BC-mask delta sweep (test split)" in text and "trained with delta 0.8" in text
    sweep_rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert [row.split("|")[1].strip() for row in sweep_rows] == [f"{d:g}" for d in DELTAS]
    assert "BC* err" in text  # the table row of mask validity too


def test_oracle_report_says_so(cam_ckpt, tmp_path, capsys):
    text, metrics = _report(cam_ckpt, tmp_path / "rep", capsys, "--oracle", "--split", "val")
    assert metrics["threshold_source"] == "oracle" and metrics["split"] == "val"
    assert f"threshold **{metrics['threshold']:.2f}**, chosen on this split (--oracle" in text


def test_detailed_evaluation_is_the_evaluation(cam_ckpt, tiny_data):
    method, cfg, ckpt = load_method(str(cam_ckpt), device="cpu")
    ds = WSOLDataset(read_dataset(cfg.data, seed=cfg.seed).split("test"), eval_transform(cfg.data))
    plain = evaluate(method, ds, cfg, torch.device("cpu"), thresholds=ckpt["thresholds"])
    detail = evaluate_detailed(method, ds, cfg, torch.device("cpu"), thresholds=ckpt["thresholds"])
    assert detail["results"] == plain
    corr = detail["correctness"]["cam"]
    assert len(corr) == len(ds) == 24 and detail["maps"]["cam"].shape[0] == 24
    assert detail["top1"].shape == (24,) and detail["top1"].dtype == bool


def test_curve_and_examples_agree_with_the_table(cam_ckpt):
    run = evaluate_checkpoint_detailed(str(cam_ckpt), progress=False)
    m, c = run["metrics"], curves(run)["cam"]
    k = c["index"]
    assert c["threshold"] == m["threshold"]
    assert c["gt_known"][k] == pytest.approx(m["gt_known"])
    assert c["top1_loc"][k] == pytest.approx(m["top1_loc"])
    assert c["gt_known"].max() == pytest.approx(m["maxboxacc"])  # MaxBoxAcc = the curve's peak
    assert np.all(c["top1_loc"] <= c["gt_known"] + 1e-12)
    best, worst, iou = examples(run)
    assert len(best) == len(worst) == N_EXAMPLES
    assert list(iou[best]) == sorted(iou, reverse=True)[:N_EXAMPLES]
    assert list(iou[worst]) == sorted(iou)[:N_EXAMPLES]
    assert np.mean(iou >= np.float32(0.5)) == pytest.approx(m["gt_known"])


def test_report_path_that_is_a_file(cam_ckpt, tmp_path, capsys):
    target = tmp_path / "report.md"
    target.write_text("mine\n")
    assert main(["eval", "--checkpoint", str(cam_ckpt), "--report", str(target)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0], err
    assert "Traceback" not in err and target.read_text() == "mine\n"


def test_failed_eval_writes_no_report(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--report", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not out.exists()

"""CLI smoke tests through ``bcct.cli.main([...])`` in-process, plus one real subprocess.

Contract: success returns 0; bad input returns 2 and prints exactly one ``error: ...`` line
to stderr (no traceback).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bcct import checkpoint
from bcct.cli import main

CONTRACT = ("cls_top1", "cls_top5", "top1_loc", "top5_loc", "gt_known", "maxboxacc", "maxboxacc_v2", "threshold",
            "n_images")
TINY = ["epochs=1", "image_size=32", "model.head_width=16", "data.workers=0"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`bcct synth` (3 classes x 8 images, 4 backgrounds) then a 1-epoch `bcct train`."""
    base = tmp_path_factory.mktemp("cli")
    data, run = base / "data", base / "run"
    assert main(["synth", str(data), "--classes", "3", "--images", "24", "--backgrounds", "4"]) == 0
    assert main(["train", "--config", "synth", "--method", "cam", "--data", str(data), "--out", str(run), *TINY,
                 "--quiet"]) == 0
    return data, run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def test_synth_writes_the_layout(cli_run):
    data, _ = cli_run
    for name in ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        assert (data / name).is_file()
    assert len((data / "images.txt").read_text().splitlines()) == 24
    assert len(list((data / "backgrounds").iterdir())) == 4
    # 8 per class, half train: 12 train / 12 test.
    flags = [line.split()[1] for line in (data / "train_test_split.txt").read_text().splitlines()]
    assert flags.count("1") == 12 and flags.count("0") == 12


def test_synth_message(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--classes", "2", "--images", "4", "--backgrounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 4 images (2 classes) and 1 backgrounds to {tmp_path / 'd'}")


def test_train_writes_run_dir(cli_run):
    _, run = cli_run
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    ckpt = checkpoint.load(run / "best.pt")
    assert ckpt["epoch"] == 0 and ckpt["method"] == "cam"
    cfg = ckpt["config"]
    assert (cfg["data"]["image_size"], cfg["model"]["head_width"], cfg["data"]["workers"]) == (32, 16, 0)
    assert cfg["optim"]["epochs"] == 1 and cfg["model"]["backbone"] == "small_vgg"


def test_eval_writes_json(cli_run, tmp_path, capsys):
    _, run = cli_run
    out_json = tmp_path / "m.json"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and "top-1 loc err" in printed
    metrics = json.loads(out_json.read_text())
    assert set(CONTRACT) <= set(metrics)
    assert metrics["n_images"] == 12  # the test split: 4 per class
    for key in CONTRACT:
        if key != "n_images":
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["split"] == "test" and metrics["method"] == "cam" and metrics["epoch"] == 0
    # The table prints errors in percent: top-1 loc err = 100 * (1 - top1_loc).
    assert f"{100 * (1 - metrics['top1_loc']):.2f}" in printed


def test_eval_split_and_oracle(cli_run, tmp_path):
    _, run = cli_run
    out_json = tmp_path / "v.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--split", "val", "--oracle", "--json",
                 str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["n_images"] == 3 and metrics["split"] == "val" and metrics["threshold_source"] == "oracle"


# ---------------------------------------------------------------- errors: exit 2, one line


def test_error_missing_data_root(tmp_path, capsys):
    missing = tmp_path / "no_data"
    code = main(["train", "--data", str(missing), "--out", str(tmp_path / "r"), *TINY, "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert str(missing) in line and "data folder not found" in line
    assert not (tmp_path / "r").exists()


def test_error_unknown_method(cli_run, tmp_path, capsys):
    data, _ = cli_run
    code = main(["train", "--method", "nosuch", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "'nosuch'" in line and "cam" in line


def test_overrides_anywhere_among_the_options(tiny_data, tmp_path, monkeypatch, capsys):
    """``key=value`` overrides may come before, between and after the options, in order."""
    import bcct.train

    seen = {}

    def fake_train(cfg, out, progress=True, resume=False):
        seen.update(cfg=cfg, out=out, progress=progress)
        return {"thresholds": {}}

    monkeypatch.setattr(bcct.train, "train", fake_train)
    argv = ["train", "epochs=5", "--data", str(tiny_data), "epochs=3", "--out", str(tmp_path / "r"), "optim.lr=0.5",
            "--quiet", "image_size=32"]
    assert main(argv) == 0
    cfg = seen["cfg"]
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.data.image_size) == (3, 0.5, 32)
    assert seen["out"] == str(tmp_path / "r") and seen["progress"] is False
    with pytest.raises(SystemExit):  # an unknown option is still argparse's error
        main(["train", "--data", str(tiny_data), "epochs=3", "--out", str(tmp_path / "r"), "--bogus", "lr=1"])
    assert "unrecognized arguments: --bogus lr=1" in capsys.readouterr().err


def test_error_override_without_equals(cli_run, tmp_path, capsys):
    data, _ = cli_run
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "epochs", "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "override 'epochs'" in line and "key=value" in line


def test_error_unknown_config_key(cli_run, tmp_path, capsys):
    data, _ = cli_run
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "optim.nosuch_key=3", "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: config") and "nosuch_key" in line


def test_error_bad_config_value(cli_run, tmp_path, capsys):
    data, _ = cli_run
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "epochs=many", "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "'many'" in line and "Integer" in line


def test_error_bad_config_value_names_the_key(cli_run, tmp_path, capsys):
    data, _ = cli_run
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "epochs=many", "--quiet"]) == 2
    assert "optim.epochs" in _one_error_line(capsys)


def test_error_checkpoint_not_found(tmp_path, capsys):
    missing = tmp_path / "run" / "best.pt"
    assert main(["eval", "--checkpoint", str(missing)]) == 2
    line = _one_error_line(capsys)
    assert str(missing) in line and "checkpoint not found" in line


def test_error_eval_on_data_with_other_classes(cli_run, tmp_path, capsys):
    _, run = cli_run
    other = tmp_path / "other"
    assert main(["synth", str(other), "--classes", "2", "--images", "4", "--backgrounds", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(other)]) == 2
    assert "has 2 classes" in _one_error_line(capsys)


def test_error_synth_refuses_non_empty_folder(cli_run, capsys):
    data, _ = cli_run
    capsys.readouterr()
    assert main(["synth", str(data), "--classes", "3", "--images", "24"]) == 2
    line = _one_error_line(capsys)
    assert str(data) in line and "--overwrite" in line


def test_error_unknown_config_recipe(cli_run, tmp_path, capsys):
    data, _ = cli_run
    assert main(["train", "--config", "nosuch_recipe", "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert "nosuch_recipe" in line and "synth" in line


def test_module_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "bcct", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("synth", "train", "eval", "demo"):
        assert command in proc.stdout
    assert proc.stdout.startswith("usage: bcct")

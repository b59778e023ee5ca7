"""A CAM threshold picked on the evaluated split itself (no val-chosen one in the checkpoint)
is an oracle number: `bcct eval` refuses it unless asked (--oracle), and every table that
prints it (the eval table, report.md, table.md) says ORACLE beside it. Training with an
empty val split warns at the start."""

from __future__ import annotations

import json

import pytest

from bcct import checkpoint
from bcct.cli import main
from bcct.report import format_table
from bcct.train import train

TINY = ["image_size=32", "model.head_width=16", "optim.batch_size=8", "data.workers=0", "eval.batch_size=16",
        "epochs=1"]


@pytest.fixture(scope="module")
def no_val_run(make_tiny_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("noval") / "cam"
    with pytest.warns(UserWarning, match="val split is empty.*oracle"):
        train(make_tiny_cfg("epochs=1", "data.val_fraction=0"), run, progress=False)
    assert checkpoint.load(run / "best.pt")["thresholds"] == {}
    return run


def test_eval_refuses_a_test_chosen_threshold_without_oracle(no_val_run, capsys):
    assert main(["eval", "--checkpoint", str(no_val_run / "best.pt")]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--oracle" in lines[0], out.err
    assert "Traceback" not in out.err and out.out == ""


def test_eval_with_oracle_prints_oracle_beside_the_numbers(no_val_run, tmp_path, capsys):
    js = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(no_val_run / "best.pt"), "--json", str(js)]
                + ["--oracle"]) == 0
    table = capsys.readouterr().out
    assert json.loads(js.read_text())["threshold_source"] == "oracle"
    row = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line][0]
    assert row.count("ORACLE") >= 3, table  # top-1 loc, GT-known, the threshold itself


def test_format_table_marks_oracle_rows_only():
    given = {"top1_loc": 0.5, "gt_known": 0.6, "threshold": 0.3, "threshold_source": "given"}
    oracle = dict(given, threshold_source="oracle")
    text = format_table({"val-chosen": given, "oracle": oracle})
    lines = text.splitlines()
    assert "ORACLE" not in [x for x in lines if x.startswith("| val-chosen")][0]
    assert "ORACLE" in [x for x in lines if x.startswith("| oracle")][0]
    assert "ORACLE" not in format_table({"a": given})


def test_report_md_says_oracle(no_val_run, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["eval", "--checkpoint", str(no_val_run / "best.pt"), "--report", str(rep), "--oracle"]) == 0
    text = (rep / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert table and "ORACLE" in table[0], text


def test_table_md_says_oracle(tiny_data, tmp_path):
    from bcct.table import run_table

    out = tmp_path / "table"
    with pytest.warns(UserWarning, match="val split is empty"):
        results = run_table(out, data=tiny_data, methods=["cam"], quick=True, overrides=TINY + ["data.val_fraction=0"],
                            progress=False)
    assert results["cam"]["threshold_source"] == "oracle"
    row = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| cam")][0]
    assert "ORACLE" in row
    assert "ORACLE" in (out / "table.csv").read_text()

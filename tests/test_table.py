"""``bcct table --quick`` on the tiny set: the files, their keys, and reuse of finished runs."""

from __future__ import annotations

import csv
import json

import pytest

from bcct.cli import main

TINY = ["image_size=32", "model.head_width=16", "optim.batch_size=8", "data.workers=0", "eval.batch_size=16",
        "epochs=1"]
METHODS = ("cam", "acol", "bcct")
EVAL_KEYS = ("cls_top1", "cls_top5", "top1_loc", "top5_loc", "gt_known", "maxboxacc", "maxboxacc_v2", "threshold",
             "n_images", "readout", "method", "epoch")


@pytest.fixture(scope="module")
def table_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    argv = ["table", "--data", str(tiny_data), "--methods", ",".join(METHODS), "--out", str(out), "--quick",
            "--quiet", *TINY]
    assert main(argv) == 0
    return out, argv


def test_table_writes_every_file(table_run):
    out, _ = table_run
    for name in ("table.md", "table.csv", "table.json", "figure.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for m in METHODS:
        assert {"best.pt", "last.pt", "metrics.jsonl", "config.yaml"} <= {p.name for p in (out / "runs" / m).iterdir()}

    results = json.loads((out / "table.json").read_text())
    assert list(results) == list(METHODS)
    for m in METHODS:
        assert set(EVAL_KEYS) <= set(results[m]), m
        assert results[m]["method"] == m and results[m]["run"] == "trained"
        assert results[m]["n_images"] == 24  # the test split
    assert set(results["bcct"]["delta_sweep"]) == {"0.5", "0.6", "0.7", "0.75", "0.8", "0.85", "0.9"}

    md = (out / "table.md").read_text()
    assert "| method |" in md and "top-1 loc err" in md and "MaxBoxAccV2" in md and "top-1 cls err" in md
    assert "| delta | BC* err" in md and "![methods](figure.png)" in md
    assert "51.21 / 40.70" in md  # the paper's BC-CT row on CUB, for orientation

    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows if r["readout"] in ("cam", "")][: len(METHODS)] == list(METHODS)
    cam_row = next(r for r in rows if r["method"] == "cam")
    assert float(cam_row["top-1 loc err"]) == pytest.approx(100 * (1 - results["cam"]["top1_loc"]), abs=0.006)


def test_a_second_run_reuses_finished_runs(table_run, capsys):
    out, argv = table_run
    before = {m: (out / "runs" / m / "best.pt").stat().st_mtime_ns for m in METHODS}
    assert main(argv) == 0
    after = {m: (out / "runs" / m / "best.pt").stat().st_mtime_ns for m in METHODS}
    assert after == before
    results = json.loads((out / "table.json").read_text())
    assert all(results[m]["run"] == "reused" for m in METHODS)


def test_table_rejects_an_unknown_method_before_training(tiny_data, tmp_path, capsys):
    assert main(["table", "--data", str(tiny_data), "--methods", "cam,nope", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --methods: 'nope' unknown")
    assert not (tmp_path / "runs").exists()


def test_the_same_folders_by_another_path_are_the_same_run(tmp_path, monkeypatch):
    """A run trained with ../shared/data and one asked for with /abs/shared/data read the same
    folders: reused, not trained again (bench_real retrained two finished runs over this)."""
    from bcct.config import load_config
    from bcct.table import _comparable

    (tmp_path / "data").mkdir()
    (tmp_path / "bg").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    relative = load_config("cub_cpu", ["data.root=../data", "data.backgrounds=../bg"], method="cam")
    absolute = load_config("cub_cpu", [f"data.root={tmp_path / 'data'}", f"data.backgrounds={tmp_path / 'bg'}"],
                           method="cam")
    other = load_config("cub_cpu", [f"data.root={tmp_path / 'bg'}", f"data.backgrounds={tmp_path / 'bg'}"],
                        method="cam")
    auto = load_config("cub_cpu", ["data.root=../data", "data.backgrounds=auto"], method="cam")
    assert _comparable(relative) == _comparable(absolute)
    assert _comparable(other) != _comparable(absolute)
    assert _comparable(auto)["data"]["backgrounds"] == "auto"

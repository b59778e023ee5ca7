"""``bench/bench_real.py``'s table over seeds: means and stds, train minutes read from each
run's own log (not the wall time around it, which held the test pass too), BC-CT's two
stages, and baselines run with fewer seeds than the headline rows (issue 18)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_real():
    spec = importlib.util.spec_from_file_location("bench_real", ROOT / "bench" / "bench_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out: Path, seed: int, label: str, times: list[tuple[int, float]]) -> None:
    run = out / f"seed{seed}" / "runs" / label
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "time_s": t}) + "\n" for e, t in times))


def _metrics(method: str, top1: float, gt_known: float, **extra) -> dict:
    return {"method": method, "readout": "cam", "top1_loc": top1, "gt_known": gt_known, "cls_top1": 0.8,
            "train_seconds": 9999.0, **extra}  # wall time with the test pass: never what the table prints


def test_seed_table_means_stds_and_logged_train_minutes(bench_real, tmp_path):
    for k in range(3):
        _run(tmp_path, k, "cam", [(0, 60.0), (1, 60.0 + 30 * k)])  # 2.0, 2.5, 3.0 min
        _run(tmp_path, k, "bcct", [(-1, 120.0), (0, 180.0), (1, 180.0)])  # BC 2 min + CT 6 min
    _run(tmp_path, 0, "has", [(0, 90.0), (1, 90.0)])
    box = {"top1_loc": 0.6, "gt_known": 0.7, "threshold": 0.5}
    per_seed = [{"cam": _metrics("cam", 0.40 + 0.02 * k, 0.5), "bcct": _metrics("bcct", 0.50, 0.6, box=box)}
                for k in range(3)]
    per_seed[0]["has"] = _metrics("has", 0.30, 0.4)  # a baseline run with one seed only
    lines = bench_real.seed_table(per_seed, tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in lines if line.startswith("| ")}
    assert rows["cam (cam)"][1] == "42.0 +- 2.0" and rows["cam (cam)"][-2:] == ["2.5", "3"]
    assert rows["bcct (cam)"][-2:] == ["8.0", "3"] and rows["bcct (box)"][1] == "60.0 +- 0.0"
    assert rows["has (cam)"][1] == "30.0" and rows["has (cam)"][-2:] == ["3.0", "1"]
    stage = [line for line in lines if line.startswith("bcct:")]
    assert stage and "2.0 min" in stage[0] and "(the CT stage) 6.0 min" in stage[0]


def test_saved_tables_need_every_method_in_seed_zero_only(bench_real, tmp_path):
    for k, methods in enumerate([["cam", "has"], ["cam"]]):
        (tmp_path / f"seed{k}").mkdir()
        (tmp_path / f"seed{k}" / "table.json").write_text(json.dumps({m: {"readout": "cam"} for m in methods}))
    assert list(bench_real._saved_table(tmp_path / "seed1", ["cam", "has"], every=False)) == ["cam"]
    with pytest.raises(SystemExit, match="no row for has"):
        bench_real._saved_table(tmp_path / "seed1", ["cam", "has"], every=True)
    with pytest.raises(SystemExit, match="no table to print"):
        bench_real._saved_table(tmp_path / "seed7", ["cam"], every=False)

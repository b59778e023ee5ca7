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


def test_table3_ct_rows_train_one_run_per_delta(bench_real, tmp_path, monkeypatch):
    """Paper Table 3's CT rows: one BC-CT per delta (the localizer off), its val row read with
    thresholds chosen on val, its test row with those thresholds, labelled oracle."""
    import bcct.run
    import bcct.table

    trained, evaluated = [], []

    def fake_train(cfg, run_dir, progress=True):
        trained.append((cfg.method, cfg.bcct.delta, cfg.localizer.enabled, cfg.seed, run_dir.name))
        _run(tmp_path, 0, run_dir.name, [(-1, 60.0), (0, 120.0)])
        return "trained"

    def fake_eval(ckpt, data=None, split="test", oracle=False, overrides=None, progress=True, fallback_oracle=False):
        evaluated.append((Path(ckpt).parent.name, split, oracle))
        top1 = 0.5 if split == "val" else 0.4
        return {"top1_loc": top1, "top5_loc": 0.45, "gt_known": 0.6, "cls_top1": 0.7}

    monkeypatch.setattr(bcct.table, "train_or_reuse", fake_train)
    monkeypatch.setattr(bcct.run, "evaluate_checkpoint", fake_eval)
    rows = bench_real.ct_delta_rows(tmp_path / "seed0", "DATA", "cub_cpu", [0.5, 0.7], ["seed=0"])
    assert trained == [("bcct", 0.5, False, 0, "bcct_delta0.5"), ("bcct", 0.7, False, 0, "bcct_delta0.7")]
    # val: thresholds chosen on val itself (as training does); test: the run's val-chosen ones
    assert evaluated == [("bcct_delta0.5", "val", True), ("bcct_delta0.5", "test", False),
                         ("bcct_delta0.7", "val", True), ("bcct_delta0.7", "test", False)]
    table = [r for r in rows if r.startswith("| 0.")]
    assert table == ["| 0.5 | 50.0 | 60.0 | 40.0 | 45.0 | 60.0 | 70.0 | 3.0 |",
                     "| 0.7 | 50.0 | 60.0 | 40.0 | 45.0 | 60.0 | 70.0 | 3.0 |"]
    assert any("oracle" in r for r in rows[:4])
    # run again: the runs are reused and their saved val and test rows are not read again
    monkeypatch.setattr(bcct.table, "train_or_reuse", lambda cfg, run_dir, progress=True: "reused")
    again = bench_real.ct_delta_rows(tmp_path / "seed0", "DATA", "cub_cpu", [0.5, 0.7], ["seed=0"])
    assert again == rows and len(evaluated) == 4

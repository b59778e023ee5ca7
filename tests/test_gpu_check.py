"""``bench/gpu_check.py --dry``: every section of the GPU check runs on the CPU, tiny, so the
script is ready when a GPU is lent (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_runs_every_section(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    errors = {k: v for k, v in result.items() if k.endswith((".error", ".traceback"))}
    assert done.returncode == 0 and not errors, (errors, done.stdout[-2000:], done.stderr[-2000:])
    sections = ("steps", "components", "amp_masks", "cli", "loader", "cuda_tests")
    assert all(f"{name}.seconds" in result for name in sections)
    # one step: the epoch end's two reads (logs, NaN check) and, on the CPU only, scipy's labelling of the masks
    assert result["steps.bcct_end2end.fp32.host_syncs_per_step"] <= 3
    assert result["components.64px.equal_to_scipy"] and result["components.16px.equal_to_scipy"]
    assert result["cli.resume.ok"] and result["cli.resume.epochs_logged"] == 2 and result["cli.demo_figure.ok"]
    assert "skipped" in result["cuda_tests.summary"] or "passed" in result["cuda_tests.summary"]


def test_gpu_check_refuses_an_unknown_section(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--out", str(tmp_path),
                           "--sections", "steps,nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown section(s) nope" in done.stderr

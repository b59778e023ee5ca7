"""Time bcct.metrics.BoxCorrectness against the plain per-threshold wsolevaluation loop.

Random smooth 14x14 score maps (tests/wsol_reference.py) are scored on the 0.01
and 0.001 threshold grids.  BoxCorrectness computes MaxBoxAcc (V1) and
MaxBoxAccV2 in one pass; the reference, like wsolevaluation, needs one pass
per contour mode.  Results are checked for equality before times are printed.

    python bench/bench_evaluator.py [--n 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import wsol_reference as ref  # noqa: E402

from bcct.metrics import V2_IOU_LEVELS, BoxCorrectness, iou_hits, threshold_grid  # noqa: E402


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_grid(maps, gt_boxes, image_sizes, step: float) -> None:
    """Time both evaluators on one threshold grid, check they agree, print the numbers."""
    thresholds = threshold_grid(step)
    evaluator = BoxCorrectness(thresholds)
    _, fast = timed(evaluator.add, maps, gt_boxes, image_sizes)
    v1, slow_v1 = timed(ref.box_correct_counts, maps, gt_boxes, image_sizes, thresholds, False)
    v2, slow_v2 = timed(ref.box_correct_counts, maps, gt_boxes, image_sizes, thresholds, True, V2_IOU_LEVELS)

    assert np.array_equal(iou_hits(evaluator.iou_v1, 0.5).sum(0), v1[0.5])
    assert all(np.array_equal(iou_hits(evaluator.iou_v2, lv).sum(0), v2[lv]) for lv in V2_IOU_LEVELS)
    n = len(maps)
    maxboxacc = v1[0.5].max() / n
    maxboxacc_v2 = np.mean([v2[lv].max() / n for lv in V2_IOU_LEVELS])
    print(
        f"step {step:<6} T={len(thresholds):<5} "
        f"MaxBoxAcc {maxboxacc:.4f}  MaxBoxAccV2 {maxboxacc_v2:.4f}  (identical)\n"
        f"  BoxCorrectness (V1+V2)   {fast:8.2f} s  ({1e3 * fast / n:.2f} ms/image)\n"
        f"  reference V1             {slow_v1:8.2f} s  ratio {slow_v1 / fast:5.1f}x\n"
        f"  reference V1 + V2        {slow_v1 + slow_v2:8.2f} s  ratio {(slow_v1 + slow_v2) / fast:5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of random 14x14 maps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    maps, gt_boxes, image_sizes = ref.random_smooth_maps(np.random.default_rng(args.seed), args.n, 14)
    for step in (0.01, 0.001):
        bench_grid(maps, gt_boxes, image_sizes, step)


if __name__ == "__main__":
    main()

"""Time bcct.metrics.BoxCorrectness against wsolevaluation's BoxEvaluator (or the plain loop).

Random smooth score maps (tests/wsol_reference.py, 14x14 by default) are scored on the
0.01 and 0.001 threshold grids.  BoxCorrectness computes MaxBoxAcc (V1) and MaxBoxAccV2
in one pass; the reference needs one pass per contour mode.  The maps are fed in chunks,
each chunk to every contender in turn, so load drift on a shared machine hits all alike,
and every image x threshold cell is compared.

    python bench/bench_evaluator.py [--n 1000] [--seed 0] [--reference DIR]

``--reference DIR``: DIR holds clovaai/wsolevaluation; its BoxEvaluator is imported from
there at run time (never copied) and fed as its inference.py does: float64 maps,
``cv2.resize`` to 224 with INTER_CUBIC, ``normalize_scoremap``, metadata files written to a
temporary directory for the set.  It is old code: ``np.float`` / ``np.int`` are restored as
the builtins and ``munch`` is stubbed when missing; its logic is untouched.  The run ends
with ``speedup_vs_reference_0.01=X speedup_vs_reference_0.001=Y differing_cells=N``
(single process, V1 + V2 reference time over bcct's).  Without it the contender is the
plain per-threshold loop of the tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import wsol_reference as ref  # noqa: E402

from bcct.boxes import RESIZE  # noqa: E402
from bcct.metrics import V2_IOU_LEVELS, BoxCorrectness, default_workers, iou_hits, threshold_grid  # noqa: E402

CHUNK = 50
V1_LEVELS = (0.5,)


def load_reference(directory: Path):
    """``(evaluation, inference)`` modules of wsolevaluation imported from ``directory``."""
    for alias, builtin in (("float", float), ("int", int)):
        if not hasattr(np, alias):
            setattr(np, alias, builtin)
    try:
        import munch  # noqa: F401
    except ImportError:
        stub = types.ModuleType("munch")
        stub.Munch = type("Munch", (dict,), {"__getattr__": dict.__getitem__, "__setattr__": dict.__setitem__})
        sys.modules["munch"] = stub
    sys.path.insert(0, str(directory))
    return importlib.import_module("evaluation"), importlib.import_module("inference")


def write_metadata(root: Path, gt_boxes, image_sizes) -> list[str]:
    """wsolevaluation metadata files (image_ids, class_labels, image_sizes, localization)."""
    ids = [f"img_{i:05d}.jpg" for i in range(len(gt_boxes))]
    root.mkdir(parents=True, exist_ok=True)
    (root / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "class_labels.txt").write_text("".join(f"{i},0\n" for i in ids))
    (root / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i, (w, h) in zip(ids, image_sizes)))
    (root / "localization.txt").write_text(
        "".join(f"{i},{x0},{y0},{x1},{y1}\n" for i, boxes in zip(ids, gt_boxes) for x0, y0, x1, y1 in boxes)
    )
    return ids


class ReferenceRun:
    """One wsolevaluation BoxEvaluator (V1 or V2) fed map by map, keeping per-image hits."""

    def __init__(self, evaluation, inference, metadata_root: Path, ids, thresholds, multi_contour: bool):
        self.inference = inference
        self.levels = V2_IOU_LEVELS if multi_contour else V1_LEVELS
        self.evaluator = evaluation.BoxEvaluator(
            metadata=evaluation.configure_metadata(str(metadata_root)), dataset_name="CUB", split="test",
            cam_threshold_list=list(thresholds), iou_threshold_list=[round(100 * lv) for lv in self.levels],
            mask_root=None, multi_contour_eval=multi_contour,
        )
        self.ids = ids
        self.hits = {lv: [] for lv in self.levels}
        self.seconds = 0.0

    def feed(self, maps, start: int) -> None:
        num_correct = self.evaluator.num_correct
        for k, cam in enumerate(maps):
            before = {lv: num_correct[round(100 * lv)].copy() for lv in self.levels}
            t0 = time.perf_counter()
            resized = cv2.resize(cam.astype(np.float64), (RESIZE, RESIZE), interpolation=cv2.INTER_CUBIC)
            self.evaluator.accumulate(self.inference.normalize_scoremap(resized), self.ids[start + k])
            self.seconds += time.perf_counter() - t0
            for lv in self.levels:
                self.hits[lv].append(num_correct[round(100 * lv)] - before[lv] > 0)


class LoopRun:
    """The plain per-threshold loop of the tests (tests/wsol_reference.py), per-image hits."""

    def __init__(self, thresholds, multi_contour: bool):
        self.thresholds, self.multi_contour = thresholds, multi_contour
        self.levels = V2_IOU_LEVELS if multi_contour else V1_LEVELS
        self.hits = {lv: [] for lv in self.levels}
        self.seconds = 0.0

    def feed(self, maps, gt_boxes, image_sizes) -> None:
        for cam, boxes, size in zip(maps, gt_boxes, image_sizes):
            t0 = time.perf_counter()
            counts = ref.box_correct_counts([cam], [boxes], [size], self.thresholds, self.multi_contour, self.levels)
            self.seconds += time.perf_counter() - t0
            for lv in self.levels:
                self.hits[lv].append(counts[lv] > 0)


def bench_grid(maps, gt_boxes, image_sizes, step: float, reference) -> tuple[float, int]:
    """Interleaved timing on one grid; prints the numbers, returns (speedup, differing cells)."""
    thresholds = threshold_grid(step)
    serial = BoxCorrectness(thresholds, workers=1)
    parallel = BoxCorrectness(thresholds)  # all cores (the default)
    if reference is not None:
        evaluation, inference, root, ids = reference
        contenders = [ReferenceRun(evaluation, inference, root, ids, thresholds, mc) for mc in (False, True)]
    else:
        contenders = [LoopRun(thresholds, mc) for mc in (False, True)]
    fast = fast_parallel = 0.0
    for start in range(0, len(maps), CHUNK):
        part = slice(start, start + CHUNK)
        t0 = time.perf_counter()
        serial.add(maps[part], gt_boxes[part], image_sizes[part])
        fast += time.perf_counter() - t0
        t0 = time.perf_counter()
        parallel.add(maps[part], gt_boxes[part], image_sizes[part])
        fast_parallel += time.perf_counter() - t0
        for run in contenders:
            if reference is not None:
                run.feed(maps[part], start)
            else:
                run.feed(maps[part], gt_boxes[part], image_sizes[part])

    differing = 0
    for run, ious in zip(contenders, (serial.iou_v1, serial.iou_v2)):
        for lv in run.levels:
            differing += int((np.asarray(run.hits[lv]) != iou_hits(ious, lv)).sum())
    differing += int((serial.iou_v1 != parallel.iou_v1).sum() + (serial.iou_v2 != parallel.iou_v2).sum())
    n = len(maps)
    v1_time, v2_time = contenders[0].seconds, contenders[1].seconds
    name = "wsolevaluation BoxEvaluator" if reference is not None else "plain per-threshold loop"
    print(
        f"step {step:<6} T={len(thresholds):<5} {n} maps, contender: {name}, differing cells: {differing}\n"
        f"  bcct V1+V2, 1 thread       {fast:8.2f} s  ({1e3 * fast / n:.2f} ms/image)\n"
        f"  bcct V1+V2, {default_workers()} threads      {fast_parallel:8.2f} s  "
        f"({(v1_time + v2_time) / fast_parallel:6.1f}x the contender's V1+V2)\n"
        f"  contender V1               {v1_time:8.2f} s  ratio {v1_time / fast:6.1f}x\n"
        f"  contender V2               {v2_time:8.2f} s  ratio {v2_time / fast:6.1f}x\n"
        f"  contender V1 + V2          {v1_time + v2_time:8.2f} s  ratio {(v1_time + v2_time) / fast:6.1f}x",
        flush=True,
    )
    return (v1_time + v2_time) / fast, differing


def bench_val(maps, gt_boxes, image_sizes, n_val: int = 600, batch: int = 64, repeats: int = 3) -> None:
    """Per-epoch val evaluation: ``n_val`` maps at the 0.001 grid, one thread, fed in batches."""
    n_val = min(n_val, len(maps))
    seconds = []
    for _ in range(repeats):
        evaluator = BoxCorrectness(threshold_grid(0.001), workers=1)
        t0 = time.perf_counter()
        for start in range(0, n_val, batch):
            part = slice(start, min(start + batch, n_val))
            evaluator.add(maps[part], gt_boxes[part], image_sizes[part])
        seconds.append(time.perf_counter() - t0)
    print(f"val {n_val} maps, step 0.001, 1 thread: {min(seconds):.2f} s best of {repeats} "
          f"({', '.join(f'{t:.2f}' for t in seconds)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of random maps")
    parser.add_argument("--resolution", type=int, default=14, help="side of the random maps before the resize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, help="directory holding clovaai/wsolevaluation")
    args = parser.parse_args()
    maps, gt_boxes, image_sizes = ref.random_smooth_maps(np.random.default_rng(args.seed), args.n, args.resolution)
    BoxCorrectness(threshold_grid(0.01)).add(maps[:2], gt_boxes[:2], image_sizes[:2])  # numba cache load / compile
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        if args.reference is not None:
            evaluation, inference = load_reference(args.reference.resolve())
            root = Path(tmp) / "metadata"
            reference = (evaluation, inference, root, write_metadata(root, gt_boxes, image_sizes))
        results = {step: bench_grid(maps, gt_boxes, image_sizes, step, reference) for step in (0.01, 0.001)}
    bench_val(maps, gt_boxes, image_sizes)
    if reference is not None:
        print(
            f"speedup_vs_reference_0.01={results[0.01][0]:.1f} speedup_vs_reference_0.001={results[0.001][0]:.1f} "
            f"differing_cells={sum(d for _, d in results.values())}"
        )


if __name__ == "__main__":
    main()

"""Which test-time input sides (``eval.scales``) to read, on val (issue 16 study: "test-time
flip and scales"). Val only: each trained checkpoint's val split (carved from train by its
own seed) is evaluated with every candidate set of sides by the package's evaluator, the
threshold of every readout chosen on the same val images, so the rows rank variants and
are not results; the test split is never read.

    python bench/test_time_study.py bench_out/fast/seed{0,1,2}/runs/{cam,bcct}/best.pt
    python bench/test_time_study.py --sides "224;224,288,352" RUN/best.pt ...
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.evaluate import evaluate
from bcct.run import load_method

CANDIDATES = ([224], [288], [352], [224, 288], [288, 352], [224, 288, 352])
KEYS = ("cls_top1", "top1_loc", "gt_known", "maxboxacc_v2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="best.pt files (one method, several seeds, or several methods)")
    ap.add_argument("--data", help="the data root (default: the one each run trained on)")
    ap.add_argument("--sides", default=";".join(",".join(map(str, c)) for c in CANDIDATES),
                    help="candidate side sets, ';' between sets, ',' within one (default: %(default)s)")
    args = ap.parse_args(argv)
    t0 = time.time()
    # rows[(method, readout, sides)] -> one {key: value} per checkpoint
    rows: dict[tuple, list[dict]] = defaultdict(list)
    for path in args.checkpoints:
        method, cfg, _ = load_method(path, device="cpu")
        if args.data:
            cfg.data.root = args.data
        val = WSOLDataset(read_dataset(cfg.data, seed=cfg.seed).split("val"), test_transform(cfg.data))
        for sides in [[int(v) for v in c.split(",")] for c in args.sides.split(";")]:
            cfg.eval.scales = list(sides)
            results = evaluate(method, val, cfg, next(method.parameters()).device, thresholds=None)
            for readout, res in results.items():
                rows[(cfg.method, readout, "+".join(map(str, sides)))].append(res)
            print(f"{path} {sides}: " + ", ".join(f"{r} top-1 loc {100 * v.get('top1_loc', np.nan):.1f} GT-known "
                                                  f"{100 * v['gt_known']:.1f}" for r, v in results.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)
    print("\n| method | readout | sides | runs | " + " | ".join(KEYS) + " |")
    print("|---|---|---|---|" + "---|" * len(KEYS))
    for (name, readout, sides), runs in rows.items():
        cells = []
        for key in KEYS:
            v = np.array([r[key] for r in runs if r.get(key) is not None], dtype=float) * 100
            cells.append("-" if v.size == 0 else f"{v.mean():.1f} +- {v.std(ddof=1) if v.size > 1 else 0:.1f}")
        print(f"| {name} | {readout} | {sides} | {len(runs)} | " + " | ".join(cells) + " |")
    print(f"\n{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which training-free map should ``--checkpoint imagenet`` cut its box from? Both maps of
the pip-shipped ImageNet classifier (bcct/imagenet.py: its CAM, its features' norm), each
read for the classifier's own top-1 ImageNet class, scored on a CUB-layout set's boxes
(GT-known: the box alone, the class is not a CUB class): threshold chosen on the val carve
from train, numbers on test.

    python bench/imagenet_maps.py --data ../shared/data/cub_dev

On cub_dev it answered feature_norm (GT-known 64.1 vs cam's 53.1): that map is the default
readout, cut at the threshold this script chose for it on val (0.41, ``imagenet.THRESHOLDS``).
"""

from __future__ import annotations

import argparse
import json

import torch

from bcct import imagenet
from bcct.data.dataset import WSOLDataset
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.evaluate import evaluate


class OwnClass(torch.nn.Module):
    """The ImageNet classifier, its maps read for its own top-1 class whatever the labels."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)

    def score_maps(self, out, classes):
        return self.model.score_maps(out, out["logits"].argmax(1))

    def mask_boxes(self, images):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, cfg, _ = imagenet.load("cpu")
    cfg.data.root = args.data
    cfg.data.workers = 0
    wset = read_dataset(cfg.data, seed=cfg.seed)
    method = OwnClass(model).eval()
    val = WSOLDataset(wset.split("val"), test_transform(cfg.data))
    test = WSOLDataset(wset.split("test"), test_transform(cfg.data))
    chosen = {k: v["threshold"] for k, v in evaluate(method, val, cfg, torch.device("cpu")).items()}
    results = evaluate(method, test, cfg, torch.device("cpu"), thresholds=chosen)
    rows = {name: {"gt_known": r["gt_known"], "maxboxacc_v2": r.get("maxboxacc_v2"), "threshold": chosen[name],
                   "n_val": len(val), "n_test": len(test)} for name, r in results.items()}
    for name, r in rows.items():
        print(f"{name:14s} GT-known {100 * r['gt_known']:.1f}  MaxBoxAccV2 {100 * (r['maxboxacc_v2'] or 0):.1f}  "
              f"threshold {r['threshold']:.2f} (val {r['n_val']}, test {r['n_test']})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()

"""The training-free feature-norm map at other input sizes and output strides, on val
(issue 16 study, deliverable 3: stride-8 features, other scales). Val only; the threshold
is chosen on the same val images, so rows rank variants and are not reported as results.

    python bench/scale_study.py --data ../shared/data/cub_dev
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from bcct import feature_maps
from bcct.backbones import InputNormalization, lite_classifier
from bcct.config import load_config
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform
from bcct.metrics import BoxCorrectness, choose_threshold, summarize


class Lite(torch.nn.Module):
    def __init__(self, output_stride: int):
        super().__init__()
        m = lite_classifier("efficientnet_lite0", "imagenet", output_stride=output_stride)
        self.norm = InputNormalization((0.5,) * 3, (0.5,) * 3)
        self.m = m

    def forward(self, x):
        m = self.m
        return m.bn2(m.conv_head(m.blocks(m.bn1(m.conv_stem(self.norm(x))))))


def score(maps, ds):
    corr = BoxCorrectness(thresholds=np.arange(0, 1, 0.01))
    corr.add(maps, [r.boxes for r in ds.records], ds.image_sizes())
    tau = choose_threshold(corr)
    s = summarize(corr, None, None, threshold=tau)
    return s["gt_known"], s["maxboxacc_v2"], tau


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_config("cub_cpu", [f"data.root={args.data}"])
    records = read_dataset(cfg.data, seed=cfg.seed).split("val")
    t0 = time.time()
    maps = {}
    for size in (224, 320, 448):
        ds = WSOLDataset(records, test_transform(load_config("cub_cpu", [f"data.image_size={size}"]).data))
        for os_ in (16, 8):
            if size == 448 and os_ == 8:
                continue
            net = Lite(os_).eval()
            out = []
            with torch.no_grad():
                for b in torch.utils.data.DataLoader(ds, batch_size=25, collate_fn=collate):
                    out.append(feature_maps.with_flip(feature_maps.feature_norm, b["image"], net))
            m = torch.cat(out)
            maps[(size, os_)] = m
            gk, v2_, tau = score(m.numpy(), ds)
            print(f"feature_norm input {size} stride {os_} ({m.shape[-1]}x{m.shape[-1]}): GT-known {100 * gk:.1f} "
                  f"V2 {100 * v2_:.1f} tau {tau:.2f}  [{time.time() - t0:.0f} s]", flush=True)

    def norm01(m):
        lo, hi = m.flatten(1).amin(1)[:, None, None], m.flatten(1).amax(1)[:, None, None]
        return (m - lo) / (hi - lo).clamp_min(1e-6)

    side = 56
    for combo in [((224, 16), (320, 16), (448, 16)), ((224, 16), (448, 16)), ((224, 8), (320, 8))]:
        avg = sum(norm01(F.interpolate(maps[k][:, None], size=(side, side), mode="bilinear",
                                       align_corners=False)[:, 0]) for k in combo) / len(combo)
        gk, v2_, tau = score(avg.numpy(), ds)
        print(f"feature_norm mean of {combo}: GT-known {100 * gk:.1f} V2 {100 * v2_:.1f} tau {tau:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which map localises best on val: training-free readings of the frozen backbone, the BC
map, their combinations and small heads trained on their pseudo masks (issue 16 study).

Everything is read from frozen features computed once (the image and its mirror) on the
train and val splits carved from train by the recipe; the test split is never touched.
GT-known (IoU >= 0.5, the val-best threshold) and MaxBoxAccV2 are on val; the threshold is
chosen on the same val images, so these are for ranking variants, not for reporting.

    python bench/localizer_study.py --data ../shared/data/cub_dev --backgrounds ../shared/data/backgrounds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcct import feature_maps
from bcct.backbones import build_backbone
from bcct.config import load_config
from bcct.data.background_set import BackgroundSet
from bcct.data.dataset import WSOLDataset, collate
from bcct.data.readers import read_dataset
from bcct.data.transforms import test_transform, train_transform
from bcct.metrics import BoxCorrectness, choose_threshold, summarize


def features_of(backbone, ds, batch=50):
    """(features, mirrored features) [N,C,h,w] fp16 for every image of ``ds``."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=1, collate_fn=collate)
    f, fm = [], []
    with torch.no_grad():
        for b in loader:
            x = b["image"]
            f.append(backbone(x).half())
            fm.append(backbone(x.flip(-1)).half())
    return torch.cat(f), torch.cat(fm)


def score(maps: np.ndarray, ds) -> dict:
    """GT-known at the val-best threshold, MaxBoxAccV2, and GT-known if every image could
    have its own threshold (what a perfect per-image cut would reach)."""
    corr = BoxCorrectness(thresholds=np.arange(0, 1, 0.01))
    corr.add(maps, [r.boxes for r in ds.records], ds.image_sizes())
    tau = choose_threshold(corr)
    s = summarize(corr, None, None, threshold=tau)
    per_image = float((corr.iou_v1 >= 0.5).any(1).mean())
    return {"gt_known": s["gt_known"], "v2": s["maxboxacc_v2"], "tau": tau, "per_image": per_image}


def norm01(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).amin(1)[:, None, None]
    hi = m.flatten(1).amax(1)[:, None, None]
    return (m - lo) / (hi - lo).clamp_min(1e-6)


def flipavg(read, f, fm):
    return (read(f.float()) + read(fm.float()).flip(-1)) / 2


class Head(nn.Module):
    def __init__(self, c, width=128):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, 1, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def train_head(f, fm, target, epochs=8, seed=0, weight=None, lr=0.01):
    """Head on frozen features, BCE against soft/binary targets [N,h,w] (mirror as augmentation)."""
    torch.manual_seed(seed)
    head = Head(f.shape[1])
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    x = torch.cat([f, fm]).float()
    y = torch.cat([target, target.flip(-1)]).float()
    w = None if weight is None else torch.cat([weight, weight.flip(-1)]).float()
    n = len(x)
    for ep in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            logit = head(x[idx])
            loss = F.binary_cross_entropy_with_logits(logit, y[idx], weight=None if w is None else w[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    return head


def head_maps(head, f, fm):
    with torch.no_grad():
        return flipavg(lambda x: torch.sigmoid(head(x)), f, fm)


def per_image_cut(maps: torch.Tensor, rule) -> np.ndarray:
    """Maps re-scaled so that 0.5 falls on each image's own threshold ``rule(map01)``
    (piecewise linear, monotone: the boxes at every threshold are the map's own)."""
    out = []
    for m in norm01(F.interpolate(maps[:, None].float(), size=(56, 56), mode="bilinear",
                                  align_corners=False)[:, 0]).numpy():
        t = float(np.clip(rule(m), 0.01, 0.99))
        out.append(np.where(m < t, 0.5 * m / t, 0.5 + 0.5 * (m - t) / (1 - t)))
    return np.stack(out)


def mass_cut(share: float):
    """The value above which ``share`` of the map's total mass lies."""
    def rule(m):
        v = np.sort(m.ravel())[::-1]
        return v[np.searchsorted(np.cumsum(v) / v.sum(), share)]
    return rule


def largest_part(masks: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage
    out = torch.zeros_like(masks)
    for i, m in enumerate(masks.numpy()):
        lab, n = ndimage.label(m)
        if n:
            sizes = ndimage.sum(m, lab, range(1, n + 1))
            out[i] = torch.from_numpy(lab == (1 + int(np.argmax(sizes))))
    return out


def box_agreement(a: torch.Tensor, tau_a: float, b: torch.Tensor, tau_b: float) -> np.ndarray:
    """IoU of the boxes of two maps of each image, each cut at its own threshold."""
    from bcct.boxes import box_at_threshold, box_iou, prepare_scoremap
    return np.array([box_iou(box_at_threshold(prepare_scoremap(x.numpy()), tau_a)[0],
                             box_at_threshold(prepare_scoremap(y.numpy()), tau_b)[0])[0, 0] for x, y in zip(a, b)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backgrounds", required=True)
    ap.add_argument("--cache", default="bench_out/study_feats.pt")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_config("cub_cpu", [f"data.root={args.data}"])
    wset = read_dataset(cfg.data, seed=cfg.seed)
    tr = WSOLDataset(wset.split("train"), test_transform(cfg.data))
    va = WSOLDataset(wset.split("val"), test_transform(cfg.data))
    backbone = build_backbone("efficientnet_lite0", "imagenet").eval()
    cache = Path(args.cache)
    t0 = time.time()
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
    else:
        d = {}
        d["tr"], d["trm"] = features_of(backbone, tr)
        d["va"], d["vam"] = features_of(backbone, va)
        bg = BackgroundSet(args.backgrounds, train_transform(cfg.data))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            crops = torch.stack([bg[int(i)] for i in torch.randint(len(bg), (600,), generator=g)])
            d["bg"] = torch.cat([backbone(crops[i:i + 50]) for i in range(0, 600, 50)]).half()
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(d, cache)
    print(f"features: {time.time() - t0:.0f} s", flush=True)
    f_tr, fm_tr, f_va, fm_va, f_bg = d["tr"], d["trm"], d["va"], d["vam"], d["bg"]
    rows = {}

    def report(name, maps_va):
        rows[name] = score(maps_va.float().numpy(), va)
        r = rows[name]
        print(f"{name:60s} GT-known {100 * r['gt_known']:5.1f}  V2 {100 * r['v2']:5.1f}  tau {r['tau']:.2f}  "
              f"per-image cut {100 * r['per_image']:5.1f}", flush=True)

    norm_va = flipavg(feature_maps.feature_norm, f_va, fm_va)
    norm_tr = flipavg(feature_maps.feature_norm, f_tr, fm_tr)
    report("feature_norm (flip)", norm_va)
    report("feature_norm (no flip)", feature_maps.feature_norm(f_va.float()))
    from skimage import filters
    rules = {"Otsu": filters.threshold_otsu, "Li": filters.threshold_li, "Yen": filters.threshold_yen,
             "triangle": filters.threshold_triangle, "mean + 0.5 std": lambda m: m.mean() + 0.5 * m.std(),
             "60% of the mass": mass_cut(0.6)}
    for rule_name, rule in rules.items():
        report(f"feature_norm, per-image threshold: {rule_name}", torch.from_numpy(per_image_cut(norm_va, rule)))
    report("pc1 (flip)", flipavg(feature_maps.pc1, f_va, fm_va))
    pca = feature_maps.DescriptorPCA(f_tr.shape[1])
    pca.add(f_tr.float())
    mean, comp = pca.fit()
    report("ddt (flip)", flipavg(lambda x: feature_maps.ddt(x, mean, comp), f_va, fm_va))

    # BC: linear classifier on GAP features, train targets vs background crops
    torch.manual_seed(0)
    gap_t = f_tr.float().mean((2, 3))
    gap_b = f_bg.float().mean((2, 3))
    lin = nn.Linear(gap_t.shape[1], 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.05, momentum=0.9)
    X = torch.cat([gap_t, gap_b])
    Y = torch.cat([torch.ones(len(gap_t)), torch.zeros(len(gap_b))])
    for _ in range(200):
        loss = F.binary_cross_entropy_with_logits(lin(X).squeeze(1), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = lin.weight.detach()[0]
    bc_read = lambda x: F.relu((x * w[None, :, None, None]).sum(1))  # Grad-CAM of a linear BC on GAP
    bc_lin = lambda x: (x * w[None, :, None, None]).sum(1)
    bc_va = flipavg(bc_read, f_va, fm_va)
    bc_tr = flipavg(bc_read, f_tr, fm_tr)
    report("BC Grad-CAM (linear BC, flip)", bc_va)
    report("BC linear at every position, no ReLU (flip)", flipavg(bc_lin, f_va, fm_va))
    report("BC Grad-CAM x norm", norm01(bc_va) * norm01(norm_va))
    report("(BC Grad-CAM + norm)/2", (norm01(bc_va) + norm01(norm_va)) / 2)
    report("sqrt(BC) + norm", (norm01(bc_va).sqrt() + norm01(norm_va)) / 2)

    # per-position background classifier: positives = train positions, negatives = background positions
    # (a linear BC on positions rather than GAP)
    pos = f_tr.float().permute(0, 2, 3, 1).reshape(-1, f_tr.shape[1])
    neg = f_bg.float().permute(0, 2, 3, 1).reshape(-1, f_bg.shape[1])
    torch.manual_seed(0)
    lin2 = nn.Linear(pos.shape[1], 1)
    opt = torch.optim.Adam(lin2.parameters(), lr=1e-3)
    Xp = torch.cat([pos, neg])
    Yp = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    for _ in range(3):
        perm = torch.randperm(len(Xp))
        for i in range(0, len(Xp), 4096):
            idx = perm[i:i + 4096]
            loss = F.binary_cross_entropy_with_logits(lin2(Xp[idx]).squeeze(1), Yp[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    w2, b2 = lin2.weight.detach()[0], lin2.bias.detach()[0]
    pos_read = lambda x: torch.sigmoid((x * w2[None, :, None, None]).sum(1) + b2)
    posbc_va = flipavg(pos_read, f_va, fm_va)
    posbc_tr = flipavg(pos_read, f_tr, fm_tr)
    report("per-position BC (positions vs background positions)", posbc_va)
    report("per-position BC x norm", posbc_va * norm01(norm_va))

    # heads trained on pseudo masks of train images (teacher maps cut at their val-best tau)
    teachers = {"norm": (norm_tr, norm_va),
                "bc+norm": ((norm01(bc_tr) + norm01(norm_tr)) / 2, (norm01(bc_va) + norm01(norm_va)) / 2)}
    for tname, (t_tr, t_va) in teachers.items():
        tau = rows.get({"norm": "feature_norm (flip)", "bc": "BC Grad-CAM (linear BC, flip)",
                        "bc+norm": "(BC Grad-CAM + norm)/2"}[tname])["tau"]
        mask = largest_part(norm01(t_tr) >= tau)
        head = train_head(f_tr, fm_tr, mask)
        hv = head_maps(head, f_va, fm_va)
        report(f"head on frozen feats <- {tname} masks (cut at tau, largest part)", hv)
        report(f"  ... averaged with its teacher", (hv + norm01(t_va)) / 2)
        # self-training: relabel train with the head's own maps, retrain
        h_tr = head_maps(head, f_tr, fm_tr)
        tau2 = score(hv.numpy(), va)["tau"]
        head2 = train_head(f_tr, fm_tr, largest_part(norm01(h_tr) >= tau2), seed=1)
        report(f"  ... self-training round 2", head_maps(head2, f_va, fm_va))
        # the Background Image Set as the student's negatives: background crops, all-zero masks
        bg_zero = torch.zeros(len(f_bg), *mask.shape[1:])
        head_bg = train_head(torch.cat([f_tr, f_bg]), torch.cat([fm_tr, f_bg.flip(-1)]),
                             torch.cat([mask.float(), bg_zero]))
        hv_bg = head_maps(head_bg, f_va, fm_va)
        report(f"  ... with background crops as negatives", hv_bg)
        report(f"  ... with background negatives, averaged with its teacher", (hv_bg + norm01(t_va)) / 2)
        if tname == "bc+norm":  # confident pseudo masks only: the BC and norm boxes agree
            agree = box_agreement(norm01(bc_tr), rows["BC Grad-CAM (linear BC, flip)"]["tau"],
                                  norm01(norm_tr), rows["feature_norm (flip)"]["tau"])
            keep = torch.from_numpy(agree >= 0.75)
            head_c = train_head(torch.cat([f_tr[keep], f_bg]), torch.cat([fm_tr[keep], f_bg.flip(-1)]),
                                torch.cat([mask[keep].float(), bg_zero]))
            report(f"  ... confident masks only ({int(keep.sum())} of {len(keep)}: BC and norm boxes IoU >= 0.75)"
                   f" + background negatives", head_maps(head_c, f_va, fm_va))
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

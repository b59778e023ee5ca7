"""Run a method over a split and score its maps with the shared evaluator (bcct.metrics).

With several processes (torchrun) each predicts and scores every world_size-th batch, and
rank 0 puts the rows back in dataset order before summarising: the numbers are exactly
those of one process (the same batches run, nothing padded or counted twice), and every
process returns them. Rank 0 holds all rows (ILSVRC at threshold_step 0.001: ~360 MB).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bcct import distributed, runtime, test_time
from bcct.config import Config
from bcct.data.dataset import WSOLDataset, collate
from bcct.errors import BadInput
from bcct.metrics import BoxCorrectness, choose_threshold, default_workers, mask_iou50, mask_validity, summarize
from bcct.runtime import ignore_sigint

NEEDS_BOXES = "needs boxes"  # the ``localization`` entry of a split without boxes
MASK_THRESHOLD = "bc_masks"  # threshold_source: chosen against the method's own mask boxes (no annotation)


def make_loader(ds: WSOLDataset, cfg: Config, batches: list[list[int]] | None = None) -> DataLoader:
    """In order, ``eval.batch_size`` at a time; or the given ``batches`` of indices. Its workers
    leave Ctrl-C to the main process (a stop during evaluation is the loop's to handle)."""
    if batches is not None:
        return DataLoader(ds, batch_sampler=batches, num_workers=cfg.data.workers, collate_fn=collate,
                          pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_sigint)
    return DataLoader(ds, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_sigint)


@torch.no_grad()
def predict(method, ds: WSOLDataset, cfg: Config, device: torch.device, progress: bool = False,
            shard: bool = False) -> dict:
    """GT-class score maps of every readout, and top-1/top-5 classification correctness;
    ``index`` says which images. With ``eval.scales`` every image is read at each side and the
    class probabilities and maps are averaged (:mod:`bcct.test_time`). ``shard``: only this process's batches
    (:func:`bcct.distributed.shard_batches`)."""
    method.eval()
    sides = test_time.input_sides(cfg.eval.scales, cfg.data.image_size)
    batches = distributed.shard_batches(len(ds), cfg.eval.batch_size) if shard else None
    maps: dict[str, list[np.ndarray]] = {}
    top1, top5, mboxes, index = [], [], [], []
    for batch in tqdm(make_loader(ds, cfg, batches), desc="eval", leave=False, disable=None if progress else True):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        index.append(batch["index"].numpy())
        probs, side_maps = [], {}
        for side in sides:  # eval.scales (bcct/test_time.py); one side by default
            out = method(resize(images, side))
            if out.get("logits") is not None:  # a training-free map has no classifier
                probs.append(out["logits"].float().softmax(1))
            for name, m in method.score_maps(out, labels).items():
                side_maps.setdefault(name, []).append(m.float().cpu().numpy())
        if probs:
            mean = torch.stack(probs).mean(0)
            topk = mean.topk(min(5, mean.shape[1]), dim=1).indices
            top1.append((topk[:, 0] == labels).cpu().numpy())
            top5.append((topk == labels[:, None]).any(1).cpu().numpy())
        for name, per_side in side_maps.items():
            maps.setdefault(name, []).append(test_time.average_maps(per_side))
        boxes = method.mask_boxes(images)
        if boxes is not None:
            mboxes.append(boxes.cpu().numpy())
    runtime.release_freed_memory()  # the finished batches' activation pages go back to the system
    classifies = bool(top1) or not index  # None flags: the method has no classifier

    def flags(rows):
        return (np.concatenate(rows) if rows else np.zeros(0, dtype=bool)) if classifies else None

    return {
        "maps": {k: np.concatenate(v) for k, v in maps.items()},
        "top1": flags(top1),
        "top5": flags(top5),
        "mask_boxes": np.concatenate(mboxes) if mboxes else None,
        "index": np.concatenate(index) if index else np.zeros(0, dtype=np.int64),
    }


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """A test-transformed batch at another input side (bilinear; the batch itself at its own side)."""
    if images.shape[-2:] == (side, side):
        return images
    return torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def to_original(boxes: np.ndarray, sizes: list[tuple[int, int]], input_size: int) -> np.ndarray:
    """Boxes in the resized input frame -> original image pixels."""
    scale = np.array([[w / input_size, h / input_size, w / input_size, h / input_size] for w, h in sizes])
    return boxes * scale


def has_boxes(ds: WSOLDataset) -> bool:
    """Whether the split can be scored for localisation: every image has a box (True) or
    none has (False: classification only, e.g. class folders); a mix is refused."""
    lacking = [r for r in ds.records if not len(r.boxes)]
    if lacking and len(lacking) < len(ds.records):
        raise BadInput(f"{lacking[0].path}: has no box while {len(ds.records) - len(lacking)} of the split's "
                       f"{len(ds.records)} images have one; localisation needs a box for every image: add its box "
                       "or remove the image")
    return not lacking


def correctness(pred: dict, ds: WSOLDataset, cfg: Config, against_masks: bool = False) -> dict[str, BoxCorrectness]:
    """One per-image x per-threshold IoU table per readout (bcct.metrics), rows in the order
    of ``pred["index"]`` (all of ``ds`` when absent). ``against_masks``: the boxes of the
    method's own masks (BC-CT's BC masks) stand in for the GT boxes."""
    index = pred.get("index", range(len(ds)))
    all_sizes = ds.image_sizes()
    sizes = [all_sizes[i] for i in index]
    if against_masks:
        boxes = [b[None] for b in to_original(pred["mask_boxes"], sizes, cfg.data.image_size)]
    else:
        boxes = [ds.records[i].boxes for i in index]
    thresholds = np.arange(0, 1, cfg.eval.threshold_step)
    # maps are scored on threads over this process's cores, shared with its node's other ranks
    workers = max(1, default_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    out = {}
    for name, maps in pred["maps"].items():
        corr = BoxCorrectness(thresholds=thresholds, workers=workers)
        corr.add(maps, boxes, sizes)
        out[name] = corr
    return out


def evaluate(method, ds: WSOLDataset, cfg: Config, device: torch.device,
             thresholds: dict[str, float] | None = None, progress: bool = False) -> dict:
    """Metrics per readout. ``thresholds`` (chosen on val) are used when given, else the
    config's fixed one, else the split's own best (reported as ``threshold_source: oracle``).
    Every process of a distributed run calls it and gets the same result (module doc)."""
    return _evaluate(method, ds, cfg, device, thresholds, progress, detailed=False)["results"]


def evaluate_detailed(method, ds: WSOLDataset, cfg: Config, device: torch.device,
                      thresholds: dict[str, float] | None = None, progress: bool = False) -> dict:
    """:func:`evaluate` plus what its numbers were computed from, rows in dataset order:
    ``results`` (as :func:`evaluate` returns), ``correctness`` ({readout: BoxCorrectness}),
    ``top1``/``top5`` (per-image classification flags) and ``maps`` ({readout: GT-class score
    maps [N, h, w]}). Nothing is computed twice; with several processes the maps are
    gathered too (one float32 map per image and readout)."""
    return _evaluate(method, ds, cfg, device, thresholds, progress, detailed=True)


def _evaluate(method, ds: WSOLDataset, cfg: Config, device: torch.device, thresholds: dict[str, float] | None,
              progress: bool, detailed: bool) -> dict:
    pred = predict(method, ds, cfg, device, progress, shard=True)
    boxed = has_boxes(ds)
    fixed = cfg.eval.threshold is not None or bool(thresholds and all(k in thresholds for k in pred["maps"]))
    against_masks = not boxed and not fixed and pred["mask_boxes"] is not None
    scored = correctness(pred, ds, cfg, against_masks) if boxed or against_masks else {}
    share = {"index": pred["index"], "top1": pred["top1"], "top5": pred["top5"], "mask_boxes": pred["mask_boxes"],
             "readouts": list(pred["maps"]), "boxed": boxed,
             "correctness": {name: corr.state_dict() for name, corr in scored.items()},
             "maps": pred["maps"] if detailed else {}}
    shares = distributed.gather_objects(share)
    out = _summarize(shares, ds, cfg, thresholds, detailed) if distributed.is_main() else None
    return distributed.broadcast_object(out)


def _summarize(shares: list[dict], ds: WSOLDataset, cfg: Config, thresholds: dict[str, float] | None,
               detailed: bool = False) -> dict:
    """{"results": metrics} from the processes' shares, their rows put back in dataset order;
    ``detailed`` adds the rows themselves (:func:`evaluate_detailed`). A split without boxes
    gets classification only, with the CAM threshold given (``eval.threshold``, the
    checkpoint's) or, for a method with its own masks, chosen against their boxes
    (``threshold_source: bc_masks``: no annotation is used)."""
    order = np.argsort(np.concatenate([s["index"] for s in shares]), kind="stable")
    classifies = all(s["top1"] is not None for s in shares)  # False: a map without a classifier
    top1 = np.concatenate([s["top1"] for s in shares])[order] if classifies else None
    top5 = np.concatenate([s["top5"] for s in shares])[order] if classifies else None
    names = next((list(s["readouts"]) for s in shares if s["readouts"]), [])
    boxed = shares[0]["boxed"]
    results, corrs = {}, {}
    for name in names:
        tau = cfg.eval.threshold
        if tau is None and thresholds and name in thresholds:
            tau = thresholds[name]
        parts = [s["correctness"][name] for s in shares if name in s["correctness"]]
        if parts:
            state = BoxCorrectness.concat(parts).state_dict()
            state["iou_v1"], state["iou_v2"] = state["iou_v1"][order], state["iou_v2"][order]
            corr = BoxCorrectness.from_state_dict(state)
        if boxed:
            corrs[name] = corr
            results[name] = summarize(corr, top1, top5, threshold=tau)
            continue
        results[name] = {"n_images": len(order), "localization": NEEDS_BOXES}
        if classifies:
            results[name].update(cls_top1=float(top1.mean()), cls_top5=float(top5.mean()))
        if tau is None and parts:
            tau = choose_threshold(corr)
            results[name]["threshold_source"] = MASK_THRESHOLD
        if tau is not None:
            results[name]["threshold"] = float(tau)
    mask_boxes = [s["mask_boxes"] for s in shares if s["mask_boxes"] is not None]
    if mask_boxes and boxed:
        boxes = to_original(np.concatenate(mask_boxes)[order], ds.image_sizes(), cfg.data.image_size)
        gts = [r.boxes for r in ds.records]
        validity, iou50 = mask_validity(boxes, gts), mask_iou50(boxes, gts)
        for res in results.values():
            res["mask_validity"], res["mask_iou50"] = float(validity.mean()), float(iou50.mean())
    if not detailed:
        return {"results": results}
    maps = {name: np.concatenate([s["maps"][name] for s in shares if name in s["maps"]])[order] for name in results}
    return {"results": results, "correctness": corrs, "top1": top1, "top5": top5, "maps": maps}


def flatten(results: dict) -> dict:
    """The primary readout's keys at top level, the others nested under their names."""
    names = list(results)
    flat = dict(results[names[0]])
    flat["readout"] = names[0]
    for name in names[1:]:
        flat[name] = results[name]
    return flat

"""A torch Dataset over :class:`~bcct.data.records.Record` lists, shared by every method."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from bcct.data.images import load_rgb
from bcct.data.records import Record, image_size


class WSOLDataset(Dataset):
    """Items are dicts: ``image`` (transformed), ``label``, ``index``; with ``with_targets``
    also ``boxes`` (tv_tensors.BoundingBoxes) and ``mask`` (tv_tensors.Mask, when the record
    has one), transformed together with the image."""

    def __init__(self, records: list[Record], transform: Callable, with_targets: bool = False):
        self.records = records
        self.transform = transform
        self.with_targets = with_targets
        self._sizes: list[tuple[int, int]] | None = None
        # Per-image cached supervision masks (uint8 label codes: [N,h,w], or a list of [h,w] of
        # any size), e.g. BC masks in two-stage BC-CT: resized to the image (nearest neighbour)
        # and transformed with it as a tv_tensors.Mask.
        self.cached_masks: torch.Tensor | list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(W, H) of every image, read from file headers once; validates boxes against them
        and clips those that run a few pixels past the edge, saying so in one line."""
        if self._sizes is None:
            before = [r.boxes for r in self.records]
            self._sizes = [image_size(r) for r in self.records]
            clipped = [r for r, b in zip(self.records, before) if not np.array_equal(r.boxes, b)]
            if clipped:
                worst = max(float(np.abs(r.boxes - b).max()) for r, b in zip(self.records, before))
                names = ", ".join(r.path.stem for r in clipped[:3]) + (", ..." if len(clipped) > 3 else "")
                print(f"note: {len(clipped)} of {len(self.records)} GT boxes ran past the image edge (by up to "
                      f"{worst:.0f} px) and were clipped to it, as wsolevaluation's metadata does ({names})",
                      file=sys.stderr, flush=True)
        return self._sizes

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        img = load_rgb(rec.path)
        item = {"image": tv_tensors.Image(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous())}
        if self.with_targets:
            item["boxes"] = tv_tensors.BoundingBoxes(
                torch.as_tensor(rec.boxes, dtype=torch.float32), format="XYXY", canvas_size=(img.height, img.width)
            )
            if rec.mask_path is not None:
                mask = np.asarray(Image.open(rec.mask_path).convert("L").resize(img.size)) > 127
                item["mask"] = tv_tensors.Mask(torch.from_numpy(mask))
        if self.cached_masks is not None:
            cached = self.cached_masks[index][None, None].float()
            cached = torch.nn.functional.interpolate(cached, size=(img.height, img.width), mode="nearest")[0, 0]
            item["cached_mask"] = tv_tensors.Mask(cached.to(torch.uint8))
        item = self.transform(item)
        item["label"] = rec.label
        item["index"] = index
        return item


def collate(items: list[dict]) -> dict:
    """Stack images and labels; keep boxes/masks as lists (their counts and sizes differ)."""
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }
    for key in ("boxes", "mask"):
        if all(key in it for it in items):
            batch[key] = [it[key] for it in items]
    if all("cached_mask" in it for it in items):
        batch["cached_mask"] = torch.stack([it["cached_mask"].as_subclass(torch.Tensor) for it in items])
    return batch

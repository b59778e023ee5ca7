"""The method interface and registry."""

from __future__ import annotations

import torch
from torch import nn

from bcct.config import Config
from bcct.errors import BadInput
from bcct.methods.common import method_params

METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


class Method(nn.Module):
    """Subclasses set up their model pieces in ``__init__`` and override what differs.

    - ``forward(images)`` -> dict with ``logits`` [B,C] (absent for a method without a
      classifier: its results carry no class or top-1/top-5 localisation) and what its
      ``score_maps`` reads
    - ``training_step(batch)`` -> (loss, {name: float}) for one batch
    - ``score_maps(out, classes)`` -> {readout name: [B,h,w]}; the first is the primary one
    """

    name = "base"
    # False: nothing to train (a training-free map); ``bcct train`` runs ``prepare``, chooses the
    # threshold on val and writes the checkpoint, with no epoch
    trainable = True
    needs_backgrounds = False  # True: the loop adds batch["background"], half a batch of Background Image Set images
    # state-dict prefixes of pieces never trained (they come from the pretrained weights): left out of checkpoints
    frozen: tuple[str, ...] = ()
    # True: a step may leave trainable parameters without a gradient (DDP must look for them)
    find_unused_parameters = False
    # True: mask_boxes() gives the boxes of the method's own supervision masks (BC*; the CAM
    # threshold of data without boxes is chosen against them)
    has_masks = False
    # readouts computed with autograd (d score / d image): ONNX export leaves them out (bcct.export)
    gradient_readouts: tuple[str, ...] = ()
    # the method's hyperparameter dataclass, read from ``extra.<name>`` into ``self.params``
    params_type: type | None = None

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        if self.params_type is not None:
            self.params = method_params(cfg, self.name, self.params_type)

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def mask_boxes(self, images: torch.Tensor) -> torch.Tensor | None:
        """Boxes [B,4] (input-pixel frame) of the method's own supervision masks, for BC*;
        None when the method has none."""
        return None

    def prepare(self, train_ds, background_folder: str | None, device: torch.device, progress: bool = True) -> dict | None:
        """Hook run once before the first epoch (a stage that must come first, caches, ...);
        may return statistics for the metrics log."""
        return None

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules inside a method (warm-up of a loss term, ...)."""


def build_method(cfg: Config, num_classes: int) -> Method:
    if cfg.method not in METHODS:
        raise BadInput(f"method {cfg.method!r} unknown; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method](cfg, num_classes)

"""Shared fixtures: a tiny generated CUB-layout set, fast stand-in weights in a private
cache, and a tiny training config.

Nothing here touches ~/.cache: ``BCCT_CACHE`` points at a session tmp dir for the whole
run, and the stand-in "pretrained" weights are written there after 5 optimisation steps
(a few seconds) instead of the real 400-step pretraining (about 1.5 minutes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The machine has 2 cores shared with other work; these tests are tiny anyway.
torch.set_num_threads(1)

TINY_CLASSES, TINY_IMAGES, TINY_BACKGROUNDS = 3, 48, 6

# Small enough that two epochs train and evaluate in well under a second on one core.
TINY_OVERRIDES = [
    "epochs=2",
    "image_size=32",
    "model.head_width=16",
    "optim.batch_size=8",
    "data.workers=0",
    "eval.batch_size=16",
]


@pytest.fixture(scope="session", autouse=True)
def standin_cache(tmp_path_factory) -> Path:
    """``BCCT_CACHE`` -> session tmp dir holding quickly made stand-in backbone weights."""
    from bcct import checkpoint, pretrain
    from bcct.backbones import make_vgg

    cache = tmp_path_factory.mktemp("bcct_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BCCT_CACHE", str(cache))
        path = pretrain.standin_path()
        assert path.parent == cache, "standin_path() must follow $BCCT_CACHE"
        state, stats = pretrain.pretrain_standin(make_vgg, steps=5, pool=64, log=None)
        checkpoint.save_atomic({"backbone": state, "stats": stats}, path)
        yield cache


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x 16 images (8 train / 8 test each), 6 backgrounds, seed 0. Read-only:
    tests that corrupt it copy it first."""
    from bcct.data.synth import generate

    root = tmp_path_factory.mktemp("tiny") / "data"
    info = generate(root, n_classes=TINY_CLASSES, n_images=TINY_IMAGES, n_backgrounds=TINY_BACKGROUNDS, seed=0)
    assert (info["n_train"], info["n_test"]) == (24, 24)
    return root


@pytest.fixture(scope="session")
def make_tiny_cfg(tiny_data):
    """``make_tiny_cfg("epochs=1", ...)`` -> a Config for the tiny set (cam, 32 px, head 16)."""
    from bcct.config import load_config

    def make(*extra: str, method: str = "cam"):
        cfg = load_config("synth", TINY_OVERRIDES + list(extra), method=method)
        cfg.data.root = str(tiny_data)
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_cam_checkpoint(make_tiny_cfg, tmp_path_factory) -> Path:
    """best.pt of a 1-epoch CAM run on the tiny set, shared read-only by the localize and export tests."""
    from bcct.train import train

    run = tmp_path_factory.mktemp("tiny_cam") / "cam"
    train(make_tiny_cfg("epochs=1"), run, progress=False)
    return run / "best.pt"

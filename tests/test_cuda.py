"""Checks that need a GPU (skipped without CUDA; ``bench/gpu_check.py`` runs this file on a
lent one): the device paths the CPU suite can only emulate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcct.host_syncs import count_host_syncs
from bcct.mask import _largest_component_propagation, _largest_component_scipy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_components_on_cuda_equal_scipy_without_a_sync():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((8, 56, 56)) > 0.45)
    want = _largest_component_scipy(masks)
    on_gpu = masks.cuda()
    _largest_component_propagation(on_gpu)  # warm-up: first kernels load lazily
    with count_host_syncs(cuda=True) as n:
        got = _largest_component_propagation(on_gpu)
    assert n["total"] == 0, dict(n)
    assert torch.equal(got.cpu(), want)


def test_bcct_steps_on_cuda_read_the_device_only_every_log_every_steps():
    from bcct.config import load_config
    from bcct.distributed import TrainingStep
    from bcct.meters import Averages
    from bcct.methods import build_method
    from bcct.train import train_one_epoch

    cfg = load_config("synth", ["image_size=64", "model.head_width=16", "optim.batch_size=4", "bcct.mode=end2end",
                                "bcct.warmup_epochs=0", "optim.log_every=5"], method="bcct")
    cfg.model.pretrained = "none"
    method = build_method(cfg, 3).cuda()
    batch = {"image": torch.randn(4, 3, 64, 64, device="cuda"), "label": torch.tensor([0, 1, 2, 0], device="cuda")}
    bgs = torch.randn(2, 3, 64, 64, device="cuda")
    opt = torch.optim.SGD(method.param_groups(), momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def epoch():
        return train_one_epoch(TrainingStep(method), method, opt, scaler, [batch] * 10, torch.device("cuda"), 0, cfg,
                               Averages(), backgrounds=iter([bgs] * 10), progress=False)

    epoch()  # warm-up
    with count_host_syncs(cuda=True) as n:
        epoch()
    assert n["total"] <= 2 * (10 // 5 + 1), dict(n)

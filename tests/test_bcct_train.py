"""BC-CT in the training loop: the background stream (sized like the main loader, one per
run, resumable), and the training step's masks and losses checked against known values."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from bcct import checkpoint
from bcct import train as train_module
from bcct.methods.bc_ct import BCCT
from bcct.data.background_set import background_batches
from bcct.train import train

# 4 steps of 4 per epoch on the tiny set (19 train images after the val split, last batch dropped).
STEPS = ["epochs=2", "optim.batch_size=4", "bcct.warmup_epochs=0", "bcct.mode=end2end"]


def _same_weights(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------
# The background stream
# ---------------------------------------------------------------------------------------


def test_background_loader_has_as_many_workers_as_the_main_loader(make_tiny_cfg, tiny_data):
    cfg = make_tiny_cfg("data.workers=2", method="bcct")
    stream = background_batches(cfg, str(tiny_data / "backgrounds"), 2, key=(0, 0))
    assert stream._num_workers == 2
    assert next(stream).shape == (2, 3, 32, 32)
    del stream


def test_background_stream_is_built_once_per_run(make_tiny_cfg, tmp_path, monkeypatch):
    built = []

    def spy(*args, **kwargs):
        built.append(kwargs.get("skip"))
        return background_batches(*args, **kwargs)

    monkeypatch.setattr(train_module, "background_batches", spy)
    train(make_tiny_cfg(*STEPS, method="bcct"), tmp_path / "run", progress=False)
    assert built == [0]  # not one per epoch


@pytest.fixture(scope="module")
def uninterrupted_bcct(make_tiny_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("bcct_ref") / "run"
    train(make_tiny_cfg(*STEPS, method="bcct"), run, progress=False)
    return run


def test_bcct_resumed_mid_epoch_draws_the_same_backgrounds(make_tiny_cfg, uninterrupted_bcct, tmp_path, monkeypatch):
    """Stopped at epoch 1 step 3, resumed: the stream skips the 7 batches drawn before, so
    the weights equal the uninterrupted run's."""
    run = tmp_path / "run"
    calls = {"n": 0}
    step = BCCT.training_step

    def ctrl_c_at_step_7(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch)

    monkeypatch.setattr(BCCT, "training_step", ctrl_c_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(make_tiny_cfg(*STEPS, method="bcct"), run, progress=False)
    stopped = checkpoint.load(run / "last.pt")
    assert (stopped["epoch"], stopped["step"]) == (1, 3)
    monkeypatch.setattr(BCCT, "training_step", step)
    train(make_tiny_cfg(*STEPS, method="bcct"), run, progress=False, resume=True)
    _same_weights(checkpoint.load(run / "last.pt")["model"], checkpoint.load(uninterrupted_bcct / "last.pt")["model"])


TWO_STAGE = ["epochs=2", "optim.batch_size=4", "bcct.warmup_epochs=0", "bcct.mode=two_stage", "bcct.bc_epochs=1"]


def test_two_stage_resumed_caches_the_masks_of_the_uninterrupted_run(make_tiny_cfg, tmp_path, monkeypatch):
    """--resume skips the BC stage (bc_ready is saved), so nothing in it sets the frozen BC
    backbone to eval mode; the mask cache must still run it with its pretrained BatchNorm
    statistics (and leave them alone): the resumed run caches the uninterrupted run's masks
    and ends at its weights."""
    import bcct.methods.bc_ct as bc_ct

    cached, cache = [], bc_ct.cache_masks

    def spy(method, train_ds, device):
        masks = cache(method, train_ds, device)
        cached.append(masks.clone())  # one uint8 [N, side, side] tensor
        return masks

    monkeypatch.setattr(bc_ct, "cache_masks", spy)
    one, run = tmp_path / "one", tmp_path / "resumed"
    train(make_tiny_cfg(*TWO_STAGE, method="bcct"), one, progress=False)
    train(make_tiny_cfg(*TWO_STAGE, "epochs=1", method="bcct"), run, progress=False)
    train(make_tiny_cfg(*TWO_STAGE, method="bcct"), run, progress=False, resume=True)
    assert len(cached) == 3 and torch.equal(cached[1], cached[0])
    assert torch.equal(cached[2], cached[0]), f"mask area {cached[2].float().mean():.3f} vs {cached[0].float().mean():.3f}"
    _same_weights(checkpoint.load(run / "last.pt")["model"], checkpoint.load(one / "last.pt")["model"])


# ---------------------------------------------------------------------------------------
# Checkpoints hold what is trained, not the frozen BC backbone
# ---------------------------------------------------------------------------------------


def test_checkpoints_leave_out_the_frozen_bc_backbone(make_tiny_cfg, uninterrupted_bcct):
    from bcct.run import evaluate_checkpoint, load_method

    for name in ("last.pt", "best.pt"):
        ckpt = checkpoint.load(uninterrupted_bcct / name)
        assert ckpt["frozen"] == ["bc.features."]
        assert not [k for k in ckpt["model"] if k.startswith("bc.features.")], name
        assert any(k.startswith("bc.classifier.") for k in ckpt["model"])
    # Loading rebuilds the frozen backbone from the pretrained weights it was trained with:
    # the val numbers (the BC masks' validity among them) come out as training recorded them.
    best = checkpoint.load(uninterrupted_bcct / "best.pt")
    method, _, _ = load_method(str(uninterrupted_bcct / "best.pt"), device="cpu")
    fresh = BCCT(make_tiny_cfg(*STEPS, method="bcct"), 3)
    for k, v in fresh.bc.features.state_dict().items():
        assert torch.equal(method.bc.features.state_dict()[k], v), k
    val = evaluate_checkpoint(str(uninterrupted_bcct / "best.pt"), split="val", progress=False)
    for key in ("top1_loc", "gt_known", "mask_validity", "threshold"):
        assert val[key] == pytest.approx(best["val"]["cam"][key]), key


def _untrained_bcct_checkpoint(cfg, path) -> None:
    """A bcct checkpoint as training writes it, of the untrained method (no training time)."""
    from bcct.train import make_checkpoint

    method = BCCT(cfg, 3)
    opt = torch.optim.SGD(method.param_groups(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    checkpoint.save_atomic(make_checkpoint(method, opt, sched, cfg, 0, ["a", "b", "c"], {}, {}), path)


def test_bc_figure_runs_where_the_method_is(make_tiny_cfg, tmp_path, monkeypatch):
    """``bcct demo`` and bench/bench_real.py load the trained method on CUDA when there is one
    (device=auto); the figure's images and the pretrained backbone must follow it there. The
    meta device stands in for CUDA: every tensor reaching a model is on it (the figure stops
    later, where a meta tensor would have to give numbers)."""
    import bcct.demo as demo

    ckpt = tmp_path / "best.pt"
    _untrained_bcct_checkpoint(make_tiny_cfg(*STEPS, method="bcct"), ckpt)
    demo.bc_figure(ckpt, tmp_path / "cpu.png", n=3)
    assert (tmp_path / "cpu.png").stat().st_size > 0
    load, seen = demo.load_method, []

    def on_meta(path, *args, **kwargs):
        method, cfg, saved = load(path, *args, **kwargs)
        return method.to("meta"), cfg, saved

    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, args: seen.extend(
        a.device.type for a in args if torch.is_tensor(a)))
    monkeypatch.setattr(demo, "load_method", on_meta)
    try:
        with pytest.raises((NotImplementedError, RuntimeError)) as err:
            demo.bc_figure(ckpt, tmp_path / "fig.png", n=3)
    finally:
        hook.remove()
    assert "expected device" not in str(err.value), err.value
    assert len(seen) > 10 and set(seen) == {"meta"}


def test_checkpoints_with_the_frozen_backbone_still_load(uninterrupted_bcct, tmp_path):
    """A checkpoint written before the frozen pieces were left out holds them (random here,
    to see that they are the ones loaded) and no "frozen" entry."""
    from bcct.run import load_method

    ckpt = checkpoint.load(uninterrupted_bcct / "best.pt")
    method, _, _ = load_method(str(uninterrupted_bcct / "best.pt"), device="cpu")
    old = {f"bc.features.{k}": torch.randn_like(v) if v.is_floating_point() else v
           for k, v in method.bc.features.state_dict().items()}
    ckpt["model"] = {**ckpt["model"], **old}
    del ckpt["frozen"]
    checkpoint.save_atomic(ckpt, tmp_path / "old.pt")
    loaded, _, _ = load_method(str(tmp_path / "old.pt"), device="cpu")
    for k, v in old.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_random_frozen_backbone_is_saved(make_tiny_cfg, tmp_path):
    """model.pretrained=none: the BC backbone is random, so nothing could rebuild it; it is saved."""
    from bcct.run import load_method

    run = tmp_path / "run"
    train(make_tiny_cfg("epochs=1", "model.pretrained=none", method="bcct"), run, progress=False)
    ckpt = checkpoint.load(run / "last.pt")
    assert ckpt["frozen"] == [] and any(k.startswith("bc.features.") for k in ckpt["model"])
    method, _, _ = load_method(str(run / "last.pt"), device="cpu")
    for k, v in method.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


# ---------------------------------------------------------------------------------------
# The two-stage loaders: Ctrl-C, and what a spawned worker receives
# ---------------------------------------------------------------------------------------


class _CtrlCInWorkers(torch.utils.data.Dataset):
    """``ds``'s items; a loading worker first sends itself SIGINT, as a Ctrl-C in the terminal
    does to every process of the foreground group."""

    def __init__(self, ds):
        self.ds, self.records = ds, ds.records

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, index):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGINT)
        return self.ds[index]


def _tiny_split(cfg, split: str, transform):
    from bcct.data.dataset import WSOLDataset
    from bcct.data.readers import read_dataset

    return WSOLDataset(read_dataset(cfg.data, seed=cfg.seed).split(split), transform(cfg.data))


def test_ctrl_c_leaves_eval_and_bc_stage_workers_loading(make_tiny_cfg, tiny_data):
    """The evaluation loader (also the mask cache's) and the BC stage's leave Ctrl-C to the main
    process, which stops at a step boundary; a worker killed by it would crash the run."""
    from bcct.data.transforms import test_transform, train_transform
    from bcct.evaluate import make_loader
    from bcct.two_stage import train_bc

    cfg = make_tiny_cfg("data.workers=1", "model.pretrained=none", "bcct.mode=two_stage", "bcct.bc_epochs=1",
                        method="bcct")
    val = _CtrlCInWorkers(_tiny_split(cfg, "val", test_transform))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    try:
        assert sum(len(b["index"]) for b in make_loader(val, cfg)) == len(val)
        stats = train_bc(BCCT(cfg, 3), _CtrlCInWorkers(_tiny_split(cfg, "train", train_transform)),
                         str(tiny_data / "backgrounds"), torch.device("cpu"), progress=False)
    finally:
        signal.signal(signal.SIGINT, before)
    assert stats["bc_epoch"] == 0


def test_mask_cache_reaches_spawned_workers_as_one_tensor(make_tiny_cfg):
    """Under spawn or forkserver (Python 3.14's default) every loading worker unpickles the
    dataset: the two-stage mask cache must cross as one tensor (one shared-memory block),
    not one per image (ILSVRC: 1.28 M of them, a file descriptor each)."""
    import io
    import pickle

    from bcct import distributed
    from bcct.data.transforms import train_transform
    from bcct.two_stage import cache_masks

    cfg = make_tiny_cfg("model.pretrained=none", "bcct.mode=two_stage", method="bcct")
    ds = _tiny_split(cfg, "train", train_transform)
    ds.cached_masks = cache_masks(BCCT(cfg, 3), ds, torch.device("cpu"))
    assert isinstance(ds.cached_masks, torch.Tensor)
    assert ds.cached_masks.shape == (len(ds), 8, 8) and ds.cached_masks.dtype == torch.uint8

    def tensors_sent() -> list:
        """The tensors in what the loader pickles for a worker."""
        found = []

        class Counting(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, torch.Tensor):
                    found.append(tuple(obj.shape))
                    return torch.empty, (0,)
                return NotImplemented

        Counting(io.BytesIO()).dump(distributed.SeededSamples(ds, cfg.seed))
        return found

    with_cache, cache = tensors_sent(), ds.cached_masks
    ds.cached_masks = None
    assert sorted(tensors_sent() + [tuple(cache.shape)]) == sorted(with_cache)
    ds.cached_masks = cache
    assert ds[0]["cached_mask"].shape == (32, 32)

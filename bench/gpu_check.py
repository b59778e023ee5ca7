"""One prepared check for a lent GPU (issue 17): what a researcher with GPUs would hit first,
measured in one run of at most about 6 minutes, every figure into ``DIR/gpu_check.json``.

    python bench/gpu_check.py --out DIR [--sections steps,components,...] [--dry]

Sections (each with its own time cap; a failure or a timeout is recorded as
``"<section>.error"`` and the next section runs):

- ``steps``: CAM and BC-CT (end2end, two_stage) training steps through the training loop
  (``train_one_epoch`` over batches already on the device), VGG-16 at 224 px, batch 32, in
  fp32 / bf16 / fp16: ms a step, images/s, the step's FLOPs counted by torch's FlopCounterMode
  against docs/gpu.md's estimate, peak memory, host syncs a step (CUDA's sync debug mode).
- ``components``: the largest-component step (mask.py's device path) at 224 px and at the
  two-stage cache's resolution: ms, kernels, syncs, equality with scipy.
- ``amp_masks``: BC masks under bf16 / fp16 autocast against fp32 (same inputs): the
  fraction of pixels that agree, masks identical, non-finite maps.
- ``cli``: the command line on a tiny ILSVRC-layout folder: ``bcct train`` (amp=bf16 on
  CUDA, checkpoint_every), ``--resume``, ``bcct eval`` and the demo's BC figure.
- ``loader``: training loader images/s at 4 / 8 / 16 workers on generated 500x375 JPEGs.
- ``cuda_tests``: ``tests/test_cuda.py`` (the tests that skip without a GPU).

``--dry`` runs every section on the CPU with ``small_vgg`` at 64 px, batch 2, in well under
a minute of CPU time (``tests/test_gpu_check.py`` runs it); its figures mean nothing. Its
caps count CPU seconds, not wall-clock ones: a CPU shared with other jobs slows it down
without failing it.
Random-init weights throughout (no download on the lent machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("steps", "components", "amp_masks", "cli", "loader", "cuda_tests")
# docs/gpu.md's FLOP estimate of one training image at 224 px (GMAC x 2): CT training 62.8 GMAC;
# BC-CT end to end adds the BC input gradient (30.7) and half a batch of backgrounds (7.7).
ESTIMATE_GFLOP = {"cam": 2 * 62.8, "bcct_end2end": 2 * 101.2, "bcct_two_stage": 2 * 62.8}


class Settings:
    def __init__(self, dry: bool):
        self.dry = dry
        self.device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
        self.size = 64 if dry else 224
        self.batch = 2 if dry else 32
        self.backbone = "small_vgg" if dry else "vgg16"
        self.steps = 1 if dry else 10
        self.warmup = 0 if dry else 2
        self.amps = ("false",) if dry else ("false", "bf16", "fp16")  # dry: amp_masks runs bf16 and fp16
        # Seconds per section: on a GPU wall-clock (the whole check takes about 6 minutes); dry, CPU
        # seconds of this process, so a CPU shared with other jobs slows the check but never fails it.
        self.cap = 60 if dry else 100
        self.cap_cpu = dry
        self.workers = (0, 1) if dry else (4, 8, 16)


class SectionTimeout(Exception):
    pass


@contextmanager
def time_cap(seconds: int, cpu: bool = False):
    """Raise SectionTimeout in the block after ``seconds`` of wall-clock time, or with ``cpu``
    of this process's CPU time (ITIMER_PROF: user + system, every thread)."""
    which, sig = (signal.ITIMER_PROF, signal.SIGPROF) if cpu else (signal.ITIMER_REAL, signal.SIGALRM)

    def expire(signum, frame):
        raise SectionTimeout(f"over its cap of {seconds} {'CPU ' if cpu else ''}s")

    previous = signal.signal(sig, expire)
    signal.setitimer(which, seconds)
    try:
        yield
    finally:
        signal.setitimer(which, 0)
        signal.signal(sig, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_cfg(s: Settings, method: str, *extra: str):
    from bcct.config import load_config

    cfg = load_config("cub_vgg16_bcct" if method == "bcct" else "cub_vgg16_cam",
                      [f"image_size={s.size}", f"optim.batch_size={s.batch}", f"model.backbone={s.backbone}",
                       "model.pretrained=none", "optim.lr=0.0001", "optim.lr_backbone=0.00001", *extra],
                      method=method)
    cfg.device = s.device.type
    return cfg


# ------------------------------------------------------------------------------------ sections


class FlopCount(TorchDispatchMode):
    """FLOPs of what runs inside, by torch's per-operator formulas (FlopCounterMode's own
    module tracking breaks on the BC map's autograd.grad)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def section_steps(s: Settings, out: dict) -> None:
    from bcct.distributed import TrainingStep
    from bcct.host_syncs import count_host_syncs
    from bcct.mask import mask_codes
    from bcct.meters import Averages
    from bcct.methods import build_method
    from bcct.runtime import memory_format
    from bcct.train import train_one_epoch

    runs = {"cam": ("cam", []), "bcct_end2end": ("bcct", ["bcct.mode=end2end"]),
            "bcct_two_stage": ("bcct", ["bcct.mode=two_stage"])}
    fmt = memory_format(s.device)
    for name, (method_name, extra) in runs.items():
        for amp in s.amps:
            key = f"steps.{name}.{'fp32' if amp == 'false' else amp}"
            try:
                cfg = make_cfg(s, method_name, f"amp={amp}", *extra)
                method = build_method(cfg, 200).to(s.device, memory_format=fmt)
                gen = torch.Generator().manual_seed(0)
                images = torch.randn(s.batch, 3, s.size, s.size, generator=gen).to(s.device)
                batch = {"image": images, "label": torch.randint(200, (s.batch,), generator=gen).to(s.device)}
                if name == "bcct_two_stage":
                    m = torch.zeros(s.batch, s.size, s.size, dtype=torch.bool)
                    m[:, s.size // 4: 3 * s.size // 4, s.size // 4: 3 * s.size // 4] = True
                    batch["cached_mask"] = mask_codes(m, torch.ones(m.shape)).to(s.device)
                bgs = torch.randn(max(1, s.batch // 2), 3, s.size, s.size, generator=gen).to(s.device)
                opt = torch.optim.SGD(method.param_groups(), momentum=0.9)
                scaler = torch.amp.GradScaler(s.device.type, enabled=amp == "fp16")
                step = TrainingStep(method)

                def epoch(n: int) -> None:
                    backgrounds = iter([bgs] * n) if name == "bcct_end2end" else None
                    train_one_epoch(step, method, opt, scaler, [batch] * n, s.device, 0, cfg, Averages(),
                                    backgrounds=backgrounds, progress=False)

                if s.warmup:
                    epoch(s.warmup)  # warm-up (cuDNN algorithm choice, allocator)
                sync(s.device)
                if s.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(s.device)
                t0 = time.perf_counter()
                with count_host_syncs(cuda=s.device.type == "cuda") as n:
                    epoch(s.steps)
                    sync(s.device)
                if not s.dry:  # timed apart: the sync debug mode slows a step down (dry: the counted epoch)
                    t0 = time.perf_counter()
                    epoch(s.steps)
                    sync(s.device)
                ms = max(1000 * (time.perf_counter() - t0) / s.steps, 1e-6)
                flops = FlopCount()
                with flops:
                    epoch(1)
                gflop = flops.total / 1e9 / s.batch
                out[f"{key}.ms_per_step"] = round(ms, 2)
                out[f"{key}.images_per_s"] = round(1000 * s.batch / ms, 1)
                out[f"{key}.gflop_per_image_counted"] = round(gflop, 2)
                out[f"{key}.gflop_per_image_estimate"] = ESTIMATE_GFLOP[name] * (s.size / 224) ** 2
                out[f"{key}.tflops_achieved"] = round(gflop * s.batch / ms, 2)
                out[f"{key}.host_syncs_per_step"] = round(n["total"] / s.steps, 2)  # with the epoch end's reads
                if s.device.type == "cuda":
                    out[f"{key}.peak_memory_gb"] = round(torch.cuda.max_memory_allocated(s.device) / 2**30, 2)
                del method, opt
            except SectionTimeout:
                raise
            except Exception as exc:  # noqa: BLE001 - one entry per failing run, the rest go on
                out[f"{key}.error"] = f"{type(exc).__name__}: {exc}"[:500]
            if s.device.type == "cuda":
                torch.cuda.empty_cache()


def blobs(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Smooth random masks (a blurred noise field cut at its 60th percentile)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((n, side, side)), (0, side / 16, side / 16))
    return torch.from_numpy(field > np.quantile(field, 0.6, axis=(1, 2), keepdims=True))


def section_components(s: Settings, out: dict) -> None:
    from bcct.host_syncs import count_host_syncs
    from bcct.mask import _largest_component_propagation, _largest_component_scipy

    class Kernels(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Kernels.n += 1
            return func(*args, **(kwargs or {}))

    from bcct.two_stage import CACHE_REDUCTION

    for side in (s.size, s.size // CACHE_REDUCTION):
        key = f"components.{side}px"
        masks = blobs(s.batch, side)
        dev = masks.to(s.device)
        _largest_component_propagation(dev)
        sync(s.device)
        t0 = time.perf_counter()
        for _ in range(5):
            got = _largest_component_propagation(dev)
        sync(s.device)
        out[f"{key}.ms"] = round(1000 * (time.perf_counter() - t0) / 5, 3)
        Kernels.n = 0
        with Kernels():
            _largest_component_propagation(dev)
        out[f"{key}.kernels"] = Kernels.n
        with count_host_syncs(cuda=s.device.type == "cuda") as n:
            _largest_component_propagation(dev)
            if s.device.type == "cuda":
                torch.cuda.synchronize()
        out[f"{key}.host_syncs"] = n["total"] - (1 if s.device.type == "cuda" else 0)
        out[f"{key}.equal_to_scipy"] = bool(torch.equal(got.cpu(), _largest_component_scipy(masks)))


def section_amp_masks(s: Settings, out: dict) -> None:
    from bcct.methods import build_method

    for map_name in ("gradcam", "input_gradient"):
        cfg = make_cfg(s, "bcct", f"bcct.map={map_name}")
        method = build_method(cfg, 200).to(s.device).eval()
        images = torch.randn(s.batch, 3, s.size, s.size, generator=torch.Generator().manual_seed(1)).to(s.device)
        ref_maps = method.gradient_maps(images)[0]
        ref = method.masks(ref_maps)[0]
        for amp in ("bf16", "fp16"):
            dtype = torch.bfloat16 if amp == "bf16" else torch.float16
            key = f"amp_masks.{map_name}.{amp}"
            with torch.autocast(s.device.type, dtype=dtype):
                maps = method.gradient_maps(images)[0]
                m = method.masks(maps)[0]
            out[f"{key}.pixel_agreement"] = round(float((m == ref).float().mean()), 5)
            out[f"{key}.identical_masks"] = int((m == ref).flatten(1).all(1).sum())
            out[f"{key}.nonfinite_maps"] = int((~torch.isfinite(maps)).flatten(1).any(1).sum())
            out[f"{key}.max_map_difference"] = round(float((maps.detach().float() - ref_maps.detach()).abs().max()), 5)


def tiny_ilsvrc(root: Path, per_class: int, size: tuple[int, int], classes: int = 3) -> Path:
    """A tiny ImageNet layout (train/<wnid>/, val/, val_boxes/*.xml) and a backgrounds/ folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    wnids = [f"n0{i:07d}" for i in range(classes)]

    def jpeg(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=85)

    for wnid in wnids:
        for j in range(per_class):
            jpeg(root / "train" / wnid / f"{wnid}_{j}.JPEG")
    (root / "val_boxes").mkdir(parents=True, exist_ok=True)
    for i in range(1, classes * max(2, per_class // 2) + 1):
        name, wnid = f"ILSVRC2012_val_{i:08d}", wnids[i % classes]
        jpeg(root / "val" / f"{name}.JPEG")
        box = (4, 4, size[0] // 2, size[1] // 2)
        (root / "val_boxes" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size><object><name>{wnid}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
            f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>\n")
    for j in range(4):
        jpeg(root / "backgrounds" / f"bg{j}.jpg")
    return root


def section_cli(s: Settings, out: dict, work: Path) -> None:
    from bcct.cli import main as cli_main
    from bcct.demo import bc_figure

    data = tiny_ilsvrc(work / "ilsvrc", per_class=4 if s.dry else 16, size=(80, 64) if s.dry else (320, 240))
    run = work / "run"
    amp = "bf16" if s.device.type == "cuda" else "false"
    common = ["--config", "ilsvrc_vgg16_bcct", "--data", str(data), "--backgrounds", str(data / "backgrounds"), "--quiet"]
    over = [f"image_size={s.size}", f"model.backbone={s.backbone}", "model.pretrained=none", f"amp={amp}",
            "optim.batch_size=4", "optim.checkpoint_every=1", "data.workers=0", "eval.batch_size=8",
            "data.val_fraction=0.5", f"device={s.device.type}"]
    commands = {
        "train": ["train", *common, "--out", str(run), *over, "epochs=1"],
        "resume": ["train", *common, "--resume", str(run), *over, "epochs=2"],
        "eval": ["eval", "--checkpoint", str(run / "best.pt"), "--split", "test", "--json", str(work / "test.json")],
    }
    for name, args in commands.items():  # in this process: `bcct ...` is cli.main (no second torch import)
        t0 = time.perf_counter()
        err = io.StringIO()
        with redirect_stderr(err):
            rc = cli_main(args)
        out[f"cli.{name}.seconds"] = round(time.perf_counter() - t0, 1)
        out[f"cli.{name}.ok"] = rc == 0
        if rc:
            out[f"cli.{name}.error"] = err.getvalue()[-500:]
            return
    out["cli.resume.epochs_logged"] = len((run / "metrics.jsonl").read_text().splitlines())
    t0 = time.perf_counter()
    bc_figure(run / "best.pt", work / "bc_masks.png", n=2)  # the demo's figure after training
    out["cli.demo_figure.seconds"] = round(time.perf_counter() - t0, 1)
    out["cli.demo_figure.ok"] = (work / "bc_masks.png").is_file()


def section_loader(s: Settings, out: dict, work: Path) -> None:
    from torch.utils.data import DataLoader

    from bcct.config import load_config
    from bcct.data.dataset import WSOLDataset, collate
    from bcct.data.readers import read_dataset
    from bcct.data.transforms import train_transform

    data = work / "loader"
    if not data.is_dir():
        tiny_ilsvrc(data, per_class=4 if s.dry else 128, size=(96, 72) if s.dry else (500, 375))
    cfg = load_config("ilsvrc_vgg16_bcct", [f"image_size={s.size}", "data.val_fraction=0.5"])
    cfg.data.root = str(data)
    ds = WSOLDataset(read_dataset(cfg.data).split("train"), train_transform(cfg.data))
    for workers in s.workers:
        loader = DataLoader(ds, batch_size=s.batch, shuffle=True, num_workers=workers, collate_fn=collate,
                            drop_last=True)
        it = iter(loader)
        next(it)  # workers started
        t0, n = time.perf_counter(), 0
        for batch in it:
            n += len(batch["image"])
        out[f"loader.workers_{workers}.images_per_s"] = round(n / max(time.perf_counter() - t0, 1e-9), 1)


def section_cuda_tests(s: Settings, out: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,  # dry's CPU cap does not see a child
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT / "tests")))
    summary = [line for line in done.stdout.splitlines() if " in " in line and ("passed" in line or "skipped" in line
                                                                              or "failed" in line or "error" in line)]
    out["cuda_tests.summary"] = summary[-1].strip("= ") if summary else done.stdout[-300:]
    out["cuda_tests.ok"] = done.returncode == 0
    if done.returncode:
        out["cuda_tests.error"] = done.stdout[-1500:]


# ------------------------------------------------------------------------------------ main


def preload() -> None:
    """Import everything the sections use before any time cap runs: a cap that fired inside
    an import would leave a half-imported module for the next sections."""
    import bcct.cli  # noqa: F401
    import bcct.demo  # noqa: F401
    import bcct.host_syncs  # noqa: F401
    import bcct.train  # noqa: F401
    import bcct.two_stage  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="writes OUT/gpu_check.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--dry", action="store_true", help="every section on the CPU, tiny (small_vgg, 64 px, batch 2)")
    args = parser.parse_args(argv)
    chosen = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    s = Settings(args.dry)
    if s.dry:
        torch.set_num_threads(1)
    preload()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name() if s.device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "dry": s.dry}
    if s.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runners = {"steps": lambda: section_steps(s, result), "components": lambda: section_components(s, result),
               "amp_masks": lambda: section_amp_masks(s, result), "cli": lambda: section_cli(s, result, work),
               "loader": lambda: section_loader(s, result, work), "cuda_tests": lambda: section_cuda_tests(s, result)}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for name in chosen:
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                with time_cap(s.cap, cpu=s.cap_cpu):
                    runners[name]()
            except Exception as exc:  # noqa: BLE001 - a failing section is recorded, the next one runs
                result[f"{name}.error"] = f"{type(exc).__name__}: {exc}"[:500]
                result[f"{name}.traceback"] = traceback.format_exc()[-1500:]
            result[f"{name}.seconds"] = round(time.perf_counter() - t0, 1)
            result[f"{name}.cpu_seconds"] = round(time.process_time() - cpu0, 1)  # this process's, not its children's
            (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1, sort_keys=True))
            print(f"[gpu_check] {name}: {result[f'{name}.seconds']} s ({result[f'{name}.cpu_seconds']} CPU s)"
                  + (" ERROR" if f"{name}.error" in result else ""), flush=True)
    errors = [k for k in result if k.endswith(".error")]
    print(f"[gpu_check] wrote {out_dir / 'gpu_check.json'}; {len(errors)} error(s)", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a run executes: the device, random seeds, mixed precision, memory layout, the
weights cache, and stopping cleanly on Ctrl-C. Knows no model, data set or method."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from bcct import distributed
from bcct.errors import BadInput


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device={name} asked for but CUDA is not available; use device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where bcct keeps derived weights (the stand-in pretraining): $BCCT_CACHE or ~/.cache/bcct."""
    return Path(os.environ.get("BCCT_CACHE", Path.home() / ".cache" / "bcct"))


AMP = {"false": None, "off": None, "none": None, "no": None, "0": None, "": None,
       "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
AUTO = "auto"  # bf16 where the device computes it natively, else full precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a GPU that supports it (Ampere on), a CPU
    with AMX or AVX512-BF16 (elsewhere a CPU emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own probes
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def amp_dtype(value, device: torch.device | None = None) -> torch.dtype | None:
    """``amp`` config value -> autocast dtype (None: full precision). ``auto`` is bf16 on a
    ``device`` with native bf16 (:func:`native_bf16`), else full precision; without a device
    the value is only checked."""
    key = str(value).strip().lower()
    if key == AUTO:
        return torch.bfloat16 if device is not None and native_bf16(device) else None
    if key not in AMP:
        raise BadInput(f"amp={value}: use false, auto (bf16 where the device has it natively), bf16 (A100/H100 "
                       "GPUs, CPUs with AMX) or fp16 (older GPUs; with loss scaling)")
    return AMP[key]


def precision(amp, device: torch.device) -> str:
    """What ``amp`` means on ``device``, in words, for the run's first line."""
    dtype = amp_dtype(amp, device)
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    if str(amp).strip().lower() == AUTO:
        has = "has" if dtype is not None else "has no"
        return f"{name} (amp=auto: this {device.type.upper()} {has} native bf16)"
    return name


def autocast(amp, device: torch.device):
    """Mixed precision for the training step (evaluation stays in full precision)."""
    dtype = amp_dtype(amp, device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor-core convolutions) and on CPU (oneDNN's own layout: a
    cub_cpu step of EfficientNet-Lite0 took 0.91x the time in fp32 and 0.91x in bf16,
    bench/profile_epoch.py); the plain layout elsewhere."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format


def tune_kernels(device: torch.device) -> None:
    """cuDNN autotuning on CUDA (``cudnn.benchmark``): every batch has the same image size, so
    the fastest convolution algorithms, timed once at the first step, serve the whole run.
    On CPU, freed activation memory is kept for the next batch (:func:`keep_freed_memory`)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()


_MALLOPT = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}  # glibc's malloc.h
_KEEP_BYTES = (1 << 31) - 1  # the largest value mallopt takes (an int)


def keep_freed_memory() -> bool:
    """glibc serves every block above its mmap threshold (at most 32 MB by default) with a
    fresh mapping and unmaps it on free, so a CPU forward pass whose activations are larger
    (a batch of 64 at 352 px: ~250 MB a tensor) gets new pages for every batch, which the
    kernel zero-fills one 4 KiB fault at a time. Measured on cub_dev's 150 val images read at
    three sides (``eval.scales``; 2 cores): 49 million page faults, 120 of the 191 CPU-seconds
    in the kernel, 105 s; with blocks up to 2 GiB taken from (and freed back to) the heap and
    the heap not trimmed below 2 GiB: 3.6 million faults, 11 s in the kernel, 33 s. Returns
    whether glibc took the settings (False elsewhere: nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(option, _KEEP_BYTES) == 1 for option in _MALLOPT.values())
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``), which
    :func:`keep_freed_memory` otherwise keeps for good. Called when a training run or an
    evaluation ends, so that one process that trains and evaluates run after run (``bcct
    table``, ``bench/bench_real.py``) starts each from what it holds, not from every earlier
    run's high-water mark (a third BC-CT run in one process was killed for memory at 13 GB
    without it). Returns whether glibc released anything (False elsewhere)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def ignore_sigint(worker_id: int) -> None:
    """Data-loading workers leave Ctrl-C to the main process, which stops at a step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class GracefulStop:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next step boundary, where it
    writes last.pt; a second Ctrl-C stops at once. Only in the main thread."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if distributed.is_main():
            print("stopping after this step; last.pt keeps it (Ctrl-C again: stop now)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

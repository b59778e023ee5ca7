"""Counting host syncs: the points where the CPU waits for the device (a ``.item()``, a
boolean mask index, a collective's result), each of which keeps the CPU from queueing work
ahead of a GPU. Used by tests on the CPU and by ``bench/gpu_check.py`` on a GPU.

On CUDA, :func:`count_host_syncs` counts what ``torch.cuda.set_sync_debug_mode("warn")``
reports. On the CPU nothing waits, so it counts the calls that would wait on a device: the
tensor-to-Python reads (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``numpy``),
``torch.equal``, ``nonzero`` and indexing with a boolean mask; and, on either, the
``torch.distributed`` collectives called from Python (each one a sync for the caller).
"""

from __future__ import annotations

import warnings
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "nonzero")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "gather_object", "broadcast",
               "broadcast_object_list", "barrier", "reduce", "gather", "all_gather_into_tensor")


@contextmanager
def count_host_syncs(cuda: bool | None = None):
    """``with count_host_syncs() as n: ...``; then ``n["total"]``, ``n["collectives"]`` and a
    count per kind (``n["item"]``, ``n["cuda"]``, ...). ``cuda``: count with CUDA's sync
    debug mode (default: when CUDA is available)."""
    counts: Counter = Counter()
    cuda = torch.cuda.is_available() if cuda is None else cuda
    saved: list[tuple[object, str, object]] = []

    def patch(owner, name: str, key: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, counted)

    for name in COLLECTIVES:
        if hasattr(dist, name):
            patch(dist, name, "collectives")
    if not cuda:
        for name in READS:
            patch(torch.Tensor, name, name.strip("_"))
        patch(torch, "equal", "equal")
        patch(torch, "nonzero", "nonzero")
        # Boolean-mask indexing (a sync on CUDA) is not counted on the CPU: patching
        # Tensor.__getitem__ and removing the patch leaves 0-d tensors looking like sequences
        # to CPython (the sequence slot stays set), which breaks torch.tensor([...]) later.
    try:
        if cuda:
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    yield counts
                finally:
                    torch.cuda.set_sync_debug_mode(previous)
            counts["cuda"] += sum("synchroniz" in str(w.message) for w in caught)
        else:
            yield counts
    finally:
        for owner, name, original in reversed(saved):
            if original is None:  # inherited (e.g. from torch._C.TensorBase): remove the patch
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        counts["total"] = sum(v for k, v in counts.items() if k != "total")

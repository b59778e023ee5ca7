"""Checkpoints: one dict (as in torchvision's references), written atomically, read weights-only."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from bcct.errors import BadInput
from bcct.files import write_text_atomic  # noqa: F401  (re-exported: its callers import it from here)

FORMAT = "bcct-checkpoint-1"


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BackgroundWriter:
    """:func:`save_atomic` in a background thread, so training goes on while a checkpoint
    (350 MB for VGG-16 BC-CT, fsync'd) is written. ``save`` waits for the previous write
    (one at a time), copies every tensor to the CPU (later steps cannot change what is
    written), then returns; ``wait`` blocks until the last write is done and raises its
    error, if any."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, obj: dict, path: str | Path) -> None:
        self.wait()
        obj = _on_cpu(obj)

        def write() -> None:
            try:
                save_atomic(obj, path)
            except BaseException as exc:  # noqa: BLE001 - raised by wait() in the training thread
                self._error = exc

        self._thread = threading.Thread(target=write, name="bcct-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _on_cpu(obj):
    """A copy of ``obj`` whose tensors are CPU copies (dicts, lists and tuples followed)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def load(path: str | Path) -> dict:
    """Load a bcct checkpoint with ``weights_only=True``: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: checkpoint not found; pass a RUNDIR/best.pt or last.pt written by `bcct train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise BadInput(
            f"{path}: refused by weights-only loading ({first}); it is not a bcct checkpoint "
            "(or it would run code when loaded); use a file written by `bcct train`"
        ) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/runtime errors all mean "not a checkpoint"
        raise BadInput(f"{path}: not a readable checkpoint ({type(exc).__name__}); use a file written by `bcct train`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BadInput(f"{path}: not a bcct checkpoint (no '{FORMAT}' marker); use a file written by `bcct train`")
    return ckpt


def rng_state() -> dict:
    """This process's random states (torch CPU and current CUDA device, Python, numpy) as
    tensors, ints and floats only, so that weights-only loading can read them back."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(mt),
        "python_gauss": gauss,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (older checkpoints hold only ``torch`` and ``python``)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state.get("python_gauss")))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def trained_state(method) -> dict:
    """``method.state_dict()`` without its frozen pieces (``method.frozen`` prefixes: e.g. the
    BC backbone, which the pretrained weights hold already)."""
    frozen = tuple(getattr(method, "frozen", ()))
    return {k: v for k, v in method.state_dict().items() if not (frozen and k.startswith(frozen))}


def load_trained_state(method, state: dict) -> None:
    """Load a checkpoint's ``model`` into ``method``: every key but the frozen ones must be
    there (a checkpoint written before they were left out holds them too, and they load)."""
    frozen = tuple(getattr(method, "frozen", ()))
    missing, unexpected = method.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (frozen and k.startswith(frozen))]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")

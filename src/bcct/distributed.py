"""Several processes, one run: torchrun, DistributedDataParallel (DDP), and samplers that
make an epoch the same whatever the number of processes, data-loading workers or restarts.

    torchrun --standalone --nproc_per_node=8 -m bcct train --config ilsvrc_vgg16_bcct ...

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`process_group` joins the
group from them (nccl on CUDA, gloo on CPU). Without them every helper here acts as for one
process, so the training loop has a single code path.

Choices (each one line in the loop, explained here):

- **What DDP wraps**: :class:`TrainingStep`, a module whose ``forward`` is
  ``method.training_step``. DDP registers only parameters that require gradients, so the
  frozen BC backbone is carried along but never synchronised, and any method works however
  its step calls its pieces (``self.model(...)``, ``self.bc.classify(...)``, ...). The method
  itself is not replaced, so checkpoint keys are those of one process.
- **find_unused_parameters**: only for a method whose steps may leave trainable parameters
  without a gradient (``Method.find_unused_parameters``: BC-CT's mask branch during
  warm-up, its BC classifier in two-stage mode); elsewhere DDP skips that graph walk.
- **BatchNorm**: converted to SyncBatchNorm on CUDA when there are several processes, so
  statistics are those of the global batch, as in one process (frozen layers stay in eval
  mode: they are found by their frozen parameters, which the conversion keeps). PyTorch's
  SyncBatchNorm has no CPU kernel: on CPU (gloo) each process normalises with its own share
  of the batch.
- **Batch size**: ``optim.batch_size`` is the global batch; each process takes
  ``batch_size / world_size``, so the optimisation sees the same batches as one process.
  BC-CT's background images come from one stream of draws for the run (fixed by the seed),
  of which each process takes its share of every global batch: together they draw what
  one process would.
- **Two-stage BC training** (``bcct.mode=two_stage``) runs in step on every process: each
  takes its share of the global batch (targets and backgrounds) and the classifier's
  gradients are averaged, so the steps are one process's; rank 0's BC weights are then
  broadcast (identical even where GPU kernels are not bit-deterministic). The mask cache
  (one uint8 tensor) is computed in shares (``shard_batches``), each process filling its
  rows, and summed over processes in chunks (``sum_shares``).
- **A non-finite loss** on any process stops every process at the same step with the same
  message, naming the step it happened at: each process notes its first one on the device
  (no host sync) and all read them together every ``optim.log_every`` steps, before a save
  and at the epoch end (a process that stopped alone would leave the others waiting in the
  gradient all-reduce). A stop request (Ctrl-C, SIGTERM) is agreed on at the same reads.
- **Evaluation** is sharded by whole batches and gathered to rank 0 (bcct.evaluate), so
  its numbers equal one process's exactly; rank 0 broadcasts them.
- **Only rank 0 writes** files and prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Sampler

from bcct.errors import BadInput

# ---------------------------------------------------------------------------- process group


def rank() -> int:
    """This process's rank in the process group; 0 without one, whatever ``RANK`` the
    environment holds (cluster launchers and notebooks export it outside torchrun)."""
    return dist.get_rank() if _joined() else 0


def launcher_rank() -> int:
    """The rank torchrun gave this process (its ``RANK`` when its ``WORLD_SIZE`` > 1), group
    joined or not: who prints once the group is left. 0 for a lone process."""
    return int(os.environ.get("RANK", 0)) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else 0


def world_size() -> int:
    return dist.get_world_size() if _joined() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def is_distributed() -> bool:
    return _joined() and dist.get_world_size() > 1


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def per_process_batch(batch_size: int, world: int) -> int:
    """``optim.batch_size`` is the global batch, split evenly over the processes."""
    if batch_size % world:
        raise BadInput(f"optim.batch_size={batch_size} is the global batch and must divide evenly over "
                       f"{world} processes; choose a multiple of {world}")
    return batch_size // world


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return torch.device("cuda", local_rank())
    return device


@contextmanager
def process_group(device: torch.device):
    """Join torchrun's process group for the block (nccl on CUDA, gloo on CPU), then leave
    it. A no-op for one process, or when the caller has joined a group already."""
    join = not _joined() and int(os.environ.get("WORLD_SIZE", 1)) > 1
    if join:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if join:
            dist.destroy_process_group()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. downloads weights into the cache), then the first
    process of every other node (``LOCAL_RANK`` 0), then the rest, who find the result
    cached: once in all where the nodes share the cache folder, once per node where each
    has its own, and never two processes writing one file at once."""
    if not is_distributed():
        yield
        return
    turn = 0 if is_main() else 1 if local_rank() == 0 else 2
    for _ in range(turn):
        dist.barrier()
    yield
    for _ in range(turn, 2):
        dist.barrier()


# ---------------------------------------------------------------------------- model


class TrainingStep(nn.Module):
    """``forward(batch)`` = ``method.training_step(batch)``: the module DDP wraps, so the
    gradients of whatever the step trains are averaged across processes."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: dict):
        return self.method.training_step(batch)


def wrap(method: nn.Module, device: torch.device) -> nn.Module:
    """The callable the loop trains through: DDP over :class:`TrainingStep` when several
    processes run (its construction broadcasts rank 0's weights), else the step itself.
    ``method.find_unused_parameters`` says whether a step may leave trainable parameters
    without a gradient (DDP then searches the graph for them every step)."""
    step = TrainingStep(method)
    if not is_distributed():
        return step
    ids = [device.index] if device.type == "cuda" else None
    unused = bool(getattr(method, "find_unused_parameters", False))
    return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=unused)


def average_gradients(params) -> None:
    """Average the ``.grad`` of ``params`` over processes in place (a training loop outside
    DDP, e.g. two-stage BC-CT's BC stage): each process's step then equals one process's step
    on the global batch."""
    if not is_distributed():
        return
    world = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm across processes on CUDA (no CPU kernel exists; see the module doc)."""
    if is_distributed() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def broadcast_state(module: nn.Module) -> None:
    """Every tensor of ``module.state_dict()`` from rank 0, in place: e.g. BatchNorm running
    statistics, which each process updates from its own share of the last batch."""
    if is_distributed():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


# ---------------------------------------------------------------------------- communication


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_rows(row: torch.Tensor) -> list[list[float]]:
    """Every process's 1-D ``row`` (float64, the same length everywhere) in rank order, on
    every process: one collective and one host sync in all."""
    if not is_distributed():
        return [row.tolist()]
    row = row.to(_comm_device(), torch.float64)
    parts = [torch.zeros_like(row) for _ in range(world_size())]
    dist.all_gather(parts, row)
    return torch.stack(parts).tolist()


def gather_objects(obj) -> list | None:
    """Every process's ``obj`` in rank order on rank 0 (``None`` on the others)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sum over processes (float64)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_shares(t: torch.Tensor, chunk_bytes: int = 64 * 2**20) -> None:
    """In place: ``t`` summed over processes, where each process filled its own rows and left
    zeros elsewhere (e.g. the two-stage mask cache), so every process ends with all rows. In
    chunks of ``chunk_bytes`` through the communication device: nothing is pickled (unlike
    ``all_gather_object``) and at most one chunk is held on the GPU."""
    if not is_distributed():
        return
    flat = t.view(-1)
    step = max(1, chunk_bytes // flat.element_size())
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step].to(_comm_device())
        dist.all_reduce(part)
        flat[start:start + step] = part.to(flat.device)


def any_rank(flag: bool) -> bool:
    """True on every process when it is True on one (e.g. a stop request)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------------------- sampling


def sample_seed(*key: int) -> int:
    """A 64-bit seed from non-negative integers (numpy's SeedSequence: well mixed)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0])


class SeededSamples(Dataset):
    """``dataset[(*key, index)]`` = ``dataset[index]`` with torch's CPU random generator
    seeded from ``(seed, *key, index)`` for the call (and restored after it).

    The random augmentation of a sample then depends on its key only (e.g. its epoch and
    index), not on which process or worker loads it nor on what was loaded before: an epoch
    is the same with 1 or N processes, 0 or N workers, and after a resume mid-epoch.
    (torchvision's transforms v2 draw from torch's generator.)"""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed(self.seed, *key))
            return self.dataset[key[-1]]


class EpochSampler(DistributedSampler):
    """This process's share of the epoch's shuffle, as ``(epoch, index)`` keys for
    :class:`SeededSamples`.

    The order is DistributedSampler's (a permutation seeded from ``seed + epoch``, padded so
    every process has as many samples; process r takes every world_size-th from r). Step k's
    batches of all processes together are then samples ``[k B, (k+1) B)`` of the permutation,
    with B the global batch: one process's step k. ``set_epoch(epoch, skip_batches)`` skips
    the batches a resumed run has done, without loading them."""

    def __init__(self, dataset: Dataset, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, index in enumerate(super().__iter__()):
            if i >= self.skip:
                yield self.epoch, index

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


class Draws(Sampler):
    """Endless draws with replacement from ``n`` items, fixed by ``key`` (e.g. seed), as
    ``(*key, draw number, index)`` keys for :class:`SeededSamples`; the first ``skip`` draws
    are passed over without loading anything (a resumed run). ``shard`` = (rank, world,
    batch): of every run of ``world * batch`` draws (a global batch) this process takes its
    ``batch``, so the processes together draw what one process would."""

    def __init__(self, n: int, key: tuple[int, ...], skip: int = 0, shard: tuple[int, int, int] = (0, 1, 1)):
        self.n, self.key, self.skip = n, tuple(key), skip
        self.rank, self.world, self.batch = shard

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        gen = torch.Generator().manual_seed(sample_seed(*self.key))
        j = 0
        while True:
            for index in torch.randint(self.n, (4096,), generator=gen).tolist():
                if j >= self.skip and (j // self.batch) % self.world == self.rank:
                    yield (*self.key, j, index)
                j += 1


def shard_batches(n: int, batch_size: int) -> list[list[int]]:
    """This process's evaluation batches: ``range(n)`` cut into runs of ``batch_size``,
    batch b going to rank ``b % world_size``. Every batch is one a single process would
    run (same images, same size), so per-image outputs are the same bit for bit; nothing is
    padded, so no image is counted twice."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[rank()::world_size()]

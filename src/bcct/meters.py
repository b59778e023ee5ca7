"""Running means of the per-step training logs, averaged over every process."""

from __future__ import annotations

import torch

from bcct import distributed


class Averages:
    """Running means of the per-step logs; ``reduced()`` averages over processes too.

    Logs may be floats or 0-d tensors on the device: tensors are summed where they are and
    read back in one go by ``flush()`` (one host sync, as torchvision's ``MetricLogger``
    reads every ``print_freq`` steps), so a step never waits for the GPU to log."""

    def __init__(self, state: dict | None = None):
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.n = state["n"] if state else 0
        self._pending: dict[str, torch.Tensor] = {}  # device sums not yet read back

    def update(self, logs: dict) -> None:
        for k, v in logs.items():
            if torch.is_tensor(v):
                v = v.detach().double()  # float64: the same sums however the reads fall (resume)
                self._pending[k] = self._pending[k] + v if k in self._pending else v
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def flush(self) -> None:
        """Read the device sums back into ``sums`` (one host sync when any are pending)."""
        if not self._pending:
            return
        keys = list(self._pending)
        values = torch.stack([self._pending[k].to(self._pending[keys[0]].device) for k in keys]).tolist()
        for k, v in zip(keys, values):
            self.sums[k] = self.sums.get(k, 0.0) + v
        self._pending = {}

    def mean(self, key: str) -> float:
        self.flush()
        return self.sums.get(key, float("nan")) / max(self.n, 1)

    def state(self) -> dict:
        self.flush()
        return {"sums": dict(self.sums), "n": self.n}

    def reduced(self) -> dict:
        self.flush()
        keys = list(self.sums)
        n, *sums = distributed.all_sum([self.n] + [self.sums[k] for k in keys])
        return {k: s / max(n, 1) for k, s in zip(keys, sums)}

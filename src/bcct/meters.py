"""Running means of the per-step training logs, averaged over every process."""

from __future__ import annotations

from bcct import distributed


class Averages:
    """Running means of the per-step logs; ``reduced()`` averages over processes too."""

    def __init__(self, state: dict | None = None):
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.n = state["n"] if state else 0

    def update(self, logs: dict) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def state(self) -> dict:
        return {"sums": dict(self.sums), "n": self.n}

    def reduced(self) -> dict:
        keys = list(self.sums)
        n, *sums = distributed.all_sum([self.n] + [self.sums[k] for k in keys])
        return {k: s / max(n, 1) for k, s in zip(keys, sums)}

"""The largest connected part on the device (issue 17, defect 5): a fixed number of rounds
whatever the shape, no host sync, the same parts as scipy. Counted (kernel calls through a
dispatch mode, syncs through :func:`bcct.host_syncs.count_host_syncs`), never timed; the
agreement with scipy on random masks is in ``tests/test_bcct.py``."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils._python_dispatch import TorchDispatchMode

from bcct.host_syncs import count_host_syncs
from bcct.mask import _largest_component_propagation, _largest_component_scipy, component_labels

SIDE = 48


class KernelCalls(TorchDispatchMode):
    """Counts the aten operators run (one kernel launch each on a GPU)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def spiral(side: int = SIDE) -> np.ndarray:
    """A one-pixel-wide square spiral with one-pixel gaps: its geodesic length is about
    side^2 / 2, the worst case for label propagation."""
    m = np.zeros((side, side), bool)
    top, left, bottom, right = 0, 0, side - 1, side - 1
    while top <= bottom and left <= right:
        m[top, left:right + 1] = True
        m[top:bottom + 1, right] = True
        if top + 2 <= bottom:
            m[bottom, left:right + 1] = True
        if left + 2 <= right and top + 2 <= bottom:
            m[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            m[top - 1, left] = True  # the link into the next turn
    return m


def comb(side: int = SIDE) -> np.ndarray:
    """A spine with one-pixel teeth: many parts that touch one part only."""
    m = np.zeros((side, side), bool)
    m[0, :] = True
    m[1:, ::2] = True
    m[side // 2, 1::4] = True  # some teeth joined
    return m


def blob(side: int = SIDE) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    return (yy - side / 2) ** 2 + (xx - side / 3) ** 2 < (side / 4) ** 2


def _kernels(mask: np.ndarray) -> int:
    with KernelCalls() as k:
        _largest_component_propagation(torch.from_numpy(mask)[None])
    return sum(k.calls.values())


def test_cost_does_not_grow_with_the_length_of_the_part():
    """Label propagation ran one round per pixel of geodesic length (the spiral: hundreds);
    the fixed-round labelling runs the same kernels for any mask of a size."""
    shapes = [blob(), spiral(), comb(), np.zeros((SIDE, SIDE), bool)]
    counts = [_kernels(m) for m in shapes]
    assert len(set(counts)) == 1, counts


@pytest.mark.parametrize("connectivity", [8, 4])
def test_winding_parts_match_scipy(connectivity):
    structure = np.ones((3, 3), int) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    for m in (spiral(), comb(), spiral(31), np.ascontiguousarray(comb(33)[:, ::-1]), blob() | spiral()):
        ref, n = ndimage.label(m, structure=structure)
        labels = component_labels(torch.from_numpy(m)[None], connectivity)[0].numpy()
        assert len(np.unique(labels[m])) == n
        flat = np.arange(m.size).reshape(m.shape)
        for k in range(1, n + 1):
            assert set(np.unique(labels[ref == k])) == {flat[ref == k].max()}
        got = _largest_component_propagation(torch.from_numpy(m)[None], connectivity)
        assert torch.equal(got, _largest_component_scipy(torch.from_numpy(m)[None], connectivity))


def test_device_path_never_waits_for_the_device():
    masks = torch.from_numpy(np.stack([blob(), spiral(), comb()]))
    with count_host_syncs(cuda=False) as n:
        _largest_component_propagation(masks)
    assert n["total"] == 0, dict(n)

"""Maps read off a frozen ImageNet backbone's feature map with no training and no labels:
the floor that every learned localizer is measured against.

- ``feature_norm``: the L2 norm over channels at every position. An ImageNet network's
  features are strong where an object is (the premise of CAM-free readings such as
  CAM-Back-Again's feature norm and PC1 baselines).
- ``pc1``: per image, the features' first principal component over positions (the
  projection of the centred features; sign chosen to agree with the norm).
- ``ddt``: Deep Descriptor Transforming (Wei et al., PR 2019): one PCA over the training
  images' descriptors; the projection on its first component, centred on their mean, marks
  what the set has in common.

Every map is [B,h,w] at the feature resolution; ``flip`` averages it with the map of the
mirrored image (test-time augmentation). The evaluator normalises and resizes maps itself.
"""

from __future__ import annotations

import torch


def feature_norm(feats: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,h,w]: L2 norm over channels."""
    return feats.float().norm(dim=1)


def _oriented(proj: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Flip the sign of each [h,w] projection so that it correlates positively with the
    feature norm: a principal component has no sign of its own."""
    norm = feature_norm(feats).flatten(1)
    p = proj.flatten(1)
    corr = ((p - p.mean(1, keepdim=True)) * (norm - norm.mean(1, keepdim=True))).sum(1)
    sign = torch.where(corr < 0, -1.0, 1.0).to(proj.dtype)
    return proj * sign[:, None, None]


def pc1(feats: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,h,w]: each image's projection on its own first principal component."""
    b, c, h, w = feats.shape
    x = feats.float().flatten(2).transpose(1, 2)  # [B, hw, C]
    x = x - x.mean(1, keepdim=True)
    # the top right-singular vector of the centred [hw, C] matrix is the first component
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ v[:, 0, :, None]).squeeze(-1).view(b, h, w)
    return _oriented(proj, feats)


class DescriptorPCA:
    """DDT's statistics: mean and first principal component of every position's descriptor
    over a set of images, accumulated batch by batch (a C x C scatter matrix)."""

    def __init__(self, channels: int):
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.scatter = torch.zeros(channels, channels, dtype=torch.float64)
        self.norm_total = torch.zeros((), dtype=torch.float64)
        self.norm_moment = torch.zeros(channels, dtype=torch.float64)  # sum of x * ||x||

    def add(self, feats: torch.Tensor) -> None:
        x = feats.detach().double().cpu().permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        self.count += len(x)
        self.total += x.sum(0)
        self.scatter += x.T @ x
        n = x.norm(dim=1)
        self.norm_total += n.sum()
        self.norm_moment += x.T @ n

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [C], first component [C]) in float32; the component's sign makes the
        projection correlate positively with the descriptors' norm."""
        if not self.count:
            raise ValueError("DescriptorPCA.fit: no descriptors were added")
        mean = self.total / self.count
        cov = self.scatter / self.count - torch.outer(mean, mean)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        v = vecs[:, -1]
        cov_with_norm = self.norm_moment / self.count - mean * (self.norm_total / self.count)
        if float(v @ cov_with_norm) < 0:
            v = -v
        return mean.float(), v.float()


def ddt(feats: torch.Tensor, mean: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,h,w]: projection of the centred descriptors on the set's first
    component (DDT's indicator map; positive where the common object is)."""
    x = feats.float() - mean.to(feats.device)[None, :, None, None]
    return (x * component.to(feats.device)[None, :, None, None]).sum(1)


def with_flip(read, images: torch.Tensor, backbone, flip: bool = True) -> torch.Tensor:
    """``read(features)`` -> [B,h,w] on ``images``, averaged with the mirrored image's map
    (mirrored back) when ``flip``."""
    maps = read(backbone(images))
    if flip:
        maps = (maps + read(backbone(images.flip(-1))).flip(-1)) / 2
    return maps

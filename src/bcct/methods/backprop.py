"""Backprop saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks",
ICLR-W 2014), the "Backprop on VGGnet / GoogLeNet" rows of the paper's Table 1.

Model and loss: the plain CAM classifier (shared backbone + CAM head) trained with
cross-entropy, exactly as ``cam``. Readout ``saliency``: the gradient of the class score
S_c (the pre-softmax logit, Simonyan et al. Sec. 3) with respect to the input image, reduced
over colour channels by the maximum absolute value (Simonyan et al. Sec. 3.1,
"M_ij = max_c |w_h(i,j,c)|"). It is computed for the class the evaluator asks for (ground
truth for GT-known, the prediction in ``localize``).

No hyperparameters of its own. The gradient needs autograd at evaluation, which runs under
``torch.no_grad``: ``forward`` keeps the input images in its output and ``score_maps``
recomputes the scores under ``torch.enable_grad()``. In eval mode (BatchNorm on running
statistics) images do not interact, so one backward pass of the summed scores gives every
image its own gradient (16 images at a time: :data:`SALIENCY_CHUNK`).
"""

from __future__ import annotations

import torch

from bcct.gradient_map import reduce_channels
from bcct.methods.base import register
from bcct.methods.cam import CAM


# Images per backward pass: the graph of every layer is kept for d score / d image, so memory
# grows with batch x side^2 (an evaluation batch of 64 at 352 px, eval.scales, needed over
# 20 GB on CPU and was killed); 16 at a time bounds it, and the maps are the same.
SALIENCY_CHUNK = 16


def saliency(model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """max over channels of |d logit[class] / d image|: [B,3,H,W], [B] -> [B,H,W]."""
    maps = []
    for chunk, cls in zip(images.split(SALIENCY_CHUNK), classes.split(SALIENCY_CHUNK)):
        with torch.enable_grad():
            x = chunk.detach().clone().requires_grad_(True)
            logits = model(x)["logits"]
            score = logits.gather(1, cls.view(-1, 1).long()).sum()
            (grad,) = torch.autograd.grad(score, x)
        maps.append(reduce_channels(grad, "max"))
    return torch.cat(maps)


@register("backprop")
class Backprop(CAM):
    """The CAM classifier and loss; only the readout differs."""

    gradient_readouts = ("saliency",)

    def forward(self, images: torch.Tensor) -> dict:
        out = self.model(images)
        out["images"] = images  # score_maps differentiates the scores with respect to these
        return out

    def score_maps(self, out: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"saliency": saliency(self.model, out["images"], classes)}

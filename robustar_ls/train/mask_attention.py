"""Does the model still look at the spurious pixels? The share of its saliency inside masks.

:func:`share_in_masks` is, averaged over images, the fraction of each image's saliency mass
(captum's input gradients for the true class, the largest absolute gradient over the colour
channels: the ``input_gradient`` method of ``explain/saliency.py``, called here directly
because train/ does not import its sibling explain/) that falls on the pixels its mask marks
spurious. A shortcut model puts much of its attention there; a model
that learned the object puts little (about the masks' share of the image or less). Paired
training records it before and after for the masks it trained with (the model history's
``saliency_in_masks``, shown on the task-centre page).
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import Saliency
from torch import nn

from robustar_ls.data.tensors import normalize

BATCH = 64


def share_in_masks(
    model: nn.Module, images01: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
) -> float | None:
    """Mean share of saliency inside ``masks`` over the images with some saliency.

    ``images01``: (N, 3, S, S) in [0, 1]; ``masks``: (N, 1, S, S) or (N, S, S), nonzero =
    spurious; ``labels``: (N,). None when no image has both saliency and a mask.
    """
    attributor = Saliency(model)
    shares: list[float] = []
    was_training = model.training
    model.eval()  # no batch-norm statistics updated
    try:
        for start in range(0, len(images01), BATCH):
            chunk = slice(start, start + BATCH)
            x = normalize(images01[chunk]).detach().clone().requires_grad_(True)
            with torch.enable_grad():
                grad = attributor.attribute(x, target=labels[chunk], abs=True)
            maps = grad.amax(dim=1).detach().cpu().numpy()
            marked = masks[chunk].reshape(maps.shape).cpu().numpy() > 0
            shares += _shares(maps, marked)
    finally:
        model.train(was_training)
    return round(float(np.mean(shares)), 4) if shares else None


def _shares(maps: np.ndarray, marked: np.ndarray) -> list[float]:
    total = maps.reshape(len(maps), -1).sum(axis=1)
    inside = (maps * marked).reshape(len(maps), -1).sum(axis=1)
    keep = (total > 0) & marked.reshape(len(maps), -1).any(axis=1)
    return [float(i / t) for i, t in zip(inside[keep], total[keep], strict=True)]

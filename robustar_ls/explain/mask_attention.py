"""Does the model still look at the spurious pixels? The share of its saliency inside masks.

:func:`share_in_masks` is, averaged over images, the fraction of each image's saliency mass
(:class:`robustar_ls.explain.saliency.SaliencyExplainer`, for the true class) that falls on the
pixels its mask marks spurious. A shortcut model puts much of its attention there; a model
that learned the object puts little (about the masks' share of the image or less). Paired
training records it before and after for the masks it trained with (the model history's
``saliency_in_masks``, shown on the task-centre page).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robustar_ls.data.tensors import normalize
from robustar_ls.explain.saliency import SaliencyExplainer

BATCH = 64


def share_in_masks(
    model: nn.Module, images01: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
) -> float | None:
    """Mean share of saliency inside ``masks`` over the images with some saliency.

    ``images01``: (N, 3, S, S) in [0, 1]; ``masks``: (N, 1, S, S) or (N, S, S), nonzero =
    spurious; ``labels``: (N,). None when no image has both saliency and a mask.
    """
    explainer = SaliencyExplainer(model)
    shares: list[float] = []
    for start in range(0, len(images01), BATCH):
        chunk = slice(start, start + BATCH)
        maps = explainer.maps(normalize(images01[chunk]), labels[chunk])
        marked = masks[chunk].reshape(maps.shape).cpu().numpy() > 0
        shares += _shares(maps, marked)
    return round(float(np.mean(shares)), 4) if shares else None


def _shares(maps: np.ndarray, marked: np.ndarray) -> list[float]:
    total = maps.reshape(len(maps), -1).sum(axis=1)
    inside = (maps * marked).reshape(len(maps), -1).sum(axis=1)
    keep = (total > 0) & marked.reshape(len(maps), -1).any(axis=1)
    return [float(i / t) for i, t in zip(inside[keep], total[keep], strict=True)]

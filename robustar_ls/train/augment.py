"""Batch augmentation applied identically to images and their masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    pad: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crop (after reflect-padding by ``pad``) and horizontal flip, per sample.

    ``masks`` (N, 1, H, W) get exactly the same crop and flip as ``images`` (N, C, H, W).
    """
    n, _, h, w = images.shape
    stacked = images if masks is None else torch.cat([images, masks.to(images.dtype)], dim=1)
    padded = F.pad(stacked, (pad, pad, pad, pad), mode="reflect") if pad else stacked
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(stacked)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    if masks is None:
        return out, None
    channels = images.shape[1]
    return out[:, :channels], out[:, channels:].to(masks.dtype)

"""The paired loss: an image and its copy with the spurious pixels filled must agree.

For a batch of N images x_i with labels y_i, of which the set A carries a mask, x̃_i is x_i
with its spurious pixels filled (``fills.apply_fill``) and z(·) are the model's logits. The
per-image loss is

    ℓ_i = CE(z(x_i), y_i) + [i ∈ A] · ( CE(z(x̃_i), y_i) + λ · ‖z(x_i) − z(x̃_i)‖² )

and the batch loss is the mean of ℓ_i over all N images. So, with every term divided by N
(the batch size, annotated or not):

    ce        = (1/N) Σ_i   CE(z(x_i), y_i)
    ce_paired = (1/N) Σ_A   CE(z(x̃_i), y_i)
    align     = (1/N) Σ_A   ‖z(x_i) − z(x̃_i)‖²      (squared L2 over the logit vector)
    loss      = ce + ce_paired + λ · align

An unannotated image contributes CE(x) once (Robustar paired it with itself and counted its
loss twice). With every image annotated this is CE(x) + CE(x̃) + λ·(batch mean of the squared
distance), the loss of the runs in README.md, "Sync and paired training" (λ = 0.1 worked,
λ = 1 diverged). Dividing by N rather than by |A| keeps each annotated image's weight
independent of how many annotated images happen to share its batch.

Worst-case mode (Wang et al. 2022): of K fills per image, train on the one whose paired terms
CE(z(x̃), y) + λ‖z(x) − z(x̃)‖² are highest, chosen without gradients with the model in eval
mode (so the choice does not disturb batch-norm statistics): :func:`select_worst`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_image_paired_terms(
    logits_x: torch.Tensor, logits_xt: torch.Tensor, y: torch.Tensor, align_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: CE(x̃), ‖z(x) − z(x̃)‖² and CE(x̃) + λ·distance (each shape (M,))."""
    ce_paired = F.cross_entropy(logits_xt, y, reduction="none")
    distance = (logits_x - logits_xt).pow(2).sum(dim=1)
    return ce_paired, distance, ce_paired + align_weight * distance


def paired_loss(
    model: nn.Module,
    x: torch.Tensor,
    x_tilde: torch.Tensor,
    y: torch.Tensor,
    has_mask: torch.Tensor,
    align_weight: float,
) -> dict[str, torch.Tensor]:
    """``{loss, ce, ce_paired, align}`` for a batch (see the module docstring for the sums).

    ``x`` and ``x_tilde`` are the classifier's (normalised) inputs, (N, C, H, W); rows of
    ``x_tilde`` where ``has_mask`` is False are ignored. One forward pass over x and the
    annotated x̃ together, so the cost is (1 + f) forward/backward passes for a fraction f of
    annotated images. ``loss`` carries the gradient; the other terms are detached.
    """
    has_mask = has_mask.to(device=x.device, dtype=torch.bool)
    n = x.shape[0]
    paired = x_tilde[has_mask]
    m = paired.shape[0]
    logits = model(torch.cat([x, paired]) if m else x)
    logits_x, logits_xt = logits[:n], logits[n:]
    ce_sum = F.cross_entropy(logits_x, y, reduction="sum")
    if m:
        ce_paired, distance, _ = per_image_paired_terms(
            logits_x[has_mask], logits_xt, y[has_mask], align_weight
        )
        ce_paired_sum, align_sum = ce_paired.sum(), distance.sum()
    else:
        ce_paired_sum = align_sum = logits.new_zeros(())
    loss = (ce_sum + ce_paired_sum + align_weight * align_sum) / n
    return {
        "loss": loss,
        "ce": (ce_sum / n).detach(),
        "ce_paired": (ce_paired_sum / n).detach(),
        "align": (align_sum / n).detach(),
        "logits": logits_x.detach(),
    }


@torch.no_grad()
def select_worst(
    model: nn.Module,
    x: torch.Tensor,
    candidates: torch.Tensor,
    y: torch.Tensor,
    align_weight: float,
) -> torch.Tensor:
    """Of K candidate x̃ per image (K, N, C, H, W), the one with the highest paired terms.

    Returns (N, C, H, W). The model runs in eval mode without gradients and is put back in the
    mode it was in.
    """
    k, n = candidates.shape[:2]
    if k == 1:
        return candidates[0]
    was_training = model.training
    model.eval()
    try:
        logits_x = model(x)
        logits_c = model(candidates.flatten(0, 1)).view(k, n, -1)
    finally:
        model.train(was_training)
    scores = torch.stack(
        [per_image_paired_terms(logits_x, logits_c[i], y, align_weight)[2] for i in range(k)]
    )  # (K, N)
    worst = scores.argmax(dim=0)
    return candidates[worst, torch.arange(n, device=candidates.device)]

"""Per-sample gradients of one scalar per image, restricted to a few layers' parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from robustar_ls.explain.influence_types import InfluenceError

TARGETS = ("margin", "error", "loss")
GRAD_BYTES = 256 * 2**20  # per-sample gradients held at once (micro-batches are cut to fit)


def parameter_names(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Names of the trainable parameters inside ``layers``, in ``named_parameters`` order."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise InfluenceError(
            f"layers {missing} are not modules of the model; some valid names: "
            f"{[n for n in modules if n][-8:]}"
        )
    prefixes = tuple(f"{name}." if name else "" for name in layers)
    names = [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and name.startswith(prefixes)
    ]
    if not names:
        raise InfluenceError(f"layers {list(layers)} hold no trainable parameters")
    return names


def target_value(logits: torch.Tensor, label: torch.Tensor, target: str) -> torch.Tensor:
    """The scalar whose gradient is a sample's feature (one sample's logits, shape (C,)).

    ``margin``: ``z_y - logsumexp_{j != y} z_j``; ``error``: ``z_argmax - z_y``; ``loss``:
    cross-entropy (baselines only). Written without data-dependent indexing so it vmaps.
    """
    classes = torch.arange(logits.shape[-1], device=logits.device)
    is_true = classes == label
    z_true = torch.where(is_true, logits, torch.zeros_like(logits)).sum()
    if target == "margin":
        others = logits.masked_fill(is_true, float("-inf"))
        return z_true - torch.logsumexp(others, dim=0)
    if target == "error":
        is_pred = classes == logits.argmax()
        return torch.where(is_pred, logits, torch.zeros_like(logits)).sum() - z_true
    if target == "loss":
        return torch.logsumexp(logits, dim=0) - z_true
    raise InfluenceError(f"unknown gradient target {target!r}; choose one of {TARGETS}")


def per_sample_grad(model: nn.Module, names: Sequence[str], target: str) -> Callable:
    """``f(images, labels) -> {name: (B, *shape)}``: each image's gradient of ``target``
    with respect to the parameters ``names`` (the others and the buffers held fixed)."""
    if target not in TARGETS:
        raise InfluenceError(f"unknown gradient target {target!r}; choose one of {TARGETS}")
    chosen = set(names)
    params = {n: p.detach() for n, p in model.named_parameters() if n in chosen}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})

    def value(theta, image, label):
        logits = functional_call(model, (theta, frozen), (image.unsqueeze(0),))[0]
        return target_value(logits, label, target)

    batched = vmap(grad(value), in_dims=(None, 0, 0))
    return lambda images, labels: batched(params, images, labels)

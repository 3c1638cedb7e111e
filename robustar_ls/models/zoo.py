"""Classifier factory: one name, one builder (timm's ``create_model`` habit).

The torchvision architectures can start from torchvision's ImageNet weights
(:func:`imagenet_weights`; read from the torch hub cache by :mod:`robustar_ls.models.pretrained`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from robustar_ls.errors import RobustarError
from robustar_ls.models.pretrained import PretrainedUnavailable, load_pretrained


class UnknownArchError(RobustarError, ValueError):
    """The architecture name is not in the zoo."""


def _small_resnet18(num_classes: int, width: int = 16, **_: object) -> nn.Module:
    """ResNet-18 for small inputs (<= 64 px): 3x3 stride-1 stem, no max-pool.

    ``width`` is the channel count of the first stage (64 = the standard, full width).
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width_per_group=64)
    widths = [width, width * 2, width * 4, width * 8]
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    model.layer1 = model._make_layer(BasicBlock, widths[0], 2)
    model.layer2 = model._make_layer(BasicBlock, widths[1], 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, widths[2], 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, widths[3], 2, stride=2)
    model.fc = nn.Linear(widths[3], num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def _torchvision(name: str, head: Callable[[nn.Module], tuple[str, nn.Module]]):
    """Builder for a torchvision classifier with its head replaced to ``num_classes``;
    ``pretrained``: with torchvision's default ImageNet weights (from the torch hub cache)."""

    def build(num_classes: int, pretrained: bool = False, **_: object) -> nn.Module:
        model = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            load_pretrained(model, torchvision.models.get_model_weights(name).DEFAULT)
        attr, old = head(model)
        parent, _, leaf = attr.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, nn.Linear(old.in_features, num_classes))
        return model

    return build


def _fc(model: nn.Module) -> tuple[str, nn.Module]:
    return "fc", model.fc


def _last_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    index = len(model.classifier) - 1
    return f"classifier.{index}", model.classifier[index]


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18_small": _small_resnet18,
    "resnet18": _torchvision("resnet18", _fc),
    "resnet34": _torchvision("resnet34", _fc),
    "resnet50": _torchvision("resnet50", _fc),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", _last_classifier),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", _last_classifier),
    "efficientnet_b0": _torchvision("efficientnet_b0", _last_classifier),
    "convnext_tiny": _torchvision("convnext_tiny", _last_classifier),
}
_TORCHVISION = {name for name, build in ARCHITECTURES.items() if build is not _small_resnet18}


def imagenet_weights(arch: str):
    """torchvision's default ImageNet weights of ``arch`` (a ``WeightsEnum`` member, e.g.
    ``ResNet18_Weights.IMAGENET1K_V1``), or None where torchvision has none."""
    if arch not in _TORCHVISION:
        return None
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except ValueError:  # torchvision has the architecture but no weights for it
        return None


def pretrained_architectures() -> list[str]:
    """The architectures ``--pretrained`` works with."""
    return [arch for arch in sorted(ARCHITECTURES) if imagenet_weights(arch) is not None]


def require_imagenet_weights(arch: str):
    """:func:`imagenet_weights` of ``arch``; one clear error where there are none."""
    _check_arch(arch)
    weights = imagenet_weights(arch)
    if weights is None:
        raise PretrainedUnavailable(
            f"architecture {arch!r} has no pretrained ImageNet weights in torchvision; "
            f"--pretrained works with: {', '.join(pretrained_architectures())}"
        )
    return weights


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise UnknownArchError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}"
        )


def create_classifier(
    arch: str, num_classes: int, *, width: int = 16, pretrained: bool = False
) -> nn.Module:
    """Build classifier ``arch`` with a ``num_classes``-way head.

    ``pretrained`` loads torchvision's ImageNet weights from the torch hub cache, never
    downloading (``models/pretrained.fetch_pretrained`` does); the head is new.
    """
    _check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if pretrained:
        require_imagenet_weights(arch)
    return ARCHITECTURES[arch](num_classes, width=width, pretrained=pretrained)


def head_and_last_block(model: nn.Module) -> list[str]:
    """Names of the modules whose gradients influence uses by default: last block + head."""
    names = [name for name, _ in model.named_modules()]
    if "layer4" in names and "fc" in names:
        return ["layer4.1", "fc"] if "layer4.1" in names else ["layer4", "fc"]
    if "features" in names and "classifier" in names:
        blocks = [n for n in names if n.count(".") == 1 and n.startswith("features.")]
        return [blocks[-1], "classifier"] if blocks else ["classifier"]
    return [names[-1]]


def default_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)

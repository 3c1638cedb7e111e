"""Fold eval-mode batch norms into the convolutions before them (Mask R-CNN on CPU).

``maskrcnn_resnet50_fpn_v2`` built without pretrained weights (as :func:`build_maskrcnn`
does, then loads the COCO state_dict) uses plain ``nn.BatchNorm2d`` after every convolution of
its backbone, FPN and heads. At inference each is a per-channel affine map, which folds
exactly into the convolution's weight and bias (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`);
the batch norm becomes ``nn.Identity``. The outputs are the same up to float rounding.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_NORMS = (nn.BatchNorm2d,)


def _fold(conv: nn.Module, norm: nn.Module) -> nn.Module | None:
    """The fused convolution, or None when the pair cannot be folded."""
    if not (isinstance(conv, nn.Conv2d) and type(norm) in _NORMS):
        return None
    if norm.training or not norm.track_running_stats or norm.num_features != conv.out_channels:
        return None
    return fuse_conv_bn_eval(conv, norm)


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every ``Conv2d`` → ``BatchNorm2d`` pair of ``model`` (in eval mode) in place.

    Pairs are found as consecutive children of an ``nn.Sequential`` and as ``convN`` /
    ``bnN`` attributes (torchvision's ResNet blocks and stem). Returns how many were folded.
    """
    if model.training:
        raise ValueError("fuse_conv_bn folds running statistics: call model.eval() first")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:], strict=False):
                fused = _fold(module._modules[first], module._modules[second])
                if fused is not None:
                    module._modules[first] = fused
                    module._modules[second] = nn.Identity()
                    folded += 1
        for name, child in list(module.named_children()):
            if name.startswith("conv") and hasattr(module, "bn" + name[4:]):
                fused = _fold(child, getattr(module, "bn" + name[4:]))
                if fused is not None:
                    setattr(module, name, fused)
                    setattr(module, "bn" + name[4:], nn.Identity())
                    folded += 1
    return folded

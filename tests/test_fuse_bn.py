from __future__ import annotations

import pytest
import torch
from torch import nn

from robustar_ls.models.fuse_bn import fuse_conv_bn


class Block(nn.Module):
    """ResNet-style attributes: conv1/bn1, conv2/bn2, and a downsample Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.downsample = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2), nn.ReLU())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.head(self.bn2(self.conv2(y)) + self.downsample(x))


def _trained_stats(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, as real weights have."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))


def test_fused_model_has_no_batch_norm_and_the_same_outputs():
    torch.manual_seed(0)
    model = Block()
    _trained_stats(model)
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    expected = model(x)
    assert fuse_conv_bn(model) == 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_fusing_a_training_model_is_refused():
    with pytest.raises(ValueError, match="model.eval"):
        fuse_conv_bn(Block())


def test_unfoldable_pairs_are_left_alone():
    # the norm does not follow a convolution, or its channel count does not match
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm1d(4))
    model.eval()
    assert fuse_conv_bn(model) == 0
    assert isinstance(model[1], nn.BatchNorm2d)

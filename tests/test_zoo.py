from __future__ import annotations

import pytest
import torch

from robustar_ls.models.zoo import (
    ARCHITECTURES,
    UnknownArchError,
    create_classifier,
    head_and_last_block,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_arch_builds_and_runs_forward(arch):
    model = create_classifier(arch, num_classes=3, width=4).eval()
    size = 16 if arch == "resnet18_small" else 32
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 3)
    names = dict(model.named_modules())
    assert all(name in names for name in head_and_last_block(model))


def test_small_resnet_width_sets_channels():
    narrow = create_classifier("resnet18_small", 2, width=8)
    full = create_classifier("resnet18_small", 2, width=64)
    assert narrow.fc.in_features == 64 and full.fc.in_features == 512
    assert isinstance(narrow.maxpool, torch.nn.Identity)
    assert narrow.conv1.stride == (1, 1)


def test_unknown_arch_lists_choices():
    with pytest.raises(UnknownArchError, match="resnet18_small"):
        create_classifier("resnet1000", 3)


def test_single_class_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        create_classifier("resnet18_small", 1)

"""The share of a model's saliency inside the masks (robustar_ls/train/mask_attention.py)."""

from __future__ import annotations

import pytest
import torch

from robustar_ls.models.zoo import create_classifier
from robustar_ls.train.mask_attention import share_in_masks


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_classifier("resnet18_small", 2, width=4).eval()


def test_complementary_masks_split_the_saliency_and_the_whole_image_holds_all(model):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 0, 1, 0])
    left = torch.zeros(5, 1, 32, 32)
    left[..., :16] = 1
    inside = share_in_masks(model, images, left, labels)
    outside = share_in_masks(model, images, 1 - left, labels)
    assert inside is not None and 0.0 < inside < 1.0
    assert inside + outside == pytest.approx(1.0, abs=1e-3)
    assert share_in_masks(model, images, torch.ones(5, 1, 32, 32), labels) == pytest.approx(1.0)


def test_images_without_a_mask_are_left_out_and_none_without_any(model):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1])
    masks = torch.zeros(2, 32, 32)
    assert share_in_masks(model, images, masks, labels) is None
    masks[0] = 1  # only the first image has a mask: its share is 1
    assert share_in_masks(model, images, masks, labels) == pytest.approx(1.0)

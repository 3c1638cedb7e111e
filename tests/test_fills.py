from __future__ import annotations

import pytest
import torch

from robustar_ls.train.fills import (
    BASE_MODES,
    FILL_MODES,
    WEAK_NOISE_STD,
    DonorPool,
    FillError,
    apply_fill,
    mixture_choices,
)


def batch(n: int = 6, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    masks = torch.rand(n, 1, size, size, generator=g) < 0.4
    masks[0] = False  # one image with an empty mask
    masks[1] = True  # one fully masked
    return images, masks


@pytest.mark.parametrize("mode", FILL_MODES)
def test_fill_touches_masked_pixels_only(mode):
    images, masks = batch()
    out = apply_fill(images, masks, mode, torch.Generator().manual_seed(1))
    keep = ~masks.expand_as(images)
    assert torch.equal(out[keep], images[keep])  # bit-identical outside the mask
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, images)  # and it did change something inside
    assert torch.equal(images, batch()[0])  # input not modified in place


@pytest.mark.parametrize("mode", FILL_MODES)
def test_float_masks_match_bool_masks(mode):
    images, masks = batch()
    a = apply_fill(images, masks, mode, torch.Generator().manual_seed(3))
    b = apply_fill(images, masks.float(), mode, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", FILL_MODES)
def test_fill_is_reproducible_with_a_generator(mode):
    images, masks = batch()
    a = apply_fill(images, masks, mode, torch.Generator().manual_seed(5))
    b = apply_fill(images, masks, mode, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_black_and_colour_values():
    images, masks = batch()
    black = apply_fill(images, masks, "black")
    assert torch.all(black[masks.expand_as(images)] == 0)
    full = torch.ones_like(masks)
    colour = apply_fill(images, full, "colour", torch.Generator().manual_seed(0))
    per_image = colour[:, :, 0, 0]
    assert torch.equal(colour, per_image[:, :, None, None].expand_as(colour))  # one per image
    assert len(torch.unique(per_image, dim=0)) == len(images)  # drawn per image


def test_weak_noise_stays_near_the_original():
    images = torch.full((4, 3, 32, 32), 0.5)
    masks = torch.ones(4, 1, 32, 32, dtype=torch.bool)
    out = apply_fill(images, masks, "weak_noise", torch.Generator().manual_seed(0))
    diff = out - images
    assert abs(float(diff.mean())) < 0.01
    assert abs(float(diff.std()) - WEAK_NOISE_STD) < 0.01  # Gaussian σ, nothing clipped at 0.5
    noise = apply_fill(images, masks, "noise", torch.Generator().manual_seed(0))
    assert float((noise - images).abs().mean()) > 2 * float(diff.abs().mean())


def test_stripes_are_two_colours_per_image():
    images = torch.rand(8, 3, 16, 16)
    masks = torch.ones(8, 1, 16, 16, dtype=torch.bool)
    out = apply_fill(images, masks, "stripes", torch.Generator().manual_seed(2))
    for image in out:
        colours = torch.unique(image.flatten(1).T, dim=0)
        assert len(colours) == 2


def test_mixture_applies_the_drawn_mode_per_image():
    n = 40
    images = torch.rand(n, 3, 16, 16)
    masks = torch.ones(n, 1, 16, 16, dtype=torch.bool)
    choices = mixture_choices(n, torch.Generator().manual_seed(7))
    assert set(choices) == set(BASE_MODES)  # 40 draws hit all five modes with this seed
    out = apply_fill(images, masks, "mixture", torch.Generator().manual_seed(7))
    for image, original, mode in zip(out, images, choices, strict=True):
        pixels = torch.unique(image.flatten(1).T, dim=0)
        if mode == "black":
            assert torch.all(image == 0)
        elif mode == "colour":
            assert len(pixels) == 1
        elif mode == "stripes":
            assert len(pixels) == 2
        elif mode == "weak_noise":
            assert float((image - original).abs().max()) < 8 * WEAK_NOISE_STD
            assert len(pixels) > 100
        else:  # noise: unrelated to the original
            assert len(pixels) > 100
            assert float((image - original).abs().mean()) > 0.2


def test_unknown_mode_and_bad_shapes_are_clear_errors():
    images, masks = batch()
    with pytest.raises(FillError, match="unknown fill mode 'zebra'"):
        apply_fill(images, masks, "zebra")
    with pytest.raises(FillError, match="mask size"):
        apply_fill(images, masks[:, :, :8, :8], "noise")
    with pytest.raises(FillError, match=r"\(N, 1, H, W\)"):
        apply_fill(images, masks.expand(-1, 3, -1, -1), "noise")


def test_swap_copies_the_same_pixels_of_another_image():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8) / 4
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    masks[:, :, :4] = True  # the top half
    out = apply_fill(images, masks, "swap", torch.Generator().manual_seed(0))
    for i in range(4):
        top = torch.unique(out[i, :, :4])
        assert len(top) == 1 and float(top) != float(images[i, 0, 0, 0])  # one other image
        assert torch.equal(out[i, :, 4:], images[i, :, 4:])


def test_swap_never_copies_a_piece_of_the_donors_object():
    # image 0: spurious left half; donor (image 1): spurious top half, its object elsewhere
    images = torch.zeros(2, 3, 8, 8)
    images[1] = 0.9  # the donor's object colour
    images[1, :, :4] = 0.2  # the donor's spurious content
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[0, :, :, :4] = True
    masks[1, :, :4] = True
    out = apply_fill(images, masks, "swap", torch.Generator().manual_seed(0))
    filled = out[0, :, :, :4]
    assert torch.allclose(filled, torch.full_like(filled, 0.2))  # no 0.9 (the donor's object)
    assert torch.equal(out[0, :, :, 4:], images[0, :, :, 4:])


def test_swap_takes_donors_with_masks_and_skips_donors_without_spurious_pixels():
    images = torch.zeros(1, 3, 8, 8)
    donors = torch.stack([torch.full((3, 8, 8), 0.5), torch.ones(3, 8, 8)])
    donor_masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    donor_masks[1] = True  # donor 0 has no spurious pixels: never picked
    masks = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    out = apply_fill(images, masks, "swap", g, donors=donors, donor_masks=donor_masks)
    assert torch.equal(out, torch.ones_like(images))
    with pytest.raises(FillError, match="donors"):
        apply_fill(images, masks, "swap", donors=torch.ones(5, 3, 4, 4), donor_masks=donor_masks)
    with pytest.raises(FillError, match="donor_masks"):
        apply_fill(images, masks, "swap", donors=donors)


def test_swap_without_another_donor_fills_a_flat_colour():
    images = torch.zeros(1, 3, 8, 8)
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[:, :, :4] = True
    out = apply_fill(images, masks, "swap", torch.Generator().manual_seed(0))
    top = out[0, :, :4]
    assert torch.equal(top, top[:, :1, :1].expand_as(top))  # one colour per channel
    assert float(top.abs().sum()) > 0  # not the image itself


def test_swap_with_labels_takes_donors_of_another_class_only():
    # images 0 and 1 are class 0 (content 0.1, 0.2), image 2 class 1 (0.8); donor 3 class 1
    images = torch.tensor([0.1, 0.2, 0.8]).view(3, 1, 1, 1).expand(3, 3, 8, 8).clone()
    masks = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    masks[:, :, :4] = True
    labels = torch.tensor([0, 0, 1])
    donors, donor_masks = torch.full((1, 3, 8, 8), 0.6), torch.ones(1, 1, 8, 8)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        out = apply_fill(images, masks, "swap", g, donors, donor_masks, labels, torch.tensor([1]))
        tops = [round(float(out[i, 0, 0, 0]), 3) for i in range(3)]
        assert tops[0] in (0.8, 0.6) and tops[1] in (0.8, 0.6)  # never the other class-0 image
        assert tops[2] in (0.1, 0.2)  # never the class-1 donor
    with pytest.raises(FillError, match="donor_labels"):
        apply_fill(images, masks, "swap", None, donors, donor_masks, labels)


def test_swap_with_one_class_annotated_fills_a_flat_colour_not_its_own_feature():
    images = torch.tensor([0.1, 0.2]).view(2, 1, 1, 1).expand(2, 3, 8, 8).clone()
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[:, :, :4] = True
    out = apply_fill(images, masks, "swap", torch.Generator().manual_seed(0), labels=torch.ones(2))
    for i in range(2):
        top = out[i, :, :4]
        assert torch.equal(top, top[:, :1, :1].expand_as(top))  # a flat colour per channel...
        assert not torch.allclose(top[:, 0, 0], torch.tensor([0.1, 0.2])[1 - i].expand(3))


def test_donor_pool_keeps_the_last_images_with_their_masks_and_labels():
    pool = DonorPool(capacity=3)
    assert pool.images is None
    for value in range(5):
        pool.add(
            torch.full((1, 3, 4, 4), float(value)), torch.ones(1, 1, 4, 4), torch.tensor([value])
        )
    assert [float(i[0, 0, 0]) for i in pool.images] == [2.0, 3.0, 4.0]
    assert pool.masks.dtype == torch.bool and pool.masks.shape == (3, 1, 4, 4)
    assert pool.labels.tolist() == [2, 3, 4]

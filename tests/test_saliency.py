from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from robustar_ls.config import SaliencyConfig
from robustar_ls.explain.saliency import (
    METHODS,
    SaliencyExplainer,
    attention_mask,
    default_gradcam_layer,
    heatmap_png,
    jet,
    resize_map,
)
from robustar_ls.models.zoo import create_classifier


def _small_resnet(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_classifier("resnet18_small", classes, width=4).eval()


def _batch(n: int = 5, height: int = 24, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _hook_count(model: nn.Module) -> int:
    per_module = sum(
        len(d)
        for m in model.modules()
        for d in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
        )
    )
    from torch.nn.modules import module as torch_module

    global_hooks = sum(
        len(getattr(torch_module, name))
        for name in dir(torch_module)
        if name.startswith("_global_") and name.endswith("hooks")
    )
    return per_module + global_hooks


@pytest.mark.parametrize("method", METHODS)
def test_maps_shape_and_range(method):
    explainer = SaliencyExplainer(_small_resnet(), SaliencyConfig(method=method))
    maps = explainer.maps(_batch())
    assert maps.shape == (5, 24, 32) and maps.dtype == np.float32
    assert maps.min() >= 0
    peaks = maps.reshape(5, -1).max(axis=1)
    assert np.all((peaks == 1) | (peaks == 0)) and peaks.max() == 1


@pytest.mark.parametrize("method", METHODS)
def test_maps_leave_no_trace(method):
    model = _small_resnet()
    for p in model.layer1.parameters():
        p.requires_grad_(False)  # a partly frozen model stays partly frozen
    requires = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch()
    original = batch.clone()
    explainer = SaliencyExplainer(model, SaliencyConfig(method=method))
    hooks_before = _hook_count(model)

    for training in (False, True):
        model.train(training)
        explainer.maps(batch)
        assert model.training is training
        assert _hook_count(model) == hooks_before == 0
        assert [p.requires_grad for p in model.parameters()] == requires
        assert all(p.grad is None for p in model.parameters())
        # No batch-norm statistics were updated, even when called in training mode.
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert torch.equal(batch, original) and not batch.requires_grad


def test_hooks_are_released_when_attribution_fails():
    model = _small_resnet(classes=3)
    explainer = SaliencyExplainer(model)
    with pytest.raises((IndexError, RuntimeError)):
        explainer.maps(_batch(2), torch.tensor([0, 7]))  # class 7 does not exist
    assert _hook_count(model) == 0 and not model.training


def test_default_targets_are_the_predicted_classes():
    model = _small_resnet()
    explainer = SaliencyExplainer(model)
    batch = _batch()
    with torch.no_grad():
        predicted = model(batch).argmax(dim=1)
    other = (predicted + 1) % 3
    np.testing.assert_allclose(explainer.maps(batch), explainer.maps(batch, predicted))
    assert not np.allclose(explainer.maps(batch), explainer.maps(batch, other))


def test_wrong_number_of_targets():
    with pytest.raises(ValueError, match="2 targets for a batch of 5"):
        SaliencyExplainer(_small_resnet()).maps(_batch(), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "arch, layer",
    [
        ("resnet18_small", "layer4.1"),
        ("resnet18", "layer4.1"),
        ("mobilenet_v3_small", "features.12"),
    ],
)
def test_default_layer_for_zoo_architectures(arch, layer):
    model = create_classifier(arch, 2, width=4).eval()
    explainer = SaliencyExplainer(model)
    assert explainer.layer_name == layer
    assert explainer.maps(_batch(2, 32, 32)).shape == (2, 32, 32)


def test_default_layer_elsewhere_is_the_last_convolution():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    assert default_gradcam_layer(model) == "2"
    with pytest.raises(ValueError, match="no convolution"):
        default_gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        SaliencyExplainer(model, layer="layer9")
    with pytest.raises(ValueError, match="unknown saliency method"):
        SaliencyExplainer(model, SaliencyConfig(method="occlusion"))


# --- saliency must land where the model looks ----------------------------------------------

ROWS, COLS = slice(0, 8), slice(16, 32)  # the region the hand-built models read (24x32 input)


class Gate(nn.Module):
    """Zero everything outside a fixed region (rows ROWS, columns COLS of a 24x32 input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(x)
        keep[..., ROWS, COLS] = 1
        return x * keep


def _gated_model() -> nn.Module:
    """Logits depend on the input inside the region only; every weight positive."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 2, 1),
        Gate(),
        nn.AvgPool2d(4),  # 6x8 cells: Grad-CAM has to be upsampled back to 24x32
        nn.Conv2d(2, 2, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    return model.eval()


def test_input_gradient_is_zero_exactly_where_the_model_does_not_read():
    maps = SaliencyExplainer(_gated_model(), SaliencyConfig(method="input_gradient")).maps(
        _batch(3), torch.tensor([0, 1, 0])
    )
    inside = np.zeros((24, 32), dtype=bool)
    inside[ROWS, COLS] = True
    assert np.all(maps[:, ~inside] == 0)
    assert np.all(maps[:, inside] > 0)


def test_gradcam_is_upsampled_onto_the_region_the_model_reads():
    batch = _batch(3).abs()  # positive inputs: positive activations inside the region
    maps = SaliencyExplainer(_gated_model(), layer="3").maps(batch, torch.tensor([0, 1, 0]))
    # One 4-px cell of blur at the region's edge from bilinear upsampling; zero beyond it.
    assert np.all(maps[:, 12:, :] == 0) and np.all(maps[:, :, :12] == 0)
    assert np.all(maps[:, 0:6, 18:32] > 0)


def test_gradcam_finds_the_planted_square_in_a_trained_model():
    """A resnet18_small trained to tell 'bright square somewhere' from noise: Grad-CAM
    (default layer) for the square class must peak at the square."""
    size, side, n_test = 32, 6, 32
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def batch(n: int, with_square: bool | None = None):
        x = 0.15 * torch.randn(n, 3, size, size, generator=gen)
        if with_square is None:
            y = torch.randint(0, 2, (n,), generator=gen)
        else:
            y = torch.full((n,), int(with_square))
        corners = torch.randint(0, size - side + 1, (n, 2), generator=gen)
        for i, (r, c) in enumerate(corners.tolist()):
            if y[i]:
                x[i, :, r : r + side, c : c + side] = 2.0
        return x, y, corners

    model = create_classifier("resnet18_small", 2, width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        x, y, _ = batch(32)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    x, y, corners = batch(n_test, with_square=True)
    with torch.no_grad():
        assert (model(x).argmax(dim=1) == y).float().mean() >= 0.9  # it did learn the task
    maps = SaliencyExplainer(model).maps(x, y)
    on_square = 0
    for sal, (r, c) in zip(maps, corners.tolist(), strict=True):
        peak_r, peak_c = np.unravel_index(sal.argmax(), sal.shape)
        on_square += (r - 4 <= peak_r < r + side + 4) and (c - 4 <= peak_c < c + side + 4)
    # The square covers 3.5% of the image (13% with the 4-px margin): chance is far below.
    assert on_square / n_test >= 0.75


# --- renderings -----------------------------------------------------------------------------


def test_attention_mask_grades_the_top_pixels():
    sal = (np.arange(10, dtype=np.float32) / 9).reshape(2, 5)
    mask = attention_mask(sal, 0.3)  # 3 pixels: values 7/9, 8/9, 9/9
    expected = np.zeros((2, 5), dtype=np.uint8)
    expected[1, 2:] = [1, 128, 255]
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.uint8


def test_attention_mask_edge_cases():
    assert not attention_mask(np.zeros((4, 4)), 0.5).any()
    assert not attention_mask(np.ones((4, 4)), 0.0).any()
    # Ties at the cut-off are all kept, fully opaque.
    np.testing.assert_array_equal(attention_mask(np.full((2, 2), 0.5), 0.25), np.full((2, 2), 255))
    # Pixels with saliency 0 are never in the mask.
    sal = np.array([[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(attention_mask(sal, 1.0), [[0, 0], [0, 255]])
    with pytest.raises(ValueError, match="between 0 and 1"):
        attention_mask(sal, 1.5)
    with pytest.raises(ValueError, match="2-D"):
        attention_mask(np.zeros((1, 2, 2)), 0.1)


def test_jet_runs_from_blue_to_red():
    low, mid, high = jet(np.array([0.0, 0.5, 1.0]))
    assert low[2] > max(low[:2]) and high[0] > max(high[1:]) and mid[1] > max(mid[0], mid[2])
    assert jet(np.zeros((3, 4))).shape == (3, 4, 3)


def test_heatmap_png_is_an_overlay_at_the_image_size():
    image = Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8))
    sal = np.zeros((6, 8), dtype=np.float32)
    sal[:3, :4] = 1.0  # top-left quadrant salient
    png = heatmap_png(image, sal, alpha=0.5)
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert out.shape == (30, 40, 3)
    top_left, bottom_right = out[2, 2], out[-3, -3]
    assert top_left[0] > top_left[2] and bottom_right[2] > bottom_right[0]
    expected = np.rint(0.5 * 200 + 0.5 * 255 * jet(1.0)).astype(int)
    np.testing.assert_array_equal(top_left, expected)
    # alpha 0 gives the image back unchanged.
    plain = Image.open(io.BytesIO(heatmap_png(image, sal, alpha=0.0)))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(image))


def test_resize_map_keeps_layout():
    sal = np.zeros((2, 4), dtype=np.float32)
    sal[:, 2:] = 1
    big = resize_map(sal, (8, 4))
    assert big.shape == (4, 8)
    assert big[:, :3].max() < 0.5 < big[:, 5:].min()

"""Model outputs of one image and the Label Studio prediction made from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from backend_support import CLASSES

from robustar_ls.backend.outputs import (
    image_outputs,
    summary_text,
    to_prediction,
    true_class,
    upscale_mask,
)
from robustar_ls.labelstudio.brush import rle_to_mask
from robustar_ls.labelstudio.config import LabelConfigTags


def _tags(labels: tuple[str, ...], summary: str | None = "summary") -> LabelConfigTags:
    return LabelConfigTags(
        image="image",
        brush="spurious",
        brush_labels=labels,
        keypoint=None,
        rectangle=None,
        summary_textarea=summary,
        saliency_image=None,
        image_value="image",
    )


def test_summary_text_format():
    probs = np.array([0.05, 0.93, 0.02])
    assert summary_text(CLASSES, probs, "circle") == (
        "Predicted: square (0.93) · True: circle · WRONG"
    )
    assert summary_text(CLASSES, probs, "square").endswith("· correct")
    assert summary_text(CLASSES, probs, None) == "Predicted: square (0.93) · True: unknown"


def test_true_class_from_task_data_then_from_the_folder():
    path = Path("/data/ds/train/circle/c0.png")
    assert true_class({"true_class": "square"}, path, CLASSES) == "square"
    assert true_class({}, path, CLASSES) == "circle"
    assert true_class({}, Path("/data/ds/other/circle/c0.png"), CLASSES) is None
    assert true_class({}, None, CLASSES) is None


def test_outputs_keep_the_image_size_and_the_regions_the_config_asks_for():
    saliency = np.linspace(0, 1, 6 * 4, dtype=np.float32).reshape(6, 4)  # (height, width)
    spurious = np.zeros((6, 4), dtype=bool)
    spurious[:2] = True
    out = image_outputs(np.array([0.1, 0.7, 0.2]), saliency, spurious, top_fraction=0.25)
    assert (out.width, out.height) == (4, 6)
    np.testing.assert_array_equal(rle_to_mask(out.spurious_rle, 6, 4) > 0, spurious)
    attention = rle_to_mask(out.attention_rle, 6, 4)
    assert (attention > 0).sum() == 6 and attention[-1, -1] == 255  # top quarter, brightest

    both = to_prediction(out, _tags(("Spurious", "Model attention")), "v1", "text")
    assert both.model_version == "v1" and both.score == 0.7
    kinds = [type(r).__name__ for r in both.result]
    assert kinds == ["TextAreaResult", "BrushRegion", "BrushRegion"]
    only_attention = to_prediction(out, _tags(("Model attention",), summary=None), "v1", None)
    assert [r.label for r in only_attention.result] == ["Model attention"]
    no_segmenter = image_outputs(np.array([1.0]), saliency, None, 0.25)
    assert no_segmenter.spurious_rle is None
    labels = [r.label for r in to_prediction(no_segmenter, _tags(("Spurious",)), "v", None).result]
    assert labels == []


def test_a_mask_of_a_reduced_image_comes_back_at_the_displayed_size():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 0:3] = True
    big = upscale_mask(mask, (12, 8))
    assert big.shape == (8, 12) and big.dtype == bool
    assert big[2:6, 0:6].all() and not big[:, 6:].any() and not big[:2].any()
    assert upscale_mask(mask, (6, 4)) is not None and (upscale_mask(mask, (6, 4)) == mask).all()
    assert upscale_mask(None, (12, 8)) is None

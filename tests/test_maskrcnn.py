from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from robustar_ls.config import MaskRCNNConfig
from robustar_ls.models.maskrcnn import (
    MaskRCNNSegmenter,
    MaskRCNNUnavailable,
    build_maskrcnn,
    hub_cache_weights_path,
)

# --- a fake detection model: one instance per colour channel --------------------------------

SCORES = (0.9, 0.3, 0.6)  # red, green, blue instances
INSIDE, OUTSIDE = 0.8, 0.1  # mask probabilities the fake reports


class ChannelInstances(nn.Module):
    """Torchvision-style detector: instance ``c`` = pixels whose channel ``c`` exceeds 0.5.

    Only channels with such pixels yield an instance; boxes are the masks' bounding boxes.
    Records the number of images in each call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.anchor = nn.Parameter(torch.zeros(1))  # so .to(device) has something to move

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls.append(len(images))
        outputs = []
        for image in images:
            masks, scores, boxes, labels = [], [], [], []
            for channel in range(3):
                hit = image[channel] > 0.5
                if not hit.any():
                    continue
                ys, xs = torch.nonzero(hit, as_tuple=True)
                boxes.append(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
                masks.append(torch.where(hit, INSIDE, OUTSIDE)[None])
                scores.append(SCORES[channel])
                labels.append(channel + 1)
            height, width = image.shape[1:]
            outputs.append(
                {
                    "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                    "scores": torch.tensor(scores, dtype=torch.float32),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                    "masks": torch.stack(masks) if masks else torch.zeros(0, 1, height, width),
                }
            )
        return outputs


def _image(height: int = 20, width: int = 24, **squares) -> Image.Image:
    """Black image with coloured rectangles: ``red=(y0, y1, x0, x1)`` etc."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for name, (y0, y1, x0, x1) in squares.items():
        array[y0:y1, x0:x1, ("red", "green", "blue").index(name)] = 255
    return Image.fromarray(array)


def _rect(height, width, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _segmenter(**cfg) -> tuple[MaskRCNNSegmenter, ChannelInstances]:
    model = ChannelInstances()
    return MaskRCNNSegmenter(model, MaskRCNNConfig(device="cpu", **cfg)), model


def test_object_masks_keep_instances_above_the_score_threshold():
    image = _image(red=(2, 8, 2, 8), green=(10, 16, 10, 16), blue=(12, 18, 2, 6))
    seg, _ = _segmenter(score_threshold=0.5)
    (mask,) = seg.object_masks([image])
    np.testing.assert_array_equal(mask, _rect(20, 24, 2, 8, 2, 8) | _rect(20, 24, 12, 18, 2, 6))
    seg, _ = _segmenter(score_threshold=0.95)
    np.testing.assert_array_equal(seg.object_masks([image])[0], np.zeros((20, 24), dtype=bool))


def test_mask_threshold_applies_to_mask_probabilities():
    image = _image(red=(2, 8, 2, 8))
    seg, _ = _segmenter(mask_threshold=OUTSIDE)  # every pixel's probability reaches it
    np.testing.assert_array_equal(seg.object_masks([image])[0], np.ones((20, 24), dtype=bool))


def test_spurious_masks_are_the_complement_without_specks():
    image = _image(red=(2, 12, 2, 12), blue=(16, 18, 20, 22))  # blue: 4 px object
    array = np.asarray(image).copy()
    array[5:7, 5:7] = 0  # a 4 px hole in the red object
    image = Image.fromarray(array)
    seg, _ = _segmenter(score_threshold=0.5, min_region_px=5)
    (spurious,) = seg.spurious_masks([image])
    np.testing.assert_array_equal(spurious, ~_rect(20, 24, 2, 12, 2, 12))
    seg, _ = _segmenter(score_threshold=0.5, min_region_px=1)  # no cleaning
    expected = ~_rect(20, 24, 2, 12, 2, 12) | _rect(20, 24, 5, 7, 5, 7)
    expected &= ~_rect(20, 24, 16, 18, 20, 22)
    np.testing.assert_array_equal(seg.spurious_masks([image])[0], expected)


def test_no_detection_means_all_spurious():
    seg, _ = _segmenter()
    (spurious,) = seg.spurious_masks([_image()])
    assert spurious.all() and spurious.shape == (20, 24)


def test_images_run_in_batches_in_order():
    images = [_image(16, 16 + i, red=(0, i + 1, 0, 4)) for i in range(5)]
    seg, model = _segmenter(batch_size=2)
    masks = seg.object_masks(images)
    assert model.calls == [2, 2, 1]
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(mask, _rect(16, 16 + i, 0, i + 1, 0, 4))


def test_box_mask_takes_the_best_overlapping_instance_clipped_to_the_box():
    image = _image(red=(2, 8, 2, 10), green=(12, 18, 14, 22))
    seg, _ = _segmenter(score_threshold=0.5)
    # Around the green instance: taken although its score (0.3) is below the threshold.
    mask = seg.box_mask(image, (13, 11, 23, 19))
    np.testing.assert_array_equal(mask, _rect(20, 24, 12, 18, 14, 22))
    # A box cutting through the red instance: clipped to the box.
    np.testing.assert_array_equal(seg.box_mask(image, (0, 0, 6, 5)), _rect(20, 24, 2, 5, 2, 6))
    # A box touching both: the instance whose box fits best wins.
    np.testing.assert_array_equal(
        seg.box_mask(image, (6, 4, 22, 18)), _rect(20, 24, 12, 18, 14, 22)
    )
    # A box over the background only.
    assert not seg.box_mask(image, (12, 0, 24, 10)).any()


def test_box_mask_rejects_bad_boxes():
    seg, _ = _segmenter()
    with pytest.raises(ValueError, match="inverted"):
        seg.box_mask(_image(), (10, 2, 4, 8))


def test_masks_of_the_wrong_size_are_an_error():
    class Wrong(ChannelInstances):
        def forward(self, images):
            out = super().forward(images)
            out[0]["masks"] = torch.zeros(1, 1, 3, 3)
            return out

    seg = MaskRCNNSegmenter(Wrong(), MaskRCNNConfig(device="cpu"))
    with pytest.raises(ValueError, match="masks of size"):
        seg.object_masks([_image(red=(0, 2, 0, 2))])


# --- the real architecture: loading code paths (random weights made here, never served) -----


@pytest.fixture(scope="module")
def real_weights(tmp_path_factory):
    """A state_dict of the real maskrcnn_resnet50_fpn_v2 (random init), saved once."""
    torch.manual_seed(0)
    model = build_maskrcnn()
    path = tmp_path_factory.mktemp("maskrcnn") / "random.pth"
    state = model.state_dict()
    torch.save(state, path)
    return path, state


def _same_weights(seg: MaskRCNNSegmenter, state: dict[str, torch.Tensor]) -> bool:
    """The loaded model holds ``state``: its batch norms were folded into the convolutions
    (none left), the layers without one are unchanged."""
    loaded = seg.model.state_dict()
    folded = not any(isinstance(m, nn.BatchNorm2d) for m in seg.model.modules())
    heads = [
        k for k in state if k.startswith(("roi_heads.box_predictor", "roi_heads.mask_predictor"))
    ]
    return folded and bool(heads) and all(torch.equal(loaded[k], state[k]) for k in heads)


def test_from_config_loads_a_state_dict_file(real_weights):
    path, state = real_weights
    cfg = MaskRCNNConfig(
        weights=str(path),
        device="cpu",
        min_size=64,
        max_size=96,
        rpn_pre_nms_top_n=50,
        rpn_post_nms_top_n=8,
        detections_per_img=4,
    )
    seg = MaskRCNNSegmenter.from_config(cfg)
    assert _same_weights(seg, state)
    assert not seg.model.training
    assert seg.model.transform.min_size == (64,) and seg.model.transform.max_size == 96
    # the speed settings reach torchvision's RPN and ROI heads (their eval-mode values)
    assert (seg.model.rpn.pre_nms_top_n(), seg.model.rpn.post_nms_top_n()) == (50, 8)
    assert seg.model.roi_heads.detections_per_img == 4

    # The real model's outputs go through the wrappers (few proposals keep this fast).
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    (obj,) = seg.object_masks([image])
    assert obj.shape == (30, 40) and obj.dtype == bool


def test_from_config_reads_the_torch_hub_cache(real_weights, tmp_path, monkeypatch):
    _, state = real_weights
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = hub_cache_weights_path()
    assert expected.parent == tmp_path / "checkpoints"
    assert expected.name.startswith("maskrcnn_resnet50_fpn_v2_coco")
    with pytest.raises(MaskRCNNUnavailable) as err:
        MaskRCNNSegmenter.from_config(MaskRCNNConfig(device="cpu"))
    message = str(err.value)
    assert str(expected) in message and "--maskrcnn-weights" in message
    # A checkpoint dict as torchvision's reference scripts write it (DDP prefix, Namespace).
    expected.parent.mkdir()
    wrapped = {f"module.{k}": v for k, v in state.items()}
    torch.save({"model": wrapped, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, expected)
    assert _same_weights(MaskRCNNSegmenter.from_config(MaskRCNNConfig(device="cpu")), state)


def test_missing_weights_file_is_unavailable(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(MaskRCNNUnavailable, match="no Mask R-CNN weights at .*nope.pth"):
        MaskRCNNSegmenter.from_config(MaskRCNNConfig(weights=str(missing)))


def test_wrong_files_are_unavailable_with_a_reason(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(MaskRCNNUnavailable, match="cannot read Mask R-CNN weights"):
        MaskRCNNSegmenter.from_config(MaskRCNNConfig(weights=str(text)))

    other = tmp_path / "classifier.pth"
    torch.save(nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(MaskRCNNUnavailable, match="do not fit maskrcnn_resnet50_fpn_v2"):
        MaskRCNNSegmenter.from_config(MaskRCNNConfig(weights=str(other)))

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(MaskRCNNUnavailable, match="does not hold a state_dict"):
        MaskRCNNSegmenter.from_config(MaskRCNNConfig(weights=str(not_a_state_dict)))


def test_shape_mismatch_is_unavailable(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1, 1, 1, 1)}, path)
    with pytest.raises(MaskRCNNUnavailable, match="do not fit"):
        MaskRCNNSegmenter.from_config(MaskRCNNConfig(weights=str(path)))

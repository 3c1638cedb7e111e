from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robustar_ls.explain.interactive import (
    DEFAULT_TOLERANCE,
    box_object_mask,
    colour_box_mask,
    colour_range_mask,
)

BACKGROUND = (10, 10, 10)
A = (100, 50, 50)
NEAR_A = (110, 60, 40)  # every channel 10 away from A
FAR_A = (140, 50, 50)  # red 40 away from A


def _palette_image() -> np.ndarray:
    """8x10 image: A at two separate places, NEAR_A touching the first, FAR_A elsewhere."""
    image = np.full((8, 10, 3), BACKGROUND, dtype=np.uint8)
    image[0:2, 0:2] = A
    image[0:2, 2:3] = NEAR_A
    image[6:8, 8:10] = A
    image[4, 4] = FAR_A
    return image


def _where(image: np.ndarray, *colours) -> np.ndarray:
    return np.any([np.all(image == c, axis=2) for c in colours], axis=0)


def test_colour_range_is_global_and_uses_the_max_channel_difference():
    image = _palette_image()
    np.testing.assert_array_equal(colour_range_mask(image, 1, 1, 10), _where(image, A, NEAR_A))
    np.testing.assert_array_equal(colour_range_mask(image, 1, 1, 9), _where(image, A))
    np.testing.assert_array_equal(colour_range_mask(image, 1, 1, 0), _where(image, A))
    np.testing.assert_array_equal(
        colour_range_mask(image, 1, 1, 40), _where(image, A, NEAR_A, FAR_A)
    )
    assert colour_range_mask(image, 5, 5, 255).all()


def test_colour_range_connected_keeps_the_clicked_region():
    image = _palette_image()
    expected = np.zeros((8, 10), dtype=bool)
    expected[0:2, 0:3] = True  # A and the touching NEAR_A, not the far A patch
    np.testing.assert_array_equal(colour_range_mask(image, 0, 0, 10, connected=True), expected)


def test_colour_range_accepts_pil_and_fractional_points():
    image = _palette_image()
    from_pil = colour_range_mask(Image.fromarray(image), 9.7, 7.2, DEFAULT_TOLERANCE)
    np.testing.assert_array_equal(from_pil, colour_range_mask(image, 9, 7))


@pytest.mark.parametrize(
    "x, y, words",
    [(10, 0, "outside"), (0, 8, "outside"), (-1, 0, "outside"), ("a", 0, "two numbers")],
)
def test_colour_range_rejects_points_outside(x, y, words):
    with pytest.raises(ValueError, match=words):
        colour_range_mask(_palette_image(), x, y)


@pytest.mark.parametrize("tolerance", [-1, 256, "wide", float("nan")])
def test_colour_range_rejects_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        colour_range_mask(_palette_image(), 0, 0, tolerance)


def test_non_rgb_arrays_are_rejected():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        colour_range_mask(np.zeros((4, 4), dtype=np.uint8), 0, 0)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        colour_range_mask(np.zeros((4, 4, 3), dtype=np.float32), 0, 0)


def _object_scene() -> tuple[np.ndarray, np.ndarray]:
    """Grey 20x24 image, a red object at rows 5..11, cols 6..13, another red one outside."""
    image = np.full((20, 24, 3), 120, dtype=np.uint8)
    image[5:12, 6:14] = (200, 30, 30)
    image[16:19, 20:23] = (200, 30, 30)
    image[3, 4] = (125, 118, 122)  # within tolerance of the grey: not an object
    obj = np.zeros((20, 24), dtype=bool)
    obj[5:12, 6:14] = True
    return image, obj


def test_colour_fallback_selects_what_differs_from_the_box_edge():
    image, obj = _object_scene()
    box = (3, 2, 17, 15)
    np.testing.assert_array_equal(box_object_mask(image, box), obj)
    np.testing.assert_array_equal(colour_box_mask(image, box), obj)
    # A box cutting through the object: only the part inside the box.
    clipped = obj.copy()
    clipped[:, 10:] = False
    np.testing.assert_array_equal(box_object_mask(image, (3, 2, 10, 15)), clipped)


class StubSegmenter:
    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.calls: list[tuple] = []

    def box_mask(self, image: Image.Image, box) -> np.ndarray:
        self.calls.append((image.size, tuple(box)))
        return self.mask


def test_box_uses_the_segmenter_when_it_finds_something():
    image, obj = _object_scene()
    found = np.zeros_like(obj)
    found[6, 7] = True
    segmenter = StubSegmenter(found)
    mask = box_object_mask(image, (-5, 2, 17.5, 15), segmenter)
    np.testing.assert_array_equal(mask, found)
    assert segmenter.calls == [((24, 20), (0, 2, 18, 15))]  # box validated and clipped


def test_box_falls_back_to_colour_when_the_segmenter_finds_nothing():
    image, obj = _object_scene()
    segmenter = StubSegmenter(np.zeros_like(obj))
    np.testing.assert_array_equal(box_object_mask(image, (3, 2, 17, 15), segmenter), obj)
    assert len(segmenter.calls) == 1


@pytest.mark.parametrize(
    "box, words",
    [
        ((10, 2, 10, 15), "empty or inverted"),
        ((12, 2, 3, 15), "empty or inverted"),
        ((30, 30, 40, 40), "outside"),
    ],
)
def test_box_rejects_bad_boxes(box, words):
    image, obj = _object_scene()
    segmenter = StubSegmenter(obj)
    with pytest.raises(ValueError, match=words):
        box_object_mask(image, box, segmenter)
    assert segmenter.calls == []

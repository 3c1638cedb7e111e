from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robustar_ls.data.regions import component_at, label_components, pixel_box, remove_specks


def _bfs_partition(mask: np.ndarray) -> set[frozenset[int]]:
    """Reference labelling: breadth-first search over 4-neighbours of equal value."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    parts = set()
    for sy in range(height):
        for sx in range(width):
            if seen[sy, sx]:
                continue
            seen[sy, sx] = True
            queue, part = deque([(sy, sx)]), []
            while queue:
                y, x = queue.popleft()
                part.append(y * width + x)
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if (
                        0 <= ny < height
                        and 0 <= nx < width
                        and not seen[ny, nx]
                        and mask[ny, nx] == mask[y, x]
                    ):
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            parts.add(frozenset(part))
    return parts


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    flat = labels.ravel()
    return {frozenset(np.flatnonzero(flat == k).tolist()) for k in np.unique(flat)}


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_label_components_matches_breadth_first_search(mask):
    labels, sizes = label_components(mask)
    assert _partition(labels) == _bfs_partition(mask)
    assert sizes.tolist() == np.bincount(labels.ravel()).tolist()


def test_label_components_serpentine_is_one_region():
    # One long winding path: the worst case for naive label propagation.
    mask = np.zeros((33, 20), dtype=bool)
    mask[::2, :] = True
    mask[1::4, -1] = True
    mask[3::4, 0] = True
    labels, sizes = label_components(mask)
    assert len(np.unique(labels[mask])) == 1
    assert sizes[labels[0, 0]] == mask.sum()


def test_remove_specks_flips_small_regions_of_both_values():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True  # big region: 100 px
    mask[5:7, 5:7] = False  # hole of 4 px inside it
    mask[16:18, 16:18] = True  # speck of 4 px outside it
    out = remove_specks(mask, min_region_px=5)
    expected = np.zeros((20, 20), dtype=bool)
    expected[2:12, 2:12] = True
    np.testing.assert_array_equal(out, expected)
    # Regions at the limit stay.
    np.testing.assert_array_equal(remove_specks(mask, min_region_px=4), mask)


def test_remove_specks_nested_speck_in_small_hole():
    mask = np.ones((12, 12), dtype=bool)
    mask[3:8, 3:8] = False  # hole of 25 - 1 = 24 px
    mask[5, 5] = True  # speck inside the hole
    out = remove_specks(mask, min_region_px=30)
    np.testing.assert_array_equal(out, np.ones((12, 12), dtype=bool))


def test_remove_specks_keeps_a_mask_of_one_region():
    for value in (True, False):
        mask = np.full((3, 3), value)
        np.testing.assert_array_equal(remove_specks(mask, min_region_px=100), mask)


def test_component_at():
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0:2] = True
    mask[4, 4] = True
    expected = np.zeros((5, 5), dtype=bool)
    expected[0, 0:2] = True
    np.testing.assert_array_equal(component_at(mask, 1, 0), expected)


def test_pixel_box_clips_and_widens():
    assert pixel_box((1, 2, 3, 4), 10, 10) == (1, 2, 3, 4)
    assert pixel_box((-5, 0.5, 3.2, 40), 10, 8) == (0, 0, 4, 8)


@pytest.mark.parametrize(
    "box, words",
    [
        ((3, 2, 3, 5), "empty or inverted"),
        ((4, 2, 3, 5), "empty or inverted"),
        ((20, 20, 30, 30), "outside"),
        ((1, 2, 3), "four"),
        (("a", 1, 2, 3), "four numbers"),
        ((0, 0, float("nan"), 3), "finite"),
    ],
)
def test_pixel_box_rejects(box, words):
    with pytest.raises(ValueError, match=words):
        pixel_box(box, 10, 10)

"""The annotation rule: which annotation counts, its Spurious regions, the image it shows."""

from __future__ import annotations

import numpy as np
import pytest

from robustar_ls.labelstudio.annotations import (
    choose_annotation,
    decode_regions,
    relpath_of_task,
    spurious_regions,
)
from tests.fake_ls import H, W, annotation, box, region

# -- the annotation rule --------------------------------------------------------------------


def test_choose_annotation_ignores_cancelled_and_takes_the_most_recent():
    old = annotation(1, "2024-05-01T10:00:00.000000Z", [])
    new = annotation(2, "2024-05-02T10:00:00.000000Z", [])
    newest_cancelled = annotation(3, "2024-05-03T10:00:00Z", [], cancelled=True)
    assert choose_annotation([new, old, newest_cancelled])["id"] == 2
    assert choose_annotation([old])["id"] == 1
    assert choose_annotation([newest_cancelled]) is None
    assert choose_annotation([]) is None


def test_choose_annotation_compares_times_not_strings_and_breaks_ties_by_id():
    # same instant written two ways; a later one without fractional seconds
    a = annotation(5, "2024-05-01T10:00:00.500000Z", [])
    b = annotation(4, "2024-05-01T10:00:00.500000+00:00", [])
    c = annotation(3, "2024-05-01T10:00:01Z", [])
    assert choose_annotation([a, b])["id"] == 5
    assert choose_annotation([a, b, c])["id"] == 3


def test_spurious_regions_keep_only_spurious_on_the_brush_tag():
    m = box(0, 2, 0, 2)
    keep = region(m)
    result = [keep, region(m, label="Model attention"), region(m, from_name="other")]
    assert spurious_regions(result, "spurious") == [keep]


def test_decode_regions_ors_regions():
    first, second = box(0, 2, 0, 3), box(1, 4, 2, 6)
    mask = decode_regions([region(first), region(second)])
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, (first > 0) | (second > 0))


def test_decode_regions_thresholds_alpha_at_half():
    graded = np.zeros((H, W), np.uint8)
    graded[0, 0], graded[0, 1] = 127, 128
    mask = decode_regions([region(graded)])
    assert not mask[0, 0] and mask[0, 1]


def test_decode_regions_refuses_mixed_sizes():
    with pytest.raises(ValueError, match="different sizes"):
        decode_regions([region(box(0, 1, 0, 1)), region(box(0, 1, 0, 1, h=H + 1))])


def test_relpath_of_task_uses_relpath_then_the_local_files_path():
    train = {"a/0.png", "b/x y.png"}
    assert relpath_of_task({"relpath": "a/0.png", "image": "junk"}, "image", train) == "a/0.png"
    url = "/data/local-files/?d=data%2Fds%2Ftrain%2Fb%2Fx%20y.png"
    assert relpath_of_task({"image": url}, "image", train) == "b/x y.png"
    test_url = "/data/local-files/?d=ds/test/a/0.png"
    assert relpath_of_task({"image": test_url}, "image", train) is None
    assert relpath_of_task({"relpath": "c/9.png"}, "image", train) is None

"""Tests for robustar_ls.labelstudio.brush against the Label Studio SDK's brush codec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustar_ls.labelstudio import brush
from robustar_ls.labelstudio.brush import decode as brush_decode

sdk = pytest.importorskip("label_studio_sdk.converter.brush")

SETTINGS = settings(max_examples=150, deadline=None)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def assert_matches_sdk(mask: np.ndarray) -> list[int]:
    """Encoder == mask2rle, decoder == decode_rle, and mask -> rle -> mask is identity."""
    expected = sdk.mask2rle(mask.copy())
    rle = brush.mask_to_rle(mask)
    assert rle == expected
    assert all(type(v) is int for v in rle)
    flat = brush.decode_rle_flat(rle)
    reference = sdk.decode_rle(rle)
    assert flat.dtype == np.uint8
    assert flat.shape == reference.shape
    np.testing.assert_array_equal(flat, reference)
    h, w = mask.shape
    back = brush.rle_to_mask(rle, h, w)
    assert back.dtype == np.uint8 and back.shape == (h, w)
    np.testing.assert_array_equal(back, mask)
    return rle


def bits_to_bytes(bits: str) -> list[int]:
    """Pad a bit string with zeros to whole bytes (as rle-pack does) and split it."""
    bits += "0" * (8 - len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def build_stream(
    num: int, word_size: int, sizes: list[int], records: list[tuple[int, int, list[int]]]
) -> list[int]:
    """Write an rle-pack stream bit by bit; records are ``(is_run, idx, words)``.

    A run record repeats ``words[1]`` ``words[0]`` times (``words == [n, value]``);
    a literal record copies ``words``.
    """
    bits = f"{num:032b}{word_size - 1:05b}" + "".join(f"{s - 1:04b}" for s in sizes)
    for is_run, idx, words in records:
        n = words[0] if is_run else len(words)
        payload = [words[1]] if is_run else words
        bits += f"{is_run:01b}{idx:02b}{n - 1:0{sizes[idx]}b}"
        bits += "".join(f"{v:0{word_size}b}" for v in payload)
    return bits_to_bytes(bits)


@st.composite
def rle_streams(draw: st.DrawFn) -> list[int]:
    """Valid streams with arbitrary word size, rle sizes and a mix of runs and literals."""
    word_size = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1, 16), min_size=4, max_size=4))
    value = st.integers(0, (1 << word_size) - 1)
    records: list[tuple[int, int, list[int]]] = []
    total = 0
    for _ in range(draw(st.integers(1, 12))):
        idx = draw(st.integers(0, 3))
        n = draw(st.integers(1, min(1 << sizes[idx], 40)))
        if draw(st.booleans()):
            records.append((1, idx, [n, draw(value)]))
        else:
            records.append((0, idx, draw(st.lists(value, min_size=n, max_size=n))))
        total += n
    is_run, _, words = records[-1]
    # A final run may overshoot the declared length (it is clipped); a literal may not.
    shortfall = draw(st.integers(0, words[0] - 1)) if is_run else 0
    return build_stream(total - shortfall, word_size, sizes, records)


# --------------------------------------------------------------------------- #
# encoder / decoder agreement with the SDK
# --------------------------------------------------------------------------- #

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))


@SETTINGS
@given(hnp.arrays(np.uint8, shapes, elements=st.sampled_from([0, 255])))
def test_binary_masks_match_sdk(mask: np.ndarray) -> None:
    assert_matches_sdk(mask)


@SETTINGS
@given(hnp.arrays(np.uint8, shapes))
def test_graded_masks_match_sdk(mask: np.ndarray) -> None:
    assert_matches_sdk(mask)


@SETTINGS
@given(
    st.lists(st.tuples(st.sampled_from([0, 1, 128, 255]), st.integers(1, 700)), max_size=8),
    st.integers(1, 64),
)
def test_long_runs_match_sdk(runs: list[tuple[int, int]], width: int) -> None:
    flat = np.concatenate([np.full(n, v, np.uint8) for v, n in runs] + [np.zeros(width, np.uint8)])
    flat = np.concatenate([flat, np.zeros(-flat.size % width, np.uint8)])
    assert_matches_sdk(flat.reshape(-1, width))


@SETTINGS
@given(hnp.arrays(np.uint8, st.integers(1, 300), elements=st.integers(0, 3)))
def test_flat_encoder_matches_sdk_encode_rle(values: np.ndarray) -> None:
    """Flat arrays have length-1 runs, which mask2rle never produces (literal records)."""
    rle = brush.encode_rle_flat(values)
    assert rle == sdk.encode_rle(values)
    np.testing.assert_array_equal(brush.decode_rle_flat(rle), values)


@SETTINGS
@given(rle_streams())
def test_decoder_matches_sdk_on_general_streams(rle: list[int]) -> None:
    np.testing.assert_array_equal(brush.decode_rle_flat(rle), sdk.decode_rle(rle))


@pytest.mark.parametrize(
    "run", [1, 2, 8, 9, 16, 17, 256, 257, 65535, 65536, 65537, 131072, 131073, 200001]
)
def test_run_length_boundaries(run: int) -> None:
    values = np.concatenate([np.full(run, 7, np.uint8), [1, 1, 2]]).astype(np.uint8)
    rle = brush.encode_rle_flat(values)
    assert rle == sdk.encode_rle(values)
    np.testing.assert_array_equal(brush.decode_rle_flat(rle), sdk.decode_rle(rle))


def _pattern(kind: str, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(h * 1000 + w)
    yy, xx = np.mgrid[:h, :w]
    if kind == "empty":
        return np.zeros((h, w), np.uint8)
    if kind == "full":
        return np.full((h, w), 255, np.uint8)
    if kind == "binary":
        return (rng.random((h, w)) < 0.5).astype(np.uint8) * 255
    if kind == "graded":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "checker":
        return (((yy + xx) % 2) * 255).astype(np.uint8)
    if kind == "stripes":
        return ((yy % 2) * 255).astype(np.uint8)
    if kind == "blob":
        inside = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2
        return np.where(inside, 255, 0).astype(np.uint8)
    if kind == "ramp":
        return ((xx * 7 + yy) % 256).astype(np.uint8)
    raise AssertionError(kind)


SMALL_SHAPES = [(1, 1), (1, 2), (1, 97), (97, 1), (7, 13), (13, 7), (64, 64)]
KINDS = ["empty", "full", "binary", "graded", "checker", "stripes", "blob", "ramp"]


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_explicit_patterns_match_sdk(shape: tuple[int, int], kind: str) -> None:
    assert_matches_sdk(_pattern(kind, *shape))


@pytest.mark.parametrize("kind", ["empty", "full", "stripes", "blob"])
def test_large_odd_mask_matches_sdk(kind: str) -> None:
    """513x257: runs longer than 2**16 values are split; uneven sizes."""
    assert_matches_sdk(_pattern(kind, 513, 257))


@pytest.mark.parametrize("kind", ["binary", "graded", "checker"])
def test_large_odd_mask_round_trip(kind: str) -> None:
    """Noisy 513x257 masks: round trip only (the SDK is too slow to run here)."""
    mask = _pattern(kind, 513, 257)
    np.testing.assert_array_equal(brush.rle_to_mask(brush.mask_to_rle(mask), 513, 257), mask)


def test_int64_mask_like_sdk() -> None:
    mask = _pattern("graded", 9, 11).astype(np.int64)
    assert brush.mask_to_rle(mask) == sdk.mask2rle(mask)


def test_non_contiguous_mask() -> None:
    mask = _pattern("graded", 20, 30)
    assert_matches_sdk(mask.T)
    assert_matches_sdk(mask[::2, 1::3])


def test_empty_mask_gives_header_only_stream() -> None:
    rle = brush.mask_to_rle(np.zeros((0, 5), np.uint8))
    assert len(rle) == 7
    assert brush.rle_to_mask(rle, 0, 5).shape == (0, 5)


def test_rle_to_mask_returns_alpha_channel() -> None:
    """A stream whose channels differ: the mask is channel 3, as SDK consumers use."""
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 10
    rgba[..., 3] = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rle = sdk.encode_rle(rgba.ravel())
    mask = brush.rle_to_mask(rle, 3, 4)
    np.testing.assert_array_equal(mask, rgba[..., 3])
    np.testing.assert_array_equal(mask, sdk.decode_rle(rle).reshape(3, 4, 4)[:, :, 3])


@pytest.mark.parametrize(
    "convert", [list, tuple, bytes, bytearray, np.array, lambda r: np.array(r, np.int32)]
)
def test_rle_input_types(convert) -> None:
    rle = brush.mask_to_rle(_pattern("blob", 10, 12))
    np.testing.assert_array_equal(brush.rle_to_mask(convert(rle), 10, 12), _pattern("blob", 10, 12))


def test_items_outside_byte_range_use_low_bits_like_sdk() -> None:
    rle = brush.mask_to_rle(_pattern("graded", 5, 6))
    shifted = [v + 256 if i % 2 else v - 512 for i, v in enumerate(rle)]
    np.testing.assert_array_equal(brush.decode_rle_flat(shifted), sdk.decode_rle(shifted))


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_decoder_blocks(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Records straddling the decoder's internal block boundaries."""
    monkeypatch.setattr(brush_decode, "_DECODE_BLOCK", block)
    for kind in ["graded", "blob", "stripes"]:
        mask = _pattern(kind, 17, 23)
        np.testing.assert_array_equal(brush.rle_to_mask(brush.mask_to_rle(mask), 17, 23), mask)
    literal = build_stream(50, 8, [3, 4, 8, 16], [(0, 2, list(range(50)))])
    np.testing.assert_array_equal(brush.decode_rle_flat(literal), np.arange(50))


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


def test_size_mismatch_raises_value_error() -> None:
    rle = brush.mask_to_rle(_pattern("blob", 10, 12))
    with pytest.raises(ValueError, match=r"expected 400 values \(10x10x4\).*declares 480"):
        brush.rle_to_mask(rle, 10, 10)
    with pytest.raises(ValueError, match="size mismatch"):
        brush.rle_to_mask(rle, 0, 0)


@pytest.mark.parametrize("kind", ["blob", "graded", "empty"])
def test_truncated_stream_raises_value_error(kind: str) -> None:
    rle = brush.mask_to_rle(_pattern(kind, 9, 14))
    full = brush.decode_rle_flat(rle)
    for k in range(len(rle) - 1):
        with pytest.raises(ValueError, match="truncated"):
            brush.decode_rle_flat(rle[:k])
    # Dropping the last byte only loses padding when that byte is a whole padding byte.
    try:
        np.testing.assert_array_equal(brush.decode_rle_flat(rle[:-1]), full)
        assert rle[-1] == 0
    except ValueError as exc:
        assert "truncated" in str(exc)


def test_truncated_stream_rle_to_mask() -> None:
    rle = brush.mask_to_rle(_pattern("graded", 9, 14))
    with pytest.raises(ValueError, match="truncated"):
        brush.rle_to_mask(rle[: len(rle) // 2], 9, 14)
    with pytest.raises(ValueError, match="truncated"):
        brush.rle_to_mask([], 9, 14)


def test_literal_overshoot_raises_value_error() -> None:
    rle = build_stream(2, 8, [3, 4, 8, 16], [(0, 0, [1, 2, 3])])
    with pytest.raises(IndexError):  # the SDK fails too, less clearly
        sdk.decode_rle(rle)
    with pytest.raises(ValueError, match="literal"):
        brush.decode_rle_flat(rle)


def test_run_overshoot_is_clipped_like_sdk() -> None:
    rle = build_stream(5, 8, [3, 4, 8, 16], [(1, 0, [3, 9]), (1, 0, [8, 4])])
    np.testing.assert_array_equal(brush.decode_rle_flat(rle), [9, 9, 9, 4, 4])
    np.testing.assert_array_equal(brush.decode_rle_flat(rle), sdk.decode_rle(rle))


def test_word_over_255_raises_value_error() -> None:
    rle = build_stream(3, 9, [3, 4, 8, 16], [(1, 0, [3, 300])])
    with pytest.raises(ValueError, match="> 255"):
        brush.decode_rle_flat(rle)
    ok = build_stream(3, 9, [3, 4, 8, 16], [(1, 0, [3, 200])])
    np.testing.assert_array_equal(brush.decode_rle_flat(ok), sdk.decode_rle(ok))


class _StrictInputStream(sdk.InputStream):
    """The SDK's bit reader, except that reading past the end fails.

    The SDK silently returns a short field when a read runs past the end of the
    data; with this reader it decodes exactly the streams we accept.
    """

    def read(self, size: int) -> int:
        if self.i + size > len(self.data):
            raise EOFError("read past the end")
        return super().read(size)


@SETTINGS
@given(st.integers(0, 300), st.binary(min_size=3, max_size=60))
def test_garbage_agrees_with_strict_sdk(num: int, tail: bytes) -> None:
    """Random streams: we decode iff the (strict) SDK decodes, and to the same values.

    Where the SDK fails (EOFError here, IndexError, OverflowError) we raise ValueError.
    """
    rle = list(num.to_bytes(4, "big") + tail)
    try:
        ours = brush.decode_rle_flat(rle)
    except ValueError:
        ours = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sdk, "InputStream", _StrictInputStream)
        try:
            reference = sdk.decode_rle(rle)
        except (EOFError, IndexError, OverflowError):
            reference = None
    assert (ours is None) == (reference is None)
    if ours is not None:
        np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.zeros((2, 2), bool), TypeError),
        (np.zeros((2, 2), np.float32), TypeError),
        (np.zeros((2, 2, 4), np.uint8), ValueError),
        (np.zeros(4, np.uint8), ValueError),
        (np.full((2, 2), 256, np.int64), ValueError),
        (np.full((2, 2), -1, np.int16), ValueError),
    ],
)
def test_bad_masks_rejected(mask: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        brush.mask_to_rle(mask)


def test_bad_rle_items_rejected() -> None:
    with pytest.raises(TypeError):
        brush.decode_rle_flat([1.5] * 10)
    with pytest.raises(ValueError):
        brush.decode_rle_flat(np.zeros((2, 8), np.uint8))

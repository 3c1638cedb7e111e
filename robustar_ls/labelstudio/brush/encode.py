"""Brush RLE encoder: a mask to Label Studio's ``rle-pack`` byte list, without Python loops."""

from __future__ import annotations

import numpy as np

from robustar_ls.labelstudio.brush.format import (
    _LONG_RUN,
    MAX_RECORD_RUN,
    RLE_SIZES,
    WORD_SIZE,
)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 1-D array into maximal runs of equal values.

    Returns ``(lengths, run_values)``; ``lengths`` is int64 and sums to ``values.size``.
    """
    n = values.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), values[:0]
    starts = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate((np.zeros(1, dtype=starts.dtype), starts))
    lengths = np.diff(np.append(starts, n)).astype(np.int64)
    return lengths, values[starts]


def _records(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn runs into SDK-style records.

    Mirrors ``encode_rle``: a run of length 1 becomes a one-word literal block;
    runs of 2..8, 9..16, 17..256 use length fields of 3, 4 and 8 bits; longer runs
    use the 16-bit field and are split into chunks of ``2**16`` plus a remainder
    (every chunk keeping the 16-bit field, even a short remainder).

    Returns ``(codes, nbits)``: each record's bits (uint64, right-aligned) and width.
    """
    idx = np.searchsorted(np.array([8, 16, _LONG_RUN]), lengths, side="left")
    chunks = (lengths - 1) // MAX_RECORD_RUN + 1
    if np.any(chunks > 1):
        group_end = np.cumsum(chunks)
        last_len = lengths - (chunks - 1) * MAX_RECORD_RUN
        chunk_len = np.full(int(group_end[-1]), MAX_RECORD_RUN, dtype=np.int64)
        chunk_len[group_end - 1] = last_len
        idx = np.repeat(idx, chunks)
        values = np.repeat(values, chunks)
        is_run = np.repeat(lengths > 1, chunks)
    else:
        chunk_len = lengths
        is_run = lengths > 1
    width = np.asarray(RLE_SIZES, dtype=np.uint64)[idx]
    word = np.uint64(WORD_SIZE)
    codes = (
        (is_run.astype(np.uint64) << (width + word + np.uint64(2)))
        | (idx.astype(np.uint64) << (width + word))
        | ((chunk_len - 1).astype(np.uint64) << word)
        | values.astype(np.uint64)
    )
    nbits = (width + word + np.uint64(3)).astype(np.int64)
    return codes, nbits


def _header_fields(num: int) -> tuple[list[int], list[int]]:
    """Return ``(codes, nbits)`` of the three header fields for ``num`` values."""
    sizes = 0
    for size in RLE_SIZES:
        sizes = (sizes << 4) | (size - 1)
    return [num, WORD_SIZE - 1, sizes], [32, 5, 4 * len(RLE_SIZES)]


def _pack_fields(codes: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """Concatenate variable-width bit fields (MSB first) into a padded byte array.

    Fields are 1..64 bits wide.  Each one lands in one big-endian 64-bit word or
    straddles two; the parts are OR-ed per word with ``reduceat``.  The result is
    padded the way the SDK pads: ``8 - total % 8`` zero bits, i.e. 1 to 8.
    """
    codes = codes.astype(np.uint64)
    ends = np.cumsum(nbits)
    total_bits = int(ends[-1]) if ends.size else 0
    nbytes = total_bits // 8 + 1
    offsets = ends - nbits
    word = offsets >> 6
    over = (offsets & 63) + nbits - 64  # > 0: bits spilling into the next word
    left = np.maximum(-over, 0).astype(np.uint64)
    right = np.maximum(over, 0).astype(np.uint64)
    head = np.where(over > 0, codes >> right, codes << left)
    out = np.zeros((nbytes + 7) // 8 + 1, dtype=np.uint64)
    if codes.size:
        firsts = np.flatnonzero(np.diff(word, prepend=-1))
        out[word[firsts]] = np.bitwise_or.reduceat(head, firsts)
    spill = np.flatnonzero(over > 0)
    # At most one field crosses each word boundary, so these words are distinct.
    out[word[spill] + 1] |= codes[spill] << (np.uint64(64) - right[spill])
    return out.astype(">u8").view(np.uint8)[:nbytes]


def encode_rle_flat(values: np.ndarray) -> list[int]:
    """Encode a flat uint8 array exactly like the SDK's ``encode_rle(values)``.

    Only the SDK defaults (word size 8, rle sizes ``(3, 4, 8, 16)``) are supported.
    Unlike the SDK, an empty array yields a valid header-only stream.

    Raises:
        TypeError: if ``values`` is not an integer array.
        ValueError: if ``values`` is not 1-D, has more than ``2**32 - 1`` entries or
            holds values outside ``0..255``.
    """
    flat = _as_uint8_values(values, ndim=1, what="values")
    if flat.size >= 1 << 32:
        raise ValueError(f"cannot encode {flat.size} values: the header holds at most 2**32 - 1")
    lengths, run_values = _runs(flat)
    codes, nbits = _records(lengths, run_values)
    head_codes, head_bits = _header_fields(int(flat.size))
    all_codes = np.concatenate((np.asarray(head_codes, dtype=np.uint64), codes))
    all_bits = np.concatenate((np.asarray(head_bits, dtype=np.int64), nbits))
    return _pack_fields(all_codes, all_bits).tolist()


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode a 2-D mask as Label Studio brush RLE, identical to the SDK's ``mask2rle``.

    Every pixel value is written to all four RGBA channels (so the mask is the
    alpha channel and the brush is drawn in gray levels), exactly as ``mask2rle``
    does.  Graded masks (any value 0..255) are allowed; a binary mask should use
    0 and 255.

    Args:
        mask: ``H x W`` array of dtype uint8 (or another integer dtype whose values
            lie in 0..255).  Boolean masks are rejected: convert with
            ``mask.astype(np.uint8) * 255``.

    Returns:
        The RLE as a list of ints in 0..255, ready for ``{"format": "rle", "rle": ...}``.

    Raises:
        TypeError: for non-integer or boolean masks.
        ValueError: if ``mask`` is not 2-D or holds values outside 0..255.
    """
    pixels = _as_uint8_values(mask, ndim=2, what="mask").ravel()
    num = pixels.size * 4
    if num >= 1 << 32:
        raise ValueError(f"mask too large: {num} RGBA values, the header holds at most 2**32 - 1")
    lengths, run_values = _runs(pixels)
    codes, nbits = _records(lengths * 4, run_values)
    head_codes, head_bits = _header_fields(num)
    all_codes = np.concatenate((np.asarray(head_codes, dtype=np.uint64), codes))
    all_bits = np.concatenate((np.asarray(head_bits, dtype=np.int64), nbits))
    return _pack_fields(all_codes, all_bits).tolist()


def _as_uint8_values(arr: np.ndarray, ndim: int, what: str) -> np.ndarray:
    """Validate an integer array of values in 0..255 and return it as uint8."""
    arr = np.asarray(arr)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        raise TypeError(f"{what} is boolean; use .astype(np.uint8) * 255 for a 0/255 mask")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must have an integer dtype (uint8), got {arr.dtype}")
    if arr.dtype == np.uint8:
        return arr
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{what} values must lie in 0..255, got range {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)

"""Vectorised codec for Label Studio's brush RLE format.

Label Studio stores ``BrushLabels`` masks as a list of byte values holding an
``rle-pack`` bit stream (https://github.com/thi-ng/umbrella, package ``rle-pack``)
over the flattened RGBA ``uint8`` image (``H * W * 4`` values).  The stream is
MSB-first and laid out as::

    header:  num (32 bits) | word_size - 1 (5 bits) | 4 x (rle_size - 1) (4 bits each)
    record:  x (1 bit) | idx (2 bits) | n - 1 (rle_sizes[idx] bits) | payload
             x == 1 -> payload is one word, repeated n times (a run)
             x == 0 -> payload is n words, copied verbatim (a literal block)

and padded with zero bits to a whole number of bytes (always at least one
padding bit, so a stream ending exactly on a byte boundary gets a full zero byte).

This module is a numpy re-implementation of ``label_studio_sdk.converter.brush``:

* :func:`mask_to_rle` produces exactly the same byte list as ``mask2rle``;
* :func:`decode_rle_flat` produces exactly the same array as ``decode_rle``
  for every stream that ``decode_rle`` decodes without reading past the end of
  the data; malformed streams raise :class:`ValueError` instead;
* :func:`rle_to_mask` decodes and returns the alpha channel as an ``H x W`` mask.

The encoder never loops in Python: runs come from a vectorised diff, records are
built as integer codes and OR-ed into 64-bit words.  The decoder looks up, for
*every* bit position, where a record starting there would end (a cached table
indexed by the record's first ``3 + max(rle_sizes)`` bits), follows that chain
from the end of the header with a tight Python loop (one step per record, the only
sequential part), and then extracts all words with numpy gathers.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["decode_rle_flat", "encode_rle_flat", "mask_to_rle", "rle_to_mask"]

#: Word size (bits per value) the SDK encoder writes.
WORD_SIZE = 8
#: Bit widths of the run-length field, selected by the 2-bit ``idx``.
RLE_SIZES = (3, 4, 8, 16)
#: Number of header bits: num, word_size - 1, four rle sizes - 1.
HEADER_BITS = 32 + 5 + 4 * 4
#: Longest run one record can hold with the widest length field (16 bits).
MAX_RECORD_RUN = 1 << 16
#: Runs longer than this use the widest length field (and may be split).
_LONG_RUN = 1 << 8
#: Bytes of stream per block when locating records (bounds the decoder's memory).
_DECODE_BLOCK = 1 << 18

RleInput = Sequence[int] | np.ndarray | bytes | bytearray


# --------------------------------------------------------------------------- #
# Encoder
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Decoder
# --------------------------------------------------------------------------- #


def _as_bytes(rle: RleInput) -> np.ndarray:
    """Convert RLE input to a uint8 array, keeping the low 8 bits of each item.

    The SDK decoder only ever looks at the low 8 bits of each item, so this does too.
    """
    if isinstance(rle, (bytes, bytearray, memoryview)):
        return np.frombuffer(rle, dtype=np.uint8)
    if isinstance(rle, np.ndarray) and rle.dtype == np.uint8 and rle.ndim == 1:
        return rle
    if isinstance(rle, list):
        try:  # fast path for the usual list of ints in 0..255
            return np.frombuffer(bytes(rle), dtype=np.uint8)
        except (TypeError, ValueError):
            pass
    try:
        arr = np.asarray(rle)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"RLE must be a flat sequence of byte values: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"RLE must be a flat sequence of byte values, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"RLE items must be integers, got dtype {arr.dtype}")
    return (arr.astype(np.int64) & 0xFF).astype(np.uint8)


def _padded(data: np.ndarray, extra: int = 8) -> np.ndarray:
    """``data`` followed by ``extra`` zero bytes, so windows may run past the end."""
    padded = np.zeros(data.size + extra, dtype=np.uint8)
    padded[: data.size] = data
    return padded


def _read_bits(padded: np.ndarray, pos: np.ndarray, width: int | np.ndarray) -> np.ndarray:
    """Read ``width`` (1..32, scalar or per position) bits MSB-first at bit positions ``pos``.

    ``padded`` is the stream with 8 trailing zero bytes (see :func:`_padded`);
    returns uint64.
    """
    rows = np.lib.stride_tricks.sliding_window_view(padded, 8)[pos >> 3]
    word = rows.view(">u8").ravel().astype(np.uint64) << (pos & 7).astype(np.uint64)
    return word >> (np.uint64(64) - np.asarray(width, dtype=np.uint64))


def _parse_header(data: np.ndarray) -> tuple[int, int, list[int]]:
    """Return ``(num, word_size, rle_sizes)`` from the 53-bit header."""
    if data.size * 8 < HEADER_BITS:
        raise ValueError(
            f"truncated RLE: {data.size} bytes cannot hold the {HEADER_BITS}-bit header"
        )
    head = int.from_bytes(data[:7].tobytes(), "big") >> (56 - HEADER_BITS)
    sizes = [((head >> (12 - 4 * k)) & 0xF) + 1 for k in range(4)]
    word_size = ((head >> 16) & 0x1F) + 1
    num = head >> 21
    return num, word_size, sizes


@lru_cache(maxsize=8)
def _record_length_table(word_size: int, sizes: tuple[int, ...]) -> np.ndarray:
    """Length in bits of a record, indexed by its first ``3 + max(sizes)`` bits.

    Those bits hold ``x``, ``idx`` and the whole length field, which is all the
    record length depends on.  Cached: nearly every stream uses the SDK header.
    """
    prefix_bits = 3 + max(sizes)
    prefix = np.arange(1 << prefix_bits, dtype=np.int64)
    top = prefix >> (prefix_bits - 3)
    width = np.asarray(sizes, dtype=np.int64)[top & 3]
    length_field = (prefix >> (prefix_bits - 3 - width)) & ((1 << width) - 1)
    n_words = np.where(top >= 4, 1, length_field + 1)
    table = 3 + width + n_words * word_size
    table.flags.writeable = False
    return table


def _next_table(padded: np.ndarray, first: int, stop: int, lengths: np.ndarray) -> np.ndarray:
    """For bit positions ``p`` in bytes ``first..stop-1``: where a record at ``p`` would end.

    ``lengths`` is :func:`_record_length_table`.  Positions are relative to bit
    ``8 * first``; the result may point past the block (or the data).
    """
    prefix_bits = int(lengths.size).bit_length() - 1
    count = stop - first
    # 32-bit windows shifted by up to 7 keep 25 valid bits >= prefix_bits (<= 19).
    view = np.lib.stride_tricks.sliding_window_view(padded[first : stop + 3], 4)
    win = np.ascontiguousarray(view).view(">u4").ravel().astype(np.uint32)
    bits = (win[:, None] << np.arange(8, dtype=np.uint32)[None, :]).reshape(-1)
    prefix = (bits >> np.uint32(32 - prefix_bits)).astype(np.intp)
    nxt = lengths[prefix]
    nxt += np.arange(count * 8, dtype=np.int64)
    return nxt


def _chain(padded: np.ndarray, nbytes: int, word_size: int, sizes: list[int]) -> np.ndarray:
    """Start bits of the records ``HEADER_BITS, next(HEADER_BITS), ...`` within the data.

    Works through the stream in blocks of ``_DECODE_BLOCK`` bytes to bound memory;
    following the chain is the one sequential step, one cheap Python iteration
    per record.
    """
    lengths = _record_length_table(word_size, tuple(sizes))
    parts = []
    pos = HEADER_BITS
    for first in range(0, nbytes, _DECODE_BLOCK):
        stop = min(first + _DECODE_BLOCK, nbytes)
        offset = first * 8
        if pos >= stop * 8:
            continue
        step = memoryview(_next_table(padded, first, stop, lengths))
        block = array("q")
        append = block.append
        rel = pos - offset
        end = len(step)
        while rel < end:
            append(rel)
            rel = step[rel]
        parts.append(np.frombuffer(block, dtype=np.int64) + offset)
        pos = rel + offset
    return np.concatenate(parts)


def _select_records(
    padded: np.ndarray, starts: np.ndarray, num: int, word_size: int, sizes: list[int], nbits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep the records needed to cover ``num`` values and validate them.

    Returns ``(starts, is_run, width, run_len)`` of the kept records.
    """
    head = _read_bits(padded, starts, 3).astype(np.int64)
    width = np.asarray(sizes, dtype=np.int64)[head & 3]
    run_len = _read_bits(padded, starts + 3, width).astype(np.int64) + 1
    covered = np.cumsum(run_len)
    last = int(np.searchsorted(covered, num, side="left"))
    if last == covered.size:
        done = int(covered[-1]) if covered.size else 0
        raise ValueError(f"truncated RLE: stream ends after {done} of {num} values")
    keep = slice(0, last + 1)
    starts, width, run_len, is_run = starts[keep], width[keep], run_len[keep], head[keep] >= 4
    payload = word_size if is_run[-1] else int(run_len[-1]) * word_size
    end = int(starts[-1]) + 3 + int(width[-1]) + payload
    if end > nbits:
        raise ValueError(f"truncated RLE: last record ends at bit {end}, data has {nbits} bits")
    if not is_run[-1] and int(covered[last]) > num:
        raise ValueError(f"corrupt RLE: last literal block writes past the {num} declared values")
    return starts, is_run, width, run_len


def _expand_records(
    padded: np.ndarray,
    starts: np.ndarray,
    is_run: np.ndarray,
    width: np.ndarray,
    run_len: np.ndarray,
    num: int,
    word_size: int,
) -> np.ndarray:
    """Decode validated records into ``num`` uint8 values."""
    # One "item" per word in the stream: 1 for a run, run_len for a literal block.
    n_items = np.where(is_run, 1, run_len)
    if n_items.size == int(is_run.sum()):  # only runs: one word per record
        words = _read_bits(padded, starts + 3 + width, word_size)
        repeats = run_len
    else:
        first_item = np.cumsum(n_items) - n_items
        record_of_item = np.repeat(np.arange(starts.size), n_items)
        within = np.arange(record_of_item.size) - first_item[record_of_item]
        word_pos = (starts + 3 + width)[record_of_item] + within * word_size
        words = _read_bits(padded, word_pos, word_size)
        repeats = np.where(is_run, run_len, 1)[record_of_item]
    if words.size and int(words.max()) > 255:
        raise ValueError(
            f"corrupt RLE: word size {word_size} yields value {int(words.max())} > 255"
        )
    return np.repeat(words.astype(np.uint8), repeats)[:num]


def decode_rle_flat(rle: RleInput) -> np.ndarray:
    """Decode a brush RLE stream to a flat uint8 array, like the SDK's ``decode_rle``.

    Supports any header (word size 1..32, any rle sizes).  As in the SDK, only the
    low 8 bits of each item of ``rle`` are used, data after the last needed record
    is ignored, and a final run that overshoots the declared length is clipped.

    Returns:
        uint8 array of length ``num`` (the header's value count), e.g. ``H * W * 4``.

    Raises:
        ValueError: if the stream is truncated (a field would be read past the end
            of the data), a literal block writes past the declared length, or a word
            exceeds 255 (all cases where the SDK raises or reads a partial field).
        TypeError: if ``rle`` holds non-integers.
    """
    data = _as_bytes(rle)
    num, word_size, sizes = _parse_header(data)
    if num == 0:
        return np.zeros(0, dtype=np.uint8)
    padded = _padded(data)
    starts = _chain(padded, data.size, word_size, sizes)
    records = _select_records(padded, starts, num, word_size, sizes, data.size * 8)
    return _expand_records(padded, *records, num, word_size)


def rle_to_mask(rle: RleInput, height: int, width: int) -> np.ndarray:
    """Decode a brush RLE to an ``height x width`` uint8 mask (the alpha channel).

    Equivalent to ``decode_rle(rle).reshape(height, width, 4)[:, :, 3]``, which is
    what the SDK's own consumers (``decode_from_annotation``, the COCO export) do.

    Raises:
        ValueError: if the stream's value count is not ``height * width * 4`` (checked
            from the header before decoding) or the stream is corrupt/truncated.
    """
    if height < 0 or width < 0:
        raise ValueError(f"height and width must be >= 0, got {height}x{width}")
    data = _as_bytes(rle)
    expected = height * width * 4
    num = _parse_header(data)[0]
    if num != expected:
        raise ValueError(
            f"RLE size mismatch: expected {expected} values ({height}x{width}x4), "
            f"the stream declares {num}"
        )
    flat = decode_rle_flat(data)
    if flat.size != expected:  # pragma: no cover - decode_rle_flat returns num values
        raise ValueError(f"RLE size mismatch: expected {expected} values, decoded {flat.size}")
    return np.ascontiguousarray(flat.reshape(height, width, 4)[:, :, 3])

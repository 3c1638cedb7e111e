"""Brush RLE decoder: Label Studio's ``rle-pack`` byte list back to values and masks."""

from __future__ import annotations

from array import array
from functools import lru_cache

import numpy as np

from robustar_ls.labelstudio.brush.format import HEADER_BITS, RleInput

#: Bytes of stream per block when locating records (bounds the decoder's memory).
_DECODE_BLOCK = 1 << 18


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
    flat = decode_rle_flat(data)  # exactly ``num`` values, or a ValueError
    return np.ascontiguousarray(flat.reshape(height, width, 4)[:, :, 3])

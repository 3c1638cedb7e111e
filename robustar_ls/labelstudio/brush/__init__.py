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

This package is a numpy re-implementation of ``label_studio_sdk.converter.brush``:

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

from robustar_ls.labelstudio.brush.decode import decode_rle_flat, rle_to_mask
from robustar_ls.labelstudio.brush.encode import encode_rle_flat, mask_to_rle
from robustar_ls.labelstudio.brush.format import RleInput

__all__ = ["RleInput", "decode_rle_flat", "encode_rle_flat", "mask_to_rle", "rle_to_mask"]

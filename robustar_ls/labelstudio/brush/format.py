"""The constants of Label Studio's brush RLE stream (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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

RleInput = Sequence[int] | np.ndarray | bytes | bytearray

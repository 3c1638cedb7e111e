"""Deprecated: Mask R-CNN moved to :mod:`robustar_ls.models.maskrcnn` (``Segmenter`` is now
:class:`~robustar_ls.models.maskrcnn.MaskRCNNSegmenter`), so that it is not mistaken for the
learned segmenter (:mod:`robustar_ls.models.spurious_segmenter`). Kept only for code that still
imports the old names; new code imports :mod:`robustar_ls.models.maskrcnn`."""

from __future__ import annotations

import warnings

from robustar_ls.models.maskrcnn import MaskRCNNSegmenter, MaskRCNNUnavailable

Segmenter = MaskRCNNSegmenter
SegmenterUnavailable = MaskRCNNUnavailable

warnings.warn(
    "robustar_ls.models.segmenter is deprecated: use robustar_ls.models.maskrcnn "
    "(MaskRCNNSegmenter, MaskRCNNUnavailable)",
    DeprecationWarning,
    stacklevel=2,
)

"""The brush labels robustar-ls reads and writes: one home for the names every layer shares."""

from __future__ import annotations

SPURIOUS_LABEL = "Spurious"
"""The brush label whose regions become the spurious-pixel masks."""

ATTENTION_LABEL = "Model attention"
"""The brush label of the saliency overlay (optional in a labeling config)."""

"""Typed builders for Label Studio prediction results (the ``result`` items of a prediction).

label-studio-sdk's ``Region`` does not carry the ``original_width``/``original_height``
a brush result needs, and validating every RLE integer through pydantic is slow for big masks,
so these are small frozen dataclasses with a ``to_dict`` giving exactly the JSON Label Studio
1.2x reads. Tests check their output with ``LabelInterface.validate_prediction``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


def region_id() -> str:
    """A fresh region id (Label Studio accepts any unique string)."""
    return uuid.uuid4().hex[:10]


class ResultItem(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BrushRegion:
    """A ``brushlabels`` region in Label Studio's RLE (see ``robustar_ls.labelstudio.brush``)."""

    from_name: str
    to_name: str
    rle: list[int]
    label: str
    width: int  # the original image's size in pixels
    height: int
    id: str = field(default_factory=region_id)
    readonly: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "brushlabels",
            "original_width": self.width,
            "original_height": self.height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": self.rle, "brushlabels": [self.label]},
            "readonly": self.readonly,
        }


@dataclass(frozen=True)
class TextAreaResult:
    """A ``textarea`` result (one text line), e.g. the prediction summary."""

    from_name: str
    to_name: str
    text: str
    id: str = field(default_factory=region_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "textarea",
            "value": {"text": [self.text]},
        }


@dataclass(frozen=True)
class Prediction:
    """One task's prediction, the shape of each item of ``/predict``'s ``results``."""

    model_version: str
    score: float | None
    result: list[ResultItem] = field(default_factory=list)
    error: str | None = None  # why this task got no result (Label Studio ignores the key)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model_version": self.model_version,
            "score": self.score,
            "result": [item.to_dict() for item in self.result],
        }
        if self.error:
            out["error"] = self.error
        return out

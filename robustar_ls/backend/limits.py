"""Per-request bounds of ``/predict``: how many tasks, how many decoded pixels, how large an
answer.

A request over a bound is still answered: the tasks beyond it get a prediction with an
``error`` saying which limit they hit, so Label Studio shows the others and can ask again.
Per-image limits (bytes, sides, aspect, pixels) live in :mod:`robustar_ls.backend.decoding`;
the request's time in :mod:`robustar_ls.backend.pacing`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from robustar_ls.labelstudio.results import Prediction


@dataclass(frozen=True)
class RequestLimits:
    max_tasks: int = 100
    max_pixels: int = 120_000_000  # decoded pixels of all the request's images together
    max_response_bytes: int = 32 * 1024 * 1024

    def split_tasks(self, tasks: Sequence[Any], version: str) -> tuple[list[Any], list[Prediction]]:
        """The tasks to predict, and an error prediction for each one beyond ``max_tasks``."""
        error = (
            f"over the limit of {self.max_tasks} tasks per request; ask for this task in "
            "another request"
        )
        refused = [Prediction(version, None, [], error) for _ in tasks[self.max_tasks :]]
        return list(tasks[: self.max_tasks]), refused

    def bound_response(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predictions in order until the answer would exceed ``max_response_bytes``; the
        rest replaced by an error (their result is dropped, not truncated)."""
        used, bounded = 0, []
        for prediction in predictions:
            size = len(json.dumps(prediction))
            if used + size > self.max_response_bytes:
                prediction = {
                    "model_version": prediction.get("model_version"),
                    "score": None,
                    "result": [],
                    "error": (
                        f"the answer would exceed {self.max_response_bytes} bytes with this "
                        "task's result; ask for it in a request with fewer tasks"
                    ),
                }
                size = len(json.dumps(prediction))
            used += size
            bounded.append(prediction)
        return bounded

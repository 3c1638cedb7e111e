"""``simulate --rounds R``: the expert paints in rounds, and each round's model picks the next.

The budget's ``round(budget x N)`` images are split into ``R`` shares as equal as possible (the
first rounds take the odd images: :func:`split_budget`). Round 1 ranks the training images
with the checkpoint exactly as the one-shot simulation does, and the expert paints the first
share of them. Each round then trains by the recipe on *every* mask painted so far; the next
round ranks the images nobody has picked yet with that round's model (its own test errors,
by ``order``: influence, loss or the seeded shuffle) and the expert paints the next share from
the top, and so on. The last round's model is the result.

**What a round trains from: the original checkpoint, with every mask so far.** A rebuild
starts from the architecture's initial weights (the same seeded ones every round), a
fine-tuning from the checkpoint's weights; never from the previous round's model. So the last
round trains exactly as a one-shot simulation with the same masks would (same recipe, same
epochs, same starting point): rounds against one shot compares *which* images got painted,
nothing else; the gap stays measured against the checkpoint both started from; and no mask gets
more epochs for having been painted early (fine-tuning the last model again on all masks would
give round 1's masks R times the training and let the drift of each fine-tuning compound). A
rebuild would be the same either way (its weights never come from the parent); a Label Studio
loop whose sync-train fine-tunes the served model in place differs from this simulation there.

Each round is one :func:`~robustar_ls.workflows.simulate.simulate` call on a composed ranking
(the images picked so far, then the new ranking of the rest), so painting, propagation, the
review sample (a share of each round's picks, where the recipe propagates), the recipe's choice
and the measures are the one-shot code's. ``rounds = 1`` is :func:`simulate` itself.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from robustar_ls.data.folders import ImageFolderSplits, in_class_turns
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.train.recipe import Recipe
from robustar_ls.workflows.simulate import SimulateError, check_request, rank_images, simulate
from robustar_ls.workflows.simulate_propagate import DEFAULT_REVIEW_SHARE, with_review_sample

log = logging.getLogger(__name__)


def split_budget(images: int, rounds: int) -> list[int]:
    """``images`` picks in ``rounds`` shares as equal as possible, the first taking the odd
    ones (7 in 3: 3, 2, 2); every share at least one image, or :class:`SimulateError`."""
    if rounds < 1:
        raise SimulateError(f"--rounds must be at least 1, got {rounds}")
    if rounds > images:
        raise SimulateError(
            f"--rounds {rounds} is more than the budget's {images} images: every round paints "
            f"at least one; use --rounds {max(images, 1)} or less, or a larger --budget"
        )
    base, odd = divmod(images, rounds)
    return [base + (1 if i < odd else 0) for i in range(rounds)]


def simulate_rounds(
    data_root: str | Path, checkpoint: str | Path, *, rounds: int = 1, **options: Any
) -> dict[str, Any]:
    """:func:`simulate` (its keyword ``options``) with the budget painted in ``rounds``.

    Returns the last round's summary (``budget``: the one asked) with ``rounds``: one entry per
    round (:func:`round_entry`); ``rounds = 1`` returns :func:`simulate`'s summary unchanged.
    ``ranking`` (a precomputed order) serves round 1 only; ``out`` receives the last model."""
    if rounds == 1:
        return simulate(data_root, checkpoint, **options)
    check_request(options["order"], options["budget"])
    data = ImageFolderSplits.open(Path(data_root), required=("train",))
    total = len(data.splits["train"])
    shares = split_budget(int(round(options["budget"] * total)), rounds)
    entries: list[dict[str, Any]] = []
    picked: list[str] = []
    model, ranking = Path(checkpoint), options.get("ranking")
    with tempfile.TemporaryDirectory(prefix="robustar-rounds-") as tmp:
        for number, share in enumerate(shares, start=1):
            if number > 1 or ranking is None:
                ranking = _ranking(data, model, options, Path(tmp) if number > 1 else None)
            rest = _rest(ranking, picked, share, options)
            last = number == len(shares)
            model = Path(tmp) / f"round-{number}.pt"
            inner = {
                **options,
                "budget": (len(picked) + share) / total,
                "ranking": picked + rest,
                "out": options.get("out") if last else model,
                "review_share": 0.0,  # drawn in ``rest``, from this round's share only
                "balance_classes": False,  # the same
            }
            summary = simulate(data_root, checkpoint, **inner)
            picked += rest[:share]
            entries.append(round_entry(number, summary))
            log.info("round %d/%d: %s", number, len(shares), round_text(entries[-1]))
    balanced = bool(options.get("balance_classes"))
    return {**summary, "budget": options["budget"], "balance_classes": balanced, "rounds": entries}


def _ranking(data: ImageFolderSplits, model: Path, options: dict[str, Any], tmp: Path | None):
    """Every training image in ``options["order"]`` for ``model``: round 1's influence features
    cached under the dataset as the one-shot's, a later round's (a temporary model) in ``tmp``."""
    ckpt = load_checkpoint(model, classes=data.classes)
    cache = tmp / "influence" if tmp else data.root / ".robustar" / "influence"
    return rank_images(
        options["order"],
        data,
        ckpt,
        seed=options.get("seed", 0),
        influence=options.get("influence"),
        cache_root=cache,
        progress=options.get("progress"),
    )


def _rest(ranking: list[str], picked: list[str], share: int, options: dict[str, Any]):
    """The images not picked yet in ``ranking``'s order, the classes taking turns where asked,
    the round's review sample drawn in where the recipe propagates (as the one-shot does)."""
    taken = set(picked)
    rest = [rel for rel in ranking if rel not in taken]
    if options.get("balance_classes"):
        rest = in_class_turns(rest)
    recipe = options.get("recipe") or Recipe()
    if options.get("propagate") is None and not recipe.propagates:
        return rest
    review = options.get("review_share")
    share_of_review = DEFAULT_REVIEW_SHARE if review is None else review
    return with_review_sample(rest, share, share_of_review, options.get("seed", 0))


def round_entry(number: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One round of the JSON: images picked and painted so far, the recipe that ran, the
    accuracies after, the gap recovered and the test split's worst group (None without)."""
    groups = (summary.get("groups") or {}).get("after") or {}
    return {
        "round": number,
        "picked": summary["picked"],
        "annotated": summary["annotated"],
        "spurious_annotated": summary["spurious_annotated"],
        "recipe": (summary.get("recipe") or {}).get("name"),
        "after": summary["after"],
        "gap_recovered": summary["gap_recovered"],
        "worst_group": (groups.get("test") or {}).get("worst_group"),
        "model_version": summary["model_version"],
    }


def round_text(entry: dict[str, Any]) -> str:
    """``12 of 16 picks painted so far, rebuild: test 0.812, gap recovered 0.74, worst ...``."""
    gap, worst = entry["gap_recovered"], entry["worst_group"]
    text = (
        f"{entry['annotated']} of {entry['picked']} picks painted so far, {entry['recipe']}: "
        f"test {entry['after'].get('test', float('nan')):.3f}, gap recovered "
        + ("n/a" if gap is None else f"{gap:.2f}")
    )
    return text + ("" if worst is None else f", worst group {worst:.2f}")

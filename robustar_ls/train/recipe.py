"""Which training a set of masks gets: Robustar's paired fine-tuning, or a rebuild.

A shortcut model has learned the cue *instead of* the object wherever the cue is on (nearly)
every training image. Fine-tuning it with a few paired images cannot unlearn that: the
unannotated images keep rewarding the cue, and the features to learn the object from are not
there (bench/README.md, "few masks": 5 % of masks recovered 0.00-0.02 of the gap, and so did
fine-tuning with every image paired by propagation). What works is to spread the expert's masks
to every image that shows the same cue (the learned segmenter, :mod:`robustar_ls.train.propagate`)
and train the architecture again from its initial weights with every such image paired: then no
image rewards the cue.

- ``rebuild``: propagate, then paired training from the initial weights (``REBUILD_DEFAULTS``);
- ``finetune``: paired fine-tuning of the served model on the expert's masks
  (``FINETUNE_DEFAULTS``; the original Robustar recipe);
- ``auto`` (the default): ``rebuild`` when the cue is common: the masks *spread* (the
  segmenter, trained on the expert's masks and negatives, confidently finds the cue on at least
  as many other images as the expert painted) or the masks already cover at least half of the
  training images (say every image was painted); the model has then likely learned the cue in
  place of the object. Otherwise ``finetune`` (the cue is rare or the segmenter is unsure:
  rebuilding would relearn it from the unpaired images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from robustar_ls.config import FINETUNE_DEFAULTS, ConfigError, TrainConfig

RECIPES = ("auto", "rebuild", "finetune")
# From scratch with every cue image paired: 20 epochs recovered 0.98 of the digits gap at
# spurious fraction 1.0 (30: 0.99) at two thirds of the time (bench/README.md, "few masks").
REBUILD_DEFAULTS = {"epochs": 20, "lr": 0.05, "batch_size": 16}
MIN_EXPERT_MASKS = 3  # fewer painted images teach the segmenter too little to spread
COMMON_SHARE = 0.5  # masks (painted + propagated) on this share of the images: a common cue


@dataclass(frozen=True)
class Recipe:
    """The requested recipe and the schedule each concrete recipe trains with."""

    name: str = "auto"
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE_DEFAULTS))
    rebuild: TrainConfig = field(default_factory=lambda: TrainConfig(**REBUILD_DEFAULTS))

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise ConfigError(f"unknown recipe {self.name!r}; choose one of {', '.join(RECIPES)}")

    @property
    def propagates(self) -> bool:
        """Whether the learned segmenter's masks are needed to choose or to train."""
        return self.name != "finetune"

    @classmethod
    def only(cls, name: str, train: TrainConfig) -> Recipe:
        """``name`` (not auto) trained with ``train``."""
        if name == "auto":
            raise ConfigError("Recipe.only needs a concrete recipe: rebuild or finetune")
        return cls(name, finetune=train, rebuild=train)


class Choice(NamedTuple):
    """The recipe that runs, its schedule, and why it was chosen (one line for logs)."""

    name: str  # "rebuild" or "finetune"
    train: TrainConfig
    reason: str

    @property
    def from_scratch(self) -> bool:
        return self.name == "rebuild"


def choose(recipe: Recipe, expert: int, propagated: int, images: int) -> Choice:
    """The recipe for ``expert`` painted images whose masks spread to ``propagated`` others,
    of ``images`` training images."""
    counts = f"{expert} painted, {propagated} propagated, of {images} images"
    if recipe.name == "rebuild":
        return Choice("rebuild", recipe.rebuild, f"rebuild as asked ({counts})")
    if recipe.name == "finetune":
        return Choice("finetune", recipe.finetune, f"fine-tune as asked ({counts})")
    if expert < MIN_EXPERT_MASKS:
        why = f"fewer than {MIN_EXPERT_MASKS} painted images to learn the cue from"
        return Choice("finetune", recipe.finetune, f"fine-tune: {why} ({counts})")
    if propagated >= expert or expert + propagated >= COMMON_SHARE * images:
        spread = "the masks spread" if propagated >= expert else "the masks cover most images"
        why = f"{spread}: the cue is common, so the model is rebuilt around the object"
        return Choice("rebuild", recipe.rebuild, f"rebuild: {why} ({counts})")
    why = "the masks do not spread: the cue is rare, so the model is fine-tuned"
    return Choice("finetune", recipe.finetune, f"fine-tune: {why} ({counts})")

"""The choice between a rebuild and a fine-tuning (robustar_ls/train/recipe.py)."""

from __future__ import annotations

import pytest

from robustar_ls.config import FINETUNE_DEFAULTS, ConfigError, TrainConfig
from robustar_ls.train.recipe import MIN_EXPERT_MASKS, REBUILD_DEFAULTS, Recipe, choose


def test_default_recipe_is_auto_with_each_schedule():
    recipe = Recipe()
    assert recipe.name == "auto" and recipe.propagates
    assert recipe.finetune == TrainConfig(**FINETUNE_DEFAULTS)
    assert recipe.rebuild == TrainConfig(**REBUILD_DEFAULTS)


@pytest.mark.parametrize(
    ("expert", "propagated", "name"),
    [
        (50, 950, "rebuild"),  # the cue on every image
        (50, 50, "rebuild"),  # spreads to as many as painted
        (50, 49, "finetune"),  # a rare cue
        (50, 0, "finetune"),  # the segmenter is unsure everywhere
        (1000, 0, "rebuild"),  # every image painted: nothing left to spread to, the cue common
        (500, 0, "rebuild"),  # half the images painted
        (499, 0, "finetune"),
        (MIN_EXPERT_MASKS - 1, 900, "finetune"),  # too few masks to learn the cue from
        (0, 0, "finetune"),  # no mask at all: plain fine-tuning, the control
    ],
)
def test_auto_rebuilds_only_when_the_cue_is_common(expert, propagated, name):
    choice = choose(Recipe(), expert, propagated, 1000)
    assert choice.name == name
    assert choice.from_scratch is (name == "rebuild")
    assert choice.train == (Recipe().rebuild if name == "rebuild" else Recipe().finetune)
    assert f"{expert} painted, {propagated} propagated, of 1000 images" in choice.reason


@pytest.mark.parametrize("name", ["rebuild", "finetune"])
def test_an_asked_recipe_is_kept_whatever_the_masks(name):
    for expert, propagated in ((0, 0), (50, 950), (50, 0)):
        assert choose(Recipe(name), expert, propagated, 1000).name == name


def test_only_trains_one_recipe_with_the_given_schedule():
    tiny = TrainConfig(epochs=1)
    recipe = Recipe.only("rebuild", tiny)
    assert choose(recipe, 0, 0, 10).train == tiny and not Recipe.only("finetune", tiny).propagates
    with pytest.raises(ConfigError, match="concrete recipe"):
        Recipe.only("auto", tiny)


def test_an_unknown_recipe_names_the_choices():
    with pytest.raises(ConfigError, match="auto, rebuild, finetune"):
        Recipe("scratch")

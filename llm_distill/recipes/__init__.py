"""Recipes: YAML files whose keys are ``DistillationConfig`` fields plus ``teacher``/``student``/``dataset``/
``cache``/``stages`` blocks (``schema``), and what running one means (``run``: train every stage, or cache the
teacher; ``finetune``: plain cross-entropy with the same data and student; ``resume``: where an interrupted run
picks up)."""

from .schema import Recipe, load_recipe, parse_overrides, stage_recipes

__all__ = ["Recipe", "load_recipe", "parse_overrides", "stage_recipes"]

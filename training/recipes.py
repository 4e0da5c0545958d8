"""The training recipes, listed in one place.

Each recipe is a class in :mod:`.text_recipes` (``altclip-kd``, ``mclip-trikd``: cached text features only) or
:mod:`.unet_recipes` (``pea``, ``mulan``, ``iap``: through the frozen denoiser). Both are imported here, and
only here, so every caller — the CLI, the ComfyUI node, tests — sees the same list; nothing registers itself
as a side effect of being imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidDataError
from .recipe_base import Batch, Recipe
from .text_recipes import AltClipKD, MClipTriKD, info_nce
from .unet_recipes import ImageAsPivot, MuLan, Pea

__all__ = ["Batch", "Recipe", "RECIPES", "RecipeInfo", "list_recipes", "get_recipe", "recipe_help",
           "AltClipKD", "MClipTriKD", "Pea", "MuLan", "ImageAsPivot", "info_nce"]

#: every recipe by name, in the order they are offered (text recipes first)
RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (AltClipKD, MClipTriKD, Pea, MuLan, ImageAsPivot)}

DEFAULT_RECIPE = AltClipKD.name


@dataclass(frozen=True)
class RecipeInfo:
    """What a user chooses a recipe by."""

    name: str
    approach: str
    loss: str
    needs: str  # "text only", "images + denoiser", "text only (images optional)"
    needs_images: bool
    needs_unet: bool
    uses_image_embeddings: bool


def list_recipes() -> list[RecipeInfo]:
    """Every recipe with what it needs, text recipes first."""
    return [RecipeInfo(cls.name, cls.approach, cls.loss_formula, cls.needs(), cls.needs_images, cls.needs_unet,
                       cls.uses_image_embeddings) for cls in RECIPES.values()]


def recipe_help() -> str:
    """One line per recipe (``name: needs``), for tooltips and ``--help``."""
    return "; ".join(f"{r.name}: {r.needs}" for r in list_recipes())


def get_recipe(name: str, **options) -> Recipe:
    """A recipe instance by name; ``options`` go to its constructor (loss weights)."""
    cls = RECIPES.get(name)
    if cls is None:
        raise InvalidDataError(f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return cls(**options)

"""The recipe list: one place imports every recipe module, and callers learn what a recipe needs from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from babelclip.training.recipes import RECIPES, get_recipe, list_recipes, recipe_help

TRAINING = Path(__file__).resolve().parents[1] / "training"


def test_every_recipe_is_listed_with_what_it_needs():
    listed = {r.name: r for r in list_recipes()}
    assert list(listed) == list(RECIPES) == ["altclip-kd", "mclip-trikd", "pea", "mulan", "iap"]
    assert listed["altclip-kd"].needs == "text only"
    assert listed["mclip-trikd"].needs == "text only (images optional)" and listed["mclip-trikd"].uses_image_embeddings
    for name in ("pea", "mulan", "iap"):
        assert listed[name].needs == "images + denoiser" and listed[name].needs_unet and listed[name].needs_images
    assert recipe_help().count(": ") == len(RECIPES)
    assert all(type(get_recipe(name)).name == name for name in RECIPES)


def test_a_fresh_process_sees_every_recipe_from_the_list_alone():
    """No recipe appears only after some other module happened to be imported."""
    code = "from babelclip.training.recipes import list_recipes; print(','.join(r.name for r in list_recipes()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ",".join(RECIPES)


def _local_imports(path: Path) -> set[str]:
    """Modules of training/ that ``path`` imports at module level or inside functions (relative imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & {p.stem for p in TRAINING.glob("*.py")}


def test_recipe_modules_import_no_cycle():
    modules = ("recipe_base", "text_recipes", "unet_recipes", "recipes")
    graph = {m: _local_imports(TRAINING / f"{m}.py") for m in modules}
    assert "recipes" not in graph["text_recipes"] | graph["unet_recipes"] | graph["recipe_base"], graph
    assert {"text_recipes", "unet_recipes"} <= graph["recipes"]
    assert graph["recipe_base"] & set(modules) == set(), graph

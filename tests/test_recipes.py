"""The recipe list: one place imports every recipe module, and callers learn what a recipe needs from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_altclip_kd_contrastive_term_is_infonce_over_the_batch():
    """contrastive_weight adds w * InfoNCE(adapter pooled, teacher pooled) to the MSE terms, and nothing else."""
    import torch

    from babelclip.models import FAMILIES, build_adapter
    from babelclip.training.recipe_base import Batch
    from babelclip.training.text_recipes import info_nce

    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(6, 5, 32, generator=g), torch.ones(6, 5), None, torch.randn(6, 768, generator=g),
                  teacher_mean=torch.randn(6, 768, generator=g))
    torch.manual_seed(0)
    adapter = build_adapter("linear", 32, FAMILIES["sd1"])
    with torch.no_grad():
        plain, plain_terms = get_recipe("altclip-kd", contrastive_weight=0.0).loss(adapter, batch)
        mixed, terms = get_recipe("altclip-kd", contrastive_weight=2.0, temperature=0.1).loss(adapter, batch)
        nce = info_nce(adapter(batch.hidden, batch.mask).pooled, batch.teacher_pooled, 0.1)
    assert "pooled_nce" not in plain_terms and terms["pooled_nce"] == pytest.approx(nce.item())
    assert mixed.item() == pytest.approx(plain.item() + 2.0 * nce.item(), rel=1e-5)


def test_infonce_does_not_count_rows_of_one_target_as_negatives():
    """Two translations (or code-switched copies) of one English prompt in a batch share its teacher target: each
    row's loss leaves its twin out of the negatives, in both directions, so neither is pushed from the target."""
    import torch

    from babelclip.training.text_recipes import info_nce

    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 16, generator=g)
    b = target[[0, 0, 1, 2]]  # rows 0 and 1: one prompt
    a = b + 0.1 * torch.randn(4, 16, generator=g)
    loss = info_nce(a, b, 0.1)

    logits = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T / 0.1
    per_row = []
    for i in range(4):
        twin = {0: 1, 1: 0}.get(i)
        keep = [j for j in range(4) if j != twin]
        row = logits[i, keep].log_softmax(0)[keep.index(i)]
        col = logits[keep, i].log_softmax(0)[keep.index(i)]
        per_row.append(-(row + col) / 2)
    assert loss.item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-5)
    # without twins it is the plain symmetric InfoNCE
    plain_logits = logits[[0, 2, 3]][:, [0, 2, 3]]
    plain = (torch.nn.functional.cross_entropy(plain_logits, torch.arange(3))
             + torch.nn.functional.cross_entropy(plain_logits.T, torch.arange(3))) / 2
    assert info_nce(a[[0, 2, 3]], b[[0, 2, 3]], 0.1).item() == pytest.approx(plain.item(), rel=1e-5)


def test_training_defaults_are_what_the_cli_and_the_node_offer():
    """The CLI's --arch default and recipe settings come from one place (the Train node's: the server test)."""
    import argparse

    from babelclip.training.cli import _add_train
    from babelclip.training.recipes import DEFAULT_ARCH, TRAINING_DEFAULTS, training_recipe

    sub = argparse.ArgumentParser().add_subparsers()
    _add_train(sub)
    train = sub.choices["train"]
    assert train.get_default("arch") == DEFAULT_ARCH and train.get_default("recipe") == "altclip-kd"
    assert training_recipe("altclip-kd").contrastive_weight == TRAINING_DEFAULTS["altclip-kd"]["contrastive_weight"]
    assert get_recipe("altclip-kd").contrastive_weight == 0.0  # the paper's loss, as the benchmarks name it
    assert training_recipe("altclip-kd", contrastive_weight=0.5).contrastive_weight == 0.5

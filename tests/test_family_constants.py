"""The family description is the one place that says what a family is (issue 11.3).

No module of the core or the nodes may write a family's context length, a tower width or a family name as a
literal: each reads it from ``babelclip.models.families``. A few literals that look alike but mean something
else are allowed below, each with its reason.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from babelclip.models import FAMILIES

REPO = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("models", "training", "nodes")
DESCRIPTION = REPO / "models" / "families.py"

ALLOWED = {
    # models/adapters.py is another module's: its defaults are architecture sizes, not a family's
    ("models/adapters.py", 1024): "MLP adapter hidden width default",
    ("models/adapters.py", 768): "resampler's internal transformer width default",
    ("models/tiny.py", "sd1"): "the tiny checkpoint is an SD1.x layout on purpose; its sizes come from FAMILIES",
    ("nodes/encode.py", 1024): "image-size defaults of the SDXL node (as CLIPTextEncodeSDXL), not a width",
    ("models/convert.py", 4096): "InternVL-14B's text width (MuLan's encoder), not a family's",
    ("models/adapter_file.py", 4096): "the most tensors an adapter file may hold, a count",
    ("nodes/training.py", 4096): "the largest batch size the Train node offers, a count",
    ("models/encoder.py", 4096): "the most values of a tensor the encoder's weights digest reads, a count",
    # the converter's hints name the peers' encoders by their hidden widths
    ("models/convert.py", 768): "AltCLIP text model's width (PEA-Diffusion encoder hint)",
    ("models/convert.py", 1024): "XLM-R-large / Chinese-CLIP-H width (PEA-Diffusion encoder hint)",
    ("models/convert.py", 2048): "mT5-XL width (PEA-Diffusion encoder hint)",
}


def _forbidden() -> tuple[set[int], set[str]]:
    numbers = {f.context_tokens for f in FAMILIES.values()}
    numbers |= {f.cond_dim for f in FAMILIES.values()} | {f.pooled_dim for f in FAMILIES.values()}
    numbers |= {t.width for f in FAMILIES.values() for t in f.towers}
    return numbers, set(FAMILIES)


def _literals(path: pathlib.Path):
    """(line, value) of every int / str literal that could be a family constant; ``1024 ** n`` and
    ``n * 1024`` (byte sizes) are arithmetic, not widths."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or type(node.value) not in (int, str):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, (ast.Mult, ast.Pow)) and node.value == 1024:
            continue
        yield node.lineno, node.value


def find_family_literals(root: pathlib.Path = REPO) -> list[str]:
    numbers, names = _forbidden()
    found = []
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            if path == root / "models" / "families.py":
                continue
            rel = path.relative_to(root).as_posix()
            for line, value in _literals(path):
                hit = value in numbers if type(value) is int else value in names
                if hit and (rel, value) not in ALLOWED:
                    found.append(f"{rel}:{line}: {value!r}")
    return found


def test_no_module_hard_codes_a_family_constant():
    assert find_family_literals() == [], "read these from babelclip.models.families (FAMILIES / TargetFamily)"


@pytest.mark.parametrize("literal", ["77", "1280", '"sdxl"'])
def test_the_check_catches_a_new_hard_coded_constant(tmp_path, literal):
    for folder in SCANNED:
        (tmp_path / folder).mkdir()
    (tmp_path / "models" / "families.py").write_text("CONTEXT = 77\n")
    (tmp_path / "nodes" / "new_node.py").write_text(f"x = {literal}\nsize = 4 * 1024\n")
    assert find_family_literals(tmp_path) == [f"nodes/new_node.py:1: {ast.literal_eval(literal)!r}"]


def test_every_allowed_literal_is_still_there():
    """An allow-list entry that no longer matches anything is removed, so the list stays as small as it can."""
    seen = set()
    for folder in SCANNED:
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            seen |= {(rel, value) for _, value in _literals(path)}
    assert set(ALLOWED) <= seen, set(ALLOWED) - seen


def test_family_sizes_follow_from_the_towers():
    for family in FAMILIES.values():
        assert family.cond_dim == sum(t.width for t in family.towers if t.cond) == sum(family.parts)
        assert family.pooled_dim == sum(t.width for t in family.towers if t.pooled)
        assert family.host_width == (family.token_width or family.cond_dim)
        assert family.prediction in ("eps", "v", "flow")

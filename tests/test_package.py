"""Packaging: layout, import without ComfyUI, lazy heavy imports, registry metadata, relative imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]


def test_layout():
    for name in ("__init__.py", "nodes", "training", "models", "tests", "install.py", "README.md",
                 "pyproject.toml", "requirements.txt", "example_workflows", ".ci/run"):
        assert (REPO / name).exists(), name


def test_pyproject_installs_babelclip_and_has_comfy_registry_section():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "babelclip"
    assert meta["tool"]["setuptools"]["package-dir"] == {"babelclip": "."}
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "BabelCLIP" and comfy["requires-comfyui"]
    assert not any(d.startswith("torch") for d in meta["project"]["dependencies"])


def test_requirements_never_pin_torch():
    lines = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines() if l.strip() and l[0] != "#"]
    assert lines and not any(re.match(r"torch\b", l) for l in lines)


def test_import_without_comfyui_is_light_and_exposes_no_nodes():
    code = ("import sys, babelclip, babelclip.models, babelclip.training, babelclip.errors; "
            "print(len(babelclip.NODE_CLASS_MAPPINGS), 'transformers' in sys.modules, 'comfy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False", "False"]


def test_no_bare_imports_of_package_folders():
    bare = re.compile(r"^\s*(import|from)\s+(models|nodes|training|errors)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in SOURCES if bare.search(p.read_text())]
    assert offenders == []


#: top-level modules of host applications: ComfyUI (comfy, folder_paths, its nodes.py, ...) and Automatic1111/Forge
HOSTS = {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "execution", "server",
         "node_helpers", "latent_preview", "modules", "ldm_patched", "backend"}


def _imported(tree, module: str) -> list[tuple[int, str]]:
    """Every module an ``import`` anywhere in ``tree`` names, relative ones resolved against ``module``."""
    import ast

    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # from .. import nodes
    return found


def layering_violations(path: Path, module: str) -> list[str]:
    """Imports of the host glue (babelclip.nodes) or of a host application from one core module."""
    import ast

    bad = []
    for line, name in _imported(ast.parse(path.read_text(encoding="utf-8")), module):
        parts = name.split(".")
        if parts[0] in HOSTS or parts[:2] == ["babelclip", "nodes"]:
            bad.append(f"{path.name}:{line}: {name}")
    return bad


def _core_modules():
    for p in SOURCES:
        rel = p.relative_to(REPO)
        if rel.parts[0] in ("models", "training"):
            yield p, ".".join(["babelclip", *rel.with_suffix("").parts])


def test_core_never_imports_the_glue_or_a_host():
    core = list(_core_modules())
    assert len(core) > 10 and [v for p, m in core for v in layering_violations(p, m)] == []


BAD_IMPORTS = ["from ..nodes import comfy_runtime", "from .. import nodes", "from ...nodes.comfy_runtime import adapter_dirs",
               "import babelclip.nodes.training", "from babelclip import nodes", "import folder_paths",
               "import comfy.model_management as mm", "from modules import shared", "from nodes import CLIPTextEncode",
               "def late():\n    import comfy.utils"]


def test_the_layering_check_catches_every_kind_of_import(tmp_path):
    """Each bad import, put in a copy of a core module (here, not in the repository), is reported."""
    original = (REPO / "training" / "pipeline.py").read_text(encoding="utf-8")
    for i, line in enumerate(BAD_IMPORTS):
        copy = tmp_path / f"bad{i}.py"
        copy.write_text(original + "\n" + line + "\n", encoding="utf-8")
        assert layering_violations(copy, "babelclip.training.pipeline"), line
    fine = tmp_path / "fine.py"
    fine.write_text("from ..models import load_encoder\nfrom .data import Pair\nfrom .. import errors\n"
                    "import torch\nfrom ..models.files import atomic_write\n", encoding="utf-8")
    assert layering_violations(fine, "babelclip.training.fine") == []


def test_errors_are_typed():
    import babelclip.errors as errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.BabelClipError)
    assert not re.search(r"raise Exception\(", "\n".join(p.read_text() for p in SOURCES))


def test_example_workflows_are_valid_ui_json():
    files = sorted((REPO / "example_workflows").glob("*.json"))
    names = {f.stem for f in files}
    assert any("sd15" in n for n in names) and any("sdxl" in n for n in names)
    for f in files:
        wf = json.loads(f.read_text())
        assert {"nodes", "links", "version"} <= set(wf), f.name
        ids = {n["id"] for n in wf["nodes"]}
        for link in wf["links"]:
            _, src, _, dst, _, _ = link
            assert src in ids and dst in ids, (f.name, link)
        types = {n["type"] for n in wf["nodes"]}
        assert "BabelCLIPLoadEncoder" in types and types & {"BabelCLIPLoadAdapter", "BabelCLIPTrainAdapter"}
        assert types & {"BabelCLIPTextEncode", "BabelCLIPTextEncodeSDXL", "BabelCLIPTextEncodeFlux"}

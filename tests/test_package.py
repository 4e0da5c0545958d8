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


def test_core_never_imports_comfyui():
    comfy = re.compile(r"^\s*(import|from)\s+(comfy|folder_paths|nodes|execution|server)\b", re.M)
    core = [p for p in SOURCES if p.parts[len(REPO.parts)] in ("models", "training")]
    assert core and [str(p) for p in core if comfy.search(p.read_text())] == []


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
        assert types & {"BabelCLIPTextEncode", "BabelCLIPTextEncodeSDXL"}

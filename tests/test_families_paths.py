"""Family lookup, and path confinement of workflow names (detection from ComfyUI keys: tests/integration/test_family_detection.py)."""

from __future__ import annotations

import os

import pytest

from babelclip.errors import InvalidModelFileError, UnsafePathError, UnsupportedModelError
from babelclip.models import get_family
from babelclip.models.paths import list_files, list_model_folders, resolve_inside


def test_unknown_family_name():
    with pytest.raises(UnsupportedModelError, match="sd1, sd2, sdxl, sd3, flux"):
        get_family("hidream")


@pytest.fixture
def model_dirs(tmp_path):
    base = tmp_path / "models" / "babelclip"
    (base / "sub").mkdir(parents=True)
    (base / "a.safetensors").write_bytes(b"x")
    (base / "sub" / "b.safetensors").write_bytes(b"x")
    (base / "notes.txt").write_text("x")
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"x")
    os.symlink(outside, base / "link.safetensors")
    enc = tmp_path / "models" / "clip"
    (enc / "xlmr").mkdir(parents=True)
    (enc / "xlmr" / "config.json").write_text("{}")
    (enc / "org" / "labse").mkdir(parents=True)
    (enc / "org" / "labse" / "config.json").write_text("{}")
    (enc / "empty").mkdir()
    return base, enc


def test_resolve_inside_accepts_names_in_the_folder(model_dirs):
    base, _ = model_dirs
    assert resolve_inside([str(base)], "a.safetensors") == str(base / "a.safetensors")
    assert resolve_inside(["/nonexistent", str(base)], "sub/b.safetensors").endswith("b.safetensors")


@pytest.mark.parametrize("name", ["../secret.safetensors", "sub/../../secret.safetensors", "/etc/passwd",
                                  "..\\secret.safetensors", "C:\\x.safetensors", "", "a\x00.safetensors"])
def test_resolve_inside_refuses_escapes(model_dirs, name):
    base, _ = model_dirs
    with pytest.raises(UnsafePathError):
        resolve_inside([str(base)], name, "adapter")


def test_symlink_out_of_the_folder_is_refused(model_dirs):
    base, _ = model_dirs
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_inside([str(base)], "link.safetensors", "adapter")


def test_missing_name(model_dirs):
    base, _ = model_dirs
    with pytest.raises(InvalidModelFileError, match="not found"):
        resolve_inside([str(base)], "nope.safetensors", "adapter")


def test_listings(model_dirs):
    base, enc = model_dirs
    assert list_files([str(base)], (".safetensors",)) == ["a.safetensors", "link.safetensors", "sub/b.safetensors"]
    assert list_model_folders([str(enc), "/nonexistent"]) == ["org/labse", "xlmr"]

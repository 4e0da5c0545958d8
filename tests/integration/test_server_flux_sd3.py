"""Flux and SD3 in a running current ComfyUI (issue 13.6): tiny random Flux and SD3 denoisers that ComfyUI's own
UNETLoader detects and loads, sampled one step with BabelCLIP conditioning (no T5, no CLIP loaded anywhere in the
graph), decoded by a random TAESD and saved; and a Flux adapter on an SDXL text encoder, refused by name.

Needs ``COMFYUI_PATH`` (a ComfyUI of 2024-08 or later; the 2024-03 tree of the other integration tests predates
both families). The models are built once with that ComfyUI's classes (flux_sd3_models.py) and cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from babelclip.models import FAMILIES, build_adapter, save_adapter

from .comfyui import CACHE, ComfyServer, prepare

pytestmark = pytest.mark.integration

COMFYUI = os.environ.get("COMFYUI_PATH")
MODELS = CACHE / "flux-sd3-tiny-v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory, encoder_dirs, encoders):
    if not COMFYUI or not (Path(COMFYUI) / "comfy" / "ldm" / "flux").is_dir():
        pytest.skip("needs COMFYUI_PATH: a ComfyUI checkout with Flux and SD3 (2024-08 or later)")
    subprocess.run([sys.executable, str(Path(__file__).with_name("flux_sd3_models.py")), str(MODELS)], check=True,
                   env={**os.environ, "COMFYUI_PATH": COMFYUI}, timeout=1200, capture_output=True)
    root = prepare(Path(COMFYUI).resolve(), tmp_path_factory.mktemp("comfyui-current") / "ComfyUI")
    for sub in ("diffusion_models", "vae_approx"):
        (root / "models" / sub).mkdir(parents=True, exist_ok=True)
    for name in ("flux-tiny.safetensors", "sd3-tiny.safetensors"):
        (root / "models" / "diffusion_models" / name).symlink_to(MODELS / name)
    for f in (MODELS / "vae_approx").iterdir():
        (root / "models" / "vae_approx" / f.name).symlink_to(f)
    for name in ("clip_l_sdxl.safetensors", "clip_g_sdxl.safetensors"):
        (root / "models" / "text_encoders" / name).symlink_to(MODELS / name)
    shutil.copytree(encoder_dirs["xlm-roberta"], root / "models" / "text_encoders" / "tiny-xlmr")
    enc = encoders["xlm-roberta"]
    for family in ("flux", "sd3"):
        torch.manual_seed(0)
        adapter = build_adapter("mlp", enc.info.hidden_size, FAMILIES[family])
        save_adapter(adapter, root / "models" / "babelclip" / f"tiny-{family}.safetensors",
                     {"encoder": enc.info, "family": family})
    s = ComfyServer(root, "COMFYUI_PATH")
    yield s
    s.stop()


def _graph(family: str, text: str, prefix: str) -> dict:
    flux = family == "flux"
    encode = ({"class_type": "BabelCLIPTextEncodeFlux", "inputs": {"guidance": 3.5}} if flux else
              {"class_type": "BabelCLIPTextEncode", "inputs": {}})
    encode["inputs"].update(encoder=["2", 0], adapter=["3", 0], text=text)
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{family}-tiny.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "BabelCLIPLoadEncoder", "inputs": {"encoder_name": "tiny-xlmr"}},
        "3": {"class_type": "BabelCLIPLoadAdapter", "inputs": {"adapter_name": f"tiny-{family}.safetensors"}},
        "4": encode,
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "seed": 7,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "taef1" if flux else "taesd3"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix}},
    }


def _image(server, entry) -> "torch.Tensor":
    import numpy as np
    from PIL import Image

    (image,) = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    path = server.root / "output" / image.get("subfolder", "") / image["filename"]
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_tiny_model_samples_with_babelclip_conditioning(server, family):
    """One step through ComfyUI's own Flux / MMDiT with BabelCLIP's conditioning: an image is written, and
    another prompt (same seed) gives another image, so the conditioning reaches the denoiser."""
    first = server.run(_graph(family, "一只红猫坐在沙发上", f"{family}_a"), timeout=600)
    assert first["status"]["status_str"] == "success", first["status"]
    second = server.run(_graph(family, "ein blaues Auto im Regen", f"{family}_b"), timeout=600)
    assert second["status"]["status_str"] == "success", second["status"]
    a, b = _image(server, first), _image(server, second)
    assert a.shape == b.shape == (64, 64, 3)
    assert (a - b).abs().mean() > 0.5  # 8-bit pixel values


def test_flux_adapter_on_an_sdxl_text_encoder_is_refused_by_name(server):
    graph = {
        "1": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l_sdxl.safetensors",
                                                         "clip_name2": "clip_g_sdxl.safetensors", "type": "sdxl"}},
        "2": {"class_type": "BabelCLIPLoadEncoder", "inputs": {"encoder_name": "tiny-xlmr"}},
        "3": {"class_type": "BabelCLIPLoadAdapter", "inputs": {"adapter_name": "tiny-flux.safetensors"}},
        "4": {"class_type": "BabelCLIPTextEncodeFlux", "inputs": {
            "encoder": ["2", 0], "adapter": ["3", 0], "text": "a cat", "clip": ["1", 0], "guidance": 3.5}},
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    entry = server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "error"
    (error,) = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    assert "Flux" in error["exception_message"] and "SDXL" in error["exception_message"], error
    assert error["exception_type"].endswith("IncompatibleAdapterError")
    assert server.alive()


def test_flux_example_workflow_runs_as_the_frontend_queues_it(server):
    """example_workflows/babelclip_flux_any_language.json converted to an API prompt the way the frontend does;
    only what the test server lacks changes (model, VAE, encoder and adapter names, size, steps)."""
    import json

    from .test_example_workflows_server import FOLDER, to_api

    wf = json.loads((FOLDER / "babelclip_flux_any_language.json").read_text(encoding="utf-8"))
    prompt = to_api(wf, server.get("/object_info"))
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    by_type["UNETLoader"]["unet_name"] = "flux-tiny.safetensors"
    by_type["VAELoader"]["vae_name"] = "taef1"
    by_type["BabelCLIPLoadEncoder"]["encoder_name"] = "tiny-xlmr"
    by_type["BabelCLIPLoadAdapter"]["adapter_name"] = "tiny-flux.safetensors"
    by_type["EmptyLatentImage"].update(width=64, height=64)
    by_type["KSampler"]["steps"] = 1
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert _image(server, entry).shape == (64, 64, 3)

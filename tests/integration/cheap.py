"""A cheap workflow for many prompts: BabelCLIP encode -> a stock output node, no sampling.

A 1-step KSampler on the random SD1.5 costs seconds per prompt on CPU (the UNet's weights are read
twice per step), too slow for hundreds of prompts. The cheapest stock route from CONDITIONING to an
output node is ``SD_4XUpscale_Conditioning`` (takes positive/negative CONDITIONING and an IMAGE, returns
a LATENT) into ``SaveLatent``: both exist in the 2024 ComfyUI and in current ones, and ComfyUI runs every
node upstream of an output, so the BabelCLIP nodes really execute. The CLIP is the SD1.5 CLIP-L text
encoder loaded alone with ``CLIPLoader`` (about 0.5 GB instead of the whole 2 GB checkpoint): it is the
family check and the clip_mix source.
"""

from __future__ import annotations

import os
from pathlib import Path

CLIP_FILE = "sd15-clip-l.safetensors"
ENCODER = "tiny-xlmr"
ADAPTER = "tiny-sd1.safetensors"

# Node ids of cheap_graph, for tests that look at which nodes ran or were cached.
CLIP_NODE, ENCODER_NODE, ADAPTER_NODE, ENCODE_NODE = "1", "2", "3", "4"


def link_clip(root: Path, sd15_folder: str) -> None:
    """Put the SD1.5 text encoder of the cached random model into models/clip (a link, no copy)."""
    target = root / "models" / "clip" / CLIP_FILE
    if not target.exists():
        os.symlink(Path(sd15_folder) / "text_encoder" / "model.safetensors", target)


def cheap_graph(text: str, *, prefix: str = "babel_cheap", clip_mix: str = "off", encoder: str = ENCODER,
                adapter: str = ADAPTER) -> dict:
    """CLIPLoader + BabelCLIP load/encode -> SD_4XUpscale_Conditioning -> SaveLatent (an 8x8 image: ~free)."""
    return {
        CLIP_NODE: {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion"}},
        ENCODER_NODE: {"class_type": "BabelCLIPLoadEncoder", "inputs": {"encoder_name": encoder}},
        ADAPTER_NODE: {"class_type": "BabelCLIPLoadAdapter", "inputs": {"adapter_name": adapter}},
        ENCODE_NODE: {"class_type": "BabelCLIPTextEncode", "inputs": {
            "encoder": [ENCODER_NODE, 0], "adapter": [ADAPTER_NODE, 0], "text": text, "clip": [CLIP_NODE, 0],
            "clip_mix": clip_mix, "clip_strength": 0.3, "encoder_layer": "from adapter"}},
        "5": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "6": {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
            "images": ["5", 0], "positive": [ENCODE_NODE, 0], "negative": [ENCODE_NODE, 0],
            "scale_ratio": 1.0, "noise_augmentation": 0.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 2], "filename_prefix": f"latents/{prefix}"}},
    }


def messages(entry: dict, kind: str) -> list[dict]:
    return [data for k, data in entry["status"].get("messages", []) if k == kind]


def cached_nodes(entry: dict) -> set[str]:
    """Node ids ComfyUI took from its cache for this prompt (the execution_cached message)."""
    return {n for data in messages(entry, "execution_cached") for n in data.get("nodes", [])}


def execution_error(entry: dict) -> dict:
    found = messages(entry, "execution_error")
    if not found:
        raise AssertionError(f"no execution_error in {entry['status']}")
    return found[0]

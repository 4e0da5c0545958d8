"""End to end in a real ComfyUI server: BabelCLIP nodes load, encode, sample, and fail cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NODE_IDS = ("BabelCLIPLoadEncoder", "BabelCLIPLoadAdapter", "BabelCLIPTextEncode", "BabelCLIPTextEncodeSDXL",
            "BabelCLIPTextEncodeFlux")


def graph(adapter: str, text: str, *, seed: int, prefix: str, encode_node: str = "BabelCLIPTextEncode",
          mix: str = "concat") -> dict:
    """SD1.5 (diffusers folder, random weights) -> BabelCLIP encode -> 1 step 64x64 -> SaveImage."""
    encode_extra = {}
    if encode_node == "BabelCLIPTextEncodeSDXL":
        encode_extra = {k: 1024 for k in ("width", "height", "target_width", "target_height")}
        encode_extra.update(crop_w=0, crop_h=0)
    return {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "sd15-random"}},
        "2": {"class_type": "BabelCLIPLoadEncoder", "inputs": {"encoder_name": "tiny-xlmr"}},
        "3": {"class_type": "BabelCLIPLoadAdapter", "inputs": {"adapter_name": adapter}},
        "4": {"class_type": encode_node, "inputs": {
            "encoder": ["2", 0], "adapter": ["3", 0], "text": text, "clip": ["1", 1],
            "clip_mix": mix, "clip_strength": 0.3, "encoder_layer": "from adapter", **encode_extra}},
        "5": {"class_type": "BabelCLIPTextEncode", "inputs": {
            "encoder": ["2", 0], "adapter": ["3", 0], "text": "", "clip": ["1", 1], "clip_mix": "off"}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": seed, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def _error(entry: dict) -> dict:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data
    raise AssertionError(f"no execution_error in {entry['status']}")


def _saved_images(comfy, entry: dict) -> list:
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    return [comfy.root / "output" / img.get("subfolder", "") / img["filename"] for img in images]


def test_object_info_lists_every_node_with_tooltips(comfy):
    info = comfy.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info ({comfy.label})"
        assert info[node_id]["category"] == "BabelCLIP"
        for section in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    ours = {node_id: spec for node_id, spec in info.items() if node_id.startswith("BabelCLIP")}
    assert len(ours) == 10, sorted(ours)
    for node_id, spec in ours.items():  # the README's Nodes table names every node the server offers
        assert f"| **{spec['display_name']}** (`{node_id}`) |" in readme, f"{node_id} missing from the README"
        for section in ("required", "optional"):
            for name, input_spec in spec["input"].get(section, {}).items():
                assert len(input_spec) > 1 and input_spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert "tiny-xlmr" in info["BabelCLIPLoadEncoder"]["input"]["required"]["encoder_name"][0]
    adapters = info["BabelCLIPLoadAdapter"]["input"]["required"]["adapter_name"][0]
    assert {"tiny-sd1.safetensors", "tiny-sdxl.safetensors"} <= set(adapters)


@pytest.mark.parametrize("adapter", ["tiny-sd1.safetensors", "tiny-sd1-resampler.safetensors"])
def test_non_latin_prompt_renders_an_image(comfy, adapter):
    entry = comfy.run(graph(adapter, "一只(红色:1.2)的猫在屋顶上睡觉 — кошка на крыше", seed=1,
                            prefix=f"babel_{adapter[:-12]}"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = _saved_images(comfy, entry)
    assert files and all(f.is_file() and f.stat().st_size > 0 for f in files), files


def test_wrong_family_adapter_fails_cleanly_and_server_keeps_serving(comfy):
    bad = comfy.run(graph("tiny-sdxl.safetensors", "un chat rouge", seed=2, prefix="babel_bad"))
    assert bad["status"]["status_str"] == "error"
    err = _error(bad)
    assert err["node_type"] == "BabelCLIPTextEncode"
    message = err["exception_message"]
    assert "tiny-sdxl.safetensors" in message and "SDXL" in message and "SD1.x" in message, message
    assert err["exception_type"].endswith("IncompatibleAdapterError")

    sdxl_node = comfy.run(graph("tiny-sd1.safetensors", "un chat rouge", seed=3, prefix="babel_bad2",
                                encode_node="BabelCLIPTextEncodeSDXL"))
    assert sdxl_node["status"]["status_str"] == "error"
    assert "needs an SDXL adapter" in _error(sdxl_node)["exception_message"]

    assert comfy.alive()
    good = comfy.run(graph("tiny-sd1.safetensors", "قطة حمراء على السطح", seed=4, prefix="babel_after"))
    assert good["status"]["status_str"] == "success", good["status"]
    assert _saved_images(comfy, good)


def test_train_node_writes_an_adapter_that_text_encode_uses(comfy):
    """Train a few steps in the server, then encode and sample with the new adapter in the same graph."""
    rows = "\n".join(f"a {c} cat on a roof\tune chatte {f} sur un toit\tfr" for c, f in
                     [("red", "rouge"), ("blue", "bleue"), ("green", "verte"), ("white", "blanche"),
                      ("black", "noire"), ("grey", "grise"), ("small", "petite"), ("big", "grande")])
    g = graph("tiny-sd1.safetensors", "une chatte rouge sur un toit", seed=5, prefix="babel_trained")
    g["10"] = {"class_type": "BabelCLIPTrainAdapter", "inputs": {
        "clip": ["1", 1], "encoder": ["2", 0], "recipe": "altclip-kd", "arch": "mlp",
        "data_file": "(use the text box)", "prompts": rows, "steps": 6, "learning_rate": 1e-3,
        "batch_size": 4, "seed": 0, "adapter_name": "trained-in-server"}}
    g["4"]["inputs"]["adapter"] = ["10", 0]
    g["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 1], "filename_prefix": "babel_loss"}}
    g["12"] = {"class_type": "BabelCLIPSaveAdapter", "inputs": {"adapter": ["10", 0], "filename": "../escape"}}
    entry = comfy.run(g)
    assert entry["status"]["status_str"] == "success", entry["status"]
    folder = comfy.root / "models" / "babelclip"
    trained = folder / "trained-in-server.safetensors"
    assert trained.is_file()
    copy = folder / "_escape.safetensors"  # the name is sanitised into the folder, never a path out of it
    assert copy.is_file() and copy.read_bytes() == trained.read_bytes()
    for adapter in (trained, copy):  # each with its model card, naming it (8 pairs: none held out to evaluate)
        card = adapter.with_suffix("").with_suffix(".README.md").read_text(encoding="utf-8")
        assert "library_name: babelclip" in card and adapter.name in card and "Not evaluated" in card
    saved = _saved_images(comfy, entry)
    assert len(saved) == 2 and all(f.is_file() for f in saved)  # the sample and the loss curve

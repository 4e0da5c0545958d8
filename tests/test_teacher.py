"""Checkpoint teachers: key layouts (SD1, SD2/SDXL OpenCLIP, diffusers) and the ComfyUI run semantics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from babelclip.errors import InvalidModelFileError, UnsupportedModelError
from babelclip.models.teacher import EOS, load_teacher


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """A CLIP BPE tokenizer folder built from a tiny vocabulary (real CLIP token ids for BOS/EOS)."""

    d = tmp_path_factory.mktemp("clip_tok")
    base = ["<unk>"] + [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz,."] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = {tok: i for i, tok in enumerate(base)}
    # pad ids up to CLIP's real special-token ids so BOS/EOS are 49406/49407 as in every SD checkpoint
    for i in range(len(vocab), 49406):
        vocab[f"<x{i}>"] = i
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return d


def _openclip_state(width, layers, proj=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sd = {"token_embedding.weight": r(49408, width), "positional_embedding": r(77, width),
          "ln_final.weight": 1 + r(width), "ln_final.bias": r(width)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width), p + "ln_2.weight": 1 + r(width),
                   p + "ln_2.bias": r(width), p + "attn.in_proj_weight": r(3 * width, width),
                   p + "attn.in_proj_bias": r(3 * width), p + "attn.out_proj.weight": r(width, width),
                   p + "attn.out_proj.bias": r(width), p + "mlp.c_fc.weight": r(4 * width, width),
                   p + "mlp.c_fc.bias": r(4 * width), p + "mlp.c_proj.weight": r(width, 4 * width),
                   p + "mlp.c_proj.bias": r(width)})
    if proj:
        sd["text_projection"] = r(width, width)
    return sd


def _openclip_reference(sd, ids):
    """OpenCLIP's text transformer, written out: pre-LN blocks with nn.MultiheadAttention and a causal mask."""
    width = sd["token_embedding.weight"].shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    hidden, i = [x], 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, width // 64, batch_first=True)
        attn.load_state_dict({"in_proj_weight": sd[p + "attn.in_proj_weight"], "in_proj_bias": sd[p + "attn.in_proj_bias"],
                              "out_proj.weight": sd[p + "attn.out_proj.weight"], "out_proj.bias": sd[p + "attn.out_proj.bias"]})
        h = torch.nn.functional.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = torch.nn.functional.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = torch.nn.functional.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        hidden.append(x)
        i += 1
    final = torch.nn.functional.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])
    eos = (ids == EOS).int().argmax(-1)
    pooled = final[torch.arange(len(ids)), eos] @ sd["text_projection"]
    return hidden, pooled


def _hf_clip_l(seed=0, width=64, layers=2):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, num_hidden_layers=layers, num_attention_heads=width // 64,
                         intermediate_size=width * 4, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407)
    model = CLIPTextModelWithProjection(cfg).eval()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("text_projection")}
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
    return model, sd


@torch.no_grad()
def test_sd1_single_file_runs_last_layer_with_final_norm(tmp_path, clip_tokenizer):
    model, sd = _hf_clip_l()
    ckpt = tmp_path / "sd1.safetensors"
    save_file({**{"cond_stage_model.transformer." + k: v for k, v in sd.items()},
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(ckpt))
    teacher = load_teacher(ckpt, clip_tokenizer)
    assert teacher.family.name == "sd1" and len(teacher.fingerprint) == 16
    ids = torch.tensor([teacher.tokens("a cat, red.", EOS)])
    assert ids[0, 0] == 49406 and (ids[0, -5:] == EOS).all() and ids.shape == (1, 77)
    out = teacher.encode(["a cat, red."])
    ref = model.text_model(input_ids=ids)
    torch.testing.assert_close(out.cond, ref.last_hidden_state)
    torch.testing.assert_close(out.pooled, ref.pooler_output)  # identity projection, as ComfyUI
    teacher.clip_skip = -2  # CLIPSetLastLayer(-2) on SD1: penultimate layer, final norm applied
    hidden = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(teacher.encode(["a cat, red."]).cond, model.text_model.final_layer_norm(hidden))
    # a host's own loaded tokenizer (the web UI's) instead of a folder: the same teacher
    from transformers import CLIPTokenizer

    loaded = load_teacher(ckpt, CLIPTokenizer.from_pretrained(str(clip_tokenizer)))
    assert loaded.fingerprint == teacher.fingerprint
    torch.testing.assert_close(loaded.encode(["a cat, red."]).cond, ref.last_hidden_state)


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_openclip_layouts_match_an_openclip_forward(tmp_path, clip_tokenizer, family):
    big = _openclip_state(128, 3, seed=1)
    ckpt = tmp_path / f"{family}.safetensors"
    if family == "sd2":
        save_file({"cond_stage_model.model." + k: v for k, v in big.items()}, str(ckpt))
    else:
        _, small = _hf_clip_l(seed=2)
        save_file({**{"conditioner.embedders.0.transformer." + k: v for k, v in small.items()},
                   **{"conditioner.embedders.1.model." + k: v for k, v in big.items()}}, str(ckpt))
    teacher = load_teacher(ckpt, clip_tokenizer)
    assert teacher.family.name == family
    text = "red cat"
    ids = torch.tensor([teacher.tokens(text, 0)])
    assert (ids[0] == EOS).sum() == 1 and ids[0, -1] == 0  # OpenCLIP towers pad with 0, one EOS
    hidden, pooled = _openclip_reference(big, ids)
    out = teacher.encode([text])
    width = big["token_embedding.weight"].shape[1]
    expected = hidden[-2]
    if family == "sd2":  # penultimate + final layer norm
        expected = torch.nn.functional.layer_norm(expected, (width,), big["ln_final.weight"], big["ln_final.bias"])
    torch.testing.assert_close(out.cond[..., -width:], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-4)
    if family == "sdxl":
        assert out.cond.shape == (1, 77, 64 + 128)  # clip_l ‖ clip_g


def test_diffusers_folder_without_text_model_prefix(tmp_path, clip_tokenizer):
    model, sd = _hf_clip_l()
    (tmp_path / "m" / "text_encoder").mkdir(parents=True)
    save_file({k[len("text_model."):]: v for k, v in sd.items()}, str(tmp_path / "m" / "text_encoder" / "model.safetensors"))
    (tmp_path / "m" / "text_encoder" / "config.json").write_text(json.dumps({"hidden_act": "quick_gelu"}))
    (tmp_path / "m" / "model_index.json").write_text("{}")
    teacher = load_teacher(tmp_path / "m", clip_tokenizer)
    ids = torch.tensor([teacher.tokens("cat", EOS)])
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode(["cat"]).cond, model.text_model(input_ids=ids).last_hidden_state)


def test_bad_teacher_sources(tmp_path, clip_tokenizer):
    with pytest.raises(InvalidModelFileError, match="does not exist"):
        load_teacher(tmp_path / "none.safetensors", clip_tokenizer)
    (tmp_path / "x.ckpt").write_bytes(b"\x80")
    with pytest.raises(InvalidModelFileError, match="unpickles"):
        load_teacher(tmp_path / "x.ckpt", clip_tokenizer)
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(UnsupportedModelError, match="no SD1.x, SD2.x, SDXL, SD3 or Flux text encoder"):
        load_teacher(tmp_path / "unet.safetensors", clip_tokenizer)
    _, sd = _hf_clip_l()
    save_file({"cond_stage_model.transformer." + k: v for k, v in sd.items()}, str(tmp_path / "ok.safetensors"))
    with pytest.raises(InvalidModelFileError, match="No CLIP tokenizer"):
        load_teacher(tmp_path / "ok.safetensors", tmp_path)


def test_denoiser_only_and_unknown_text_encoder_sets_are_refused(tmp_path, clip_tokenizer):
    """A Flux / SD3 diffusion-model file without text encoders, a diffusers folder or a set of files whose
    towers are no family: typed errors that name the input and what to pass instead."""
    _, sd = _hf_clip_l()
    for name, key, what in (("flux1-dev.safetensors", "double_blocks.0.img_attn.qkv.weight", "Flux"),
                            ("sd3.5.safetensors", "model.diffusion_model.joint_blocks.0.x", "SD3")):
        save_file({key: torch.zeros(1)}, str(tmp_path / name))
        with pytest.raises(UnsupportedModelError, match=f"{what} diffusion model without text encoders") as e:
            load_teacher(tmp_path / name, clip_tokenizer)
        assert name in str(e.value) and "clip_l.safetensors" in str(e.value)
    folder = tmp_path / "odd-folder"
    for sub, model_type in (("text_encoder", "clip_text_model"), ("text_encoder_3", "t5")):
        (folder / sub).mkdir(parents=True)
        save_file(sd, str(folder / sub / "model.safetensors"))
        (folder / sub / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(InvalidModelFileError, match=r"text_encoder \(clip\), text_encoder_3 \(t5\)"):
        load_teacher(folder, clip_tokenizer)
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file(sd, str(tmp_path / "b.safetensors"))
    save_file(sd, str(tmp_path / "c.safetensors"))
    with pytest.raises(UnsupportedModelError, match="3 CLIP and 0 T5 encoder") as e:
        load_teacher([tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"],
                     clip_tokenizer)
    assert "Flux: clip_l + t5xxl" in str(e.value)
    with pytest.raises(UnsupportedModelError, match="not a CLIP or T5 text-encoder file"):
        load_teacher([tmp_path / "a.safetensors", tmp_path / "flux1-dev.safetensors"], clip_tokenizer)


def test_a_new_family_is_one_description(tmp_path, clip_tokenizer, monkeypatch):
    """The teacher reads towers, layouts and context from FAMILIES: a new CLIP family needs no other code."""
    from babelclip.models import families

    tower = families.Tower("clip_l", 64, -2, True, families.PAD_END, True, "new_model.text.", False, "te")
    new = families.TargetFamily("new", "A new family", "New", (tower,), context_tokens=20)
    monkeypatch.setitem(families.FAMILIES, "new", new)
    model, sd = _hf_clip_l()
    save_file({"new_model.text." + k: v for k, v in sd.items()}, str(tmp_path / "new.safetensors"))
    teacher = load_teacher(tmp_path / "new.safetensors", clip_tokenizer)
    assert teacher.family is new
    out = teacher.encode(["red cat"])
    ids = torch.tensor([teacher.tokens("red cat", EOS)])
    hidden = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    assert out.cond.shape == (1, 20, 64)
    with torch.no_grad():
        torch.testing.assert_close(out.cond, model.text_model.final_layer_norm(hidden))

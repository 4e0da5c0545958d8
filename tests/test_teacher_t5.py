"""Flux and SD3 teachers read from files (issue 13.3): ComfyUI's separate text-encoder files, single-file
checkpoints and diffusers folders give the same conditioning, computed as ComfyUI computes it (checked here
against transformers directly; tests/integration/test_flux_sd3_comfyui.py checks it against ComfyUI itself)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from babelclip.models import FAMILIES
from babelclip.models.teacher import load_teacher

from .tiny_towers import build_tiny_towers

TEXTS = ["a red cat on a sofa", "", "word " * 90]


@pytest.fixture(scope="module", params=["flux", "sd3"])
def towers(request, tmp_path_factory):
    return request.param, build_tiny_towers(tmp_path_factory.mktemp(request.param), request.param)


def _sources(t):
    files = list(t["files"].values())
    return [(files, t["clip_tokenizer"], t["t5_tokenizer"]), (files[::-1], t["clip_tokenizer"], t["t5_tokenizer"]),
            (t["checkpoint"], t["clip_tokenizer"], t["t5_tokenizer"]), (t["diffusers"], None, None)]


def test_every_source_gives_the_same_teacher(towers):
    name, t = towers
    family = FAMILIES[name]
    outs = []
    for src, clip_tok, t5_tok in _sources(t):
        teacher = load_teacher(src, clip_tok, t5_tok)
        assert teacher.family is family
        out = teacher.encode(TEXTS)
        assert out.cond.shape == (len(TEXTS), family.context_tokens, family.cond_dim)
        assert out.pooled.shape == (len(TEXTS), family.pooled_dim)
        outs.append((teacher.fingerprint, out))
    for fingerprint, out in outs[1:]:
        assert fingerprint == outs[0][0]
        torch.testing.assert_close(out.cond, outs[0][1].cond, rtol=0, atol=0)
        torch.testing.assert_close(out.pooled, outs[0][1].pooled, rtol=0, atol=0)


def _reference(name, t, text):
    """ComfyUI's rules, written out: T5 without start token, end 1, padded with 0 to the family's minimum and
    attended without a mask; CLIP chunks of 77; Flux: T5 tokens + CLIP-L's unprojected pooled; SD3: CLIP-L ‖ G
    penultimate states without the final norm, T5 after them, pooled L (unprojected) ‖ G (projected)."""
    from transformers import AutoTokenizer, CLIPTokenizer

    family, models = FAMILIES[name], t["models"]
    clip_tok = CLIPTokenizer.from_pretrained(t["clip_tokenizer"])
    t5_tok = AutoTokenizer.from_pretrained(t["t5_tokenizer"])
    words = [w for w in text.split(" ") if w]
    t5_ids = [i for w in words for i in t5_tok(w)["input_ids"][:-1]] + [t5_tok.eos_token_id]
    t5_ids += [0] * max(0, family.context_tokens - len(t5_ids))
    clip_ids = [i for w in words for i in clip_tok(w)["input_ids"][1:-1]][:75]
    clip_ids = [clip_tok.bos_token_id, *clip_ids, clip_tok.eos_token_id]
    eos_at = len(clip_ids) - 1
    with torch.no_grad():
        t5 = models["t5xxl"](input_ids=torch.tensor([t5_ids])).last_hidden_state[:, : family.context_tokens]
        parts, pooled = [], []
        for tower in ("clip_l", "clip_g"):
            if tower not in models:
                continue
            pad = clip_tok.eos_token_id if tower == "clip_l" else 0
            ids = torch.tensor([clip_ids + [pad] * (77 - len(clip_ids))])
            out = models[tower](input_ids=ids, output_hidden_states=True)
            parts.append(out.hidden_states[-2])
            pooled.append(out.text_embeds if tower == "clip_g" else out.last_hidden_state[:, eos_at])
    if name == "flux":
        return t5, pooled[0]
    return torch.cat([torch.cat(parts, -1), t5], -1), torch.cat(pooled, -1)


def test_teacher_follows_comfyuis_rules(towers):
    name, t = towers
    teacher = load_teacher(list(t["files"].values()), t["clip_tokenizer"], t["t5_tokenizer"])
    for text in TEXTS:
        out = teacher.encode([text])
        cond, pooled = _reference(name, t, text)
        torch.testing.assert_close(out.cond, cond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(teacher.encode(["a red cat"]).cond, teacher.encode(["a blue dog"]).cond)


def test_head_layout_and_host_layout(towers):
    """Adapters predict one token of every conditioning tower side by side; the denoiser reads SD3's CLIP part
    zero-padded to 4096, then the T5 part after it (and Flux's T5 tokens as they are)."""
    name, t = towers
    family = FAMILIES[name]
    cond = load_teacher(t["diffusers"]).encode(["a red cat"]).cond
    host, mask = family.to_host(cond, torch.ones(1, cond.shape[1], dtype=torch.long))
    assert host.shape == (1, len(family.segments) * family.context_tokens, family.host_width)
    assert mask.shape == host.shape[:2]
    torch.testing.assert_close(family.from_host(host), cond, rtol=0, atol=0)
    if name == "sd3":
        clip_width = family.segment_widths()[0]
        assert (host[:, : family.context_tokens, clip_width:] == 0).all()
        torch.testing.assert_close(host[:, family.context_tokens:], cond[..., clip_width:], rtol=0, atol=0)
        with pytest.raises(ValueError, match="segment"):
            family.from_host(host[:, :100])


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_fp8_t5_files_load(towers, tmp_path, scaled):
    """t5xxl_fp8_e4m3fn.safetensors (and the 'scaled' kind with a scale per weight) load as float32."""
    name, t = towers
    sd = load_file(t["files"]["t5xxl"])
    fp8 = {}
    for k, v in sd.items():
        if scaled and k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max() / 448
            fp8[k] = (v / scale).to(torch.float8_e4m3fn)
            fp8[k[: -len("weight")] + "scale_weight"] = scale.reshape(1)
        else:
            fp8[k] = v.to(torch.float8_e4m3fn) if v.ndim == 2 else v
    if scaled:
        fp8["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    save_file(fp8, str(path))
    files = [p for k, p in t["files"].items() if k != "t5xxl"] + [path]
    quantized = load_teacher(files, t["clip_tokenizer"], t["t5_tokenizer"]).encode(["a red cat"])
    full = load_teacher(list(t["files"].values()), t["clip_tokenizer"], t["t5_tokenizer"]).encode(["a red cat"])
    cos = torch.nn.functional.cosine_similarity(quantized.cond.flatten(1), full.cond.flatten(1)).item()
    assert 0.98 < cos < 1.0  # the fp8 rounding, not another model


def test_missing_t5_tokenizer_is_named(towers):
    from babelclip.errors import InvalidModelFileError

    name, t = towers
    with pytest.raises(InvalidModelFileError, match="No T5 tokenizer .*t5_tokenizer"):
        load_teacher(list(t["files"].values()), t["clip_tokenizer"])

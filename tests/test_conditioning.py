"""Prompt -> conditioning: weights, chunking, empty prompt, batches, mixing with CLIP."""

from __future__ import annotations

import pytest
import torch

from babelclip.errors import InvalidDataError
from babelclip.models import FAMILIES, build_adapter, encode_prompts, mix_with_clip
from babelclip.models.conditioning import Conditioning, tokenize_prompt


@pytest.fixture(scope="module")
def adapters():
    torch.manual_seed(0)
    return {arch: build_adapter(arch, 32, FAMILIES["sd1"]).eval() for arch in ("linear", "mlp", "resampler")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("model_type", ["xlm-roberta", "bert", "t5", "mt5"])
def test_widths_per_family_and_encoder(encoders, family, model_type):
    enc = encoders[model_type]
    ad = build_adapter("mlp", 32, FAMILIES[family])
    out = encode_prompts(enc, ad, ["夕焼けの木の屋根の上で眠る赤い猫"])
    n = len(tokenize_prompt(enc, "夕焼けの木の屋根の上で眠る赤い猫").chunks[0])
    assert out.cond.shape == (1, n, FAMILIES[family].cond_dim)
    assert out.pooled.shape == (1, FAMILIES[family].pooled_dim)
    assert torch.isfinite(out.cond).all()


def test_weight_one_is_identity_and_weights_follow_comfyui(xlmr, adapters):
    ad = adapters["mlp"]
    plain = encode_prompts(xlmr, ad, ["a red cat"])
    same = encode_prompts(xlmr, ad, ["a (red:1.0) cat"])
    torch.testing.assert_close(same.cond, plain.cond)
    weighted = encode_prompts(xlmr, ad, ["a (red:1.5) cat"])
    # z = (z - z_empty) * w + z_empty on the tokens of "red" only
    ids, offsets = xlmr.tokenize("a red cat")
    red = [i + len(xlmr.prefix_tokens) for i, (s, _) in enumerate(offsets) if 2 <= s < 5]
    assert red
    empty = xlmr.encode_ids([xlmr.with_special_tokens([])], pad_to=plain.cond.shape[1])
    z_empty = ad(empty.hidden, empty.mask).cond[0]
    expected = plain.cond[0].clone()
    expected[red] = (plain.cond[0, red] - z_empty[red]) * 1.5 + z_empty[red]
    torch.testing.assert_close(weighted.cond[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weighted.pooled, plain.pooled)  # pooled is never weighted


def test_weights_on_a_resampler_change_the_output(xlmr, adapters):
    ad = adapters["resampler"]
    plain = encode_prompts(xlmr, ad, ["a red cat"])
    assert torch.allclose(encode_prompts(xlmr, ad, ["a (red:1.0) cat"]).cond, plain.cond, atol=1e-6)
    weighted = encode_prompts(xlmr, ad, ["a (red:1.8) cat"])
    assert weighted.cond.shape == plain.cond.shape == (1, 77, 768)
    assert not torch.allclose(weighted.cond, plain.cond, atol=1e-4)


def test_long_prompts_are_chunked(xlmr, adapters):
    ad = adapters["linear"]
    text = " ".join(["a watercolor painting of a lighthouse in a storm"] * 12)
    prompt = tokenize_prompt(xlmr, text)
    assert len(prompt.chunks) >= 3 and all(len(c) <= xlmr.max_length for c in prompt.chunks)
    out = encode_prompts(xlmr, ad, [text])
    width = max(len(c) for c in prompt.chunks)
    assert out.cond.shape[1] == len(prompt.chunks) * width
    ids_first = xlmr.encode_ids([prompt.chunks[0]])
    torch.testing.assert_close(out.cond[:, :width], ad(ids_first.hidden, ids_first.mask).cond)
    torch.testing.assert_close(out.pooled, ad(ids_first.hidden, ids_first.mask).pooled)
    assert out.mask.sum() == sum(len(c) for c in prompt.chunks)


def test_empty_prompt_is_the_special_tokens(xlmr, encoders, adapters):
    out = encode_prompts(xlmr, adapters["mlp"], [""])
    assert out.cond.shape == (1, xlmr.special_tokens, 768)
    t5 = encoders["t5"]
    out = encode_prompts(t5, build_adapter("mlp", 32, FAMILIES["sd1"]), ["   "])
    assert out.cond.shape[1] >= 1


def test_batches_match_single_prompts(xlmr, adapters):
    ad = adapters["mlp"]
    prompts = ["猫", "a red cat sleeping on a wooden roof at sunset", "(кошка:1.2) на крыше", ""]
    batch = encode_prompts(xlmr, ad, prompts)
    assert batch.cond.shape[0] == 4
    for i, p in enumerate(prompts):
        single = encode_prompts(xlmr, ad, [p])
        n = single.cond.shape[1]
        torch.testing.assert_close(batch.cond[i, :n], single.cond[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.pooled[i], single.pooled[0], atol=1e-5, rtol=1e-5)
        assert batch.mask[i].sum() == single.mask.sum()


def test_interrupt_hook_is_called(xlmr, adapters):
    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        encode_prompts(xlmr, adapters["mlp"], ["a"], check_interrupt=stop)


def test_adapter_and_encoder_width_must_agree(xlmr):
    with pytest.raises(InvalidDataError, match="64-wide"):
        encode_prompts(xlmr, build_adapter("mlp", 64, FAMILIES["sd1"]), ["a"])


def _babel(tokens=5, dim=8):
    return Conditioning(torch.randn(1, tokens, dim), torch.randn(1, dim), torch.ones(1, tokens, dtype=torch.long))


def test_mix_off_concat_blend():
    torch.manual_seed(0)
    b = _babel()
    clip, pooled, empty = torch.randn(1, 77, 8), torch.randn(1, 8), torch.randn(77, 8)
    cond, p = mix_with_clip(b, clip, pooled, mode="off", strength=0.7)
    assert cond is b.cond and p is b.pooled
    cond, p = mix_with_clip(b, clip, pooled, mode="concat", strength=0.25)
    assert torch.equal(cond, torch.cat([b.cond, clip], 1))
    torch.testing.assert_close(p, 0.75 * b.pooled + 0.25 * pooled)
    cond, p = mix_with_clip(b, clip, pooled, mode="blend", strength=0.5, clip_empty=empty)
    assert cond.shape == (1, 77, 8)
    torch.testing.assert_close(cond[:, :5], 0.5 * b.cond + 0.5 * clip[:, :5])
    torch.testing.assert_close(cond[:, 5:], 0.5 * b.cond[:, -1:].expand(-1, 72, -1) + 0.5 * clip[:, 5:])
    cond, _ = mix_with_clip(b, clip, pooled, mode="blend", strength=1.0, clip_empty=empty)
    torch.testing.assert_close(cond, clip)


def test_blend_pads_clip_with_its_empty_chunk():
    b = _babel(tokens=100)
    clip, empty = torch.randn(1, 77, 8), torch.randn(77, 8)
    cond, _ = mix_with_clip(b, clip, None, mode="blend", strength=1.0, clip_empty=empty)
    assert cond.shape == (1, 154, 8)
    torch.testing.assert_close(cond[0, 77:], empty)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "average", "strength": 0.5}, "Unknown CLIP mix mode"),
    ({"mode": "blend", "strength": 1.5}, "outside 0..1"),
    ({"mode": "blend", "strength": float("nan")}, "outside 0..1"),
])
def test_mix_rejects_bad_options(kwargs, match):
    with pytest.raises(InvalidDataError, match=match):
        mix_with_clip(_babel(), torch.randn(1, 77, 8), None, **kwargs)


def test_mix_rejects_other_family_width():
    with pytest.raises(InvalidDataError, match="another model family"):
        mix_with_clip(_babel(dim=8), torch.randn(1, 77, 16), None, mode="concat", strength=0.5)

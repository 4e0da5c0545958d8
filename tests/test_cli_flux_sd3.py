"""Flux and SD3 adapters trained from the command line (issue 13.4): ComfyUI's text-encoder files (or a
diffusers folder) as teacher, both text recipes, token-aligned and fixed-length architectures; the adapter
encodes into the layout the denoiser reads; the teacher cache stays small."""

from __future__ import annotations

import json

import pytest
import torch

from babelclip.models import FAMILIES, encode_prompts, load_adapter, load_encoder, read_adapter_spec
from babelclip.training.cli import main

from . import synthetic
from .tiny_towers import build_tiny_towers


@pytest.fixture(scope="module", params=["flux", "sd3"])
def setup(request, tmp_path_factory, encoder_dirs):
    name = request.param
    d = tmp_path_factory.mktemp(f"cli-{name}")
    t = build_tiny_towers(d / "towers", name)
    rows = ["en\ttext\tlang"] + [f"{en}\t{de}\tde" for en, de in zip(synthetic.corpus("en"), synthetic.corpus("de"))]
    (d / "pairs.tsv").write_text("\n".join(rows[:41]) + "\n", encoding="utf-8")
    common = ["--teacher", *t["files"].values(), "--clip-tokenizer", t["clip_tokenizer"], "--t5-tokenizer",
              t["t5_tokenizer"], "--encoder", encoder_dirs["xlm-roberta"], "--cache-dir", str(d / "cache")]
    return name, d, t, common


@pytest.mark.parametrize("recipe,arch", [("altclip-kd", "linear"), ("mclip-trikd", "mlp"),
                                         ("altclip-kd", "resampler")])
def test_cli_trains_an_adapter_of_the_family(setup, recipe, arch, encoder_dirs):
    name, d, t, common = setup
    family = FAMILIES[name]
    out = d / "adapters" / f"{recipe}-{arch}.safetensors"
    assert main(["train", *common, "--data", str(d / "pairs.tsv"), "--recipe", recipe, "--arch", arch,
                 "--steps", "4", "--batch-size", "8", "--out", str(out)]) == 0
    spec = read_adapter_spec(out)
    assert spec.family is family and spec.arch == arch
    assert json.loads(spec.metadata["babelclip.teacher"])["family"] == name
    encoder = load_encoder(encoder_dirs["xlm-roberta"])
    adapter = load_adapter(out, encoder=encoder.info, family=family)
    result = encode_prompts(encoder, adapter, ["ein roter Hund"])
    host, _ = family.to_host(result.cond, result.mask)
    assert host.shape[-1] == family.host_width and result.pooled.shape[-1] == family.pooled_dim
    if arch == "resampler":  # fixed-length: one segment of the family's context each
        assert host.shape[1] == len(family.segments) * family.context_tokens
    assert torch.isfinite(host).all()


def test_teacher_cache_per_1000_prompts(setup):
    """What the teacher cache holds per English prompt, measured on the stores the runs above wrote and scaled
    to 1,000 prompts: the default layout (token mean + pooled) stays under 100 MB; the per-token layout (the
    resampler's) is the README's figure."""
    name, d, t, common = setup
    family = FAMILIES[name]
    per_1000 = {}
    for store in (d / "cache").glob("teacher-*"):
        key = json.loads((store / "key.json").read_text())
        entries = [json.loads(line) for line in (store / "index.jsonl").read_text().splitlines()]
        rows = max(offset + n for _, offset, n in entries)
        per_1000[key["layout"]] = rows * key["dim"] * 2 / len(entries) * 1000 / 1e6  # float16 bytes -> MB
    assert per_1000["mean+pooled"] < 100
    assert per_1000["mean+pooled"] == pytest.approx(2 * family.cond_dim * 2 * 1000 / 1e6)
    assert round(per_1000[f"tokens{family.context_tokens}"]) == {"flux": 2097, "sd3": 946}[name]

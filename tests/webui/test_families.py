"""SD2.x and SDXL in a real Forge / Automatic1111 (``FORGE_PATH`` / ``A1111_PATH``; skipped, naming the variable,
when unset): random checkpoints at their real
sizes (tests/webui/checkpoints.py), BabelCLIP's conditioning through txt2img (SDXL: cross-attention plus the
size-embedded vector), a wrong-family adapter refused, and training against the loaded checkpoint's towers
(SDXL: CLIP-L and CLIP-G, the pooled part of the vector included in the agreement check)."""

from __future__ import annotations

import shutil

import pytest

from ..conftest import make_adapter_file
from .harness import KINDS
from .test_training import PROMPT, _on, _pairs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=[(kind, family) for kind in KINDS for family in ("sd2", "sdxl")],
                ids=lambda p: "-".join(p))
def family_server(request, webui_factory, encoder_dirs, encoders):
    from .checkpoints import random_checkpoint
    from .harness import webui_checkout

    kind, family = request.param
    webui_checkout(kind)  # skips, naming FORGE_PATH / A1111_PATH, before building a multi-GB checkpoint
    server = webui_factory(kind, checkpoint=random_checkpoint(family))
    # live previews of SDXL would download an approximate decoder (the SD1.x one ships with the web UIs)
    server.post("/sdapi/v1/options", {"live_previews_enable": False})
    models = server.data_dir / "models"
    shutil.copytree(encoder_dirs["xlm-roberta"], models / "text_encoders" / "tiny-xlmr")
    enc = encoders["xlm-roberta"]
    make_adapter_file(models / "babelclip" / f"tiny-{family}.safetensors", enc, family, "mlp")
    make_adapter_file(models / "babelclip" / "tiny-sd1.safetensors", enc, "sd1", "linear")
    server.family = family
    yield server
    server.stop()


def test_babelclip_conditions_the_family_and_refuses_another(family_server):
    from .harness import WebUIError

    server, family = family_server, family_server.family
    off = server.images(server.txt2img({"prompt": PROMPT, "steps": 2}))[0]
    on = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on(f"tiny-{family}.safetensors")}))[0]
    again = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on(f"tiny-{family}.safetensors")}))[0]
    assert (on != off).any() and (on == again).all()
    with pytest.raises(WebUIError) as err:
        server.txt2img({"prompt": PROMPT, **_on("tiny-sd1.safetensors")})
    assert "made for SD1" in str(err.value.body), err.value.body
    assert server.txt2img({"prompt": PROMPT, **_on(f"tiny-{family}.safetensors")})["images"]


def test_training_distills_the_loaded_towers(family_server):
    server, family = family_server, family_server.family
    answer = server.post("/babelclip/v1/train", {"encoder": "tiny-xlmr", "prompts": _pairs(24), "steps": 10,
                                                 "batch_size": 8, "adapter_name": f"trained-{family}"})
    assert answer["teacher"]["family"] == family and answer["teacher"]["agreement"] >= 0.99, answer["teacher"]
    import json

    from safetensors import safe_open

    with safe_open(str(server.data_dir / "models" / "babelclip" / answer["adapter"]), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["babelclip.teacher"])["fingerprint"] == answer["teacher"]["fingerprint"]
    assert json.loads(meta["babelclip.teacher"])["family"] == family
    off = server.images(server.txt2img({"prompt": PROMPT, "steps": 2}))[0]
    on = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on(answer["adapter"])}))[0]
    assert (on != off).any()

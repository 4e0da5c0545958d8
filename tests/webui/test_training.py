"""Training from the web UI (issue 14.4, 14.5) in a real Forge / Automatic1111 (``FORGE_PATH`` / ``A1111_PATH``;
skipped, naming the variable, when unset): ``POST /babelclip/v1/train`` (the tab runs the same function) trains
against the loaded checkpoint's own text encoder, reports through the web UI's progress API, stops on its
Interrupt with a checkpoint that the same settings resume, and writes an adapter the next txt2img uses by name."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from babelclip.training.codeswitch import DEFAULT_COPIES, DEFAULT_RATE
from babelclip.training.pipeline import DEFAULT_RUNS

from ..conftest import make_adapter_file
from .harness import KINDS

pytestmark = pytest.mark.integration

PROMPTS_TSV = Path(__file__).resolve().parents[2] / "training" / "data" / "prompts.tsv"
PROMPT = "一只猫坐在窗台上"


def _pairs(n: int) -> str:
    with open(PROMPTS_TSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    return "\n".join(f"{r['en']}\t{r['text']}\t{r['lang']}" for r in rows)


@pytest.fixture(scope="module")
def server(webui, encoder_dirs, encoders):
    models = webui.data_dir / "models"
    shutil.copytree(encoder_dirs["xlm-roberta"], models / "text_encoders" / "tiny-xlmr")
    make_adapter_file(models / "babelclip" / "tiny-sd1.safetensors", encoders["xlm-roberta"], "sd1", "mlp")
    return webui


def _request(**extra) -> dict:
    return {"encoder": "tiny-xlmr", "prompts": _pairs(40), "steps": 40, "batch_size": 8, "adapter_name": "trained",
            **extra}


def _on(adapter: str) -> dict:
    return {"alwayson_scripts": {"BabelCLIP": {"args": [True, "tiny-xlmr", adapter, "off", 0.3, False]}}}


def test_the_api_trains_against_the_loaded_checkpoint_and_the_next_txt2img_uses_the_adapter(server):
    from safetensors import safe_open

    listed = server.get("/babelclip/v1/models")
    assert "tiny-xlmr" in listed["encoders"] and "altclip-kd" in listed["recipes"] and "pea" not in listed["recipes"]

    answer = server.post("/babelclip/v1/train", _request())
    assert answer["adapter"] == "trained.safetensors" and not answer["stopped"] and answer["step"] == 40
    # the teacher is the loaded checkpoint's text encoder: it agrees with the web UI's own conditioning
    assert answer["teacher"]["family"] == "sd1" and answer["teacher"]["agreement"] >= 0.99
    assert answer["teacher"]["source"] == server.checkpoint_name
    assert "| **average** |" in answer["report"] and 0 <= answer["metrics"]["r@1"] <= 1

    folder = server.data_dir / "models" / "babelclip"
    for name in ("trained.safetensors", "trained.README.md", "trained.eval.json", "trained.eval.md",
                 "trained.eval.png"):
        assert (folder / name).is_file(), name
    with safe_open(str(folder / "trained.safetensors"), "pt") as f:
        meta = f.metadata()
    teacher = json.loads(meta["babelclip.teacher"])
    assert teacher["fingerprint"] == answer["teacher"]["fingerprint"] and teacher["source"] == server.checkpoint_name
    recipe = json.loads(meta["babelclip.recipe"])
    assert recipe["steps"] == 40 and recipe["codeswitch"]["copies"] == DEFAULT_COPIES  # the API's default
    assert recipe["runs"] == DEFAULT_RUNS  # the API's default for the linear adapter (runs 0)
    assert "trained.safetensors" in server.get("/babelclip/v1/models")["adapters"]

    off = server.images(server.txt2img({"prompt": PROMPT, "steps": 2}))[0]
    trained = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on("trained.safetensors")}))[0]
    other = server.images(server.txt2img({"prompt": PROMPT, "steps": 2, **_on("tiny-sd1.safetensors")}))[0]
    assert (trained != off).any() and (trained != other).any(), "the trained adapter did not reach the sampler"

    again = server.post("/babelclip/v1/train", _request())  # the same name again: a new file, never overwritten
    assert again["adapter"] == "trained_00001.safetensors"


def test_interrupt_keeps_the_step_and_the_same_settings_resume_there(server):
    settings = _request(steps=200_000, adapter_name="long", batch_size=4, prompts=_pairs(12))

    def run(box):
        box["answer"] = server.post("/babelclip/v1/train", settings)

    def interrupt_during_training() -> dict:
        box: dict = {}
        thread = threading.Thread(target=run, args=(box,))
        thread.start()
        end = time.monotonic() + 300
        while time.monotonic() < end:
            progress = server.get("/sdapi/v1/progress?skip_current_image=true")
            state = progress["state"]
            if state["job"] == "babelclip-train" and state["sampling_step"] >= 20:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no training progress in /sdapi/v1/progress:\n{server.log_tail()}")
        assert state["sampling_steps"] == 200_000 and "BabelCLIP: training" in (progress["textinfo"] or "")
        server.post("/sdapi/v1/interrupt", {})
        thread.join(120)
        return box["answer"]

    first = interrupt_during_training()
    assert first["stopped"] and first["stage"] == "training" and first["adapter"] is None
    assert 20 <= first["step"] < 200_000 and "resume" in first["message"]
    second = interrupt_during_training()
    assert second["stopped"] and second["resumed_from"] == first["step"] and second["step"] > first["step"]
    settings["prompts"] = _pairs(14)  # the same name with other data: a fresh run, not the old one's weights
    third = interrupt_during_training()
    assert third["stopped"] and third["resumed_from"] == 0
    assert not (server.data_dir / "models" / "babelclip" / "long.safetensors").exists()


def test_bad_requests_answer_400_with_babelclips_message_and_the_server_goes_on(server):
    from .harness import WebUIError

    for bad, words in ((_request(recipe="pea"), "not one the web UI trains"),
                       (_request(encoder="missing"), "missing"),
                       (_request(prompts=""), "No training prompts"),
                       (_request(codeswitch=-1), "negative"),
                       (_request(runs=-1), "runs must be a whole number from 0"),
                       (_request(runs=2, arch="mlp"), "only the linear adapter"),
                       (_request(encoder="../../Stable-diffusion"), "outside")):
        with pytest.raises(WebUIError) as err:
            server.post("/babelclip/v1/train", bad)
        assert err.value.status == 400 and words in str(err.value.body), (bad, err.value.body)
    assert server.txt2img({"prompt": PROMPT, **_on("tiny-sd1.safetensors")})["images"]


TAB_CLIENT = r"""
import json, sys
from gradio_client import Client, handle_file
url, encoder, data = sys.argv[1:4]
client = Client(url, verbose=False)
status, report, chart = client.predict(encoder, handle_file(data), "", "altclip-kd", "linear", 30, 0.001, 8, 0,
                                       "from-tab", 0, 2, api_name="/babelclip_train")
print(json.dumps({"status": status, "report": report, "chart": chart}))
"""


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_tab_trains_through_the_web_uis_own_queue(kind, webui_factory, encoder_dirs, tmp_path):
    """The BabelCLIP tab as the browser drives it: the web UI with its UI, the Train button's function called
    through gradio's queue (``gradio_client`` in the web UI's own Python)."""
    import subprocess

    server = webui_factory(kind, with_ui=True)
    shutil.copytree(encoder_dirs["xlm-roberta"], server.data_dir / "models" / "text_encoders" / "tiny-xlmr")
    config = server.get("/config")
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"Adapter name (models/babelclip; never overwritten)", "Progress", "Held-out evaluation"} <= labels
    assert any(c["type"] == "tabitem" and c["props"].get("label") == "BabelCLIP" for c in config["components"])
    script = tmp_path / "tab_client.py"
    script.write_text(TAB_CLIENT)
    data = tmp_path / "pairs.tsv"  # uploaded as the browser would
    data.write_text("en\ttext\tlang\n" + _pairs(40) + "\n", encoding="utf-8")
    out = subprocess.run([str(server.python), str(script), server.url, "tiny-xlmr", str(data)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:] + server.log_tail()
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert "saved models/babelclip/from-tab.safetensors" in answer["status"], answer["status"]
    assert "| **average** |" in answer["report"] and answer["chart"]
    saved = server.data_dir / "models" / "babelclip" / "from-tab.safetensors"
    assert saved.is_file()
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f:  # the tab's code-switched copies box (0: none) and runs box (2)
        recipe = json.loads(f.metadata()["babelclip.recipe"])
    assert recipe["codeswitch"] == {"copies": 0, "rate": DEFAULT_RATE, "pairs": 0} and recipe["runs"] == 2
    assert server.txt2img({"prompt": PROMPT, **_on("from-tab.safetensors")})["images"]


def test_clip_skip_is_the_web_uis_and_the_teacher_follows_it(server):
    server.post("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2})
    try:
        answer = server.post("/babelclip/v1/train", _request(steps=5, adapter_name="skip2", prompts=_pairs(8)))
    finally:
        server.post("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 1})
    assert answer["teacher"]["clip_skip"] == -2 and answer["teacher"]["agreement"] >= 0.99, answer["teacher"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_training_api_honours_the_web_uis_api_auth(kind, webui_factory):
    import base64
    import urllib.error
    import urllib.request

    server = webui_factory(kind, extra_args=["--api-auth", "babel:secret"])

    def status(path: str, auth: str | None) -> int:
        req = urllib.request.Request(server.url + path)
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert status("/babelclip/v1/models", None) == 401
    assert status("/babelclip/v1/models", "babel:wrong") == 401
    assert status("/babelclip/v1/models", "babel:secret") == 200

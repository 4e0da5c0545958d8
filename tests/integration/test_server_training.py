"""Training in a real ComfyUI server, as a user drives it: every recipe offered and runnable from a workflow,
and the cancel button keeps the work done so far (training steps, cached features) for the next queue."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

from babelclip.models import read_adapter_spec
from babelclip.training.codeswitch import DEFAULT_COPIES
from babelclip.training.recipes import DEFAULT_ARCH, DEFAULT_RECIPE, list_recipes
from babelclip.training.trainer import DEFAULT_STEPS, TrainConfig

from .cheap import CLIP_FILE, ENCODER, execution_error, link_clip, messages
from .comfyui import ProgressListener

pytestmark = pytest.mark.integration

TEXT_BOX = "(use the text box)"
ROWS = "\n".join(f"a {c} cat on a roof\tune chatte {f} sur un toit\tfr" for c, f in
                 [("red", "rouge"), ("blue", "bleue"), ("green", "verte"), ("white", "blanche")])
CHECKPOINT_EVERY = TrainConfig().checkpoint_every  # what the node uses


@pytest.fixture(scope="module")
def server(comfy, sd15_folder):
    link_clip(comfy.root, sd15_folder)
    return comfy


def train_node(clip, recipe: str, *, prompts: str = ROWS, data_file: str = TEXT_BOX, steps: int = 2,
               batch_size: int = 2, arch: str = "mlp", name: str) -> dict:
    return {"class_type": "BabelCLIPTrainAdapter", "inputs": {
        "clip": clip, "encoder": ["2", 0], "recipe": recipe, "arch": arch, "data_file": data_file,
        "prompts": prompts, "steps": steps, "learning_rate": 1e-3, "batch_size": batch_size, "seed": 0,
        "adapter_name": name}}


def text_graph(train: dict) -> dict:
    """CLIPLoader (the SD1.5 CLIP-L alone) + the tiny encoder + a Train node (an output node)."""
    return {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion"}},
            "2": {"class_type": "BabelCLIPLoadEncoder", "inputs": {"encoder_name": ENCODER}},
            "10": train}


def test_train_node_offers_every_recipe(server):
    required = server.get("/object_info")["BabelCLIPTrainAdapter"]["input"]["required"]
    assert required["arch"][1]["default"] == DEFAULT_ARCH  # the measured best (training/recipes.py)
    assert required["steps"][1]["default"] == DEFAULT_STEPS  # the steps the fidelity benchmark measured
    spec = required["recipe"]
    assert spec[0] == [r.name for r in list_recipes()]
    assert {"altclip-kd", "mclip-trikd", "pea", "mulan", "iap"} <= set(spec[0])
    assert spec[1]["default"] == DEFAULT_RECIPE
    for r in list_recipes():  # the tooltip says what each one needs
        assert f"{r.name}: {r.needs}" in spec[1]["tooltip"]
    optional = server.get("/object_info")["BabelCLIPTrainAdapter"]["input"]["optional"]
    # last, in the order they came: saved workflows' positional widget values stay valid
    assert list(optional)[-2:] == ["codeswitch", "runs"]
    kind, options = optional["codeswitch"]
    assert kind == "INT" and options["default"] == DEFAULT_COPIES and options["min"] == 0
    assert "code-switched copies" in options["tooltip"].lower() and "0 turns them off" in options["tooltip"]
    kind, options = optional["runs"]
    assert kind == "INT" and options["default"] == 0 and options["min"] == 0
    assert "average" in options["tooltip"] and "linear" in options["tooltip"]


def test_runs_2_from_a_workflow_trains_two_runs_and_the_adapter_says_so(server):
    """``runs: 2`` (linear) reaches the pipeline: the saved adapter's metadata records 2 runs, and no run's
    checkpoint is left behind."""
    node = train_node(["1", 0], "altclip-kd", prompts=ROWS.splitlines()[0], batch_size=1, arch="linear",
                      name="two-runs")
    node["inputs"].update(runs=2, codeswitch=0)  # no copies: the dictionary is not what this test is about
    entry = server.run(text_graph(node), timeout=600)
    assert entry["status"]["status_str"] == "success", (
        entry["status"], execution_error(entry) if entry["status"]["status_str"] == "error" else None)
    spec = read_adapter_spec(server.root / "models" / "babelclip" / "two-runs.safetensors")
    recipe = json.loads(spec.metadata["babelclip.recipe"])
    assert recipe["runs"] == 2 and recipe["seed"] == 0 and recipe["steps"] == 2
    assert not list((server.root / "models" / "babelclip" / ".cache").glob("two-runs-*.ckpt*"))


def test_runs_2_with_the_mlp_adapter_fails_in_the_node_with_the_pipelines_typed_error(server):
    node = train_node(["1", 0], "altclip-kd", prompts=ROWS.splitlines()[0], batch_size=1, arch="mlp",
                      name="mlp-runs")
    node["inputs"].update(runs=2)
    entry = server.run(text_graph(node), timeout=600)
    assert entry["status"]["status_str"] == "error", entry["status"]
    err = execution_error(entry)
    assert err["node_id"] == "10" and err["exception_type"].rsplit(".", 1)[-1] == "InvalidDataError", err
    assert "runs 2" in err["exception_message"] and "linear" in err["exception_message"], err["exception_message"]
    assert not (server.root / "models" / "babelclip" / "mlp-runs.safetensors").exists()
    assert server.alive()


def test_denoiser_recipes_train_from_a_workflow(server):
    """Each UNet recipe, queued from one workflow, trains a step through the random SD1.5's own UNet."""
    recipes = [r.name for r in list_recipes() if r.needs_unet]
    graph = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "sd15-random"}},
        "2": {"class_type": "BabelCLIPLoadEncoder", "inputs": {"encoder_name": ENCODER}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0x884422}},
    }
    for i, recipe in enumerate(recipes):
        node = train_node(["1", 1], recipe, prompts="\n".join(ROWS.splitlines()[:2]), steps=1, name=f"unet-{recipe}")
        node["inputs"].update(model=["1", 0], vae=["1", 2], images=["3", 0])
        graph[str(10 + i)] = node
    entry = server.run(graph, timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    for recipe in recipes:
        spec = read_adapter_spec(server.root / "models" / "babelclip" / f"unet-{recipe}.safetensors")
        assert json.loads(spec.metadata["babelclip.recipe"])["name"] == recipe


def _training_progress(listener: ProgressListener, steps: int, timeout: float = 300):
    """Progress messages of the training loop (max == steps), until ``None`` after the run's last one."""
    while True:
        try:
            msg = listener.next(timeout)
        except TimeoutError:
            return
        if msg["max"] == steps:
            yield msg["value"]
            timeout = 10  # once the run is stopped, no more messages come


def _checkpoint_step(server, name: str) -> int:
    [ckpt] = (server.root / "models" / "babelclip" / ".cache").glob(f"{name}-*.ckpt")
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])


def test_cancel_keeps_the_step_it_reached_and_the_same_settings_resume_there(server):
    """POST /interrupt at a random step below the checkpoint interval: the checkpoint holds that step (at most
    the step in flight is lost), and queueing the same workflow again resumes from exactly there."""
    # 20 English prompts in ten languages: few texts for the teacher to encode, 180 training pairs
    shipped = (server.root / "custom_nodes" / "babelclip" / "training" / "data" / "prompts.tsv").read_text("utf-8")
    header, *rows = shipped.splitlines()
    english = sorted({row.split("\t")[0] for row in rows})[:20]
    keep = [row for row in rows if row.split("\t")[0] in english]
    (server.root / "input" / "prompts.tsv").write_text("\n".join([header, *keep]) + "\n", "utf-8")
    steps = CHECKPOINT_EVERY + 40
    # steps of a few ms: the cancel (a websocket message, then an HTTP request) lands some steps after the one it
    # is aimed at, still far below the checkpoint interval
    graph = text_graph(train_node(["1", 0], "altclip-kd", data_file="prompts.tsv", prompts="", steps=steps,
                                  batch_size=128, arch="linear", name="cancelled"))
    graph["10"]["inputs"]["runs"] = 1  # one run: its bar is the steps (runs 0 trains 4 of a linear adapter)
    target = random.Random().randint(5, CHECKPOINT_EVERY // 3)
    with ProgressListener(server) as listener:
        pid = server.queue(graph, listener.client_id)
        seen = []
        for value in _training_progress(listener, steps):
            seen.append(value)
            if value == target:
                server.post("/interrupt", {})
        entry = server.wait(pid)
    assert entry["status"]["status_str"] == "error" and messages(entry, "execution_interrupted"), entry["status"]
    assert seen and seen[-1] < CHECKPOINT_EVERY, f"the cancel at step {target} landed at {seen[-1:]}"
    kept = _checkpoint_step(server, "cancelled")
    assert seen[-1] <= kept <= seen[-1] + 1, (target, seen[-5:], kept)  # every reported step is in the checkpoint
    assert not (server.root / "models" / "babelclip" / "cancelled.safetensors").exists()

    with ProgressListener(server) as listener:
        pid = server.queue(graph, listener.client_id)
        resumed = list(_training_progress(listener, steps))
        entry = server.wait(pid, timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert resumed[0] == kept + 1 and resumed[-1] == steps, (kept, resumed[:3], resumed[-1:])
    spec = read_adapter_spec(server.root / "models" / "babelclip" / "cancelled.safetensors")
    assert '"train_pairs": ' in spec.metadata["babelclip.recipe"]


def _cancel_while_caching_then_rerun(server, graph: dict, train_steps: int = 0) -> tuple[int, int, dict]:
    """Cancel once the first cache bar (the encoder's) is full and the teacher's is under way, then queue again.
    Returns the size of the teacher bar in both runs and the second run's /history entry. The caches are filled
    in batches of 32 texts, checking for a cancel between batches."""
    with ProgressListener(server) as listener:
        pid = server.queue(graph, listener.client_id)
        encoder_done = False
        while True:
            msg = listener.next()
            if msg["value"] == msg["max"]:
                encoder_done = True
            elif encoder_done:
                server.post("/interrupt", {})
                break
        entry = server.wait(pid)
    assert messages(entry, "execution_interrupted"), entry["status"]
    with ProgressListener(server) as listener:
        pid = server.queue(graph, listener.client_id)
        entry = server.wait(pid, timeout=600)
        time.sleep(1)  # the last messages may still be on their way
        bars = []
        while not listener.messages.empty():
            bars.append(listener.messages.get())
    caching = [m["max"] for m in bars if m["max"] != train_steps]
    assert caching, f"the second run cached nothing (progress: {bars})"
    return msg["max"], caching[0], entry


def test_cancel_while_caching_keeps_what_was_cached(server):
    texts = 110
    prompts = "\n".join(f"an oil painting of lighthouse number {i}, stormy sea" for i in range(texts))
    graph = text_graph(train_node(["1", 0], "altclip-kd", prompts=prompts, steps=3, batch_size=8, name="cached"))
    todo, left, entry = _cancel_while_caching_then_rerun(server, graph, train_steps=3)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert 0 < left < todo  # the encoder's features and part of the teacher's were kept


def test_evaluate_node_cancel_keeps_what_was_cached(server):
    texts = 100
    prompts = "\n".join(f"a watercolour of village number {i}\tune aquarelle du village {i}\tfr" for i in range(texts))
    graph = text_graph({"class_type": "BabelCLIPEvaluateAdapter", "inputs": {
        "clip": ["1", 0], "encoder": ["2", 0], "adapter": ["3", 0], "data_file": TEXT_BOX, "prompts": prompts}})
    graph["3"] = {"class_type": "BabelCLIPLoadAdapter", "inputs": {"adapter_name": "tiny-sd1.safetensors"}}
    graph["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 1], "filename_prefix": "babel_eval"}}
    todo, left, entry = _cancel_while_caching_then_rerun(server, graph)
    assert entry["status"]["status_str"] == "success", (entry["status"], execution_error(entry)
                                                        if entry["status"]["status_str"] == "error" else None)
    assert todo == texts and 0 < left < todo

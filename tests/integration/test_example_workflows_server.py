"""The shipped example workflows against a real ComfyUI server: every node and widget exists, and the
train-in-graph example, converted to an API prompt the way the frontend does, runs."""

from __future__ import annotations

import json

import pytest

from babelclip.models import read_adapter_spec

from ..test_example_workflows import FILES, FOLDER, FRONTEND_ONLY, MULTILINE
from .cheap import CLIP_FILE, ENCODER, execution_error, link_clip

pytestmark = pytest.mark.integration

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _widgets(node_info: dict, *, optional: bool = False) -> list:
    """(name, spec, has a control_after_generate value) of each widget, in the order the frontend makes them;
    with ``optional``, (name, spec, control, whether it is an optional input)."""
    out = []
    for section in ("required", "optional"):
        for name, spec in node_info["input"].get(section, {}).items():
            if _is_widget(spec):
                options = spec[1] if len(spec) > 1 else {}
                # both frontends add 'control_after_generate' after an INT named seed/noise_seed, or when asked
                control = bool(options.get("control_after_generate")) or (
                    spec[0] == "INT" and name in ("seed", "noise_seed"))
                out.append((name, options, control) + ((section == "optional",) if optional else ()))
    return out


def to_api(workflow: dict, info: dict) -> dict:
    """A UI workflow as the API prompt the frontend queues: widget values by name, links as [node id, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, options, control, is_optional in _widgets(info[node["type"]], optional=True):
            if not values and is_optional and "default" in options:
                # saved before this optional widget existed: the frontends set the values they have by position
                # and leave the rest at their defaults
                inputs[name] = options["default"]
                continue
            assert values, f"{node['type']} #{node['id']}: no value for widget {name!r}"
            inputs[name] = values.pop(0)
            if control:
                assert values and values.pop(0) in ("fixed", "increment", "decrement", "randomize"), node["id"]
        assert not values, f"{node['type']} #{node['id']}: {len(values)} widget values more than the server's widgets"
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


#: Examples for families newer than the 2024-03 ComfyUI of the default run (its UNETLoader has no weight_dtype
#: and it cannot load them); they are checked against COMFYUI_PATH's ComfyUI (and queued in test_server_flux_sd3).
NEWER_FAMILIES = ("flux", "sd3")


def test_example_workflows_match_the_servers_nodes(comfy):
    """Every node of the shipped UI workflows exists, and its widget values line up with the server's widgets."""
    info = comfy.get("/object_info")
    assert len(FILES) >= 3
    for f in FILES:
        if comfy.label.startswith("comfyui-2024-03") and any(fam in f.stem for fam in NEWER_FAMILIES):
            continue
        wf = json.loads(f.read_text(encoding="utf-8"))
        for node in wf["nodes"]:
            assert node["type"] in info or node["type"] in FRONTEND_ONLY, \
                f"{f.name}: {node['type']} is not a node of {comfy.label}"
        to_api(wf, info)  # asserts that each node has exactly one value per widget


TRAIN_EXAMPLE = FOLDER / "babelclip_sd15_train_in_graph.json"


def _train_graph(comfy, sd15_folder, prompt: dict, **train_inputs) -> tuple[dict, str]:
    """The Train node of an API prompt of the train example and what feeds it, cheap: its CLIP from CLIPLoader
    (the random SD1.5's CLIP-L alone, not the whole 2 GB checkpoint), the tiny encoder, 2 steps; no sampling
    (the Train node is an output node). Returns (graph, the Train node's id)."""
    train_id, train = next((nid, n) for nid, n in prompt.items() if n["class_type"] == "BabelCLIPTrainAdapter")
    clip_id, encoder_id = train["inputs"]["clip"][0], train["inputs"]["encoder"][0]
    link_clip(comfy.root, sd15_folder)
    encoder = prompt[encoder_id]
    graph = {clip_id: {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion"}},
             encoder_id: {**encoder, "inputs": {**encoder["inputs"], "encoder_name": ENCODER}},
             train_id: {**train, "inputs": {**train["inputs"], "clip": [clip_id, 0], "steps": 2, **train_inputs}}}
    return graph, train_id


def _trained_recipe(comfy, graph: dict, train_id: str) -> dict:
    """Queue ``graph`` and return the ``babelclip.recipe`` metadata of the adapter its Train node saved."""
    entry = comfy.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", (
        entry["status"], execution_error(entry) if entry["status"]["status_str"] == "error" else None)
    [saved] = entry["outputs"][train_id]["text"]  # "saved <name>" (numbered when the name was taken)
    spec = read_adapter_spec(comfy.root / "models" / "babelclip" / saved.removeprefix("saved "))
    return json.loads(spec.metadata["babelclip.recipe"])


def _saved_before(info: dict, last: str, extra: list) -> tuple[dict, dict]:
    """The train example as a workflow saved when the Train node's last widget was ``last``: its widget values
    up to adapter_name, then ``extra`` (the values of the widgets between adapter_name and ``last``). Returns the
    workflow and its Train node's inputs as the frontends convert it (widgets it lacks take their defaults)."""
    names = [w[0] for w in _widgets(info["BabelCLIPTrainAdapter"])]
    wf = json.loads(TRAIN_EXAMPLE.read_text(encoding="utf-8"))
    node = next(n for n in wf["nodes"] if n["type"] == "BabelCLIPTrainAdapter")
    values = node["widgets_values"]
    upto = values[: values.index("my-first-adapter") + 1]  # adapter_name: the last required widget
    assert len(upto) == names.index("adapter_name") + 2  # (+1: seed's control_after_generate value)
    node["widgets_values"] = upto + extra
    assert names[names.index("adapter_name") + len(extra)] == last
    prompt = to_api(wf, info)
    return prompt, next(n for n in prompt.values() if n["class_type"] == "BabelCLIPTrainAdapter")["inputs"]


def test_the_train_nodes_last_widgets_are_codeswitch_then_runs_with_their_defaults(comfy):
    from babelclip.training.codeswitch import DEFAULT_COPIES

    info = comfy.get("/object_info")
    names = [w[0] for w in _widgets(info["BabelCLIPTrainAdapter"])]
    assert names[-3:] == ["adapter_name", "codeswitch", "runs"]  # new widgets go last, after the older ones
    optional = info["BabelCLIPTrainAdapter"]["input"]["optional"]
    assert optional["codeswitch"][1]["default"] == DEFAULT_COPIES and optional["runs"][1]["default"] == 0


def test_a_train_node_saved_before_its_codeswitch_input_queues_with_the_defaults(comfy, sd15_folder):
    """Workflows saved before the Train node had ``codeswitch`` have two widget values fewer (no codeswitch, no
    runs): they convert as the frontends load them, and the queued run trains on the pipeline's default copies,
    and runs 0 (the default) trains the example's mlp adapter once (the adapter's metadata says so)."""
    from babelclip.training.codeswitch import DEFAULT_COPIES, DEFAULT_RATE

    prompt, train = _saved_before(comfy.get("/object_info"), "adapter_name", [])
    assert train["codeswitch"] == DEFAULT_COPIES and train["runs"] == 0 and train["adapter_name"] == "my-first-adapter"
    assert train["steps"] == 300 and train["seed"] == 0

    # one English prompt of the example's (the copies' dictionary costs per distinct English word), 9 languages
    cat = "\n".join(row for row in train["prompts"].splitlines() if row.startswith("an orange tabby cat\t"))
    recipe = _trained_recipe(comfy, *_train_graph(comfy, sd15_folder, prompt, prompts=cat, batch_size=4,
                                                  adapter_name="saved-before-codeswitch"))
    # (the settings: the tiny encoder's random vocabulary may give no neighbours, so no copies are counted)
    assert recipe["codeswitch"]["copies"] == DEFAULT_COPIES and recipe["codeswitch"]["rate"] == DEFAULT_RATE
    assert recipe["steps"] == 2 and "runs" not in recipe  # one run: the metadata records runs only above 1


def test_a_train_node_saved_before_its_runs_input_queues_with_one_run_and_its_own_codeswitch(comfy, sd15_folder):
    """Workflows saved before the Train node had ``runs`` have one widget value fewer: their last value is still
    codeswitch's (here 0, no copies: it reaches the run) and runs takes its default, 0 (one run of the mlp)."""
    from babelclip.training.codeswitch import DEFAULT_RATE

    prompt, train = _saved_before(comfy.get("/object_info"), "codeswitch", [0])
    assert train["codeswitch"] == 0 and train["runs"] == 0 and train["adapter_name"] == "my-first-adapter"
    recipe = _trained_recipe(comfy, *_train_graph(comfy, sd15_folder, prompt, adapter_name="saved-before-runs"))
    assert recipe["codeswitch"] == {"copies": 0, "rate": DEFAULT_RATE, "pairs": 0}
    assert recipe["steps"] == 2 and "runs" not in recipe


def test_the_layout_tests_know_which_widgets_are_multiline(comfy):
    """tests/test_example_workflows.py sizes nodes with a table of multiline widgets: it is the server's."""
    info = comfy.get("/object_info")
    for node_type, expected in MULTILINE.items():
        if node_type in FRONTEND_ONLY:
            continue
        positions, i = set(), 0
        for _, options, control in _widgets(info[node_type]):
            if options.get("multiline"):
                positions.add(i)
            i += 2 if control else 1
        assert positions == expected, (node_type, positions)


def test_train_in_graph_example_runs_as_shipped(comfy):
    """The example needs no adapter file. Only what the test server lacks changes: its checkpoint is a diffusers
    folder (DiffusersLoader gives the same MODEL, CLIP, VAE), its encoder is tiny; and fewer steps, smaller image."""
    wf = json.loads(TRAIN_EXAMPLE.read_text(encoding="utf-8"))
    prompt = to_api(wf, comfy.get("/object_info"))
    by_type = {n["class_type"]: (nid, n) for nid, n in prompt.items()}
    ckpt_id, _ = by_type["CheckpointLoaderSimple"]
    prompt[ckpt_id] = {"class_type": "DiffusersLoader", "inputs": {"model_path": "sd15-random"}}
    by_type["BabelCLIPLoadEncoder"][1]["inputs"]["encoder_name"] = "tiny-xlmr"
    train = by_type["BabelCLIPTrainAdapter"][1]["inputs"]
    train.update(steps=10, adapter_name="example-train-in-graph")
    by_type["KSampler"][1]["inputs"]["steps"] = 1
    by_type["EmptyLatentImage"][1]["inputs"].update(width=64, height=64)

    entry = comfy.run(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"][by_type["SaveImage"][0]]["images"]
    curve = entry["outputs"][by_type["PreviewImage"][0]]["images"]
    assert len(saved) == 1 and len(curve) == 1, entry["outputs"]
    assert (comfy.root / "output" / saved[0].get("subfolder", "") / saved[0]["filename"]).is_file()
    assert (comfy.root / "models" / "babelclip" / "example-train-in-graph.safetensors").is_file()

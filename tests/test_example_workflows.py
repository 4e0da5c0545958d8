"""The shipped example workflows: laid out with room to spare in the 2024 and the current ComfyUI frontend,
a thumbnail next to each for the template browser, and one example that runs with any encoder and checkpoint.

Node boxes are computed from each node's slots and widgets the way LiteGraph's ``computeSize`` does, in the
2024 frontend (ComfyUI web/ of March 2024) and in comfyui-frontend-package 1.27.10, rounded up:

- a title bar of ``NODE_TITLE_HEIGHT`` = 30 above ``pos``, and in the current frontend the node badges (id,
  node pack) in a row of 20 drawn 2 px above the title bar (``drawBadges``: y = -(30 + 2) - 20);
- ``max(inputs, outputs, 1)`` slot rows of ``NODE_SLOT_HEIGHT`` = 20 (widgets are not slot rows);
- every widget ``NODE_WIDGET_HEIGHT`` = 20 + 4, multiline text 50 at least (DOM widget minimum; counted
  here as 100 so a few lines show), then + 8 + 6;
- width at least 1.5 x ``NODE_WIDTH`` (140) with widgets, 400 with a multiline text (2024's minWidth),
  and the title at 14 px x 0.6 per character + 40.

Image outputs (SaveImage, PreviewImage) draw their image inside the node, so they get room for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "example_workflows"
FILES = sorted(FOLDER.glob("*.json"))

TITLE_H, BADGE_H, SLOT_H, WIDGET_H, GAP = 30, 22, 20, 24, 4
MULTILINE_H = 100
IMAGE_H = 260
ROOM = 20  # free space required between any two node boxes

# Which widget (by position in widgets_values) is a multiline text box, per node type. The server test
# (tests/integration) checks this table against /object_info.
MULTILINE = {
    "BabelCLIPTextEncode": {0},
    "BabelCLIPTextEncodeSDXL": {0},
    "BabelCLIPTextEncodeFlux": {0},
    "BabelCLIPTrainAdapter": {3},
    "BabelCLIPEvaluateAdapter": {1},
    "CLIPTextEncode": {0},
    "Note": {0},
}
IMAGE_NODES = {"SaveImage", "PreviewImage"}
FRONTEND_ONLY = {"Note"}  # nodes that only the frontend knows: not in /object_info, dropped from API prompts


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def display_title(node: dict) -> str:
    return node.get("title") or node["type"]


def min_size(node: dict) -> tuple[float, float]:
    """The smallest body (below the title bar) that shows every slot and widget of a node."""
    rows = max(len(node.get("inputs") or []), len(node.get("outputs") or []), 1)
    values = node.get("widgets_values") or []
    multiline = MULTILINE.get(node["type"], set())
    widgets = sum((MULTILINE_H if i in multiline else WIDGET_H) + GAP for i in range(len(values)))
    height = rows * SLOT_H + (widgets + 8 if values else 0) + 6
    if node["type"] in IMAGE_NODES:
        height += IMAGE_H
    width = max(14 * 0.6 * len(display_title(node)) + 40, 210 if values else 140, 400 if multiline else 0)
    return width, height


def box(node: dict) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of everything a node draws: badge row, title bar and body (at least its minimum)."""
    (x, y), (w, h) = node["pos"], node["size"]
    mw, mh = min_size(node)
    return x, y - TITLE_H - BADGE_H, x + max(w, mw), y + max(h, mh)


def overlaps(a, b, room: float) -> bool:
    return a[0] < b[2] + room and b[0] < a[2] + room and a[1] < b[3] + room and b[1] < a[3] + room


def overlapping_pairs(workflow: dict, room: float = ROOM) -> list[tuple[str, str]]:
    nodes = workflow["nodes"]
    return [(display_title(a), display_title(b)) for i, a in enumerate(nodes) for b in nodes[i + 1:]
            if overlaps(box(a), box(b), room)]


def test_there_are_examples_for_every_family_and_training_in_the_graph():
    names = {f.stem for f in FILES}
    for family in ("sd15", "sdxl", "flux", "sd3"):
        assert any(family in n for n in names), (family, names)
    assert any("train" in n for n in names), names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_node_is_stored_at_least_as_big_as_its_slots_and_widgets(path):
    for node in load(path)["nodes"]:
        (w, h), (mw, mh) = node["size"], min_size(node)
        assert w >= mw and h >= mh, f"{path.name}: {display_title(node)} is {w}x{h}, needs {mw:.0f}x{mh:.0f}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_two_nodes_overlap_with_title_bars_and_badges(path):
    assert overlapping_pairs(load(path)) == []


def test_the_overlap_check_finds_the_layout_users_saw():
    """The SD1.5 example as shipped before: adapter loader over the checkpoint loader, and so on."""
    def n(title, pos, size, inputs=0, outputs=1, values=()):
        return {"type": title, "title": title, "pos": pos, "size": size, "inputs": [{}] * inputs,
                "outputs": [{}] * outputs, "widgets_values": list(values)}

    old = {"nodes": [
        n("Load Checkpoint", [40, 300], [320, 120], outputs=3, values=["x"]),
        n("BabelCLIP Load Encoder", [40, 80], [320, 120], values=["x", False]),
        n("BabelCLIP Load Adapter", [40, 180], [320, 120], values=["x"]),
        n("VAE Decode", [1220, 80], [320, 120], inputs=2),
        n("Save Image", [1220, 200], [400, 420], values=["x"]),
    ]}
    pairs = overlapping_pairs(old)
    assert ("BabelCLIP Load Encoder", "BabelCLIP Load Adapter") in pairs
    assert ("Load Checkpoint", "BabelCLIP Load Adapter") in pairs
    assert ("VAE Decode", "Save Image") in pairs


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_example_has_its_template_browser_thumbnail(path):
    """ComfyUI (app/custom_node_manager.py) serves example_workflows/ at /api/workflow_templates/<pack>/ and
    the frontend (1.27) asks for ``<pack>/<workflow name>.jpg`` as the thumbnail of each custom template."""
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"no thumbnail {thumb.name} next to {path.name}"
    assert thumb.stat().st_size < 200_000, f"{thumb.name} is {thumb.stat().st_size} bytes"
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and min(img.size) >= 128, (img.format, img.size)


def test_the_readme_shows_a_picture_of_the_sd15_graph():
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert any("sd15" in p and (REPO / p).is_file() for p in pictures), pictures


def test_the_train_example_needs_no_adapter_file():
    """Runs with any encoder and SD1.x checkpoint: it trains its adapter from prompts typed into the graph."""
    wf = load(FOLDER / "babelclip_sd15_train_in_graph.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    types = {n["type"] for n in nodes.values()}
    assert "BabelCLIPLoadAdapter" not in types and "BabelCLIPTrainAdapter" in types
    train = next(n for n in nodes.values() if n["type"] == "BabelCLIPTrainAdapter")
    recipe, arch, data_file, prompts = train["widgets_values"][:4]
    assert (recipe, arch, data_file) == ("altclip-kd", "mlp", "(use the text box)")
    langs = {line.split("\t")[2] for line in prompts.splitlines()}
    assert len(langs) >= 5 and all(len(line.split("\t")) == 3 for line in prompts.splitlines()), langs
    encodes = [n for n in nodes.values() if n["type"] == "BabelCLIPTextEncode"]
    adapter_links = {i["link"] for n in encodes for i in n["inputs"] if i["name"] == "adapter"}
    sources = {link[1] for link in wf["links"] if link[0] in adapter_links}
    assert len(encodes) == 2 and sources == {train["id"]}


@pytest.mark.parametrize("name", ["babelclip_flux_any_language", "babelclip_sd3_any_language"])
def test_flux_and_sd3_examples_load_no_text_encoder(name):
    """The point of BabelCLIP on Flux / SD3: no T5-XXL (nor any CLIP loader) in the graph; BabelCLIP's encode
    node feeds the sampler."""
    wf = load(FOLDER / f"{name}.json")
    types = {n["type"] for n in wf["nodes"]}
    assert not types & {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "CLIPTextEncode", "CLIPTextEncodeFlux"}
    nodes = {n["id"]: n for n in wf["nodes"]}
    sampler = next(n for n in nodes.values() if n["type"] == "KSampler")
    positive = next(i["link"] for i in sampler["inputs"] if i["name"] == "positive")
    (source,) = [nodes[link[1]]["type"] for link in wf["links"] if link[0] == positive]
    assert source == ("BabelCLIPTextEncodeFlux" if "flux" in name else "BabelCLIPTextEncode")

"""The Hub loader nodes in a real ComfyUI server, whose ``HF_ENDPOINT`` is a Hub on 127.0.0.1 (tests/hub_server.py):
a workflow that names repositories downloads them on its first run into the model folders and renders; the next
run asks the Hub nothing; a refused repository fails the node with BabelCLIP's message and the server goes on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ..conftest import make_adapter_file
from ..hub_server import FakeHub
from .comfyui import ComfyServer, prepare, sources
from .test_comfyui_server import _error, _saved_images, graph

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub_comfy(tmp_path_factory, sd15_folder, encoder_dirs, encoders):
    source = sources()[0][1]  # the vendored tree is enough: what is tested is the nodes, not each ComfyUI version
    files = {p.name: p.read_bytes() for p in Path(encoder_dirs["xlm-roberta"]).iterdir()}
    adapters = tmp_path_factory.mktemp("hub-adapters")
    sd1 = make_adapter_file(adapters / "tiny-sd1.safetensors", encoders["xlm-roberta"], "sd1", "mlp")
    with FakeHub() as hub:
        hub.add("someone/tiny-xlmr", dict(files, **{"pytorch_model.bin": b"pickle"}))
        hub.add("someone/tiny-adapters", {"tiny-sd1.safetensors": Path(sd1).read_bytes(), "README.md": b"# x"})
        hub.add("someone/pickled", {"config.json": b'{"model_type": "xlm-roberta"}', "pytorch_model.bin": b"x"})
        root = prepare(source, tmp_path_factory.mktemp("comfyui-hub") / "ComfyUI")
        os.symlink(sd15_folder, root / "models" / "diffusers" / "sd15-random")
        shutil.rmtree(root / "models" / "babelclip", ignore_errors=True)
        server = ComfyServer(root, "hub", env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
                                               "HF_HOME": str(root / "hf-home")})
        yield server, hub
        server.stop()


def _hub_graph(encoder_repo: str, adapter_repo: str, prefix: str) -> dict:
    g = graph("unused", "一只猫坐在窗台上", seed=1, prefix=prefix)
    g["2"] = {"class_type": "BabelCLIPLoadEncoderHub", "inputs": {"repo_id": encoder_repo}}
    g["3"] = {"class_type": "BabelCLIPLoadAdapterHub", "inputs": {"repo_id": adapter_repo}}
    return g


def test_object_info_has_the_hub_nodes_without_downloading(hub_comfy):
    server, hub = hub_comfy
    info = server.get("/object_info")
    for node_id in ("BabelCLIPLoadEncoderHub", "BabelCLIPLoadAdapterHub"):
        assert info[node_id]["input"]["required"]["repo_id"][0] == "STRING"
        for section in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert hub.requests == []  # nothing is downloaded when ComfyUI starts or lists nodes


def test_a_workflow_naming_repositories_downloads_them_once_and_renders(hub_comfy):
    server, hub = hub_comfy
    entry = server.run(_hub_graph("someone/tiny-xlmr", "someone/tiny-adapters", "hub-first"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert _saved_images(server, entry)[0].is_file()
    models = server.root / "models"
    enc = next(d for d in (models / "text_encoders", models / "clip") if (d / "tiny-xlmr").is_dir()) / "tiny-xlmr"
    assert (enc / "model.safetensors").is_file() and not (enc / "pytorch_model.bin").exists()
    assert (models / "babelclip" / "tiny-adapters" / "tiny-sd1.safetensors").is_file()
    # the downloaded files are now in the local loaders' lists too
    info = server.get("/object_info")
    assert "tiny-adapters/tiny-sd1.safetensors" in info["BabelCLIPLoadAdapter"]["input"]["required"]["adapter_name"][0]
    before = len(hub.requests)
    g = _hub_graph("someone/tiny-xlmr", "someone/tiny-adapters", "hub-second")
    for node in ("2", "3"):  # other inputs: ComfyUI runs the loaders again instead of reusing its cached outputs
        g[node]["inputs"]["check_for_updates"] = False
    again = server.run(g)
    assert again["status"]["status_str"] == "success", again["status"]
    assert len(hub.requests) == before  # the copy on disk is used: the Hub is not asked again


def test_a_refused_repository_fails_the_node_and_the_server_goes_on(hub_comfy):
    server, hub = hub_comfy
    entry = server.run(_hub_graph("someone/pickled", "someone/tiny-adapters", "hub-bad"))
    assert entry["status"]["status_str"] == "error"
    err = _error(entry)
    assert err["node_type"] == "BabelCLIPLoadEncoderHub" and "only has pickle weights" in err["exception_message"]
    assert not any("pickled" in p.name for p in (server.root / "models").rglob("*"))
    entry = server.run(_hub_graph("someone/nothing-here", "someone/tiny-adapters", "hub-missing"))
    assert "not found on the Hub" in _error(entry)["exception_message"]
    ok = server.run(_hub_graph("someone/tiny-xlmr", "someone/tiny-adapters", "hub-after"))
    assert ok["status"]["status_str"] == "success"

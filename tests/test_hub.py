"""Hub download and sharing (models/hub.py, models/card.py, ``python -m babelclip fetch|push|card``), with the real
``huggingface_hub`` client against a Hub on 127.0.0.1 (tests/hub_server.py): what is downloaded, where, resume
after a dropped connection, revisions, refusals before anything is written, gated repositories, offline mode,
and push -> fetch round trips with the model card."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from babelclip.errors import InvalidModelFileError, UnsupportedModelError
from babelclip.models import FAMILIES, EncoderInfo, build_adapter, load_adapter, load_encoder, save_adapter
from babelclip.models.hub import SOURCE_FILE, HubError, fetch, push

from .conftest import make_adapter_file
from .hub_server import FakeHub

CHUNK = 10 * 1024 * 1024  # huggingface_hub writes downloads in chunks of this size (constants.DOWNLOAD_CHUNK_SIZE)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def _downloaded(hub: FakeHub) -> set[str]:
    return {r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests
            if r["method"] == "GET" and "/resolve/" in r["path"]}


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def encoder_repo(encoder_dirs):
    """A tiny XLM-R repository as people publish them: safetensors and a pickle copy, an ONNX export."""
    files = _files(encoder_dirs["xlm-roberta"])
    files.update({"pytorch_model.bin": b"\x80\x02pickle", "onnx/model.safetensors": b"not for BabelCLIP",
                  "README.md": b"# tiny\n", "flax_model.msgpack": b"x"})
    return files


def _cli(args, env_extra, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "babelclip", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def test_fetch_encoder_takes_only_what_babelclip_loads_into_a_readable_folder(hub, encoder_repo, tmp_path):
    sha = hub.add("someone/tiny-xlmr", encoder_repo)
    seen = []
    result = fetch("someone/tiny-xlmr", str(tmp_path / "models"), endpoint=hub.endpoint,
                   progress=lambda done, total: seen.append((done, total)))
    dest = tmp_path / "models" / "text_encoders" / "tiny-xlmr"
    assert result.path == str(dest) and result.commit == sha and result.downloaded
    wanted = {n for n in encoder_repo if "/" not in n and (n.endswith((".json", ".safetensors", ".model")))}
    assert set(result.files) == wanted
    assert {p.name for p in dest.iterdir()} == wanted | {SOURCE_FILE}  # no pickle, no ONNX, no Hub cache folder
    assert _downloaded(hub) == wanted  # the pickle was never requested
    for name in wanted:
        assert (dest / name).read_bytes() == encoder_repo[name]
    assert seen and seen[-1][0] == seen[-1][1] == sum(len(encoder_repo[n]) for n in wanted)
    encoder = load_encoder(dest)
    assert encoder.info.repo_id == "someone/tiny-xlmr"
    assert json.loads((dest / SOURCE_FILE).read_text())["commit"] == sha
    # the same commit again: nothing downloaded; reuse: not even asked
    again = fetch("someone/tiny-xlmr", str(tmp_path / "models"), endpoint=hub.endpoint)
    assert not again.downloaded and _downloaded(hub) == wanted
    count = len(hub.requests)
    assert not fetch("someone/tiny-xlmr", str(tmp_path / "models"), kind="encoder", reuse=True,
                     endpoint=hub.endpoint).downloaded
    assert len(hub.requests) == count


def test_revision_pinning(hub, encoder_repo, tmp_path):
    old = hub.add("someone/tiny-xlmr", encoder_repo, ref="v1")
    changed = dict(encoder_repo, **{"config.json": encoder_repo["config.json"].replace(b"{", b'{"babel": 1, ', 1)})
    new = hub.add("someone/tiny-xlmr", changed, ref="main")
    by_tag = fetch("someone/tiny-xlmr", str(tmp_path / "a"), revision="v1", endpoint=hub.endpoint)
    by_commit = fetch("someone/tiny-xlmr", str(tmp_path / "b"), revision=old, endpoint=hub.endpoint)
    latest = fetch("someone/tiny-xlmr", str(tmp_path / "c"), endpoint=hub.endpoint)
    assert by_tag.commit == by_commit.commit == old and latest.commit == new
    assert Path(by_tag.path, "config.json").read_bytes() == encoder_repo["config.json"]
    assert Path(latest.path, "config.json").read_bytes() == changed["config.json"]
    # moving the same folder to another revision of the same repository is an update, not a clash
    assert fetch("someone/tiny-xlmr", str(tmp_path / "a"), endpoint=hub.endpoint).commit == new
    with pytest.raises(HubError, match="no revision 'v9'"):
        fetch("someone/tiny-xlmr", str(tmp_path / "d"), revision="v9", endpoint=hub.endpoint)
    assert not (tmp_path / "d").exists()


@pytest.fixture
def big_adapter_repo(xlmr, tmp_path):
    """An adapter repository whose file is larger than one download chunk (13.6 MB), so resuming shows."""
    torch.manual_seed(0)
    info = EncoderInfo("big", "xlm-roberta", 1024, 2, 100, "big")
    path = save_adapter(build_adapter("linear", 1024, FAMILIES["sdxl"]), tmp_path / "src" / "big.safetensors",
                        {"encoder": info, "family": "sdxl"})
    data = Path(path).read_bytes()
    assert len(data) > CHUNK
    return {"big.safetensors": data, "big.README.md": Path(path).with_suffix("").with_suffix(".README.md")
            .read_bytes(), "big.eval.json": b"{}", "pytorch_model.bin": b"pickle"}


def test_a_dropped_connection_resumes_where_it_broke(hub, big_adapter_repo, tmp_path):
    hub.add("someone/big", big_adapter_repo)
    hub.break_after["big.safetensors"] = CHUNK + 4096  # one whole chunk arrives, then the connection drops
    result = fetch("someone/big", str(tmp_path / "models"), endpoint=hub.endpoint)
    gets = [r for r in hub.requests if r["method"] == "GET" and r["path"].endswith("/big.safetensors")]
    assert [g["range"] for g in gets] == [None, f"bytes={CHUNK}-"]
    assert Path(result.path, "big.safetensors").read_bytes() == big_adapter_repo["big.safetensors"]
    assert result.path == str(tmp_path / "models" / "babelclip" / "big")
    assert set(result.files) == {"big.safetensors", "big.README.md", "big.eval.json"}


def test_an_interrupted_fetch_keeps_the_finished_files_for_the_next_one(hub, big_adapter_repo, tmp_path):
    """A fetch that fails (the Hub goes down after the connection broke) keeps the files it finished in the hidden
    staging folder; the next fetch downloads only the rest. (huggingface_hub 2.x discards a partly downloaded file
    when its retries fail, so that one file starts again.)"""
    hub.add("someone/big", big_adapter_repo)
    hub.break_after["big.safetensors"] = CHUNK + 4096
    hub.down = {"big.safetensors"}  # ... and its retry finds the Hub down
    models = tmp_path / "models"
    with pytest.raises(HubError, match="run the same fetch again to download the rest"):
        fetch("someone/big", str(models), endpoint=hub.endpoint)
    assert not (models / "babelclip" / "big").exists()
    staging = models / "babelclip" / ".big.download"  # hidden: no loader lists it
    assert {"big.README.md", "big.eval.json"} <= {p.name for p in staging.iterdir()}
    hub.down, before = False, len(hub.requests)
    result = fetch("someone/big", str(models), endpoint=hub.endpoint)
    again = [r["path"].rsplit("/", 1)[1] for r in hub.requests[before:] if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert again == ["big.safetensors"]
    assert Path(result.path, "big.safetensors").read_bytes() == big_adapter_repo["big.safetensors"]
    assert not staging.exists()
    load_adapter(Path(result.path, "big.safetensors"))


def _nothing_written(models: Path) -> bool:
    return not models.exists() or not any(models.rglob("*"))


def test_pickle_only_repositories_are_refused_before_anything_is_written(hub, tmp_path):
    hub.add("someone/old-encoder", {"config.json": b'{"model_type": "xlm-roberta"}', "pytorch_model.bin": b"x",
                                    "tokenizer.json": b"{}"})
    hub.add("someone/old-adapter", {"adapter.pt": b"x", "README.md": b"hi"})
    for repo in ("someone/old-encoder", "someone/old-adapter"):
        with pytest.raises(InvalidModelFileError, match="only has pickle weights"):
            fetch(repo, str(tmp_path / "models"), endpoint=hub.endpoint)
    assert _nothing_written(tmp_path / "models") and not _downloaded(hub)


@pytest.mark.parametrize("config, error, match", [
    ({"model_type": "xlm-roberta", "auto_map": {"AutoModel": "modeling_evil.Model"}}, InvalidModelFileError,
     "custom code"),
    ({"model_type": "internvl_chat"}, UnsupportedModelError, "'internvl_chat' model"),
])
def test_custom_code_and_unknown_architectures_are_refused_before_the_weights(hub, encoder_repo, tmp_path, config,
                                                                              error, match):
    hub.add("someone/odd", dict(encoder_repo, **{"config.json": json.dumps(config).encode()}))
    with pytest.raises(error, match=match):
        fetch("someone/odd", str(tmp_path / "models"), endpoint=hub.endpoint)
    assert _nothing_written(tmp_path / "models")
    assert _downloaded(hub) <= {"config.json", "tokenizer_config.json"}  # read in a temporary folder


def test_a_repository_of_foreign_safetensors_is_not_kept(hub, tmp_path):
    from safetensors.torch import save

    hub.add("someone/foreign", {"diffusion_pytorch_model.safetensors": save({"w": torch.zeros(2)})})
    with pytest.raises(InvalidModelFileError, match="babelclip convert"):
        fetch("someone/foreign", str(tmp_path / "models"), kind="adapter", endpoint=hub.endpoint)
    assert not any((tmp_path / "models" / "babelclip").iterdir())


def test_gated_private_and_missing_repositories(hub, encoder_repo, tmp_path):
    hub.add("corp/gated", encoder_repo, gated_token="hf_secret")
    with pytest.raises(HubError, match="gated"):
        fetch("corp/gated", str(tmp_path / "models"), endpoint=hub.endpoint, token=False)
    result = fetch("corp/gated", str(tmp_path / "models"), endpoint=hub.endpoint, token="hf_secret")
    assert Path(result.path, "model.safetensors").is_file()
    assert all(r["authorization"] == "Bearer hf_secret" for r in hub.requests if r["path"].startswith("/corp/"))
    with pytest.raises(HubError, match="not found on the Hub"):
        fetch("corp/nothing", str(tmp_path / "models"), endpoint=hub.endpoint, token=False)
    with pytest.raises(InvalidModelFileError, match="not a Hugging Face repository id"):
        fetch("../../etc", str(tmp_path / "models"), endpoint=hub.endpoint)
    with pytest.raises(Exception, match="not a plain folder name"):
        fetch("corp/gated", str(tmp_path / "models"), name="../x", endpoint=hub.endpoint)


def test_a_folder_that_holds_something_else_is_kept(hub, encoder_repo, tmp_path):
    hub.add("someone/tiny-xlmr", encoder_repo)
    mine = tmp_path / "models" / "text_encoders" / "tiny-xlmr"
    mine.mkdir(parents=True)
    (mine / "config.json").write_text("mine")
    with pytest.raises(InvalidModelFileError, match="already exists"):
        fetch("someone/tiny-xlmr", str(tmp_path / "models"), endpoint=hub.endpoint)
    assert (mine / "config.json").read_text() == "mine" and not _downloaded(hub)
    assert fetch("someone/tiny-xlmr", str(tmp_path / "models"), name="tiny-2", endpoint=hub.endpoint).downloaded


def test_cli_fetch_offline_mode(hub, encoder_repo, tmp_path):
    """``HF_HUB_OFFLINE=1``: a folder fetched before is used, a copy in the Hub cache is copied in, anything else
    is a clear error; no request reaches the Hub."""
    hub.add("someone/tiny-xlmr", encoder_repo)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home")}
    models = tmp_path / "models"
    out = _cli(["fetch", "someone/tiny-xlmr", "--models-dir", str(models)], env)
    assert out.returncode == 0 and "downloaded: someone/tiny-xlmr@" in out.stdout, out.stderr
    # the Hub cache, filled the way `hf download` and transformers fill it
    hub.add("someone/other", encoder_repo)
    code = ("import huggingface_hub as h; h.snapshot_download('someone/other', allow_patterns=['*.json', "
            "'*.safetensors', '*.model'])")
    filled = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True)
    assert filled.returncode == 0, filled.stderr
    requests = len(hub.requests)
    offline = dict(env, HF_HUB_OFFLINE="1")
    out = _cli(["fetch", "someone/tiny-xlmr", "--models-dir", str(models)], offline)
    assert out.returncode == 0 and "already there" in out.stdout, out.stderr
    out = _cli(["fetch", "someone/other", "--models-dir", str(models)], offline)
    assert out.returncode == 0 and "downloaded" in out.stdout, out.stderr
    load_encoder(models / "text_encoders" / "other")
    out = _cli(["fetch", "someone/absent", "--models-dir", str(models)], offline)
    assert out.returncode == 2 and "HF_HUB_OFFLINE is set" in out.stderr
    assert len(hub.requests) == requests


def test_cli_push_then_fetch_round_trip_with_model_card(hub, xlmr, tmp_path):
    from huggingface_hub import ModelCard

    path = make_adapter_file(tmp_path / "mine" / "e5-de.safetensors", xlmr, "sd1", "mlp", languages=["de", "en"],
                             recipe={"name": "altclip-kd", "options": {"contrastive_weight": 1.0}, "steps": 10})
    stem = str(path)[: -len(".safetensors")]
    Path(stem + ".eval.md").write_text("| lang | r@1 |\n|---|---|\n| de | 0.75 |\n")
    Path(stem + ".eval.json").write_text("{}")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_writer", "HF_HOME": str(tmp_path / "hf-home")}
    out = _cli(["push", str(path), "me/e5-de", "--license", "apache-2.0"], env)
    assert out.returncode == 0 and "uploaded" in out.stdout, out.stderr
    repo = hub.repos["me/e5-de"]
    files = repo.commits[repo.refs["main"]]
    assert {"e5-de.safetensors", "README.md", "e5-de.eval.md", "e5-de.eval.json"} <= set(files)
    assert files["e5-de.safetensors"] == Path(path).read_bytes()
    card = ModelCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "babelclip" and data["license"] == "apache-2.0"
    assert data["language"] == ["de", "en"] and data["babelclip"]["family"] == "sd1"
    assert data["babelclip"]["architecture"] == "mlp" and data["babelclip"]["recipe"] == "altclip-kd"
    assert "| de | 0.75 |" in card.text and "python -m babelclip fetch me/e5-de" in card.text
    out = _cli(["fetch", "me/e5-de", "--models-dir", str(tmp_path / "models")], env)
    assert out.returncode == 0, out.stderr
    got = tmp_path / "models" / "babelclip" / "e5-de"
    a, b = load_adapter(got / "e5-de.safetensors"), load_adapter(path)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    # not an adapter: refused before any request
    bad = tmp_path / "mine" / "bad.safetensors"
    bad.write_bytes(b"nope")
    before = len(hub.requests)
    out = _cli(["push", str(bad), "me/bad"], env)
    assert out.returncode == 2 and "bad.safetensors" in out.stderr and len(hub.requests) == before


def test_push_without_write_access_says_so(hub, xlmr, tmp_path):
    path = make_adapter_file(tmp_path / "a.safetensors", xlmr)
    hub.add("corp/locked", {"x": b"1"}, gated_token="hf_other")
    with pytest.raises(HubError, match="refused to write"):
        push(path, "corp/locked", endpoint=hub.endpoint, token="hf_mine")


def test_every_saved_adapter_gets_a_card_that_the_hub_client_parses(xlmr, tmp_path):
    from huggingface_hub import ModelCard

    path = make_adapter_file(tmp_path / "x.safetensors", xlmr, "sdxl", "linear", languages=["*"])
    card = ModelCard.load(tmp_path / "x.README.md")
    assert card.data.library_name == "babelclip" and {"stable-diffusion", "sdxl"} <= set(card.data.tags)
    encoder = card.data.to_dict()["babelclip"]["encoder"]
    assert encoder["fingerprint"] == xlmr.info.fingerprint and encoder["weights"] == xlmr.info.weights
    assert "Not evaluated" in card.text and "x.safetensors" in card.text
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest()  # the adapter itself is unchanged by the card

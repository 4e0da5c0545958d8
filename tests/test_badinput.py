"""The bad-input catalogue (issue 5): every entry must fail with a typed error that names the input and says
what to do, and must leave the disk exactly as it was.

Each :class:`Bad` case prepares its input in a scratch folder, the folder is fingerprinted (every file's path,
size and SHA-256, and every link's target), the case runs, and the fingerprint is taken again. The server-side
view of the same inputs (errors in ComfyUI's /history, the server staying up) is in tests/integration.

Some inputs from the issue's list are not errors by design and are checked in :data:`HARD_BUT_VALID` instead:
an empty or whitespace-only prompt is ComfyUI's "nothing" (every negative prompt that is left blank), and emoji,
zero-width joiners and mixed scripts are ordinary text. Data files with CRLF line ends, a BOM or empty lines are
read correctly.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from babelclip.errors import (BabelClipError, IncompatibleAdapterError, InvalidDataError, InvalidModelFileError,
                              InvalidPromptError, UnsafePathError, UnsupportedModelError)
from babelclip.models import FAMILIES, build_adapter, encode_prompts, load_adapter, load_encoder
from babelclip.models.paths import resolve_inside
from babelclip.training.data import read_pairs
from babelclip.training.trainer import TrainConfig, train

pytestmark = pytest.mark.badinput


# ------------------------------------------------------------------------------------------------ helpers
def fingerprint(root: Path) -> dict[str, tuple]:
    """Everything under ``root`` that a failed call must not change."""
    out = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("dir",)
    return out


@dataclass
class Env:
    """What a case can use: a scratch folder with a good adapter in models/, the tiny encoders."""

    root: Path
    models: Path
    good: Path
    xlmr: object
    encoder_dirs: dict

    def adapter_variant(self, name: str, *, meta: dict | None = None, drop=(), tensors: dict | None = None,
                        only: dict | None = None) -> Path:
        with safe_open(str(self.good), "pt") as f:
            md = dict(f.metadata())
            ts = {k: f.get_tensor(k) for k in f.keys()}
        for k in drop:
            md.pop(k, None)
        md.update(meta or {})
        ts.update(tensors or {})
        path = self.models / name
        save_file(only if only is not None else ts, str(path), metadata=md)
        return path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def encoder_copy(self, name: str, *, drop=(), config: dict | None = None) -> Path:
        folder = self.root / name
        shutil.copytree(self.encoder_dirs["xlm-roberta"], folder)
        for pattern in drop:
            for p in folder.glob(pattern):
                p.unlink()
        if config is not None:
            cfg = json.loads((folder / "config.json").read_text())
            cfg.update(config)
            (folder / "config.json").write_text(json.dumps(cfg))
        return folder


@dataclass(frozen=True)
class Bad:
    id: str
    given: Callable[[Env], object]  # prepares the input (may write files) and returns it
    when: Callable[[Env, object], object]  # the call that must fail
    error: type[BabelClipError]
    mentions: tuple[str, ...]  # regexes: the input's name and the fix


def load(env: Env, path: Path):
    return load_adapter(path, encoder=env.xlmr.info, family=FAMILIES["sd1"])


def encode(env: Env, prompt, **options):
    adapter = build_adapter("linear", env.xlmr.info.hidden_size, FAMILIES["sd1"])
    return encode_prompts(env.xlmr, adapter, prompt, **options)


def safetensors_header(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def torch_zip_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def settings(**changes) -> TrainConfig:
    return TrainConfig(**{"steps": 5, "batch_size": 2, "lr": 1e-3, **changes})


def nothing(env: Env):
    return None


def adapter_bytes(name: str, content: Callable[[Env], bytes]) -> Callable[[Env], Path]:
    return lambda e: e.file(f"models/{name}", content(e))


def adapter_meta(name: str, **meta) -> Callable[[Env], Path]:
    return lambda e: e.adapter_variant(name, meta={f"babelclip.{k}": v(e) if callable(v) else v
                                                   for k, v in meta.items()})


def prompt(text) -> Callable[[Env], object]:
    return lambda e: text


def data(name: str, content: bytes | str) -> Callable[[Env], Path]:
    return lambda e: e.file(name, content)


LOAD = load
ENCODE = encode
ENCODE_STRICT = lambda e, p: encode(e, p, strict_syntax=True)  # noqa: E731
READ = lambda e, path: read_pairs(path)  # noqa: E731
VALIDATE = lambda e, config: config.validate(4)  # noqa: E731
ADAPTER_NAME = lambda e, name: resolve_inside([str(e.models)], name, "adapter")  # noqa: E731
ENCODER = lambda e, folder: load_encoder(folder)  # noqa: E731
FIX_ADAPTER = r"(train|download)"
CASES = [
    # --- adapter files --------------------------------------------------------------------------------
    Bad("adapter-zero-bytes", adapter_bytes("zero.safetensors", lambda e: b""), LOAD,
        InvalidModelFileError, ("zero.safetensors", "empty", FIX_ADAPTER)),
    Bad("adapter-truncated-header", adapter_bytes("cut.safetensors", lambda e: e.good.read_bytes()[:300]), LOAD,
        InvalidModelFileError, ("cut.safetensors", "truncated", FIX_ADAPTER)),
    Bad("adapter-truncated-data", adapter_bytes("cut2.safetensors", lambda e: e.good.read_bytes()[:-1000]), LOAD,
        InvalidModelFileError, ("cut2.safetensors", FIX_ADAPTER)),
    Bad("adapter-random-bytes", adapter_bytes("noise.safetensors", lambda e: os.urandom(4096)), LOAD,
        InvalidModelFileError, ("noise.safetensors", FIX_ADAPTER)),
    Bad("adapter-huge-header-length",
        adapter_bytes("hdr.safetensors", lambda e: struct.pack("<Q", 1 << 40) + b"{}" * 10), LOAD,
        InvalidModelFileError, ("hdr.safetensors", "header", FIX_ADAPTER)),
    Bad("adapter-header-claims-huge-tensor", adapter_bytes("huge.safetensors", lambda e: safetensors_header(
        {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4_000_000_000_000]}},
        b"\0" * 64)), LOAD, InvalidModelFileError, ("huge.safetensors", FIX_ADAPTER)),
    Bad("adapter-header-not-json", adapter_bytes("nj.safetensors", lambda e: struct.pack("<Q", 10) + b"not json!!"),
        LOAD, InvalidModelFileError, ("nj.safetensors", FIX_ADAPTER)),
    Bad("adapter-torch-zip-renamed", adapter_bytes("zip.safetensors", lambda e: torch_zip_bytes()), LOAD,
        InvalidModelFileError, ("zip.safetensors", "pickle", r"real \.safetensors")),
    Bad("adapter-plain-pickle-renamed",
        adapter_bytes("pkl.safetensors", lambda e: pickle.dumps({"w": [1.0]}, protocol=2)), LOAD,
        InvalidModelFileError, ("pkl.safetensors", "pickle", r"real \.safetensors")),
    Bad("adapter-ckpt-file", adapter_bytes("adapter.ckpt", lambda e: torch_zip_bytes()), LOAD,
        InvalidModelFileError, ("adapter.ckpt", "pickle", "convert")),
    Bad("adapter-nan-weights", lambda e: _nonfinite(e, "nan.safetensors", float("nan")), LOAD,
        InvalidModelFileError, ("nan.safetensors", "NaN", "Retrain")),
    Bad("adapter-inf-weights", lambda e: _nonfinite(e, "inf.safetensors", float("inf")), LOAD,
        InvalidModelFileError, ("inf.safetensors", "infinite", "Retrain")),
    Bad("adapter-corrupted-tensor-bytes", lambda e: _flip_last_byte(e, "flip.safetensors"), LOAD,
        InvalidModelFileError, ("flip.safetensors", "corrupted", FIX_ADAPTER)),
    Bad("adapter-for-another-family", lambda e: _other_family(e), LOAD,
        IncompatibleAdapterError, ("sdxl.safetensors", "SDXL", "Load an adapter made for")),
    Bad("adapter-for-another-encoder", lambda e: e.good,
        lambda e, path: load_adapter(path, encoder=_bert_info(e), family=FAMILIES["sd1"]),
        IncompatibleAdapterError, ("good.safetensors", "bert", "Load the encoder")),
    Bad("adapter-other-dims", adapter_meta("dims.safetensors", arch_config=lambda e: _arch_config(e, in_dim=64)),
        LOAD, InvalidModelFileError, ("dims.safetensors", "do not match", FIX_ADAPTER)),
    Bad("adapter-unknown-arch", adapter_meta("arch.safetensors", arch="hyperlstm"), LOAD,
        IncompatibleAdapterError, ("arch.safetensors", "hyperlstm", "Update BabelCLIP")),
    Bad("adapter-future-format", adapter_meta("future.safetensors", format_version="99"), LOAD,
        IncompatibleAdapterError, ("future.safetensors", "format 99", "Update BabelCLIP")),
    Bad("adapter-malformed-format-version", adapter_meta("ver.safetensors", format_version="one"), LOAD,
        InvalidModelFileError, ("ver.safetensors", "format_version", FIX_ADAPTER)),
    Bad("adapter-missing-metadata", lambda e: e.adapter_variant("plain.safetensors", drop=_meta_keys(e)), LOAD,
        InvalidModelFileError, ("plain.safetensors", "not a BabelCLIP adapter", "Use an adapter trained")),
    Bad("adapter-malformed-metadata-json", adapter_meta("json.safetensors", encoder="{not json"), LOAD,
        InvalidModelFileError, ("json.safetensors", "malformed", FIX_ADAPTER)),
    Bad("adapter-metadata-not-objects", adapter_meta("list.safetensors", target="[1, 2]"), LOAD,
        InvalidModelFileError, ("list.safetensors", "JSON objects", FIX_ADAPTER)),
    Bad("adapter-family-of-wrong-type", adapter_meta("fam.safetensors", target='{"family": ["sd1"]}'), LOAD,
        IncompatibleAdapterError, ("fam.safetensors", "family", "use an adapter for")),
    Bad("adapter-absurd-arch-config",
        adapter_meta("big.safetensors", arch_config=lambda e: _arch_config(e, hidden_dim=10 ** 9)), LOAD,
        InvalidModelFileError, ("big.safetensors", "hidden_dim", FIX_ADAPTER)),
    Bad("adapter-integer-tensors", lambda e: _int_tensors(e), LOAD,
        InvalidModelFileError, ("int.safetensors", "floating point", FIX_ADAPTER)),
    Bad("adapter-too-many-tensors", lambda e: e.adapter_variant(
        "many.safetensors", only={f"t{i}": torch.zeros(1) for i in range(5000)}), LOAD,
        InvalidModelFileError, ("many.safetensors", "5000 tensors", "use one trained or saved by BabelCLIP")),
    Bad("adapter-huge-metadata-value", adapter_meta("meta.safetensors", description="x" * (2 * 1024 * 1024)), LOAD,
        InvalidModelFileError, ("meta.safetensors", "longer than", "use an adapter trained")),
    Bad("adapter-invalid-layer", adapter_meta("layer.safetensors", encoder=lambda e: _encoder_meta(e, layer=[1, 2])),
        LOAD, InvalidModelFileError, ("layer.safetensors", "layer", FIX_ADAPTER)),
    Bad("adapter-missing-file", lambda e: e.models / "absent.safetensors", LOAD,
        InvalidModelFileError, ("absent.safetensors", "does not exist", "Put adapters in")),
    # --- encoder folders ------------------------------------------------------------------------------
    Bad("encoder-folder-missing", lambda e: e.root / "nowhere", ENCODER,
        InvalidModelFileError, ("nowhere", "does not exist", "hf download")),
    Bad("encoder-without-config", lambda e: e.encoder_copy("noconf", drop=["config.json"]), ENCODER,
        InvalidModelFileError, ("noconf", "config.json", "hf download")),
    Bad("encoder-config-not-json", lambda e: _write(e.encoder_copy("badconf") / "config.json", "{oops"), ENCODER,
        InvalidModelFileError, ("badconf", "Download the encoder folder again")),
    Bad("encoder-without-tokenizer", lambda e: e.encoder_copy(
        "notok", drop=["tokenizer*", "sentencepiece*", "*.model", "vocab*", "special_tokens_map.json"]), ENCODER,
        InvalidModelFileError, ("notok", "tokenizer", "Download the full model folder")),
    Bad("encoder-asks-for-remote-code", lambda e: e.encoder_copy(
        "remote", config={"auto_map": {"AutoModel": "evil.Model"}}), ENCODER,
        InvalidModelFileError, ("remote", "custom code", "use a standard")),
    Bad("encoder-pickle-weights-only", lambda e: _pickle_weights(e.encoder_copy("pkl")), ENCODER,
        InvalidModelFileError, ("pkl", "pickle", "Download the safetensors version")),
    Bad("encoder-pickle-renamed-to-safetensors", lambda e: _renamed_pickle_weights(e.encoder_copy("zipw")), ENCODER,
        InvalidModelFileError, ("zipw", "pickle", "download the real safetensors")),
    Bad("encoder-unsupported-architecture", lambda e: e.encoder_copy("gpt", config={"model_type": "gpt2"}), ENCODER,
        UnsupportedModelError, ("gpt", "gpt2", "supports")),
    # --- prompts --------------------------------------------------------------------------------------
    Bad("prompt-list-empty", prompt([]), ENCODE, InvalidPromptError, ("No prompt",)),
    Bad("prompt-not-text", prompt([None]), ENCODE, InvalidPromptError, ("prompt", "must be text")),
    Bad("prompt-20000-characters", prompt("a cat " * 3334), ENCODE, InvalidPromptError,
        ("prompt", "20,004 characters", "Shorten it")),
    Bad("prompt-nul-byte", prompt("a cat\x00 on a roof"), ENCODE, InvalidPromptError, ("prompt", "NUL", "Remove it")),
    Bad("prompt-escape-sequence", prompt("a cat\x1b[31m red"), ENCODE, InvalidPromptError,
        ("prompt", r"U\+001B", "Remove it")),
    Bad("prompt-lone-surrogate", prompt("a cat \ud83d on a roof"), ENCODE, InvalidPromptError,
        ("prompt", r"surrogate U\+D83D", "re-paste it")),
    Bad("prompt-bidi-override", prompt("a cat \u202eroof a no"), ENCODE, InvalidPromptError,
        ("prompt", r"U\+202E", "Remove it")),
    Bad("prompt-bidi-isolate", prompt("\u2067\u0642\u0637\u0629\u2069 on a roof"), ENCODE, InvalidPromptError,
        ("prompt", r"U\+2067", "Remove it")),
    Bad("prompt-combining-mark-flood", prompt("Z" + "\u0336\u0353" * 40 + "algo"), ENCODE, InvalidPromptError,
        ("prompt", "combining marks", "Remove the extra marks")),
    # strict_syntax=True only: by default these are read as ComfyUI reads them (HARD_BUT_VALID_PROMPTS)
    Bad("prompt-strict-unclosed-parenthesis", prompt("a (red cat on a roof"), ENCODE_STRICT, InvalidPromptError,
        ("prompt", "unclosed", r"missing '\)'", "strict_syntax off")),
    Bad("prompt-strict-unmatched-close", prompt("a red cat:1.2) on a roof"), ENCODE_STRICT, InvalidPromptError,
        ("prompt", "unmatched", r"\\\)", "strict_syntax off")),
    Bad("prompt-strict-weight-minus-5", prompt("(cat:-5)"), ENCODE_STRICT, InvalidPromptError,
        (r"\(cat:-5\)", r"-2\.\.10", "Use a weight", "strict_syntax off")),
    Bad("prompt-strict-weight-too-high", prompt("a (cat:25) on a roof"), ENCODE_STRICT, InvalidPromptError,
        (r"\(cat:25\)", "Use a weight")),
    # both readings
    Bad("prompt-nested-too-deep", prompt("(" * 20 + "cat" + ")" * 20), ENCODE, InvalidPromptError,
        ("prompt", "16 deep", "explicit weight")),
    Bad("prompt-weight-1e309", prompt("(cat:1e309)"), ENCODE, InvalidPromptError,
        ("1e309", "finite", r"\(word:1.2\)")),
    Bad("prompt-weight-nan", prompt("(cat:nan)"), ENCODE, InvalidPromptError, ("nan", "finite", r"\(word")),
    Bad("prompt-strict-weight-inf", prompt("(cat:inf)"), ENCODE_STRICT, InvalidPromptError, ("inf", "finite")),
    # --- data files -----------------------------------------------------------------------------------
    Bad("data-wrong-columns", data("cols.tsv", "english\tgerman\na cat\teine Katze\n"), READ,
        InvalidDataError, ("cols.tsv:1", "lacks column", "expected en, text")),
    Bad("data-wrong-cell-count", data("cells.tsv", "en\ttext\na cat\teine\tKatze\n"), READ,
        InvalidDataError, ("cells.tsv:2", "3 columns", "stray tab")),
    Bad("data-bad-encoding", data("latin1.tsv", "en\ttext\ncat\tchat noir tr\u00e8s\n".encode("latin-1")), READ,
        InvalidDataError, ("latin1.tsv:2", "UTF-8", "Save the file as UTF-8")),
    Bad("data-huge-field", data("huge.tsv", "en\ttext\ncat\t" + "x" * 200_000 + "\n"), READ,
        InvalidDataError, ("huge.tsv:2", "quoting")),
    Bad("data-huge-line", data("huge.txt", "x" * 50_000 + "\n"), READ,
        InvalidDataError, ("huge.txt:1", "50,000 characters", "Shorten")),
    Bad("data-missing-image", data("img.tsv", "en\ttext\timage\ncat\tchat\tnope.png\n"), READ,
        InvalidDataError, ("img.tsv:2", "nope.png", "fix the path")),
    Bad("data-empty-cell", data("empty.tsv", "en\ttext\ncat\t \n"), READ,
        InvalidDataError, ("empty.tsv:2", "'text' is empty", "Fill it in")),
    Bad("data-nul-in-cell", data("nul.jsonl", '{"en": "cat", "text": "ch\\u0000at"}\n'), READ,
        InvalidDataError, ("nul.jsonl:1", "NUL", "Remove it")),
    Bad("data-lone-surrogate", data("sur.jsonl", '{"en": "cat", "text": "\\ud800"}\n'), READ,
        InvalidDataError, ("sur.jsonl:1", "surrogate", "re-paste")),
    Bad("data-jsonl-not-object", data("list.jsonl", '["cat", "chat"]\n'), READ,
        InvalidDataError, ("list.jsonl:1", "JSON object")),
    Bad("data-jsonl-deeply-nested", data("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"), READ,
        InvalidDataError, ("deep.jsonl:1", "nested too deeply", "flat object")),
    Bad("data-header-only", data("hdr.csv", "en,text\n\n"), READ,
        InvalidDataError, ("hdr.csv", "no rows", "Add rows")),
    Bad("data-unknown-format", data("data.xlsx", b"PK\x03\x04"), READ,
        InvalidDataError, ("data.xlsx", "unknown format", r"\.tsv")),
    Bad("data-file-missing", lambda e: e.root / "absent.tsv", READ,
        InvalidDataError, ("absent.tsv", "does not exist", "Check the path")),
    # --- file names from a workflow -------------------------------------------------------------------
    Bad("name-dot-dot", lambda e: "../secret.safetensors", ADAPTER_NAME,
        UnsafePathError, (r"\.\./secret", "outside the model folders", "from the list")),
    Bad("name-absolute", lambda e: str(e.good), ADAPTER_NAME, UnsafePathError, ("good.safetensors", "outside", "pick")),
    Bad("name-windows-drive", lambda e: "C:\\models\\a.safetensors", ADAPTER_NAME,
        UnsafePathError, ("a.safetensors", "outside", "pick")),
    Bad("name-symlink-out", lambda e: _link_out(e), ADAPTER_NAME,
        UnsafePathError, ("escape.safetensors", "link", "Copy the file into the folder")),
    Bad("name-with-nul", lambda e: "a\x00.safetensors", ADAPTER_NAME, UnsafePathError, ("adapter name", "from the list")),
    Bad("name-not-found", lambda e: "missing.safetensors", ADAPTER_NAME,
        InvalidModelFileError, ("missing.safetensors", "not found", "choose one that is listed")),
    # --- training settings and runs -------------------------------------------------------------------
    Bad("train-zero-steps", lambda e: settings(steps=0), VALIDATE,
        InvalidDataError, ("steps must be at least 1", "Change them")),
    Bad("train-negative-lr", lambda e: settings(lr=-1e-4), VALIDATE,
        InvalidDataError, (r"lr must be in \(0, 1\]", "Change them")),
    Bad("train-nan-lr", lambda e: settings(lr=float("nan")), VALIDATE, InvalidDataError, ("lr must be", "Change them")),
    Bad("train-batch-larger-than-data", lambda e: settings(batch_size=64), VALIDATE,
        InvalidDataError, ("batch_size 64 is larger than the 4 training examples", "Change them")),
    Bad("train-warmup-out-of-range", lambda e: settings(warmup=1.5), VALIDATE,
        InvalidDataError, ("warmup", "Change them")),
    Bad("train-damaged-checkpoint", lambda e: e.file("run/ckpt.pt", b"PK\x03\x04garbage"), lambda e, p: _resume(e, p),
        InvalidModelFileError, ("ckpt.pt", "cannot be read", "delete it")),
]


# ------------------------------------------------------------------------------------------- case helpers
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path.parent


def _meta_keys(env: Env) -> list[str]:
    with safe_open(str(env.good), "pt") as f:
        return [k for k in f.metadata() if k.startswith("babelclip.")]


def _arch_config(env: Env, **changes) -> str:
    with safe_open(str(env.good), "pt") as f:
        cfg = json.loads(f.metadata()["babelclip.arch_config"])
    return json.dumps({**cfg, **changes})


def _encoder_meta(env: Env, **changes) -> str:
    with safe_open(str(env.good), "pt") as f:
        enc = json.loads(f.metadata()["babelclip.encoder"])
    return json.dumps({**enc, **changes})


def _nonfinite(env: Env, name: str, value: float) -> Path:
    with safe_open(str(env.good), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("weight"))
        t = f.get_tensor(key).clone()
    t.view(-1)[0] = value
    return env.adapter_variant(name, drop=["babelclip.tensor_hash"], tensors={key: t})


def _flip_last_byte(env: Env, name: str) -> Path:
    data = bytearray(env.good.read_bytes())
    data[-1] ^= 0x55
    return env.file(f"models/{name}", bytes(data))


def _int_tensors(env: Env) -> Path:
    with safe_open(str(env.good), "pt") as f:
        ts = {k: f.get_tensor(k).to(torch.int32) for k in f.keys()}
    return env.adapter_variant("int.safetensors", drop=["babelclip.tensor_hash"], only=ts)


def _other_family(env: Env) -> Path:
    from babelclip.models import save_adapter

    adapter = build_adapter("mlp", env.xlmr.info.hidden_size, FAMILIES["sdxl"])
    return Path(save_adapter(adapter, env.models / "sdxl.safetensors", {"encoder": env.xlmr.info, "family": "sdxl"}))


def _bert_info(env: Env):
    import dataclasses

    return dataclasses.replace(env.xlmr.info, name="tiny-bert", model_type="bert")


def _pickle_weights(folder: Path) -> Path:
    for p in folder.glob("*.safetensors"):
        p.unlink()
    (folder / "pytorch_model.bin").write_bytes(torch_zip_bytes())
    return folder


def _renamed_pickle_weights(folder: Path) -> Path:
    for p in folder.glob("*.safetensors"):
        p.write_bytes(torch_zip_bytes())
    return folder


def _link_out(env: Env) -> str:
    outside = env.file("outside/escape-target.safetensors", env.good.read_bytes())
    (env.models / "escape.safetensors").symlink_to(outside)
    return "escape.safetensors"


class _RandomBatches:
    """Four random training examples: enough for a trainer to open a checkpoint."""

    def __init__(self, width: int):
        from babelclip.training.recipes import Batch

        g = torch.Generator().manual_seed(0)
        self.data = Batch(torch.randn(4, 5, width, generator=g), torch.ones(4, 5, dtype=torch.long),
                          torch.randn(4, 77, 768, generator=g), torch.randn(4, 768, generator=g))

    def __len__(self):
        return 4

    def batch(self, indices):
        from babelclip.training.recipes import Batch

        d = self.data
        return Batch(d.hidden[indices], d.mask[indices], d.teacher_cond[indices], d.teacher_pooled[indices])


def _resume(env: Env, checkpoint: Path):
    from babelclip.training.recipes import get_recipe

    adapter = build_adapter("linear", env.xlmr.info.hidden_size, FAMILIES["sd1"])
    return train(adapter, get_recipe("altclip-kd"), _RandomBatches(env.xlmr.info.hidden_size),
                 TrainConfig(steps=2, batch_size=2, lr=1e-3, device="cpu"), checkpoint=str(checkpoint))


# ------------------------------------------------------------------------------------------------- tests
def test_the_catalogue_covers_at_least_40_inputs():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def env(tmp_path, xlmr, encoder_dirs, adapter_factory):
    models = tmp_path / "models"
    models.mkdir()
    good = Path(adapter_factory(models / "good.safetensors", xlmr, "sd1", "mlp"))
    return Env(tmp_path, models, good, xlmr, encoder_dirs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_a_typed_error_and_changes_nothing(case, env):
    value = case.given(env)
    before = fingerprint(env.root)
    with pytest.raises(case.error) as caught:
        case.when(env, value)
    assert fingerprint(env.root) == before, f"{case.id} changed files on disk"
    message = str(caught.value)
    for pattern in case.mentions:
        assert re.search(pattern, message, re.IGNORECASE), f"{case.id}: {pattern!r} not in {message!r}"


HARD_BUT_VALID_PROMPTS = {
    "empty": "",
    "whitespace-only": " \t\n  ",
    "emoji-sequences": "\U0001f468\u200d\U0001f469\u200d\U0001f467 family, \U0001f1ef\U0001f1f5 flag, \U0001f44d\U0001f3fd",
    "mixed-scripts": "a cat кошка 猫 ねこ قطة बिल्ली 고양이 in the rain",
    "zero-width-joiners": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \u0915\u094d\u200d\u0937",
    "direction-marks": "\u05d7\u05ea\u05d5\u05dc\u200f cat\u200e",
    "combining-marks-within-limit": "e" + "\u0301" * 30,
    "escaped-parentheses": r"a \(literal\) cat :\)",
    # stock CLIPTextEncode reads these as text and weights (issue 10): so does BabelCLIP by default
    "emoticon": "emoticon :) smile",
    "unclosed-parenthesis": "a red cat (sitting on a wooden roof",
    "unmatched-close": "a red cat) on a roof",
    "weight-minus-5": "(cat:-5) on a roof",
    "weight-25": "a (cat:25) on a roof",
    "ten-thousand-characters": "a red cat " * 1000,
}


@pytest.mark.parametrize("text", HARD_BUT_VALID_PROMPTS.values(), ids=HARD_BUT_VALID_PROMPTS.keys())
def test_hard_but_valid_prompts_encode_to_finite_conditioning(text, xlmr):
    adapter = build_adapter("linear", xlmr.info.hidden_size, FAMILIES["sd1"])
    out = encode_prompts(xlmr, adapter, [text])
    assert out.cond.shape[-1] == 768 and torch.isfinite(out.cond).all() and torch.isfinite(out.pooled).all()
    if not text.strip():  # ComfyUI's "nothing": the special tokens alone
        empty = encode_prompts(xlmr, adapter, [""])
        assert torch.equal(out.cond, empty.cond)


@pytest.mark.parametrize("content", [
    "\ufeffen\ttext\tlang\r\na cat\tune chatte\tfr\r\n\r\n\r\nthe sea\tla mer\tfr\r\n",  # BOM, CRLF, empty lines
    "en\ttext\tlang\n\n  \na cat\tune chatte\tfr\nthe sea\tla mer\tfr\n\n",
], ids=["bom-crlf-empty-lines", "blank-lines"])
def test_bom_crlf_and_empty_lines_are_read_correctly(tmp_path, content):
    path = tmp_path / "data.tsv"
    path.write_bytes(content.encode("utf-8"))
    pairs = read_pairs(path)
    assert [(p.en, p.text, p.lang) for p in pairs] == [("a cat", "une chatte", "fr"), ("the sea", "la mer", "fr")]


def _image(env: Env, name: str, size: tuple[int, int]) -> Path:
    from PIL import Image

    path = env.root / name
    Image.new("L", size).save(path, optimize=True)
    return path


def test_image_files_that_are_not_images_or_decompression_bombs_are_typed_errors(env):
    from PIL import Image

    from babelclip.training.images import load_image

    not_image = env.file("fake.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    bomb = _image(env, "bomb.png", (1, 1))
    before = fingerprint(env.root)
    with pytest.raises(InvalidDataError, match="fake.png.*Replace it"):
        load_image(str(not_image), 64)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 0.4  # the 1x1 image is then over twice the limit: PIL's bomb error
        with pytest.raises(InvalidDataError, match="bomb.png.*too large"):
            load_image(str(bomb), 64)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert fingerprint(env.root) == before

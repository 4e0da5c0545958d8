"""Fuzzing (issue 5): the prompt-weight parser and the adapter-file reader take thousands of generated inputs
each run and may only answer with a result or a typed :mod:`babelclip.errors` error, never hang.

``FUZZ_EXAMPLES`` (default 5000) sets the number of inputs per test; every example also has a deadline, so a
pathological input that makes the code crawl fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from datetime import timedelta

import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from babelclip.errors import BabelClipError, InvalidPromptError
from babelclip.models import FAMILIES, build_adapter, load_adapter, parse_prompt_weights, read_adapter_spec
from babelclip.models.prompt import MAX_NESTING, WEIGHT_RANGE

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

# ----------------------------------------------------------------------------------------- prompts
SYNTAX = st.sampled_from(["(", ")", "\\(", "\\)", ":", ".", "-", "e", "1", "0.5", "1e309", "nan", "inf", " ",
                          "cat", "猫", "\u0301", "\u200d", "\u202e", "\x00", "\ud800", "\n", "\t", "::", "(:", ":)"])
PROMPTS = st.one_of(
    st.text(max_size=200),  # any Unicode, surrogates and controls included
    st.lists(SYNTAX, max_size=60).map("".join),  # weight syntax soup
    st.builds(lambda word, w: f"({word}:{w})", st.text(max_size=10), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda n, m: "(" * n + "x" + ")" * m, st.integers(0, 40), st.integers(0, 40)),
)


@FUZZ
@given(PROMPTS)
def test_prompt_parser_answers_every_input_with_a_parse_or_a_typed_error(prompt):
    """The default (ComfyUI's) reading: text and finite weights, or a typed error."""
    try:
        parsed = parse_prompt_weights(prompt)
    except InvalidPromptError as e:
        assert str(e)
        return
    weights = parsed.char_weights()
    assert len(weights) == len(parsed.text) <= len(prompt)
    assert all(math.isfinite(w) for w in weights)
    assert all(t for t, _ in parsed.segments)
    assert all(prompt[i] in "()" for i in parsed.literal)


@FUZZ
@given(PROMPTS)
def test_strict_parser_also_never_fails_untyped_and_keeps_weights_in_range(prompt):
    try:
        parsed = parse_prompt_weights(prompt, strict=True)
    except InvalidPromptError:
        return
    assert len(parsed.char_weights()) == len(parsed.text) and not parsed.literal
    largest = max(abs(w) for w in WEIGHT_RANGE) * 1.1 ** MAX_NESTING  # (((x:-2))) multiplies -2 again
    assert all(abs(w) <= largest for w in parsed.char_weights())


# ------------------------------------------------------------------------------------- adapter files
@pytest.fixture(scope="module")
def good(tmp_path_factory, xlmr):
    """A valid linear adapter (small and quick to rewrite): its metadata and tensors."""
    from babelclip.models import save_adapter

    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    adapter = build_adapter("linear", xlmr.info.hidden_size, FAMILIES["sd1"])
    save_adapter(adapter, path, {"encoder": xlmr.info, "family": "sd1"})
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}, path.read_bytes()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
VALUE = st.one_of(JSON.map(json.dumps), st.text(max_size=40), st.sampled_from(["", "{", "[[[[", "1", "-1", "99"]))
SIZES = st.one_of(st.integers(-3, 4096), st.integers(), st.floats(), st.text(max_size=5), st.none(), st.booleans())


@st.composite
def metadata_files(draw, good):
    """Valid metadata with some entries dropped, replaced by random JSON/text, or with fields mutated."""
    meta, tensors, _ = good
    meta = dict(meta)
    # A few changes at a time, so that each reaches the checks behind the ones that came before.
    for key in draw(st.lists(st.sampled_from(sorted(meta)), min_size=1, max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "replace", "mutate", "mutate", "mutate"]))
        if action == "drop":
            del meta[key]
        elif action == "replace":
            meta[key] = draw(VALUE)
        else:
            try:
                obj = json.loads(meta[key])
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj:
                field = draw(st.sampled_from(sorted(obj)))
                obj[field] = draw(st.one_of(SIZES, JSON))
                meta[key] = json.dumps(obj)
            else:
                meta[key] = draw(VALUE)
    meta.update(draw(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=2)))
    tensors = dict(tensors)
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(sorted(tensors)))
        shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int8, torch.bool, torch.float64]))
        tensors[name] = torch.zeros(shape, dtype=dtype)
    if draw(st.integers(0, 3)) == 0:
        tensors[draw(st.text(min_size=1, max_size=10))] = torch.zeros(2)
    return meta, tensors


@st.composite
def mutated_bytes(draw, good):
    """The valid file's bytes, truncated, bit-flipped, or with a forged header length."""
    data = bytearray(good[2])
    kind = draw(st.sampled_from(["flip", "truncate", "length", "header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "length":
        data[:8] = struct.pack("<Q", draw(st.integers(0, 2 ** 64 - 1)))
    else:  # flip bytes inside the JSON header only
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(8, 8 + n - 1))
            data[i] = draw(st.sampled_from(list(b'{}[]":,0123456789eE-+ ntfa\\')))
    return bytes(data)


def _read_and_load(path: str, xlmr) -> None:
    try:
        spec = read_adapter_spec(path)
        adapter = load_adapter(spec, encoder=xlmr.info, family=FAMILIES["sd1"])
    except BabelClipError as e:
        assert str(e)
        return
    assert all(torch.isfinite(p).all() for p in adapter.parameters())


@FUZZ
@given(data=st.data())
def test_adapter_reader_answers_every_metadata_with_a_spec_or_a_typed_error(data, good, xlmr):
    meta, tensors = data.draw(metadata_files(good))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.safetensors")
        try:
            save_file(tensors, path, metadata=meta)
        except Exception:  # noqa: BLE001  (an input safetensors itself cannot write is not a file to read)
            reject()
        _read_and_load(path, xlmr)


@FUZZ
@given(data=st.data())
def test_adapter_reader_answers_every_damaged_file_with_a_typed_error(data, good, xlmr):
    raw = data.draw(mutated_bytes(good))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.safetensors")
        with open(path, "wb") as f:
            f.write(raw)
        _read_and_load(path, xlmr)

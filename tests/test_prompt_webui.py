"""The Automatic1111 / Forge emphasis syntax (models/prompt_webui.py) and ``BREAK`` chunks through the encode path.

The examples are the ones the web UIs document for their emphasis parser. With ``FORGE_PATH`` set to a Forge
checkout, generated prompts are also compared with Forge's own ``parse_prompt_attention``.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babelclip.errors import InvalidPromptError
from babelclip.models import encode_prompts
from babelclip.models.conditioning import tokenize_prompt
from babelclip.models.prompt_webui import parse_webui_prompt

from .conftest import make_adapter_file


def _flat(prompt: str) -> list[list]:
    """Segments as the web UIs print them: [text, weight] with ["BREAK", -1] between parts."""
    out = []
    for i, part in enumerate(parse_webui_prompt(prompt).parts):
        if i:
            out.append(["BREAK", -1])
        out += [[t, w] for t, w in part.segments]
    return out or [["", 1.0]]


def _close(a, b):
    assert len(a) == len(b), (a, b)
    for (ta, wa), (tb, wb) in zip(a, b):
        assert ta == tb and wa == pytest.approx(wb), (a, b)


@pytest.mark.parametrize("prompt, expected", [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.573], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55], [", sun, ", 1.1],
      ["sky", 1.4641], [".", 1.1]]),
    ("[faint] text", [["faint", 1 / 1.1], [" text", 1.0]]),
    ("closing) nothing]", [["closing) nothing]", 1.0]]),
    ("a cat BREAK a dog", [["a cat", 1.0], ["BREAK", -1], ["a dog", 1.0]]),
    ("smile :) :3", [["smile :) :3", 1.0]]),
])
def test_documented_examples(prompt, expected):
    _close(_flat(prompt), expected)


def test_limits_hold_as_for_comfyui_syntax():
    with pytest.raises(InvalidPromptError, match="nests emphasis brackets"):
        parse_webui_prompt("(" * 40 + "x")
    with pytest.raises(InvalidPromptError):
        parse_webui_prompt("bad \x00 text")


def test_break_starts_a_new_chunk_and_weights_reach_the_tokens(xlmr):
    one = tokenize_prompt(xlmr, "a red cat on a roof", syntax="webui")
    two = tokenize_prompt(xlmr, "a red cat BREAK on a roof", syntax="webui")
    assert len(one.chunks) == 1 and len(two.chunks) == 2
    assert two.chunks[0] == tokenize_prompt(xlmr, "a red cat", syntax="webui").chunks[0]
    weighted = tokenize_prompt(xlmr, "a (red:1.5) cat", syntax="webui")
    assert 1.5 in weighted.weights[0] and set(weighted.weights[0]) == {1.0, 1.5}
    # ComfyUI's reading of the same text differs: [red] is text there, a weight of 1/1.1 here
    assert tokenize_prompt(xlmr, "[red] cat").weights[0] == [1.0] * len(tokenize_prompt(xlmr, "[red] cat").chunks[0])
    assert min(tokenize_prompt(xlmr, "[red] cat", syntax="webui").weights[0]) == pytest.approx(1 / 1.1)


def test_encode_with_webui_syntax(xlmr, tmp_path):
    from babelclip.models import load_adapter

    adapter = load_adapter(make_adapter_file(tmp_path / "a.safetensors", xlmr, "sd1", "mlp"))
    plain = encode_prompts(xlmr, adapter, ["一只猫 BREAK 在屋顶上"], syntax="webui")
    chunks = tokenize_prompt(xlmr, "一只猫 BREAK 在屋顶上", syntax="webui").chunks
    assert len(chunks) == 2  # two chunks side by side (each padded to the longer), as the web UIs do with BREAK
    assert plain.cond.shape[1] == 2 * max(len(c) for c in chunks)
    same = encode_prompts(xlmr, adapter, ["一只猫 BREAK 在屋顶上"], syntax="webui")
    assert torch.equal(plain.cond, same.cond)


@functools.lru_cache(maxsize=1)
def _forge_parser():
    root = os.environ.get("FORGE_PATH")
    if not root:
        pytest.skip("set FORGE_PATH to a checkout of lllyasviel/stable-diffusion-webui-forge to compare with its "
                    "own emphasis parser")
    path = os.path.join(root, "modules", "prompt_parser.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    # only the emphasis parser and its regular expressions (the module's scheduling part needs lark)
    keep = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name == "parse_prompt_attention")
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "").startswith("re_") for t in n.targets))]
    namespace = {"re": re}
    with warnings.catch_warnings():  # its docstring's escapes
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), namespace)
    return namespace["parse_prompt_attention"]


_PIECES = st.sampled_from(["a", "cat", " ", ", ", "(", ")", "[", "]", ":1.3)", ": 0.5 )", "\\(", "\\)", "\\\\",
                           "BREAK", " BREAK ", "犬", ":", "1.2", "(x:2)", "[y]"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=14).map("".join))
def test_same_reading_as_forge(prompt):
    reference = _forge_parser()(prompt)
    ours = _flat(prompt)
    # Forge marks a BREAK with weight -1 (scaled by enclosing brackets, when it has any); text pieces must match
    ref = [[t, w] for t, w in reference if t or w != 1.0]
    ref = [[t, -1] if t == "BREAK" and w < 0 else [t, w] for t, w in ref]
    merged = []
    for t, w in ref:
        if merged and merged[-1][1] == w and t != "BREAK" and merged[-1][0] != "BREAK":
            merged[-1][0] += t
        else:
            merged.append([t, w])
    _close([x for x in ours if x[0]], [x for x in merged if x[0]])

"""ComfyUI prompt-weight syntax: read as ComfyUI's own parser reads it (default) or strictly (strict=True)."""

from __future__ import annotations

import ast
import logging
import math
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babelclip.errors import InvalidPromptError
from babelclip.models import FAMILIES, build_adapter, encode_prompts, parse_prompt_weights
from babelclip.models.prompt import MAX_NESTING

CASES = [
    ("a red cat", [("a red cat", 1.0)]),
    ("a (red) cat", [("a ", 1.0), ("red", 1.1), (" cat", 1.0)]),
    ("((red))", [("red", pytest.approx(1.21))]),
    ("(red:1.3) cat", [("red", 1.3), (" cat", 1.0)]),
    ("((red:1.5))", [("red", 1.5)]),  # an explicit weight sets, it does not multiply
    ("(a (b:0.5) c:1.2)", [("a ", 1.2), ("b", 0.5), (" c", 1.2)]),
    (r"\(literal\) (w)", [("(literal) ", 1.0), ("w", 1.1)]),
    ("(a:oops)", [("a:oops", 1.1)]),
    ("(neg:-0.5)", [("neg", -0.5)]),
    ("(:1.5)", [(":1.5", 1.1)]),  # ComfyUI: a ':' that starts the group is text
    ("(a:1.2:1.3)", [("a:1.2", 1.3)]),  # the last ':' holds the weight
    ("一只(红色:1.3)的猫", [("一只", 1.0), ("红色", 1.3), ("的猫", 1.0)]),
    ("", []),
]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("prompt,expected", CASES)
def test_comfyui_weight_semantics(prompt, expected, strict):
    got = parse_prompt_weights(prompt, strict=strict)
    assert [(t, w) for t, w in got.segments] == [(t, w) for t, w in expected]
    assert got.text == "".join(t for t, _ in expected)
    assert got.literal == ()


def test_char_weights_cover_the_clean_text():
    p = parse_prompt_weights("x (yy:2) z")
    assert p.text == "x yy z" and p.char_weights() == [1, 1, 2, 2, 1, 1]
    assert p.weighted and not parse_prompt_weights("plain").weighted


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("bad", ["(a:nan)", "(a:inf)", "(a:1e309)", "(a:-inf)", "(a:" + "9" * 400 + ")"])
def test_non_finite_weights_are_typed_errors_in_both_modes(bad, strict):
    with pytest.raises(InvalidPromptError, match="finite"):
        parse_prompt_weights(bad, strict=strict)


# What ComfyUI's CLIPTextEncode makes of prompts with unmatched parentheses (checked against its own code below).
COMFYUI_READINGS = [
    ("emoticon :) smile", [("emoticon :) smile", 1.0)], [10]),
    ("a red cat (sitting on a wooden roof", [("a red cat (sitting on a wooden roof", 1.0)], [10]),
    ("a red cat) on a roof", [("a red cat) on a roof", 1.0)], [9]),
    ("(unclosed", [("(unclosed", 1.0)], [0]),
    # after a ')' that closes nothing, ComfyUI reads the next group as text too
    ("stray) (z)", [("stray) (z)", 1.0)], [5, 7, 9]),
    ("(a) b) (c)", [("a", pytest.approx(1.1)), (" b) (c)", 1.0)], [5, 7, 9]),
    # one ')' short: ComfyUI closes the outer group with it and keeps the inner '(' as text
    ("((a:1.2)", [("(a", 1.2)], [1]),
    # one ')' short with text after it: ComfyUI reads the whole group as text, the matched (b) included
    ("x ((b) y", [("x ((b) y", 1.0)], [2, 3, 5]),
    (r"\(a (b", [("(a (b", 1.0)], [4]),  # an escaped '(' is not listed as unmatched
]


@pytest.mark.parametrize("prompt,expected,literal", COMFYUI_READINGS)
def test_unmatched_parentheses_are_text_by_default_and_errors_when_strict(prompt, expected, literal):
    got = parse_prompt_weights(prompt)
    assert list(got.segments) == expected
    assert list(got.literal) == literal and all(prompt[i] in "()" for i in literal)
    with pytest.raises(InvalidPromptError, match=r"(unmatched|unclosed).*strict_syntax off"):
        parse_prompt_weights(prompt, strict=True)


@pytest.mark.parametrize("prompt,weight", [("(far:50)", 50.0), ("(cat:-5)", -5.0), ("(x:1e300)", 1e300)])
def test_finite_weights_outside_the_range_pass_by_default_and_are_errors_when_strict(prompt, weight):
    assert parse_prompt_weights(prompt).segments[0][1] == weight
    with pytest.raises(InvalidPromptError, match=r"outside -2\.\.10.*strict_syntax off"):
        parse_prompt_weights(prompt, strict=True)


def test_strict_weight_range_bounds_are_inclusive():
    assert parse_prompt_weights("(a:-2) (b:10)", strict=True).segments == (("a", -2.0), (" ", 1.0), ("b", 10.0))


@pytest.mark.parametrize("strict", [False, True])
def test_nesting_limit_holds_in_both_modes_and_counts_groups_only(strict):
    deepest = "(" * MAX_NESTING + "cat" + ")" * MAX_NESTING
    assert parse_prompt_weights(deepest, strict=strict).segments[0][1] == pytest.approx(1.1 ** MAX_NESTING)
    too_deep = "(" + deepest + ")"
    with pytest.raises(InvalidPromptError, match=f"more than {MAX_NESTING} deep.*explicit weight"):
        parse_prompt_weights(too_deep, strict=strict)
    # parentheses that ComfyUI reads as text are not nesting
    assert parse_prompt_weights("(" * 40 + "cat").text == "(" * 40 + "cat"


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("bad", ["a cat\x00", "a \u202ecat", "a \ud800 cat", "a" * 10_001, "e" + "\u0301" * 31])
def test_server_limits_hold_in_both_modes(bad, strict):
    with pytest.raises(InvalidPromptError):
        parse_prompt_weights(bad, strict=strict)


@pytest.mark.parametrize("ok", ["e\u0301" * 40, "\u0644\u0627 \u200f\u200e", "\u0646\u0645\u200c\u06cc",
                                "\U0001f468\u200d\U0001f469\u200d\U0001f467", "line\nbreak\ttab", "a" * 10_000])
def test_ordinary_unicode_passes_the_checks(ok):
    assert parse_prompt_weights(ok, strict=True).text == ok


def test_the_encode_path_logs_what_it_read_as_text(xlmr, caplog):
    adapter = build_adapter("linear", xlmr.info.hidden_size, FAMILIES["sd1"])
    with caplog.at_level(logging.INFO, logger="babelclip"):
        encode_prompts(xlmr, adapter, ["emoticon :) and a cat (sitting"])
    (line,) = [r.getMessage() for r in caplog.records if "read as text" in r.getMessage()]
    assert "2 parentheses were read as text" in line and "')' at position 10" in line and "'(' at position 22" in line
    assert "strict_syntax" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="babelclip"):
        encode_prompts(xlmr, adapter, ["a (red:1.2) cat", r"a \(literal\) cat"])
    assert not [r for r in caplog.records if "read as text" in r.getMessage()]
    with pytest.raises(InvalidPromptError, match="unclosed"):
        encode_prompts(xlmr, adapter, ["a red cat (sitting"], strict_syntax=True)


def test_many_unmatched_parentheses_make_one_short_log_line():
    note = parse_prompt_weights(")" * 300).describe_literal()
    assert "300 parentheses were read as text" in note and "and 295 more" in note and len(note) < 600


# ------------------------------------------------------------------ against ComfyUI's own parser
COMFY_FUNCTIONS = ("escape_important", "unescape_important", "parse_parentheses", "token_weights")


def _comfy_sources() -> list[tuple[str, Path]]:
    from .integration.comfyui import sources

    return sources()


@pytest.fixture(scope="module", params=_comfy_sources(), ids=lambda s: s[0])
def comfy_reading(request):
    """ComfyUI's own parser, taken from its comfy/sd1_clip.py (the 2024 tree, and COMFYUI_PATH if set).

    Importing comfy.sd1_clip would start comfy.model_management (it probes CUDA and parses sys.argv), so
    the four functions CLIPTextEncode's tokenizer uses are compiled out of the file as they are written."""
    path = request.param[1] / "comfy" / "sd1_clip.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in COMFY_FUNCTIONS]
    assert sorted(n.name for n in body) == sorted(COMFY_FUNCTIONS), path
    ns: dict = {}
    exec(compile(ast.Module(body, []), str(path), "exec"), ns)

    def reading(prompt: str) -> list[tuple[str, float]]:
        """``tokenize_with_weights``' segments, unescaped, adjacent equal weights merged (as BabelCLIP's)."""
        out: list[tuple[str, float]] = []
        for text, weight in ns["token_weights"](ns["escape_important"](prompt), 1.0):
            text = ns["unescape_important"](text)
            if not text:
                continue
            if out and out[-1][1] == weight:
                out[-1] = (out[-1][0] + text, weight)
            else:
                out.append((text, weight))
        return out

    return reading


SOUP = st.lists(st.sampled_from(["(", ")", "\\(", "\\)", "\\", ":", ": ", "1.2", "0.5", "-1", "50", "1e309", "nan",
                                 "e3", " ", "a", "cat", "猫", ":)", "(:", "::"]), max_size=40).map("".join)


@settings(max_examples=3000, deadline=timedelta(seconds=5), database=None)
@given(prompt=st.one_of(SOUP, st.text(alphabet="()\\:.1a ", max_size=30)))
def test_default_reading_is_comfyuis_own(comfy_reading, prompt):
    """Every prompt BabelCLIP accepts gets exactly ComfyUI's text and weights; what it refuses is a
    documented limit (non-finite weight, nesting deeper than MAX_NESTING)."""
    try:
        got = parse_prompt_weights(prompt)
    except InvalidPromptError as e:
        weight = re.match(r"Prompt weight '(.*)' in .* is not a finite number", str(e))
        if weight:  # ComfyUI would multiply by inf or nan
            assert weight[1] in prompt and not math.isfinite(float(weight[1])), (prompt, e)
        else:
            assert f"more than {MAX_NESTING} deep" in str(e) and prompt.count("(") > MAX_NESTING, (prompt, e)
        return
    assert list(got.segments) == comfy_reading(prompt)


@pytest.mark.parametrize("prompt", [p for p, _, _ in COMFYUI_READINGS] + [p for p, _ in CASES])
def test_examples_match_comfyuis_own_parser(comfy_reading, prompt):
    assert list(parse_prompt_weights(prompt).segments) == comfy_reading(prompt)

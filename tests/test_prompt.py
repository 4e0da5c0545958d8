"""ComfyUI prompt-weight syntax."""

from __future__ import annotations

import pytest

from babelclip.errors import InvalidPromptError
from babelclip.models import parse_prompt_weights

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
    ("一只(红色:1.3)的猫", [("一只", 1.0), ("红色", 1.3), ("的猫", 1.0)]),
    ("", []),
]


@pytest.mark.parametrize("prompt,expected", CASES)
def test_comfyui_weight_semantics(prompt, expected):
    got = parse_prompt_weights(prompt)
    assert [(t, w) for t, w in got.segments] == [(t, w) for t, w in expected]
    assert got.text == "".join(t for t, _ in expected)


def test_char_weights_cover_the_clean_text():
    p = parse_prompt_weights("x (yy:2) z")
    assert p.text == "x yy z" and p.char_weights() == [1, 1, 2, 2, 1, 1]
    assert p.weighted and not parse_prompt_weights("plain").weighted


@pytest.mark.parametrize("bad", ["(a:nan)", "(a:inf)", "(a:1e309)", "(a:-inf)"])
def test_non_finite_weights_are_typed_errors(bad):
    with pytest.raises(InvalidPromptError, match="finite"):
        parse_prompt_weights(bad)


@pytest.mark.parametrize("prompt,expected", [
    ("(unclosed", [("(unclosed", 1.0)]),
    ("stray) (z)", [("stray) ", 1.0), ("z", 1.1)]),
    ("(far:50)", [("far", 50.0)]),
])
def test_lenient_mode_reads_unmatched_parentheses_as_comfyui_does(prompt, expected):
    assert list(parse_prompt_weights(prompt, strict=False).segments) == expected
    with pytest.raises(InvalidPromptError):
        parse_prompt_weights(prompt)


def test_weight_range_bounds_are_inclusive():
    assert parse_prompt_weights("(a:-2) (b:10)").segments == (("a", -2.0), (" ", 1.0), ("b", 10.0))


@pytest.mark.parametrize("ok", ["e\u0301" * 40, "\u0644\u0627 \u200f\u200e", "\u0646\u0645\u200c\u06cc",
                                "\U0001f468\u200d\U0001f469\u200d\U0001f467", "line\nbreak\ttab", "a" * 10_000])
def test_ordinary_unicode_passes_the_checks(ok):
    assert parse_prompt_weights(ok).text == ok

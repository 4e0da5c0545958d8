"""The Automatic1111 / Forge emphasis syntax, parsed into weighted text spans and ``BREAK`` chunks.

The web UIs read a prompt's emphasis differently from ComfyUI (:mod:`~babelclip.models.prompt`), and a user who
types into a web UI expects the web UI's reading:

* ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1; nesting multiplies again;
* ``(text:1.3)`` multiplies it by 1.3 (a number right before the closing parenthesis);
* ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the characters themselves;
* a closing bracket with no opener is text; an opener never closed applies its factor to the rest of the prompt;
* ``BREAK`` (the word, upper case) ends the current 75-token chunk: what follows starts a new one.

Prompt editing (``[a:b:0.5]``), alternation (``[a|b]``) and ``AND`` are not emphasis: the web UI's own scheduler
resolves them into plain sub-prompts before any text encoder sees them, and BabelCLIP then encodes each one.
This module is BabelCLIP's own implementation of the rules above; ``tests/test_prompt_webui.py`` checks it
against the examples the web UIs document and, when ``FORGE_PATH`` names a Forge checkout, against Forge's own
parser on many generated prompts. The same limits as ComfyUI's syntax apply (:func:`prompt.check_text`, nesting
depth, finite weights).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import InvalidPromptError
from .prompt import MAX_NESTING, WeightedPrompt, check_text

__all__ = ["STEP", "BREAK", "WebUIPrompt", "parse_webui_prompt"]

STEP = 1.1
BREAK = "BREAK"
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True)
class WebUIPrompt:
    """A web UI prompt: its ``BREAK``-separated parts, each a :class:`WeightedPrompt` (segments of text and
    weight, adjacent equal weights merged)."""

    parts: tuple[WeightedPrompt, ...]
    source: str = ""

    @property
    def text(self) -> str:
        return " BREAK ".join(p.text for p in self.parts)


def _float(number: str, prompt: str, at: int) -> float:
    try:
        value = float(number)
    except ValueError:
        raise InvalidPromptError(f"The emphasis weight {number!r} at position {at} of the prompt is not a number "
                                 f"(near {prompt[max(0, at - 15): at + 15]!r}); write it like (word:1.2).") from None
    if not math.isfinite(value):
        raise InvalidPromptError(f"The emphasis weight {number!r} at position {at} is not a finite number; write a "
                                 f"weight like (word:1.2).")
    return value


def _spans(prompt: str) -> list[list]:
    """``[text, weight]`` spans in order, with ``[BREAK, None]`` markers, before merging."""
    spans: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for span in spans[start:]:
            if span[1] is not None:
                span[1] *= factor

    for m in _TOKEN.finditer(prompt):
        tok, number = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            spans.append([tok[1], 1.0])
        elif tok == "(":
            round_open.append(len(spans))
        elif tok == "[":
            square_open.append(len(spans))
        elif number is not None and round_open:
            scale(round_open.pop(), _float(number, prompt, m.start(1)))
        elif tok == ")" and round_open:
            scale(round_open.pop(), STEP)
        elif tok == "]" and square_open:
            scale(square_open.pop(), 1 / STEP)
        else:
            for i, piece in enumerate(_BREAK_SPLIT.split(tok)):
                if i:
                    spans.append([BREAK, None])
                spans.append([piece, 1.0])
        if len(round_open) + len(square_open) > MAX_NESTING:
            raise InvalidPromptError(f"The prompt nests emphasis brackets more than {MAX_NESTING} deep (at "
                                     f"position {m.start()}); use a weight like (word:1.5) instead.")
    for start in round_open:
        scale(start, STEP)
    for start in square_open:
        scale(start, 1 / STEP)
    return spans


def parse_webui_prompt(prompt: str) -> WebUIPrompt:
    """Parse ``prompt`` as the web UIs read emphasis and ``BREAK`` (see the module doc).

    Raises :class:`~babelclip.errors.InvalidPromptError` for text that fails :func:`prompt.check_text`, brackets
    nested deeper than :data:`prompt.MAX_NESTING`, and weights that are not finite.
    """
    check_text(prompt)
    parts: list[list[tuple[str, float]]] = [[]]
    for text, weight in _spans(prompt):
        if weight is None:
            parts.append([])
            continue
        if not math.isfinite(weight):
            raise InvalidPromptError("The prompt's emphasis multiplies to a weight that is not finite; use smaller "
                                     "weights.")
        if not text:
            continue
        seg = parts[-1]
        if seg and seg[-1][1] == weight:
            seg[-1] = (seg[-1][0] + text, weight)
        else:
            seg.append((text, weight))
    return WebUIPrompt(tuple(WeightedPrompt(tuple(p), source=prompt) for p in parts), source=prompt)

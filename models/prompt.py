"""ComfyUI's prompt-weight syntax, parsed into weighted text spans.

``(word)`` multiplies the weight by 1.1 (nesting multiplies again),
``(word:1.3)`` sets it to 1.3, ``\\(`` and ``\\)`` are literal parentheses, and
an unmatched parenthesis is literal text. The parser returns the prompt with
the syntax removed plus the weight of every character, so the clean text can be
tokenized in one piece and each token takes the weight of its first character.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidPromptError

__all__ = ["WeightedPrompt", "parse_prompt_weights"]

_STEP = 1.1


@dataclass(frozen=True)
class WeightedPrompt:
    """A prompt with the weight syntax removed.

    ``segments`` are ``(text, weight)`` pairs in order, adjacent equal weights merged.
    """

    segments: tuple[tuple[str, float], ...]

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.segments)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for _, w in self.segments)

    def char_weights(self) -> list[float]:
        return [w for t, w in self.segments for _ in t]


def _scan(prompt: str) -> tuple[list[str], dict[int, int]]:
    """Characters with escapes resolved, and the matching close index of every matched '('."""
    chars: list[str] = []
    literal: set[int] = set()
    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\" and i + 1 < len(prompt) and prompt[i + 1] in "()":
            literal.add(len(chars))
            chars.append(prompt[i + 1])
            i += 2
            continue
        chars.append(c)
        i += 1
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for j, c in enumerate(chars):
        if j in literal:
            continue
        if c == "(":
            stack.append(j)
        elif c == ")" and stack:
            pairs[stack.pop()] = j
    return chars, pairs


def parse_prompt_weights(prompt: str) -> WeightedPrompt:
    """Parse ComfyUI weight syntax. Raises :class:`InvalidPromptError` for non-finite weights."""
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"The prompt must be text, got {type(prompt).__name__}.")
    chars, pairs = _scan(prompt)
    out: list[tuple[str, float]] = []

    def emit(text: str, weight: float) -> None:
        if not text:
            return
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))

    def walk(lo: int, hi: int, weight: float) -> None:
        buf: list[str] = []
        i = lo
        while i < hi:
            close = pairs.get(i)
            if close is None or close >= hi:
                buf.append(chars[i])
                i += 1
                continue
            emit("".join(buf), weight)
            buf = []
            inner_hi, inner_weight = close, weight * _STEP
            colon = _last_top_level_colon(i + 1, close)
            if colon is not None:
                try:
                    value = float("".join(chars[colon + 1: close]))
                except ValueError:
                    value = None
                if value is not None:
                    if not math.isfinite(value):
                        raise InvalidPromptError(
                            f"Prompt weight {''.join(chars[colon + 1: close]).strip()!r} in "
                            f"{''.join(chars[i: close + 1])[:60]!r} is not a finite number; use e.g. (word:1.2).")
                    inner_hi, inner_weight = colon, value
            walk(i + 1, inner_hi, inner_weight)
            i = close + 1
        emit("".join(buf), weight)

    def _last_top_level_colon(lo: int, hi: int) -> int | None:
        found, i = None, lo
        while i < hi:
            if i in pairs and pairs[i] < hi:
                i = pairs[i] + 1
                continue
            if chars[i] == ":":
                found = i
            i += 1
        return found

    walk(0, len(chars), 1.0)
    return WeightedPrompt(tuple(out))

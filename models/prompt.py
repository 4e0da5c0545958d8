"""ComfyUI's prompt-weight syntax, parsed into weighted text spans.

``(word)`` multiplies the weight by 1.1 (nesting multiplies again),
``(word:1.3)`` sets it to 1.3, and ``\\(`` and ``\\)`` are literal parentheses.
The parser returns the prompt with the syntax removed plus the weight of every
character, so the clean text can be tokenized in one piece and each token takes
the weight of its first character.

Prompts are checked first (:func:`check_text`), and every problem is an
:class:`~babelclip.errors.InvalidPromptError` that says where and what to do:

* at most :data:`MAX_PROMPT_CHARS` characters;
* no control characters other than tab and line breaks, no unpaired surrogates
  (text broken by a bad encoding), no bidirectional embedding / override /
  isolate controls (they make the text display differently from what is encoded;
  the ordinary marks U+200E/U+200F, ZWJ and ZWNJ are fine);
* at most :data:`MAX_COMBINING_RUN` combining marks in a row (Unicode's
  stream-safe limit; "zalgo" floods stop here);
* strict mode (prompts typed by users): parentheses must balance, groups nest at
  most :data:`MAX_NESTING` deep, and weights lie in :data:`WEIGHT_RANGE`. ComfyUI
  itself reads an unmatched parenthesis as text; BabelCLIP asks instead, because
  a forgotten ``)`` silently changes the weights of the rest of the prompt. The
  lenient mode (``strict=False``, used for English training texts) keeps
  ComfyUI's reading.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from ..errors import InvalidPromptError

__all__ = ["WeightedPrompt", "parse_prompt_weights", "check_text", "MAX_PROMPT_CHARS", "MAX_COMBINING_RUN",
           "MAX_NESTING", "WEIGHT_RANGE"]

_STEP = 1.1
MAX_PROMPT_CHARS = 10_000  # ~2,500 tokens, 30+ chunks of 77: far beyond what a model attends to
MAX_COMBINING_RUN = 30  # Unicode's stream-safe text format (UAX #15) limit on non-starters in a row
MAX_NESTING = 16  # (((...))) 16 deep is already a weight of 1.1**16 = 4.6
WEIGHT_RANGE = (-2.0, 10.0)  # beyond ~2 images distort; negative weights push away, mildly
_BIDI_CONTROLS = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def _where(text: str, i: int) -> str:
    lo = max(0, i - 15)
    return f"at position {i} (near {text[lo: i + 15]!r})"  # repr escapes controls and surrogates


def check_text(text: str, what: str = "The prompt", *, max_chars: int = MAX_PROMPT_CHARS) -> None:
    """Raise :class:`InvalidPromptError` if ``text`` is too long or holds characters no encoder should see.

    ``what`` names the input in the message ("The prompt", "data.tsv:12 column 'text'").
    """
    if not isinstance(text, str):
        raise InvalidPromptError(f"{what} must be text, got {type(text).__name__}.")
    if len(text) > max_chars:
        raise InvalidPromptError(
            f"{what} is {len(text):,} characters long; the limit is {max_chars:,}. Shorten it: models only attend "
            f"to the first few hundred tokens anyway.")
    run = 0
    for i, c in enumerate(text):
        code = ord(c)
        if code < 0x20 or 0x7F <= code < 0xA0:
            if c not in _ALLOWED_CONTROLS:
                name = "NUL" if code == 0 else f"control character U+{code:04X}"
                raise InvalidPromptError(
                    f"{what} contains a {name} {_where(text, i)}. Remove it: only tabs and line breaks are allowed "
                    f"among control characters (it often comes from pasting binary or corrupted text).")
        elif 0xD800 <= code <= 0xDFFF:
            raise InvalidPromptError(
                f"{what} contains an unpaired surrogate U+{code:04X} {_where(text, i)}: the text was broken by a "
                f"wrong encoding. Retype or re-paste it as UTF-8 text.")
        elif c in _BIDI_CONTROLS:
            raise InvalidPromptError(
                f"{what} contains the bidirectional control U+{code:04X} {_where(text, i)}, which makes text display "
                f"in another order than it is read. Remove it (right-to-left text needs no controls).")
        if unicodedata.combining(c):
            run += 1
            if run > MAX_COMBINING_RUN:
                raise InvalidPromptError(
                    f"{what} has more than {MAX_COMBINING_RUN} combining marks in a row {_where(text, i)}. Remove "
                    f"the extra marks (no language stacks that many on one letter).")
        else:
            run = 0


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


def _scan(prompt: str, strict: bool) -> tuple[list[str], dict[int, int]]:
    """Characters with escapes resolved, and the matching close index of every matched '('.

    In strict mode an unmatched or too deeply nested parenthesis is an error; otherwise it is text."""
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
            if len(stack) > MAX_NESTING:
                raise InvalidPromptError(
                    f"The prompt nests parentheses more than {MAX_NESTING} deep {_where(''.join(chars), j)}. Use an "
                    f"explicit weight instead, e.g. (word:1.5).")
        elif c == ")":
            if stack:
                pairs[stack.pop()] = j
            elif strict:
                raise InvalidPromptError(
                    f"The prompt has an unmatched ')' {_where(''.join(chars), j)}. Remove it, add the missing '(', or "
                    f"write \\) for a literal parenthesis.")
    if strict and stack:
        raise InvalidPromptError(
            f"The prompt has an unclosed '(' {_where(''.join(chars), stack[-1])}. Add the missing ')', or write \\( "
            f"for a literal parenthesis.")
    return chars, pairs


def parse_prompt_weights(prompt: str, *, strict: bool = True) -> WeightedPrompt:
    """Parse ComfyUI weight syntax after :func:`check_text`. Raises :class:`InvalidPromptError`.

    ``strict=False`` reads unmatched parentheses as text and accepts any finite weight (ComfyUI's reading),
    for texts that were not written as prompts (training data)."""
    check_text(prompt)
    chars, pairs = _scan(prompt, strict)
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
                    group = "".join(chars[i: close + 1])[:60]
                    if not math.isfinite(value):
                        raise InvalidPromptError(
                            f"Prompt weight {''.join(chars[colon + 1: close]).strip()!r} in "
                            f"{group!r} is not a finite number; use e.g. (word:1.2).")
                    least, most = WEIGHT_RANGE
                    if strict and not least <= value <= most:
                        raise InvalidPromptError(
                            f"Prompt weight {value:g} in {group!r} is outside {least:g}..{most:g}. Use a weight in that "
                            f"range; weights above 2 already distort images.")
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

"""ComfyUI's prompt-weight syntax, parsed into weighted text spans.

``(word)`` multiplies the weight by 1.1 (nesting multiplies again),
``(word:1.3)`` sets it to 1.3, and ``\\(`` and ``\\)`` are literal parentheses.
The parser returns the prompt with the syntax removed plus the weight of every
character, so the clean text can be tokenized in one piece and each token takes
the weight of its first character.

By default the syntax is read exactly as ComfyUI's ``CLIPTextEncode`` reads it
(``comfy/sd1_clip.py``: ``escape_important``, ``token_weights``,
``parse_parentheses``; unchanged from 2023 to ComfyUI 0.3.x): a parenthesis
that closes nothing, or that is never closed, is text (``emoticon :)``,
``a cat (sitting``), ``(a:b)`` with a weight that is not a number keeps
``a:b`` as text at 1.1, and any finite weight is used as written. The result
lists the parentheses it read as text (:attr:`WeightedPrompt.literal`), so the
encode path can say so in the log. ``strict=True`` asks instead: unmatched
parentheses and weights outside :data:`WEIGHT_RANGE` are errors.

In both modes the prompt is checked first (:func:`check_text`), and every
problem is an :class:`~babelclip.errors.InvalidPromptError` that says where and
what to do. These limits protect the server and hold in both modes:

* at most :data:`MAX_PROMPT_CHARS` characters;
* no control characters other than tab and line breaks, no unpaired surrogates
  (text broken by a bad encoding), no bidirectional embedding / override /
  isolate controls (they make the text display differently from what is encoded;
  the ordinary marks U+200E/U+200F, ZWJ and ZWNJ are fine);
* at most :data:`MAX_COMBINING_RUN` combining marks in a row (Unicode's
  stream-safe limit; "zalgo" floods stop here);
* weight groups nest at most :data:`MAX_NESTING` deep, and weights are finite
  numbers (``(word:inf)``, ``(word:nan)`` and ``(word:1e309)`` would make the
  conditioning infinite or NaN).
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
WEIGHT_RANGE = (-2.0, 10.0)  # strict mode only: beyond ~2 images distort; negative weights push away, mildly
_BIDI_CONTROLS = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}
_SHOWN_LITERALS = 5  # positions named in WeightedPrompt.describe_literal


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

    ``segments`` are ``(text, weight)`` pairs in order, adjacent equal weights merged. ``literal`` holds the
    positions (in the prompt as written) of the parentheses that were read as text rather than as syntax,
    not counting escaped ones; ``source`` is that prompt.
    """

    segments: tuple[tuple[str, float], ...]
    literal: tuple[int, ...] = ()
    source: str = ""

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.segments)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for _, w in self.segments)

    def char_weights(self) -> list[float]:
        return [w for t, w in self.segments for _ in t]

    def describe_literal(self) -> str:
        """One sentence naming the parentheses read as text ('' when there are none), for the log."""
        if not self.literal:
            return ""
        shown = "; ".join(f"{self.source[i]!r} {_where(self.source, i)}" for i in self.literal[:_SHOWN_LITERALS])
        more = f" and {len(self.literal) - _SHOWN_LITERALS} more" if len(self.literal) > _SHOWN_LITERALS else ""
        return (f"{len(self.literal)} parenthes{'is was' if len(self.literal) == 1 else 'es were'} read as text, "
                f"not as weight syntax, as ComfyUI's CLIPTextEncode reads them when one has no partner: "
                f"{shown}{more}. Write \\( or \\) to mean a parenthesis, or turn on strict_syntax to be stopped by "
                f"an error instead.")


def _resolve_escapes(prompt: str) -> tuple[str, list[int], set[int]]:
    """ComfyUI's escape_important: the text with ``\\(``/``\\)`` made plain parentheses, each character's
    position in ``prompt``, and the indices (in the text) of the escaped parentheses."""
    chars: list[str] = []
    where: list[int] = []
    escaped: set[int] = set()
    i = 0
    while i < len(prompt):
        if prompt[i] == "\\" and i + 1 < len(prompt) and prompt[i + 1] in "()":
            escaped.add(len(chars))
            i += 1
        chars.append(prompt[i])
        where.append(i)
        i += 1
    return "".join(chars), where, escaped


def _check_balance(reader: _Reader, prompt: str) -> None:
    """Strict mode: every parenthesis that is syntax must have its partner."""
    open_at: list[int] = []
    for j in range(len(reader.text)):
        c = reader.paren(j)
        if c == "(":
            open_at.append(j)
        elif c == ")" and open_at:
            open_at.pop()
        elif c == ")":
            raise InvalidPromptError(
                f"The prompt has an unmatched ')' {_where(prompt, reader.where[j])}. Remove it, add the missing "
                f"'(', or write \\) for a literal parenthesis (or turn strict_syntax off to read it as text, as "
                f"ComfyUI does).")
    if open_at:
        raise InvalidPromptError(
            f"The prompt has an unclosed '(' {_where(prompt, reader.where[open_at[-1]])}. Add the missing ')', or "
            f"write \\( for a literal parenthesis (or turn strict_syntax off to read it as text, as ComfyUI does).")


def _weight(text: str, group: str, strict: bool) -> float | None:
    """The number after a group's last ':' as ComfyUI reads it (None: not a number, the ':' is text)."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        raise InvalidPromptError(
            f"Prompt weight {text.strip()!r} in {group[:60]!r} is not a finite number; use e.g. (word:1.2).")
    least, most = WEIGHT_RANGE
    if strict and not least <= value <= most:
        raise InvalidPromptError(
            f"Prompt weight {value:g} in {group[:60]!r} is outside {least:g}..{most:g}. Use a weight in that "
            f"range (weights above 2 already distort images), or turn strict_syntax off to pass it on as "
            f"ComfyUI does.")
    return value


class _Reader:
    """ComfyUI's ``parse_parentheses`` and ``token_weights``, run on character indices so that every character
    of the result keeps its place in the prompt (for the log and for error messages)."""

    def __init__(self, prompt: str, strict: bool):
        self.prompt, self.strict = prompt, strict
        self.text, self.where, self.escaped = _resolve_escapes(prompt)

    def paren(self, j: int) -> str:
        """'(' or ')' for a parenthesis that is syntax, '' for any other character (escaped ones included)."""
        c = self.text[j]
        return c if c in "()" and j not in self.escaped else ""

    def split(self, seq: list[int]) -> list[list[int]]:
        """``parse_parentheses``: top-level groups and the text between them. As in ComfyUI, a ')' that closes
        nothing takes the level below zero, and what follows it stays text until the level is back at zero."""
        result: list[list[int]] = []
        current: list[int] = []
        level = 0
        for j in seq:
            c = self.paren(j)
            if c == "(":
                if level == 0:
                    if current:
                        result.append(current)
                    current = []
                current.append(j)
                level += 1
            elif c == ")":
                level -= 1
                current.append(j)
                if level == 0:
                    result.append(current)
                    current = []
            else:
                current.append(j)
        if current:
            result.append(current)
        return result

    def weights(self, seq: list[int], weight: float, depth: int) -> list[tuple[list[int], float]]:
        """``token_weights``: (character indices, weight) runs in order."""
        out: list[tuple[list[int], float]] = []
        for item in self.split(seq):
            if len(item) < 2 or self.paren(item[0]) != "(" or self.paren(item[-1]) != ")":
                out.append((item, weight))
                continue
            if depth >= MAX_NESTING:
                raise InvalidPromptError(
                    f"The prompt nests parentheses more than {MAX_NESTING} deep "
                    f"{_where(self.prompt, self.where[item[0]])}. Use an explicit weight instead, e.g. (word:1.5).")
            inner, inner_weight = item[1:-1], weight * _STEP
            colon = max((k for k, j in enumerate(inner) if self.text[j] == ":"), default=-1)
            if colon > 0:  # ComfyUI: the last ':' of the group, not its first character
                value = _weight(self.join(inner[colon + 1:]), self.join(item), self.strict)
                if value is not None:
                    inner, inner_weight = inner[:colon], value
            out += self.weights(inner, inner_weight, depth + 1)
        return out

    def join(self, seq: list[int]) -> str:
        return "".join(self.text[j] for j in seq)


def parse_prompt_weights(prompt: str, *, strict: bool = False) -> WeightedPrompt:
    """Parse ComfyUI weight syntax after :func:`check_text`. Raises :class:`InvalidPromptError`.

    ``strict=False`` (the default) reads the prompt exactly as ComfyUI's CLIPTextEncode does: unmatched
    parentheses are text (listed in the result's ``literal``) and any finite weight counts. ``strict=True``
    refuses unmatched parentheses and weights outside :data:`WEIGHT_RANGE`. Both refuse what
    :func:`check_text` refuses, groups nested deeper than :data:`MAX_NESTING` and non-finite weights."""
    check_text(prompt)
    reader = _Reader(prompt, strict)
    if strict:
        _check_balance(reader, prompt)
    out: list[tuple[str, float]] = []
    literal: list[int] = []
    for seq, weight in reader.weights(list(range(len(reader.text))), 1.0, 0):
        literal += [reader.where[j] for j in seq if reader.paren(j)]
        text = reader.join(seq)
        if not text:
            continue
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return WeightedPrompt(tuple(out), tuple(literal), prompt)

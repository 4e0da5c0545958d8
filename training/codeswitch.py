"""Code-switched English: translation-like training inputs made from English prompts alone.

An adapter trained on English prompts only ever sees the encoder's states of English. A translation moves those
states in directions the adapter never saw, and its map can amplify them: that is the cross-lingual meaning a
user loses. Replacing some words of each English prompt by their nearest neighbours *of other scripts* in the
encoder's own input-embedding table (snow -> 雪, снег, برف, 겨울) gives inputs that move the way translations do;
training maps them to the teacher's conditioning of the original English. No dictionary, translation model or
parallel data is needed: the multilingual encoder's vocabulary is the dictionary.

Measured on the real multilingual-e5-small (``bench/fidelity.py``, BENCHMARKS.md *Cross-lingual fidelity*): it
raises how much of the encoder's cross-lingual retrieval an English-only adapter keeps.

Only whole words that the encoder's tokenizer keeps as one token are replaced (a neighbour of a word piece is a
neighbour of a fragment). Each code-switched copy draws one script, so a copy reads like a mix of English and
one other language, as prompts typed by users often are.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

import torch

from .data import Pair

__all__ = ["DEFAULT_COPIES", "DEFAULT_RATE", "CODESWITCH_LANG", "COPIES_VERSION", "SCRIPTS", "build_dictionary",
           "codeswitch_pairs"]

DEFAULT_COPIES = 8  # code-switched copies per English training prompt (0: none)
DEFAULT_RATE = 0.5  # share of a copy's replaceable words that are replaced
CODESWITCH_LANG = "en-x"  # the ``lang`` of the pairs made here
CANDIDATES = 4000  # nearest vocabulary entries searched per word
PER_SCRIPT = 3  # neighbours kept per script and word
_ROWS = 128  # words whose similarities to the whole vocabulary are computed at once
#: the copies' on-disk version (training.pipeline keeps them in the cache folder): bump it when
#: :func:`build_dictionary` or :func:`codeswitch_pairs` would make other copies of the same data and settings
COPIES_VERSION = 1

#: Scripts a neighbour may come from (Latin: only entries that do not start like the English word).
SCRIPTS = {
    "han": re.compile(r"[\u4e00-\u9fff]"),
    "kana": re.compile(r"[\u3040-\u30ff]"),
    "hangul": re.compile(r"[\uac00-\ud7af]"),
    "arabic": re.compile(r"[\u0600-\u06ff]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
}
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_WORD = re.compile(r"[A-Za-z]+")


def _script(piece: str) -> str | None:
    for name, pattern in SCRIPTS.items():
        if pattern.search(piece):
            return name
    return "latin" if _LATIN.fullmatch(piece) else None


def _word_ids(tokenizer, words: Sequence[str], special: set[int]) -> dict[str, int]:
    """The words the tokenizer keeps whole (one token after a space), with that token's id."""
    ids = {}
    for word in words:
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1 and pieces[0] not in special:
            ids[word] = pieces[0]
    return ids


def build_dictionary(encoder, words: Sequence[str], *, per_script: int = PER_SCRIPT,
                     candidates: int = CANDIDATES,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, list[str]]]:
    """``{word: {script: [neighbour, ...]}}`` from ``encoder``'s input-embedding table (cosine, nearest first).

    ``encoder`` is a loaded :class:`~babelclip.models.encoder.MultilingualEncoder`; words it splits into pieces
    are left out, and so are words without neighbours in any other script.
    ``progress(done, total)``: called after each chunk of the whole words searched (not called when there are
    none); it may raise to stop the build (the exception goes to the caller).
    """
    tokenizer = encoder.tokenizer
    special = set(tokenizer.all_special_ids)  # (a property that builds a new list on every read)
    word_ids = _word_ids(tokenizer, sorted(set(w.lower() for w in words)), special)
    if not word_ids:
        return {}
    # where the encoder is: on a GPU the search over the whole vocabulary is the matmul it is fast at (on 2 CPU
    # cores it costs about 20 ms per word); only the top candidates' indices come back
    table = encoder.model.get_input_embeddings().weight.detach().float()
    table = torch.nn.functional.normalize(table, dim=1)
    k = min(candidates, table.shape[0])
    names = list(word_ids)
    vocab_cache: dict[int, tuple[str, str | None]] = {}
    out: dict[str, dict[str, list[str]]] = {}
    for start in range(0, len(names), _ROWS):
        chunk = names[start:start + _ROWS]
        nearest = (table[[word_ids[w] for w in chunk]] @ table.T).topk(k, dim=1).indices.tolist()
        for word, row in zip(chunk, nearest):
            found: dict[str, list[str]] = {}
            for idx in row:
                if idx == word_ids[word] or idx in special:
                    continue
                if idx not in vocab_cache:
                    piece = tokenizer.convert_ids_to_tokens(idx) or ""
                    text = piece.replace("\u2581", " ").strip()
                    vocab_cache[idx] = (text, _script(text) if text else None)
                text, script = vocab_cache[idx]
                if script is None or (script == "latin" and text.lower()[:3] == word[:3]):
                    continue
                kept = found.setdefault(script, [])
                if len(kept) < per_script and text not in kept:
                    kept.append(text)
            if found:
                out[word] = found
        if progress is not None:
            progress(start + len(chunk), len(names))
    return out


def codeswitch_pairs(pairs: Sequence[Pair], encoder, *, copies: int = DEFAULT_COPIES, rate: float = DEFAULT_RATE,
                     seed: int = 0, progress: Callable[[int, int], None] | None = None) -> list[Pair]:
    """Up to ``copies`` code-switched versions of each distinct English text of ``pairs``, as pairs whose
    ``en`` is the original (the teacher's target) and whose ``text`` is the copy, ``lang`` :data:`CODESWITCH_LANG`.

    Deterministic for a seed; a copy equal to the original or to an earlier copy is dropped, so prompts without
    replaceable words give none. ``progress``: that of :func:`build_dictionary` (the slow part, about 20 ms per
    distinct word on a real encoder).
    """
    if copies <= 0 or rate <= 0:
        return []
    english = sorted({p.en for p in pairs})
    dictionary = build_dictionary(encoder, [w for en in english for w in _WORD.findall(en)], progress=progress)
    if not dictionary:
        return []
    scripts = sorted({s for entry in dictionary.values() for s in entry})
    rng = random.Random(seed)
    out = []
    for en in english:
        seen = {en}
        for _ in range(copies):
            script = rng.choice(scripts)

            def swap(match, script=script):
                neighbours = dictionary.get(match.group(0).lower(), {}).get(script)
                return rng.choice(neighbours) if neighbours and rng.random() < rate else match.group(0)

            text = _WORD.sub(swap, en)
            if text not in seen:
                seen.add(text)
                out.append(Pair(en=en, text=text, lang=CODESWITCH_LANG))
    return out

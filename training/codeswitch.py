"""Code-switched English: translation-like training inputs made from English prompts alone.

An adapter trained on English prompts only ever sees the encoder's states of English. A translation moves those
states in directions the adapter never saw, and its map can amplify them: that is the cross-lingual meaning a
user loses. Replacing some words of each English prompt by their nearest neighbours *of other scripts* in the
encoder's own input-embedding table (snow -> 雪, снег, برف, 겨울) gives inputs that move the way translations do;
training maps them to the teacher's conditioning of the original English. No dictionary, translation model or
parallel data is needed: the multilingual encoder's vocabulary is the dictionary.

Measured on the real multilingual-e5-small (``bench/fidelity.py``, BENCHMARKS.md *Cross-lingual fidelity*): it
raises how much of the encoder's cross-lingual retrieval an English-only adapter keeps.

Words the tokenizer keeps as one token are looked up in the input-embedding table. Words it splits into pieces
(a piece's neighbours are a fragment's: "forest" is "for" + "est") and words without neighbours there are looked
up by meaning instead: the encoder's own embedding of the word alone against its embeddings of the vocabulary's
word-start entries (forest -> лес, جنگل; photography -> 写真, 사진). That pass embeds the vocabulary once per
process and encoder (about 150,000 short sequences: about two minutes on 2 CPU cores, seconds on a GPU); it lets
the copies replace the content words a prompt is made of, which keeps more of the cross-lingual meaning
(BENCHMARKS.md). Each code-switched copy draws one script, so a copy reads like a mix of English and one other
language, as prompts typed by users often are. A word of a script written without spaces (Chinese, Japanese,
Thai) is not followed by a space (红狐狸sleeping in 新鲜雪), as in text of those languages: the tokenizer then cuts
it as it cuts theirs, which keeps more of the Chinese and Japanese meaning (BENCHMARKS.md).
"""

from __future__ import annotations

import random
import re
import threading
from typing import Callable, Sequence

import torch

from .data import Pair

__all__ = ["DEFAULT_COPIES", "DEFAULT_RATE", "CODESWITCH_LANG", "COPIES_VERSION", "SCRIPTS", "build_dictionary",
           "codeswitch_pairs"]

DEFAULT_COPIES = 64  # code-switched copies per English training prompt (0: none; BENCHMARKS.md: 64 beat 32)
DEFAULT_RATE = 0.75  # share of a copy's replaceable words that are replaced (BENCHMARKS.md: 0.75 beat 0.5 on both splits)
CODESWITCH_LANG = "en-x"  # the ``lang`` of the pairs made here
CANDIDATES = 4000  # nearest vocabulary entries searched per word
PER_SCRIPT = 3  # neighbours kept per script and word
_ROWS = 128  # words whose similarities to the whole vocabulary are computed at once
#: the copies' on-disk version (training.pipeline keeps them in the cache folder): bump it when
#: :func:`build_dictionary` or :func:`codeswitch_pairs` would make other copies of the same data and settings
COPIES_VERSION = 3  # 2: words split into pieces are looked up by meaning (_meaning_neighbours); 3: no space after
#                      a word of a script written without spaces (_WORD_SPACE)
CONTEXT_CANDIDATES = 40  # nearest vocabulary entries searched per word and script in the lookup by meaning
_VOCAB_BATCH = 512  # vocabulary entries embedded at once
#: scripts written without spaces: any vocabulary piece of theirs may stand for a word, not only word starts
UNSPACED = ("han", "kana", "thai")

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
#: a word and the space after it, which a replacement of an :data:`UNSPACED` script drops (雪の朝, not 雪 の 朝)
_WORD_SPACE = re.compile(r"([A-Za-z]+)( ?)")


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
                     candidates: int = CANDIDATES, by_meaning: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, list[str]]]:
    """``{word: {script: [neighbour, ...]}}``, nearest first: from ``encoder``'s input-embedding table for the
    words its tokenizer keeps whole, and (``by_meaning``) from its embeddings of the word alone and of the
    vocabulary's entries for the others (see the module doc). Words without neighbours in any other script are
    left out.

    ``encoder`` is a loaded :class:`~babelclip.models.encoder.MultilingualEncoder`.
    ``progress(done, total)``: called after each chunk of words or vocabulary entries (not called when there
    are no words); it may raise to stop the build (the exception goes to the caller).
    The last dictionary built is kept: the same words of the same encoder and settings again (the runs of a job)
    return a copy of it at once.
    """
    tokenizer = encoder.tokenizer
    special = set(tokenizer.all_special_ids)  # (a property that builds a new list on every read)
    distinct = sorted(set(w.lower() for w in words))
    if not distinct:
        return {}
    word_ids = _word_ids(tokenizer, distinct, special)
    # progress: the whole words, then (by meaning) the vocabulary entries and at most every word again
    total = len(word_ids) + (len(_vocabulary(encoder)[0]) + len(distinct) if by_meaning else 0)
    reached = [0]

    def report(done: int) -> None:
        reached[0] = done
        if progress is not None:
            progress(done, total)

    key = (id(encoder.model), *encoder.info.identity.values(), tuple(distinct), per_script, candidates, by_meaning)
    with _vocab_lock:
        out = _dictionary_memo.get(key)
    if out is None:
        out = _table_neighbours(encoder, word_ids, special, per_script, candidates, report)
        rest = [w for w in distinct if w not in out]
        if by_meaning and rest:
            out.update(_meaning_neighbours(encoder, rest, special, per_script, report, len(word_ids)))
        with _vocab_lock:
            _dictionary_memo.clear()
            _dictionary_memo[key] = out
    if reached[0] < total:
        report(total)
    return {word: {script: list(found) for script, found in entry.items()} for word, entry in out.items()}


def _table_neighbours(encoder, word_ids: dict[str, int], special: set[int], per_script: int, candidates: int,
                      report: Callable[[int], None]) -> dict[str, dict[str, list[str]]]:
    """The input-embedding table's neighbours of the whole words ``word_ids``; ``report(done)`` after each
    chunk."""
    if not word_ids:
        return {}
    tokenizer = encoder.tokenizer
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
        report(start + len(chunk))
    return out


_vocab_lock = threading.Lock()
_vocab_memo: dict = {}  # the last encoder's vocabulary entries and their embeddings (one encoder kept)
#: the last dictionary built (the runs of one job, seeds apart, look up the same words: the first builds it)
_dictionary_memo: dict = {}


def _vocabulary(encoder) -> tuple[list[tuple[int, str, str]], dict]:
    """The vocabulary entries a word may be replaced by in the lookup by meaning, ``(id, text, script)``: the
    entries that start a word (SentencePiece's ``\u2581``) and whose text is of one script, and every piece of
    the :data:`UNSPACED` scripts; and the memo that holds their embeddings once computed."""
    key = (id(encoder.model), *encoder.info.identity.values())
    with _vocab_lock:
        if _vocab_memo.get("key") != key:
            tokenizer = encoder.tokenizer
            special = set(tokenizer.all_special_ids)
            entries = []
            for idx, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
                if idx in special or not piece:
                    continue
                starts = piece.startswith("\u2581")
                text = piece[1:] if starts else piece
                script = _script(text) if text else None
                if script is not None and (starts or script in UNSPACED):
                    entries.append((idx, text, script))
            _vocab_memo.clear()
            _vocab_memo.update(key=key, entries=entries)
        return _vocab_memo["entries"], _vocab_memo


def _embed(encoder, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Unit-length masked-mean last-layer states of token-id sequences (special tokens added), on the CPU."""
    batch = encoder.encode_ids([encoder.with_special_tokens(seq) for seq in sequences])
    mask = batch.mask.unsqueeze(-1).to(batch.hidden.dtype)
    pooled = (batch.hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()


def _meaning_neighbours(encoder, words: Sequence[str], special: set[int], per_script: int,
                        report: Callable[[int], None], done: int) -> dict[str, dict[str, list[str]]]:
    """Neighbours of ``words`` by the encoder's embedding of each word alone against its embeddings of the
    vocabulary's entries (computed once per process and encoder); ``report(done)`` counts on from ``done``."""
    entries, memo = _vocabulary(encoder)
    if not entries:
        return {}
    if "table" not in memo:
        parts = []
        for start in range(0, len(entries), _VOCAB_BATCH):
            parts.append(_embed(encoder, [[idx] for idx, _, _ in entries[start:start + _VOCAB_BATCH]]))
            report(done + start + len(parts[-1]))
        with _vocab_lock:
            memo.setdefault("table", torch.cat(parts).to(torch.float16))  # half the memory; a cosine ranking
    else:
        report(done + len(entries))
    table = memo["table"].float().T  # [dim, entries], once for every chunk of words
    scripts: dict[str, list[int]] = {}
    for row, (_, _, script) in enumerate(entries):
        scripts.setdefault(script, []).append(row)
    rows_of = {script: torch.tensor(rows) for script, rows in scripts.items()}
    out: dict[str, dict[str, list[str]]] = {}
    done += len(entries)
    for start in range(0, len(words), _ROWS):
        chunk = words[start:start + _ROWS]
        ids = [[i for i in encoder.tokenize(w)[0] if i not in special] for w in chunk]
        keep = [i for i, seq in enumerate(ids) if seq]
        if keep:
            sims = _embed(encoder, [ids[i] for i in keep]) @ table
            for row, i in enumerate(keep):
                word, found = chunk[i], {}
                for script, cols in rows_of.items():
                    top = sims[row, cols].topk(min(CONTEXT_CANDIDATES, len(cols))).indices.tolist()
                    kept: list[str] = []
                    for j in top:
                        text = entries[int(cols[j])][1]
                        if script == "latin" and text.lower()[:3] == word[:3]:
                            continue
                        if text not in kept:
                            kept.append(text)
                        if len(kept) == per_script:
                            break
                    if kept:
                        found[script] = kept
                if found:
                    out[word] = found
        report(done + start + len(chunk))
    return out


def codeswitch_pairs(pairs: Sequence[Pair], encoder, *, copies: int = DEFAULT_COPIES, rate: float = DEFAULT_RATE,
                     seed: int = 0, by_meaning: bool = True, join: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> list[Pair]:
    """Up to ``copies`` code-switched versions of each distinct English text of ``pairs``, as pairs whose
    ``en`` is the original (the teacher's target) and whose ``text`` is the copy, ``lang`` :data:`CODESWITCH_LANG`.

    Deterministic for a seed; a copy equal to the original or to an earlier copy is dropped, so prompts without
    replaceable words give none. ``join``: no space after a replacement of an :data:`UNSPACED` script (False: the
    copies before COPIES_VERSION 3). ``by_meaning`` and ``progress``: those of :func:`build_dictionary` (the slow
    part: about 20 ms per distinct word on a real encoder, and the vocabulary's embeddings once per process).
    """
    if copies <= 0 or rate <= 0:
        return []
    english = sorted({p.en for p in pairs})
    dictionary = build_dictionary(encoder, [w for en in english for w in _WORD.findall(en)], by_meaning=by_meaning,
                                  progress=progress)
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
                word, space = match.groups()
                neighbours = dictionary.get(word.lower(), {}).get(script)
                if not (neighbours and rng.random() < rate):
                    return match.group(0)
                return rng.choice(neighbours) + ("" if join and script in UNSPACED else space)

            text = _WORD_SPACE.sub(swap, en)
            if text not in seen:
                seen.add(text)
                out.append(Pair(en=en, text=text, lang=CODESWITCH_LANG))
    return out

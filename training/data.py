"""Training data: English prompt lists and parallel files, validated, deduplicated and split.

Formats (UTF-8, a BOM and CRLF line ends are accepted):

* ``.txt``: one English prompt per line (MuLan's zero-shot, English-only setting);
* ``.tsv`` / ``.csv``: a header row with columns ``en`` and ``text``, optional ``lang`` and ``image``;
* ``.jsonl``: one JSON object per line with the same keys.

Every problem is reported as :class:`~babelclip.errors.InvalidDataError` naming
``file:line``. The train/validation split is deterministic and groups rows by
their English text, so no English sentence (nor any of its translations) is in
both splits: evaluation never sees training pairs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import InvalidDataError, InvalidPromptError
from ..models.prompt import check_text

__all__ = ["Pair", "read_pairs", "read_prompts", "pairs_from_text", "dedup", "split_pairs", "MAX_TEXT_CHARS"]

MAX_TEXT_CHARS = 4000
MAX_FILE_BYTES = 2 * 1024 ** 3  # 2 GiB: millions of rows; anything bigger is not a prompt list
_FORMATS = (".txt", ".tsv", ".csv", ".jsonl")


@dataclass(frozen=True)
class Pair:
    """One training example. ``text == en`` and ``lang == 'en'`` for English-only data."""

    en: str
    text: str
    lang: str = "en"
    image: str | None = None
    where: str = ""  # file:line, for messages


def _read_text(path: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise InvalidDataError(
                f"Data file {path!r} is {size / 1024 ** 3:.1f} GiB; the limit is {MAX_FILE_BYTES / 1024 ** 3:.0f} GiB. "
                f"Split it into smaller files.")
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InvalidDataError(f"Data file {path!r} does not exist. Check the path (relative paths start in the "
                               f"current folder).") from None
    except IsADirectoryError:
        raise InvalidDataError(f"Data file {path!r} is a folder; give the path of a .tsv/.csv/.jsonl/.txt file.") from None
    except OSError as e:
        raise InvalidDataError(f"Cannot read data file {path!r}: {e.strerror or e}.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InvalidDataError(
            f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}). Save the file as UTF-8 (in Excel: "
            f"'CSV UTF-8'; in an editor: encoding UTF-8).") from None


def _clean(value, where: str, column: str, required: bool) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidDataError(f"{where}: column {column!r} is empty. Fill it in or delete the row.")
        return ""
    if not isinstance(value, str):
        raise InvalidDataError(f"{where}: column {column!r} must be text, got {type(value).__name__}. Quote it as a "
                               f"JSON string.")
    value = value.strip()
    try:
        check_text(value, f"{where}: column {column!r}", max_chars=MAX_TEXT_CHARS)
    except InvalidPromptError as e:
        raise InvalidDataError(str(e)) from None
    return value


def _pair(row: dict, where: str, folder: str) -> Pair:
    en = _clean(row.get("en"), where, "en", True)
    text = _clean(row.get("text"), where, "text", True)
    lang = _clean(row.get("lang"), where, "lang", False) or "und"
    image = _clean(row.get("image"), where, "image", False) or None
    if image is not None:
        image = image if os.path.isabs(image) else os.path.join(folder, image)
        if not os.path.isfile(image):
            raise InvalidDataError(f"{where}: image {image!r} does not exist. Relative image paths start in the data "
                                   f"file's folder; fix the path or remove the row.")
    return Pair(en, text, lang, image, where)


def _rows(path: str, content: str) -> Iterable[tuple[int, dict]]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidDataError(f"{path}:{n}: not a JSON object ({e.msg}). Each line must be one object like "
                                       f'{{"en": "...", "text": "...", "lang": "de"}}.') from None
            except RecursionError:
                raise InvalidDataError(f"{path}:{n}: JSON nested too deeply. Each line must be one flat object with "
                                       f"'en' and 'text'.") from None
            if not isinstance(row, dict):
                raise InvalidDataError(f"{path}:{n}: each line must be a JSON object with 'en' and 'text'.")
            yield n, row
        return
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if ext == ".tsv" else ",")
    header = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a field over csv's size limit, a NUL in old Pythons, a broken quote
            raise InvalidDataError(f"{path}:{reader.line_num}: cannot be read as {ext[1:].upper()} ({e}). Check the "
                                   f"quoting on that line; each cell holds at most {MAX_TEXT_CHARS} characters.") from None
        n = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            missing = {"en", "text"} - set(header)
            if missing:
                raise InvalidDataError(
                    f"{path}:{n}: the header row {row!r} lacks column(s) {', '.join(sorted(missing))}; "
                    f"expected en, text and optionally lang, image.")
            continue
        if len(row) != len(header):
            raise InvalidDataError(f"{path}:{n}: {len(row)} columns, the header has {len(header)}. Look for a stray "
                                   f"{'tab' if ext == '.tsv' else 'comma'}, or quote the cell.")
        yield n, dict(zip(header, row))


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read a parallel (or English-only ``.txt``) data file into :class:`Pair` rows."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise InvalidDataError(f"Data file {path!r}: unknown format {ext!r}; use one of {', '.join(_FORMATS)}.")
    content = _read_text(path)
    if ext == ".txt":
        return [Pair(p, p, "en", None, f"{path}:{n}") for n, p in _prompt_lines(path, content)]
    folder = os.path.dirname(os.path.abspath(path))
    pairs = [_pair(row, f"{path}:{n}", folder) for n, row in _rows(path, content)]
    if not pairs:
        raise InvalidDataError(f"Data file {path!r} has no rows. Add rows under the header (en, text[, lang, image]).")
    return pairs


def pairs_from_text(text: str, source: str = "text") -> list[Pair]:
    """Rows typed into a text box: ``en<TAB>translation[<TAB>lang]`` per line, or one English prompt per line."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        cells = line.split("\t")
        if len(cells) == 1:
            p = _clean(cells[0], where, "prompt", True)
            rows.append(Pair(p, p, "en", None, where))
        elif len(cells) in (2, 3):
            rows.append(_pair(dict(zip(("en", "text", "lang"), cells)), where, "."))
        else:
            raise InvalidDataError(f"{where}: {len(cells)} tab-separated cells; use 'english<TAB>translation"
                                   f"[<TAB>lang]' or one English prompt per line.")
    if not rows:
        raise InvalidDataError(f"{source}: no prompts given.")
    return rows


def _prompt_lines(path: str, content: str) -> list[tuple[int, str]]:
    out = [(n, _clean(line, f"{path}:{n}", "prompt", True)) for n, line in enumerate(content.splitlines(), 1)
           if line.strip()]
    if not out:
        raise InvalidDataError(f"Prompt file {path!r} has no prompts.")
    return out


def read_prompts(path: str | os.PathLike) -> list[str]:
    """English prompts from a ``.txt`` file (one per line), or the ``en`` column of any data file."""
    return list(dict.fromkeys(p.en for p in read_pairs(path)))


def dedup(pairs: Sequence[Pair]) -> list[Pair]:
    """Drop repeated ``(en, text, lang)`` rows, keeping the first."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for p in pairs:
        key = (p.en, p.text, p.lang)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def split_pairs(pairs: Sequence[Pair], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/validation split by English text (all translations of a sentence stay together)."""
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidDataError(f"val_fraction {val_fraction} must be in [0, 1).")
    train, val = [], []
    for p in pairs:
        digest = hashlib.sha256(f"{seed}\x00{p.en}".encode("utf-8", "surrogatepass")).digest()
        (val if int.from_bytes(digest[:8], "big") / 2 ** 64 < val_fraction else train).append(p)
    if val_fraction > 0 and not val and len({p.en for p in pairs}) > 1:
        # Tiny sets: move the English sentence with the smallest hash so evaluation is never empty.
        first = min({p.en for p in train}, key=lambda en: hashlib.sha256(f"{seed}\x00{en}".encode()).digest())
        val = [p for p in train if p.en == first]
        train = [p for p in train if p.en != first]
    return train, val

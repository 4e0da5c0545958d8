"""Training data files: formats, validation with file:line, dedup, deterministic leak-free split."""

from __future__ import annotations

import json

import pytest

from babelclip.errors import InvalidDataError
from babelclip.training.data import dedup, read_pairs, read_prompts, split_pairs


def test_tsv_csv_jsonl_and_txt(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"png")
    (tmp_path / "d.tsv").write_text("en\ttext\tlang\timage\na red cat\t一只红猫\tzh\tcat.png\n", encoding="utf-8")
    (tmp_path / "d.csv").write_bytes("\ufeffen,text,lang\r\n\"a cat, red\",un chat rouge,fr\r\n\r\n".encode())
    (tmp_path / "d.jsonl").write_text(json.dumps({"en": "a cat", "text": "кошка", "lang": "ru"}) + "\n\n")
    (tmp_path / "d.txt").write_text("a red cat\n\n  a blue dog  \n")
    tsv = read_pairs(tmp_path / "d.tsv")[0]
    assert (tsv.en, tsv.text, tsv.lang) == ("a red cat", "一只红猫", "zh") and tsv.image.endswith("cat.png")
    csv_pair = read_pairs(tmp_path / "d.csv")[0]
    assert (csv_pair.en, csv_pair.text, csv_pair.lang) == ("a cat, red", "un chat rouge", "fr")
    assert read_pairs(tmp_path / "d.jsonl")[0].text == "кошка"
    assert read_prompts(tmp_path / "d.txt") == ["a red cat", "a blue dog"]


@pytest.mark.parametrize("name,content,match", [
    ("bad.tsv", "english\ttext\na\tb\n", r"bad.tsv:1: .*lacks column\(s\) en"),
    ("cols.tsv", "en\ttext\na\tb\tc\n", r"cols.tsv:2: 3 columns"),
    ("empty.csv", "en,text\na,\n", r"empty.csv:2: column 'text' is empty"),
    ("img.tsv", "en\ttext\timage\na\tb\tmissing.png\n", r"img.tsv:2: image .*missing.png"),
    ("j.jsonl", '{"en": "a", "text": "b"}\n[1, 2]\n', r"j.jsonl:2: each line must be a JSON object"),
    ("j2.jsonl", '{"en": "a"\n', r"j2.jsonl:1: not a JSON object"),
    ("huge.txt", "x" * 5000 + "\n", r"huge.txt:1: .*5,000 characters"),
    ("none.txt", "\n\n", r"has no prompts"),
    ("d.xlsx", "x", r"unknown format"),
])
def test_bad_files_name_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(InvalidDataError, match=match):
        read_pairs(tmp_path / name)


def test_bad_encoding_names_the_line(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidDataError, match=r"latin1.txt:2: not valid UTF-8"):
        read_pairs(tmp_path / "latin1.txt")


def test_dedup_and_deterministic_split_without_leaks(tmp_path):
    rows = ["en\ttext\tlang"] + [f"prompt {i}\tübersetzung {i}\tde" for i in range(200)]
    rows += [f"prompt {i}\t翻译 {i}\tzh" for i in range(200)] + ["prompt 1\tübersetzung 1\tde"]
    (tmp_path / "p.tsv").write_text("\n".join(rows), encoding="utf-8")
    pairs = read_pairs(tmp_path / "p.tsv")
    unique = dedup(pairs)
    assert len(pairs) == 401 and len(unique) == 400
    train, val = split_pairs(unique, 0.2, seed=3)
    assert split_pairs(unique, 0.2, seed=3) == (train, val)
    assert 40 <= len(val) <= 120 and len(train) + len(val) == 400
    assert not {p.en for p in train} & {p.en for p in val}  # no English sentence in both splits
    assert split_pairs(unique, 0.2, seed=4)[1] != val
    tiny_train, tiny_val = split_pairs(unique[:2], 0.01)
    assert len(tiny_val) == 1 and len(tiny_train) == 1


def test_shipped_prompt_set():
    from collections import defaultdict

    from babelclip.training.cli import SHIPPED_PROMPTS

    pairs = read_pairs(SHIPPED_PROMPTS)
    assert dedup(pairs) == pairs
    langs = defaultdict(set)
    for p in pairs:
        langs[p.en].add(p.lang)
    assert len(langs) >= 200
    required = {"zh", "ja", "ar", "hi", "ru", "de", "fr", "es"}
    assert all(required <= got for got in langs.values())
    by_en = {(p.en, p.lang): p.text for p in pairs}
    mooncake = next(en for en in langs if "mooncake" in en.lower())
    assert "月饼" in by_en[(mooncake, "zh")]
    assert any("rangoli" in en.lower() for en in langs) and any("iftar" in en.lower() for en in langs)

"""training/codeswitch.py: code-switched copies of English prompts from the encoder's own vocabulary, and the
pipeline that trains on them by default. How much they keep of the encoder's cross-lingual retrieval is measured
by bench/fidelity.py (BENCHMARKS.md), not here."""

from __future__ import annotations

import json
import os
import re

import pytest

from babelclip.models import load_encoder, read_adapter_spec
from babelclip.models.tiny import build_tiny_encoder
from babelclip.training.codeswitch import CODESWITCH_LANG, DEFAULT_COPIES, DEFAULT_RATE, build_dictionary, codeswitch_pairs
from babelclip.training.data import Pair
from babelclip.training.pipeline import Hooks, TrainJob, run_pipeline, split_for_training
from babelclip.training.recipes import get_recipe
from babelclip.training.trainer import TrainConfig

from . import synthetic
from .e5_fixture import e5_folder

UNSPACED_CHAR = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\u0e00-\u0e7f]")
UNSPACED_SPACE = re.compile(UNSPACED_CHAR.pattern + " ")
ENGLISH = ["a red fox sleeping in fresh snow, soft morning light",
           "an old cat on a river boat at night",
           "thuluth calligraphy, gold ink"]


@pytest.fixture(scope="module")
def e5():
    return load_encoder(e5_folder())


@pytest.mark.e5
def test_the_real_encoders_vocabulary_translates_common_words(e5):
    words = build_dictionary(e5, ["snow", "morning", "cat", "river", "thuluth"])
    assert "雪" in words["snow"]["han"] and "снег" in words["snow"]["cyrillic"]
    assert "고양이" in words["cat"]["hangul"] and "猫" in words["cat"]["han"]
    assert any("утр" in w for w in words["morning"]["cyrillic"])
    for entry in words.values():  # no neighbour is the English word again in Latin letters
        assert all(w.lower()[:3] != "sno" for w in entry.get("latin", []))


@pytest.mark.e5
def test_words_split_into_pieces_are_looked_up_by_meaning(e5):
    """"forest" and "photography" are pieces to the tokenizer (a piece's table neighbours are a fragment's): the
    encoder's embedding of the word alone finds their translations among its vocabulary's entries."""
    split = ["forest", "photography"]
    assert all(len(e5.tokenize(w)[0]) > 1 for w in split)
    assert not build_dictionary(e5, split, by_meaning=False)  # the table alone has nothing for them
    words = build_dictionary(e5, split)
    assert "лес" in words["forest"]["cyrillic"] and "جنگل" in words["forest"]["arabic"]
    assert "写真" in words["photography"]["han"] and "사진" in words["photography"]["hangul"]
    assert "фотография" in words["photography"]["cyrillic"]
    # whole words keep their table neighbours: the lookup by meaning only adds the others
    both = build_dictionary(e5, ["snow", *split])
    assert both["snow"] == build_dictionary(e5, ["snow"], by_meaning=False)["snow"]


@pytest.mark.e5
def test_copies_keep_the_english_as_target_and_are_reproducible(e5):
    pairs = [Pair(en, en) for en in ENGLISH]
    copies = codeswitch_pairs(pairs, e5, copies=4, rate=0.5, seed=3)
    assert copies == codeswitch_pairs(pairs, e5, copies=4, rate=0.5, seed=3)
    assert copies != codeswitch_pairs(pairs, e5, copies=4, rate=0.5, seed=4)
    assert {p.en for p in copies} <= set(ENGLISH) and all(p.lang == CODESWITCH_LANG for p in copies)
    for en in ENGLISH:
        texts = [p.text for p in copies if p.en == en]
        assert len(texts) == len(set(texts)) <= 4 and en not in texts
    # only whole words are replaced: the punctuation stays, and the word count where the script uses spaces
    for p in copies:
        assert p.text.count(",") == p.en.count(",")
        assert UNSPACED_SPACE.search(p.text) is None  # (Chinese, Japanese, Thai words take no space after them)
        if not UNSPACED_CHAR.search(p.text):
            assert len(p.text.split()) >= len(p.en.split())
    switched = [p for p in copies if p.en == ENGLISH[0]]
    assert switched and all(any(ord(c) > 0x24F for c in p.text) or p.text != p.en for p in switched)
    assert codeswitch_pairs(pairs, e5, copies=0) == [] and codeswitch_pairs(pairs, e5, rate=0.0) == []
    assert len({p.text for p in codeswitch_pairs(pairs, e5, copies=8, rate=1.0, seed=0)}) > 8


def test_words_of_scripts_written_without_spaces_take_no_space_after_them(monkeypatch):
    """A copy writes a Chinese, Japanese or Thai replacement as text of those languages is written, without the
    space after it, so the tokenizer cuts it as it cuts theirs; other scripts keep the English spacing."""
    from babelclip.training import codeswitch

    dictionary = {"fresh": {"han": ["新鲜"], "cyrillic": ["свежий"]}, "snow": {"han": ["雪"], "cyrillic": ["снег"]},
                  "morning": {"han": ["早晨"], "cyrillic": ["утро"]}}
    monkeypatch.setattr(codeswitch, "build_dictionary", lambda *a, **k: dictionary)
    en = "fresh snow, soft morning light"
    copies = {p.text for p in codeswitch_pairs([Pair(en, en)], None, copies=16, rate=1.0, seed=0)}
    assert copies == {"新鲜雪, soft 早晨light", "свежий снег, soft утро light"}
    spaced = {p.text for p in codeswitch_pairs([Pair(en, en)], None, copies=16, rate=1.0, seed=0, join=False)}
    assert spaced == {"新鲜 雪, soft 早晨 light", "свежий снег, soft утро light"}  # the copies before version 3
    # no character is reserved for the joining: a NUL in a prompt stays, with the spaces around it
    odd = {p.text for p in codeswitch_pairs([Pair("snow \x00 light", "x")], None, copies=16, rate=1.0, seed=0)}
    assert odd == {"雪\x00 light", "снег \x00 light"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc", "xlm-roberta", extra_text=synthetic.all_text())
    encoder = load_encoder(folder)
    return encoder, synthetic.LinearTeacher(encoder)


def _run(tiny, tmp_path, name, recipe="altclip-kd", **options):
    encoder, teacher = tiny
    job = TrainJob(synthetic.pairs(("en", "de")), encoder, teacher, "linear teacher", get_recipe(recipe), "linear",
                   TrainConfig(steps=4, batch_size=16, lr=1e-2), str(tmp_path / f"{name}.safetensors"),
                   str(tmp_path / "cache"), **{"runs": 1, **options})
    lines: list[str] = []
    out = run_pipeline(job, Hooks(log=lines.append))
    return job, out, json.loads(read_adapter_spec(out.path).metadata["babelclip.recipe"])["codeswitch"], lines


def test_text_recipes_train_on_code_switched_copies_by_default(tiny, tmp_path):
    job, out, meta, lines = _run(tiny, tmp_path, "default")
    train_pairs, _ = split_for_training(job.pairs, job.val_fraction, job.config.seed)
    expected = codeswitch_pairs(train_pairs, job.encoder, copies=job.codeswitch, rate=job.codeswitch_rate, seed=0)
    assert expected, "the tiny vocabulary has neighbours of other scripts: the test data must make copies"
    assert meta == {"copies": DEFAULT_COPIES, "rate": DEFAULT_RATE, "pairs": len(expected)}
    assert any(f"{len(expected)} code-switched copies" in line for line in lines)
    # the held-out evaluation never sees a copy: its pairs are the held-out split's, of its own languages
    assert set(out.report["languages"]) <= {"en", "de"}
    assert read_adapter_spec(out.path).metadata["babelclip.languages"] == '["de", "en"]'


def test_codeswitch_zero_trains_on_the_data_alone(tiny, tmp_path):
    _, _, meta, lines = _run(tiny, tmp_path, "off", codeswitch=0)
    assert meta["pairs"] == 0 and not any("code-switched" in line for line in lines)


def test_the_copies_are_made_once_per_process(tiny, tmp_path, monkeypatch):
    """A host's re-queue of the same run reuses the copies of the first; other settings make their own."""
    import collections

    from babelclip.training import codeswitch, pipeline

    monkeypatch.setattr(pipeline, "_copies", collections.OrderedDict())
    built = []
    real = codeswitch.build_dictionary
    monkeypatch.setattr(codeswitch, "build_dictionary", lambda *a, **k: built.append(1) or real(*a, **k))
    first = _run(tiny, tmp_path, "first")[2]
    assert built == [1]
    assert _run(tiny, tmp_path, "again")[2] == first and built == [1]
    assert _run(tiny, tmp_path, "rate", codeswitch_rate=0.25)[2]["rate"] == 0.25 and built == [1, 1]
    _run(tiny, tmp_path, "two", codeswitch=2)  # a few entries only: the least recently used goes
    assert len(pipeline._copies) == pipeline._COPIES_KEPT == 2
    assert _run(tiny, tmp_path, "first again")[2] == first  # ... and is read back from the cache folder
    assert built == [1, 1, 1]


def test_the_runs_of_a_job_look_the_words_up_once(tiny, tmp_path, monkeypatch):
    """A default job of the linear adapter trains several runs, each on its own seed's copies of the same English:
    the dictionary is built for the first and reused (a copy: what a caller changes stays its own); other words
    build another."""
    from babelclip.training import codeswitch
    from babelclip.training.pipeline import DEFAULT_RUNS

    monkeypatch.setattr(codeswitch, "_dictionary_memo", {})
    looked_up = []
    real = codeswitch._table_neighbours
    monkeypatch.setattr(codeswitch, "_table_neighbours", lambda *a, **k: looked_up.append(1) or real(*a, **k))
    job, out, meta, _ = _run(tiny, tmp_path, "runs", runs=0)
    assert json.loads(read_adapter_spec(out.path).metadata["babelclip.recipe"])["runs"] == DEFAULT_RUNS
    assert meta["pairs"] > 0 and looked_up == [1]

    encoder = tiny[0]
    seen = []
    first = build_dictionary(encoder, ENGLISH[0].split(), progress=lambda done, total: seen.append((done, total)))
    first[next(iter(first))].clear()
    again = build_dictionary(encoder, ENGLISH[0].split(), progress=lambda done, total: seen.append((done, total)))
    assert looked_up == [1, 1] and all(again.values()) and seen[-1][0] == seen[-1][1]  # the bar ends full
    build_dictionary(encoder, ENGLISH[1].split())
    assert looked_up == [1, 1, 1]


def test_the_copies_are_kept_in_the_cache_folder_for_a_rerun_in_another_process(tiny, tmp_path, monkeypatch):
    """The command line's rerun after Ctrl-C is a new process: it reads the copies the first run wrote (the same
    rows, in order) instead of building the dictionary again; an unreadable file is made again and replaced, a
    stop while making them leaves no file, and codeswitch 0 writes none."""
    import collections

    from babelclip.training import codeswitch, pipeline

    built = []
    real = codeswitch.build_dictionary
    monkeypatch.setattr(codeswitch, "build_dictionary", lambda *a, **k: built.append(1) or real(*a, **k))
    monkeypatch.setattr(pipeline, "_copies", collections.OrderedDict())
    encoder, teacher = tiny
    pairs = synthetic.pairs(("en",))

    def job(**options):
        return TrainJob(pairs, encoder, teacher, "linear teacher", get_recipe("altclip-kd"), "linear",
                        TrainConfig(steps=2, batch_size=16), str(tmp_path / "x.safetensors"), str(tmp_path / "cache"),
                        **options)

    made = pipeline.codeswitched(job(), pairs)
    files = list((tmp_path / "cache").glob("codeswitch-*.jsonl"))
    assert made and built == [1] and len(files) == 1
    pipeline._copies.clear()  # as in a new process
    assert pipeline.codeswitched(job(), pairs) == made and built == [1]
    pipeline._copies.clear()
    assert pipeline.codeswitched(job(codeswitch=3), pairs) != made and built == [1, 1]  # other settings, own file
    assert len(list((tmp_path / "cache").glob("codeswitch-*.jsonl"))) == 2

    files[0].write_text("{not json\n", encoding="utf-8")
    pipeline._copies.clear()
    assert pipeline.codeswitched(job(), pairs) == made and built == [1, 1, 1]  # made again ...
    pipeline._copies.clear()
    assert pipeline.codeswitched(job(), pairs) == made and built == [1, 1, 1]  # ... and the file replaced

    for options in ({"codeswitch": 0}, {"codeswitch_rate": 0.0}):
        assert pipeline.codeswitched(job(**options), pairs) == []
    monkeypatch.setattr(codeswitch, "_ROWS", 2)  # chunks of 2 words: the stop comes before the last
    monkeypatch.setattr(codeswitch, "_dictionary_memo", {})  # (a kept dictionary is reused at once: no chunks)
    assert pipeline.codeswitched(job(codeswitch=5), pairs, Hooks(should_stop=lambda: True)) is None
    assert len(list((tmp_path / "cache").glob("codeswitch-*.jsonl"))) == 2


def test_the_copies_file_is_named_by_the_copies_version(tiny, tmp_path, monkeypatch):
    """A change to how copies are made bumps COPIES_VERSION, and older files are no longer read."""
    from babelclip.training import pipeline

    encoder, teacher = tiny
    pairs = synthetic.pairs(("en",))
    job = TrainJob(pairs, encoder, teacher, "linear teacher", get_recipe("altclip-kd"), "linear",
                   TrainConfig(steps=2, batch_size=16), str(tmp_path / "x.safetensors"), str(tmp_path / "cache"))
    key = pipeline._copies_key(job, pairs)
    before = pipeline._copies_file(job, key)
    monkeypatch.setattr(pipeline, "COPIES_VERSION", pipeline.COPIES_VERSION + 1)
    assert pipeline._copies_file(job, key) != before and os.path.dirname(before) == job.cache_dir


def test_a_stop_while_code_switching_ends_the_run_before_any_feature(tiny, tmp_path, monkeypatch):
    """The dictionary is a progress stage of its own, and a stop between its chunks of words ends the run as a
    stop while caching does: stopped, stage "features", no adapter, no checkpoint, nothing cached."""
    import collections
    import os

    from babelclip.training import codeswitch, pipeline

    monkeypatch.setattr(pipeline, "_copies", collections.OrderedDict())  # (earlier tests' copies: not built again)
    monkeypatch.setattr(codeswitch, "_dictionary_memo", {})  # (nor their dictionary)
    monkeypatch.setattr(codeswitch, "_ROWS", 2)  # chunks of 2 words: several on the tiny vocabulary
    encoder, teacher = tiny
    job = TrainJob(synthetic.pairs(("en", "de")), encoder, teacher, "linear teacher", get_recipe("altclip-kd"),
                   "linear", TrainConfig(steps=2, batch_size=16, lr=1e-2), str(tmp_path / "s.safetensors"),
                   str(tmp_path / "cache"), runs=1)  # one run: one build (later runs reuse the dictionary)
    seen: list = []

    def progress(stage, done, total, loss=None):
        seen.append((stage, done, total))

    out = run_pipeline(job, Hooks(progress=progress, should_stop=lambda: bool(seen), log=lambda line: None))
    assert out.stopped and out.stage == pipeline.CODESWITCH_STAGE and out.train is None and out.path is None
    from babelclip.training.cli import stopped_message

    assert stopped_message(out, None).startswith("stopped while making the code-switched copies")
    total = seen[0][2]
    assert total > 2 and seen == [(pipeline.CODESWITCH_STAGE, 2, total)]  # stopped after the first chunk
    assert not os.path.exists(job.out) and not os.path.exists(job.checkpoint_path)
    assert not (tmp_path / "cache").exists() and not pipeline._copies  # nothing kept of a stopped build

    seen.clear()
    out = run_pipeline(job, Hooks(progress=progress, log=lambda line: None))  # the same job, not stopped
    words = [d for s, d, _ in seen if s == pipeline.CODESWITCH_STAGE]
    # chunks of 2 words (whole words, then the words looked up by meaning) and of the vocabulary's entries
    assert words[0] == 2 and words[-1] == total and all(a < b for a, b in zip(words, words[1:]))
    assert len(words) > 4 and out.stage == "saved" and os.path.exists(job.out)
    stages = [s for s, *_ in seen]
    assert stages.index("encoder") == len(words)  # the copies are made before the first feature
    # the callback sees every chunk and changes nothing of the dictionary
    calls: list = []
    english = [w for p in job.pairs for w in p.en.split()]
    assert build_dictionary(encoder, english, progress=lambda *a: calls.append(a)) == build_dictionary(encoder, english)
    assert calls and calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_a_fine_tune_of_the_encoder_makes_its_own_copies(tiny, tmp_path, monkeypatch, fine_tune):
    """The copies are the encoder's input-embedding neighbours: a fine-tune (one vocabulary, so one fingerprint,
    other embeddings) builds its own dictionary rather than reusing its base's copies."""
    import collections

    from babelclip.training import codeswitch, pipeline

    monkeypatch.setattr(pipeline, "_copies", collections.OrderedDict())
    built = []
    real = codeswitch.build_dictionary
    monkeypatch.setattr(codeswitch, "build_dictionary", lambda *a, **k: built.append(1) or real(*a, **k))
    encoder, teacher = tiny
    tuned = load_encoder(fine_tune(encoder.path, tmp_path / "tuned", scale=0.05))
    assert tuned.info.fingerprint == encoder.info.fingerprint and tuned.info.weights != encoder.info.weights
    pairs = synthetic.pairs(("en",))

    def copies(enc):
        job = TrainJob(pairs, enc, teacher, "linear teacher", get_recipe("altclip-kd"), "linear",
                       TrainConfig(steps=2, batch_size=16), str(tmp_path / "x.safetensors"), str(tmp_path / "cache"))
        return pipeline.codeswitched(job, pairs)

    base = copies(encoder)
    assert copies(encoder) == base and built == [1]  # kept in the process for the same encoder ...
    own = copies(tuned)
    assert built == [1, 1]  # ... but not handed to its fine-tune
    assert own == codeswitch_pairs(pairs, tuned, seed=0) and own != base

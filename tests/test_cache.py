"""Feature cache: computed once per unique text, memory-mapped, invalidated by key, safe on interruption."""

from __future__ import annotations

import json
import os

import pytest
import torch

from babelclip.errors import InvalidDataError
from babelclip.training.cache import FeatureStore


def _model(calls):
    def compute(texts):
        calls.append(list(texts))
        return [torch.full((len(t), 4), float(len(t))) for t in texts]
    return compute


def test_each_unique_text_is_computed_once_and_read_back(tmp_path):
    calls = []
    store = FeatureStore(tmp_path, {"kind": "encoder", "fingerprint": "abc", "layer": "last"}, dim=4)
    texts = ["猫", "a cat", "猫", "кошка на крыше"]
    assert store.fill(texts, _model(calls), batch_size=2) == 3
    assert sum(len(c) for c in calls) == 3
    for _ in range(3):  # epochs: no more calls
        assert store.fill(texts, _model(calls)) == 0
    assert sum(len(c) for c in calls) == 3
    assert torch.equal(store.get("a cat"), torch.full((5, 4), 5.0))
    again = FeatureStore(tmp_path, {"kind": "encoder", "fingerprint": "abc", "layer": "last"}, dim=4)
    assert len(again) == 3 and torch.equal(again.get("кошка на крыше"), torch.full((14, 4), 14.0))


def test_changing_model_or_layer_invalidates(tmp_path):
    calls = []
    FeatureStore(tmp_path, {"kind": "teacher", "fingerprint": "A", "layer": -2}, 4).fill(["x"], _model(calls))
    for key in ({"kind": "teacher", "fingerprint": "B", "layer": -2}, {"kind": "teacher", "fingerprint": "A", "layer": -1}):
        store = FeatureStore(tmp_path, key, 4)
        assert "x" not in store and store.fill(["x"], _model(calls)) == 1
    assert len(calls) == 3


def test_interrupted_append_is_ignored(tmp_path):
    store = FeatureStore(tmp_path, {"kind": "e"}, 4)
    store.fill(["a", "bb"], _model([]))
    with open(store.index_path, "a") as f:
        f.write('["deadbeef", 10')  # cut short
    with open(store.index_path, "a") as f:
        f.write('\n["cafe", 999, 3]\n')  # points past the data: ignored
    again = FeatureStore(tmp_path, {"kind": "e"}, 4)
    assert len(again) == 2 and again.missing(["a", "c"]) == ["c"]


def test_read_from_the_file_not_loaded(tmp_path):
    store = FeatureStore(tmp_path, {"kind": "e"}, 8)
    store.fill([f"text {i}" for i in range(500)], lambda ts: [torch.ones(3, 8) for _ in ts], batch_size=100)
    assert os.path.getsize(store.data_path) == 500 * 3 * 8 * 4
    assert store.get("text 499").shape == (3, 8)
    assert store.get_many(["text 1", "text 2"]).shape == (2, 3, 8)
    assert store.index.keys.nbytes + store.index.offsets.nbytes + store.index.rows.nbytes == 500 * 28


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS (Linux)")
def test_reading_the_whole_store_does_not_grow_resident_memory(tmp_path):
    """Pages of a memory-mapped file count as resident memory; positioned reads leave them to the OS."""
    store = FeatureStore(tmp_path, {"kind": "e"}, 1024)
    texts = [f"t{i}" for i in range(3000)]
    store.fill(texts, lambda ts: [torch.full((4, 1024), 1.0) for _ in ts], batch_size=500)  # 49 MB on disk
    store.get(texts[0])
    before = _rss_mb()
    for start in range(0, len(texts), 100):
        store.get_many(texts[start: start + 100])
    for t in texts[::3]:
        store.get(t)
    assert _rss_mb() - before < 16  # a mapping would hold the 49 MB just read


def test_float16_store_round_trips_and_upcasts(tmp_path):
    x = torch.randn(5, 16) * 100
    store = FeatureStore(tmp_path, {"kind": "teacher"}, 16, dtype="float16")
    store.add(["a"], [x])
    assert os.path.getsize(store.data_path) == 5 * 16 * 2 and store.data_path.endswith(".f16")
    got = FeatureStore(tmp_path, {"kind": "teacher"}, 16, dtype="float16").get("a")
    assert got.dtype == torch.float32 and torch.equal(got, x.half().float())
    torch.testing.assert_close(got, x, rtol=1e-3, atol=1e-3)
    with pytest.raises(InvalidDataError, match="float16"):
        store.add(["big"], [torch.full((1, 16), 1e5)])  # would be stored as inf
    assert "big" not in store


def test_dtype_and_layout_are_part_of_the_key(tmp_path):
    """A store written in one dtype or layout is never read as another."""
    calls = []
    key = {"kind": "teacher", "fingerprint": "A", "layout": "mean+pooled"}
    FeatureStore(tmp_path, key, 4, dtype="float16").fill(["x"], _model(calls))
    for other, dtype in ((key, "float32"), ({**key, "layout": "tokens77"}, "float16")):
        store = FeatureStore(tmp_path, other, 4, dtype=dtype)
        assert "x" not in store and len(store) == 0
        store.fill(["x"], _model(calls))
    assert len(calls) == 3 and len({p.name for p in tmp_path.iterdir()}) == 3


@pytest.mark.parametrize("field", ["dtype", "dim", "format"])
def test_a_key_may_not_set_the_stores_own_fields(tmp_path, field):
    """They would silently replace the caller's value (an encoder's load dtype once went missing that way), so two
    kinds of rows would share one folder."""
    with pytest.raises(ValueError, match=field):
        FeatureStore(tmp_path, {"kind": "encoder", field: "bfloat16"}, 4)
    assert not list(tmp_path.iterdir())  # refused before any folder is made


def test_a_folder_holding_another_key_is_refused(tmp_path):
    store = FeatureStore(tmp_path, {"kind": "e", "layout": "a"}, 4)
    with open(os.path.join(store.folder, "key.json"), "w") as f:
        json.dump({**store.key, "layout": "b"}, f)
    with pytest.raises(InvalidDataError, match="another kind"):
        FeatureStore(tmp_path, {"kind": "e", "layout": "a"}, 4)


def test_a_text_added_again_reads_its_latest_rows(tmp_path):
    store = FeatureStore(tmp_path, {"kind": "e"}, 2)
    store.add(["a", "b", "a"], [torch.zeros(1, 2), torch.ones(2, 2), torch.full((3, 2), 2.0)])
    store.add(["b"], [torch.full((1, 2), 5.0)])
    for s in (store, FeatureStore(tmp_path, {"kind": "e"}, 2)):
        assert len(s) == 2
        assert torch.equal(s.get("a"), torch.full((3, 2), 2.0)) and torch.equal(s.get("b"), torch.full((1, 2), 5.0))
    with pytest.raises(KeyError):
        store.get("c")


def test_reads_without_preadv_as_on_windows(tmp_path, monkeypatch):
    """Windows has no os.preadv: the store reads through one locked file object instead, same rows."""
    texts = ["猫", "a cat", "кошка на крыше", "x"]
    FeatureStore(tmp_path, {"kind": "e"}, 4).fill(texts, _model([]))
    monkeypatch.delattr(os, "preadv")
    store = FeatureStore(tmp_path, {"kind": "e"}, 4)
    for t in texts:
        assert torch.equal(store.get(t), torch.full((len(t), 4), float(len(t))))
    assert store._fd is None and store._file is not None  # the fallback really served them
    with open(store.data_path, "r+b") as f:
        f.truncate(4 * 4 * 4)  # the file lost its tail while the store was open
    with pytest.raises(InvalidDataError, match="shorter than its index says.*recomputed"):
        store.get("кошка на крыше")

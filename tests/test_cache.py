"""Feature cache: computed once per unique text, memory-mapped, invalidated by key, safe on interruption."""

from __future__ import annotations

import os

import torch

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


def test_memory_mapped_not_loaded(tmp_path):
    store = FeatureStore(tmp_path, {"kind": "e"}, 8)
    store.fill([f"text {i}" for i in range(500)], lambda ts: [torch.ones(3, 8) for _ in ts], batch_size=100)
    assert os.path.getsize(store.data_path) == 500 * 3 * 8 * 4
    assert store.get("text 499").shape == (3, 8)
    assert store._memmap().__class__.__name__ == "memmap"

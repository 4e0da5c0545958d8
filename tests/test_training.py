"""Trainer and text recipes: learnability, generalisation, caching, resume, settings."""

from __future__ import annotations

import os

import pytest
import torch

from babelclip.errors import InvalidDataError
from babelclip.models import build_adapter, load_encoder
from babelclip.models.encoder import EncoderInfo
from babelclip.models.tiny import build_tiny_encoder
from babelclip.training.data import split_pairs
from babelclip.training.evaluation import evaluate_embeddings
from babelclip.training.features import prepare_text_features
from babelclip.training.recipes import RECIPES, get_recipe
from babelclip.training.trainer import TrainConfig, lr_at, train

from . import synthetic


@pytest.fixture(scope="module")
def synth_encoder(tmp_path_factory):
    folder = build_tiny_encoder(tmp_path_factory.mktemp("synth") / "enc", "xlm-roberta", extra_text=synthetic.all_text())
    return load_encoder(folder)


@pytest.fixture(scope="module")
def task(synth_encoder, tmp_path_factory):
    teacher = synthetic.LinearTeacher(synth_encoder)
    train_pairs, val_pairs = split_pairs(synthetic.pairs(), 0.2, seed=0)
    cache = tmp_path_factory.mktemp("cache")
    tr = prepare_text_features(train_pairs, synth_encoder, teacher, cache)
    va = prepare_text_features(val_pairs, synth_encoder, teacher, cache)
    return teacher, tr, va


def held_out(adapter, features, per_language=False):
    batch = features.batch(range(len(features)))
    with torch.no_grad():
        out = adapter(batch.hidden, batch.mask)
    report = evaluate_embeddings(batch.teacher_pooled, out.pooled, [p.lang for p in features.pairs])
    return report if per_language else report["average"]


@pytest.mark.parametrize("arch", ["linear", "mlp", "bottleneck", "resampler"])
def test_altclip_kd_learns_every_architecture_and_generalises(task, arch):
    _, tr, va = task
    torch.manual_seed(0)
    small = {"resampler": {"width": 128, "heads": 4}, "mlp": {"hidden_dim": 256}}.get(arch, {})
    adapter = build_adapter(arch, 32, tr.family, **small)
    before = held_out(adapter, va)
    result = train(adapter, get_recipe("altclip-kd"), tr, TrainConfig(steps=600, lr=5e-3, batch_size=32))
    after = held_out(adapter, va, per_language=True)
    assert result.losses[-1] < result.losses[0] / 10
    assert set(after["languages"]) == {"en", "de", "zh", "ru"}  # held-out sentences of a multilingual corpus
    for lang, m in after["languages"].items():
        assert m["cosine"] >= 0.98 and m["r@1"] >= 0.95, (lang, before, m)


def test_mclip_trikd_trains_a_contrastive_alignment(task):
    _, tr, va = task
    torch.manual_seed(0)
    adapter = build_adapter("mlp", 32, tr.family, hidden_dim=256)
    before = held_out(adapter, va)["r@1"]
    result = train(adapter, get_recipe("mclip-trikd"), tr, TrainConfig(steps=150, lr=2e-3, batch_size=32))
    assert result.losses[-1] < result.losses[0]
    assert held_out(adapter, va)["r@1"] > max(0.8, before)


def test_mclip_trikd_uses_images_when_given(task):
    _, tr, _ = task
    recipe = get_recipe("mclip-trikd")
    adapter = build_adapter("linear", 32, tr.family)
    batch = tr.batch(range(8))
    plain, logs = recipe.loss(adapter, batch)
    batch.image_embeds = torch.randn(8, 768)
    with_images, logs2 = recipe.loss(adapter, batch)
    assert set(logs) == {"ttc"} and set(logs2) == {"itc", "ttc"}
    assert with_images.item() == pytest.approx(logs2["itc"] + 0.1 * logs2["ttc"], rel=1e-5)


def test_frozen_models_run_once_per_unique_text(synth_encoder, tmp_path):
    teacher = synthetic.LinearTeacher(synth_encoder, seed=3)
    calls = []
    original = synth_encoder.encode_ids

    def counting(seqs, *a, **k):
        calls.append(len(seqs))
        return original(seqs, *a, **k)

    synth_encoder.encode_ids = counting
    try:
        rows = synthetic.pairs()[:40]
        feats = prepare_text_features(rows, synth_encoder, teacher, tmp_path)
        first_enc, first_teacher = sum(calls), teacher.calls
        assert first_teacher == 40
        train(build_adapter("linear", 32, feats.family), get_recipe("altclip-kd"), feats,
              TrainConfig(steps=30, batch_size=8))
        prepare_text_features(rows, synth_encoder, teacher, tmp_path)  # a second run: all cached
        assert sum(calls) == first_enc and teacher.calls == first_teacher
    finally:
        del synth_encoder.encode_ids


def test_a_fine_tuned_encoder_never_reads_the_states_cached_from_its_base(xlmr, xlmr_fine_tune, tmp_path):
    """One vocabulary (one fingerprint), other weights: each encoder caches and reads its own states."""
    rows = synthetic.pairs()[:12]
    teacher = synthetic.LinearTeacher(xlmr)
    base = prepare_text_features(rows, xlmr, teacher, tmp_path)
    tuned = prepare_text_features(rows, xlmr_fine_tune, teacher, tmp_path)  # the same cache folder
    assert xlmr_fine_tune.info.fingerprint == xlmr.info.fingerprint
    assert tuned.encoder_store.folder != base.encoder_store.folder
    assert tuned.teacher_store.folder == base.teacher_store.folder  # the teacher's are shared, as they should be
    again = prepare_text_features(rows, xlmr, teacher, tmp_path)  # the base after its fine-tune: still its own
    for feats, encoder in ((base, xlmr), (tuned, xlmr_fine_tune), (again, xlmr)):
        for p in rows[:4]:
            own = encoder.encode([p.text]).hidden[0]
            torch.testing.assert_close(feats.encoder_store.get(p.text), own, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tuned.encoder_store.get(rows[0].text), base.encoder_store.get(rows[0].text), atol=1e-3)


def test_the_encoder_cache_is_keyed_by_the_encoder_identity_as_before(xlmr, tmp_path, monkeypatch):
    """The encoder's store is keyed by ``EncoderInfo.identity``, with the key it had when the fingerprint and the
    weights digest were spelled out here (states cached before stay found)."""
    import dataclasses

    from babelclip.training.cache import FeatureStore

    rows = synthetic.pairs()[:4]
    teacher = synthetic.LinearTeacher(xlmr)
    feats = prepare_text_features(rows, xlmr, teacher, tmp_path)
    before = {"kind": "encoder", "fingerprint": xlmr.info.fingerprint, "weights": xlmr.info.weights,
              "model_type": xlmr.info.model_type, "layer": "last", "max_length": xlmr.max_length}
    assert feats.encoder_store.folder == FeatureStore(tmp_path, before, xlmr.info.hidden_size).folder

    @dataclasses.dataclass(frozen=True)
    class Marked(EncoderInfo):
        @property
        def identity(self) -> dict:
            return {**super().identity, "mark": 1}

    monkeypatch.setattr(xlmr, "info", Marked(**xlmr.info.to_dict()))
    marked = prepare_text_features(rows, xlmr, teacher, tmp_path)
    assert marked.encoder_store.key["mark"] == 1 and marked.encoder_store.folder != feats.encoder_store.folder


def test_a_half_precision_load_caches_apart_from_the_float32_one(xlmr, tmp_path):
    """The same checkpoint loaded in bfloat16 (as a host may on a GPU) has slightly other states: its own store."""
    rows = synthetic.pairs()[:6]
    teacher = synthetic.LinearTeacher(xlmr)
    full = prepare_text_features(rows, xlmr, teacher, tmp_path)
    half = load_encoder(xlmr.path, dtype=torch.bfloat16)
    assert half.info.weights == xlmr.info.weights
    lowered = prepare_text_features(rows, half, teacher, tmp_path)
    assert lowered.encoder_store.folder != full.encoder_store.folder
    assert lowered.teacher_store.folder == full.teacher_store.folder
    torch.testing.assert_close(lowered.encoder_store.get(rows[0].text),
                               half.encode([rows[0].text]).hidden[0].float(), atol=1e-3, rtol=1e-3)
    again = prepare_text_features(rows, xlmr, teacher, tmp_path)
    assert again.encoder_store.folder == full.encoder_store.folder


def test_interrupt_and_resume_follow_the_same_curve(task, tmp_path):
    _, tr, _ = task
    config = TrainConfig(steps=60, lr=2e-3, batch_size=16, checkpoint_every=25)
    torch.manual_seed(5)
    full = build_adapter("mlp", 32, tr.family, hidden_dim=64)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    whole = train(full, get_recipe("altclip-kd"), tr, config)

    part = build_adapter("mlp", 32, tr.family, hidden_dim=64)
    part.load_state_dict(init)
    ckpt = str(tmp_path / "run.ckpt")
    stop_at = iter(range(1000))
    first = train(part, get_recipe("altclip-kd"), tr, config, checkpoint=ckpt,
                  should_stop=lambda: next(stop_at) >= 37)
    assert first.stopped and first.step == 37
    resumed_adapter = build_adapter("mlp", 32, tr.family, hidden_dim=64)
    resumed = train(resumed_adapter, get_recipe("altclip-kd"), tr, config, checkpoint=ckpt)
    assert not resumed.stopped and resumed.step == 60
    assert abs(resumed.losses[-1] - whole.losses[-1]) <= 1e-4
    assert resumed.losses[:37] == first.losses
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed_adapter.state_dict()[k], v, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad,match", [
    ({"steps": 0}, "steps"), ({"lr": -1e-3}, "lr"), ({"lr": float("nan")}, "lr"),
    ({"batch_size": 10_000}, "larger than"), ({"warmup": 1.5}, "warmup"),
])
def test_settings_out_of_range(task, bad, match):
    _, tr, _ = task
    with pytest.raises(InvalidDataError, match=match):
        train(build_adapter("linear", 32, tr.family), get_recipe("altclip-kd"), tr, TrainConfig(**bad))


def test_schedule_and_registry():
    cfg = TrainConfig(steps=100, warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=0.01) and lr_at(50, cfg) < 1.0
    assert {"altclip-kd", "mclip-trikd"} <= set(RECIPES)
    with pytest.raises(InvalidDataError, match="Unknown recipe"):
        get_recipe("dreambooth")


def test_no_silent_fallback_to_cpu(monkeypatch):
    from babelclip.training.trainer import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidDataError, match="CUDA is not available"):
        _device("cuda")


def test_host_runs_never_overwrite_and_name_their_checkpoint_by_the_settings(tmp_path):
    from babelclip.training.pipeline import host_checkpoint_path, unique_adapter_path

    first = unique_adapter_path(str(tmp_path), "my/adapter:1.safetensors")
    assert first == str(tmp_path / "my_adapter_1.safetensors")
    open(first, "wb").close()
    assert unique_adapter_path(str(tmp_path), "my/adapter:1") == str(tmp_path / "my_adapter_1_00001.safetensors")
    assert unique_adapter_path(str(tmp_path), " .. ") == str(tmp_path / "babelclip-adapter.safetensors")
    from types import SimpleNamespace

    from babelclip.training.data import Pair
    from babelclip.training.pipeline import TrainJob
    from babelclip.training.recipes import get_recipe
    from babelclip.training.trainer import TrainConfig

    encoder = SimpleNamespace(info=EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e1", weights="w1"))
    teacher = SimpleNamespace(fingerprint="t1")
    pairs = [Pair("a cat", "一只猫", "zh")]
    cache = str(tmp_path / ".cache")

    def ckpt(arch="linear", encoder=encoder, teacher=teacher, pairs=pairs):
        return host_checkpoint_path(TrainJob(pairs, encoder, teacher, "stand-in", get_recipe("altclip-kd"), arch,
                                             TrainConfig(seed=3), first, cache))

    assert os.path.basename(ckpt()).startswith("my_adapter_1-altclip-kd-linear-3-") and ckpt() == ckpt()
    other_data = [Pair("a dog", "一只狗", "zh")]
    other_teacher = SimpleNamespace(fingerprint="t2")
    # same vocabulary, other weights
    fine_tune = SimpleNamespace(info=EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e1", weights="w2"))
    assert len({ckpt(), ckpt("mlp"), ckpt(pairs=other_data), ckpt(teacher=other_teacher), ckpt(encoder=fine_tune)}) == 5

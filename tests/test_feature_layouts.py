"""The teacher cache keeps only what the recipe reads, in float16: bytes per prompt, values, layouts, losses."""

from __future__ import annotations

import os

import pytest
import torch

from babelclip.errors import InvalidDataError
from babelclip.models import build_adapter, load_encoder
from babelclip.models.tiny import build_tiny_encoder
from babelclip.training.evaluation import evaluate_adapter
from babelclip.training.features import prepare_text_features, teacher_layout_for
from babelclip.training.recipes import get_recipe

from . import synthetic


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    folder = build_tiny_encoder(tmp_path_factory.mktemp("layouts") / "enc", "xlm-roberta",
                                extra_text=synthetic.all_text())
    return load_encoder(folder)


def _data_bytes(store) -> int:
    return os.path.getsize(store.data_path)


def test_bytes_per_cached_prompt(encoder, tmp_path):
    rows = synthetic.pairs()[:50]
    teacher = synthetic.LinearTeacher(encoder)
    mean = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="mean")
    assert mean.tokens_store is None
    assert _data_bytes(mean.teacher_store) == 50 * 2 * 768 * 2  # token mean + pooled, float16: 3 KB a prompt
    assert not any(p.name.startswith("teacher") and p.name != os.path.basename(mean.teacher_store.folder)
                   for p in tmp_path.iterdir())
    full = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="tokens")
    assert _data_bytes(full.tokens_store) == 50 * 77 * 768 * 2  # 118 KB a prompt (float32 tokens + pooled: 240 KB)


def test_cached_values_are_the_teachers_in_float16(encoder, tmp_path):
    rows = synthetic.pairs()[:12]
    teacher = synthetic.LinearTeacher(encoder, seed=1)
    out = teacher.encode([p.en for p in rows])
    for layout in ("mean", "tokens"):
        batch = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout=layout).batch(range(12))
        assert batch.teacher_pooled.dtype == torch.float32 and batch.teacher_mean.dtype == torch.float32
        torch.testing.assert_close(batch.teacher_pooled, out.pooled, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(batch.teacher_mean, out.cond.mean(1), rtol=2e-3, atol=2e-3)
        if layout == "tokens":
            torch.testing.assert_close(batch.teacher_cond, out.cond, rtol=2e-3, atol=2e-3)
        else:
            assert batch.teacher_cond is None


def test_a_layout_is_computed_once_and_never_read_as_another(encoder, tmp_path):
    rows = synthetic.pairs()[:20]
    teacher = synthetic.LinearTeacher(encoder, seed=2)
    prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="mean")
    assert teacher.calls == 20
    full = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="tokens")
    assert teacher.calls == 40  # the 77 tokens were not cached: the teacher runs again for them
    assert full.batch(range(20)).teacher_cond.shape == (20, 77, 768)
    prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="mean")
    prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="tokens")
    assert teacher.calls == 40
    with pytest.raises(ValueError, match="teacher_layout"):
        prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="half")


def test_layouts_needed_by_recipes_and_adapters():
    fam = synthetic.LinearTeacher.family
    mlp, resampler = build_adapter("mlp", 32, fam, hidden_dim=64), build_adapter("resampler", 32, fam, width=64,
                                                                                   heads=4)
    assert teacher_layout_for(mlp, get_recipe("altclip-kd")) == "mean"
    assert teacher_layout_for(resampler, get_recipe("altclip-kd")) == "tokens"
    assert teacher_layout_for(resampler, get_recipe("mclip-trikd")) == "mean"
    assert teacher_layout_for(mlp, get_recipe("pea")) == "tokens" and teacher_layout_for(mlp, get_recipe("iap")) == "tokens"
    assert teacher_layout_for(mlp, get_recipe("mulan")) == "mean"
    assert teacher_layout_for(mlp) == "mean" and teacher_layout_for(resampler) == "tokens"  # evaluation


def test_token_aligned_losses_agree_across_layouts(encoder, tmp_path):
    rows = synthetic.pairs()[:16]
    teacher = synthetic.LinearTeacher(encoder, seed=3)
    mean = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="mean").batch(range(16))
    full = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="tokens").batch(range(16))
    torch.manual_seed(0)
    adapter = build_adapter("mlp", 32, teacher.family, hidden_dim=64)
    recipe = get_recipe("altclip-kd")
    with torch.no_grad():
        a, terms_a = recipe.loss(adapter, mean)
        b, terms_b = recipe.loss(adapter, full)
    assert a.item() == pytest.approx(b.item(), rel=1e-4)
    moved = mean.to("cpu", torch.float64)
    assert moved.teacher_mean.dtype == torch.float64 and moved.teacher_cond is None
    resampler = build_adapter("resampler", 32, teacher.family, width=64, heads=4)
    with pytest.raises(InvalidDataError, match="teacher_cond"):
        recipe.loss(resampler, mean)  # its 77 tokens are matched one by one: never silently on the mean
    recipe.loss(resampler, full)


def test_evaluation_on_the_mean_layout_has_no_token_mse(encoder, tmp_path):
    rows = synthetic.pairs()[:24]
    teacher = synthetic.LinearTeacher(encoder, seed=4)
    adapter = build_adapter("linear", 32, teacher.family)
    report = evaluate_adapter(adapter, prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="mean"))
    assert "token_mse" not in report["average"] and 0 <= report["average"]["r@1"] <= 1


def test_int8_encoder_features_are_cached_apart_from_float32(encoder, tmp_path):
    rows = synthetic.pairs()[:10]
    teacher = synthetic.LinearTeacher(encoder, seed=3)
    int8 = load_encoder(encoder.path, int8=True)
    full = prepare_text_features(rows, encoder, teacher, tmp_path, teacher_layout="mean").batch(range(10))
    quant = prepare_text_features(rows, int8, teacher, tmp_path, teacher_layout="mean").batch(range(10))
    assert teacher.calls == 10  # the teacher's features are shared, the encoder's are not
    expected = int8.encode([p.text for p in rows])
    torch.testing.assert_close(quant.hidden[quant.mask.bool()], expected.hidden[expected.mask.bool()])
    assert not torch.equal(quant.hidden, full.hidden)

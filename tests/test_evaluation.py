"""Evaluation protocol: recall in both directions, cosine, token MSE, JSON/Markdown/PNG."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from babelclip.training.evaluation import evaluate_embeddings, recall_at_k, write_report


def test_recall_at_k_on_a_known_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.0, 0.1, 0.3]])
    # row 0: rank 0; row 1: 0.8 beats 0.5 -> rank 1; row 2: rank 0
    assert recall_at_k(sim, (1, 2)) == {"r@1": pytest.approx(2 / 3), "r@2": 1.0}


def test_perfect_student_and_random_student():
    torch.manual_seed(0)
    teacher = torch.randn(40, 16)
    langs = ["de"] * 20 + ["zh"] * 20
    perfect = evaluate_embeddings(teacher, teacher * 3.0, langs)  # cosine ignores scale
    assert set(perfect["languages"]) == {"de", "zh"}
    for m in [*perfect["languages"].values(), perfect["average"]]:
        assert m["r@1"] == m["r@10"] == m["mean_recall"] == 1.0
        assert m["cosine"] == pytest.approx(1.0)
    noise = evaluate_embeddings(teacher, torch.randn(40, 16), langs)
    assert noise["average"]["r@1"] < 0.5 and abs(noise["average"]["cosine"]) < 0.3


def test_directions_differ_and_token_mse_only_where_lengths_align():
    teacher = torch.eye(4)
    student = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.1, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    toks_t = [torch.zeros(3, 2), torch.zeros(2, 2), torch.ones(3, 2), torch.zeros(3, 2)]
    toks_s = [torch.ones(3, 2), torch.zeros(5, 2), torch.ones(3, 2), torch.zeros(3, 2)]
    m = evaluate_embeddings(teacher, student, ["fr"] * 4, teacher_tokens=toks_t, student_tokens=toks_s)["languages"]["fr"]
    assert m["lang2en_r@1"] == 0.75  # query 1 lands on English 0
    assert m["en2lang_r@1"] == 1.0  # English 1's only non-zero match is student 1
    assert m["token_mse"] == pytest.approx(1 / 3)  # rows 0, 2, 3 align: errors 1, 0, 0


def test_write_report(tmp_path):
    torch.manual_seed(1)
    t = torch.randn(12, 8)
    report = evaluate_embeddings(t, t + 0.1 * torch.randn(12, 8), ["ar"] * 6 + ["hi"] * 6)
    paths = write_report(report, tmp_path / "eval" / "report")
    data = json.loads(open(paths["json"], encoding="utf-8").read())
    assert {"r@1", "r@5", "r@10", "mean_recall", "cosine"} <= set(data["languages"]["ar"])
    md = open(paths["markdown"], encoding="utf-8").read()
    assert "| ar | 6 |" in md and "**average**" in md
    with Image.open(paths["chart"]) as img:
        assert img.format == "PNG" and img.size[0] >= 300
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["report.json", "report.md", "report.png"]


def test_the_ceiling_is_the_encoders_own_retrieval_and_transfer_the_share_kept(tmp_path):
    """With the English side's encoder states cached, the report puts the encoder's own R@1 (mean-pooled states,
    computed here straight from the encoder) beside the adapter's, and transfer = adapter R@1 / encoder R@1."""
    from babelclip.models import build_adapter, load_encoder
    from babelclip.models.tiny import build_tiny_encoder
    from babelclip.training.data import Pair, split_pairs
    from babelclip.training.evaluation import add_ceiling, encoder_ceiling, evaluate_adapter, report_markdown
    from babelclip.training.features import prepare_text_features

    from . import synthetic

    encoder = load_encoder(build_tiny_encoder(tmp_path / "enc", "xlm-roberta", extra_text=synthetic.all_text()))
    teacher = synthetic.LinearTeacher(encoder)
    parallel = [Pair(en, t, lang) for lang in ("de", "ru")
                for en, t in zip(synthetic.corpus("en"), synthetic.corpus(lang))]
    _, pairs = split_pairs(parallel, 0.3, seed=1)
    torch.manual_seed(0)
    adapter = build_adapter("linear", encoder.info.hidden_size, teacher.family).eval()

    plain = prepare_text_features(pairs, encoder, teacher, tmp_path / "cache")
    assert encoder_ceiling(plain) is None
    assert "transfer" not in evaluate_adapter(adapter, plain)["average"]

    feats = prepare_text_features(pairs, encoder, teacher, tmp_path / "cache", encode_english=True)
    report = evaluate_adapter(adapter, feats)

    def pooled(texts):
        out = encoder.encode(texts)
        return ((out.hidden * out.mask.unsqueeze(-1)).sum(1) / out.mask.sum(1, keepdim=True)).float()

    langs = [p.lang for p in pairs]
    direct = evaluate_embeddings(pooled([p.en for p in pairs]), pooled([p.text for p in pairs]), langs)
    assert {lang for lang in langs} == set(report["languages"]) and len(set(langs)) > 1
    for lang, m in report["languages"].items():
        assert m["encoder_r@1"] == pytest.approx(direct["languages"][lang]["r@1"], abs=1e-6)
        assert m["transfer"] == pytest.approx(m["r@1"] / m["encoder_r@1"])
    assert report["average"]["transfer"] == pytest.approx(
        sum(m["transfer"] for m in report["languages"].values()) / len(report["languages"]))
    assert encoder_ceiling(feats)["languages"].keys() == report["languages"].keys()
    table = report_markdown(report)
    assert "| encoder_r@1 | transfer |" in table and "the share of it the adapter keeps" in table

    zero = {"languages": {"de": {"r@1": 0.5}}, "average": {}}  # an encoder that retrieves nothing: no ratio
    assert math.isnan(add_ceiling(zero, {"languages": {"de": {"r@1": 0.0}}})["languages"]["de"]["transfer"])

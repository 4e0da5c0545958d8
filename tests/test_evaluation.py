"""Evaluation protocol: recall in both directions, cosine, token MSE, JSON/Markdown/PNG."""

from __future__ import annotations

import json

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

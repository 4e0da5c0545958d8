"""A synthetic distillation task whose target is recoverable from the encoder's features."""

from __future__ import annotations

import itertools
import random

import torch

from babelclip.models import FAMILIES
from babelclip.models.adapters import masked_mean
from babelclip.models.teacher import TeacherOutput
from babelclip.training.data import Pair

WORDS = {
    "en": (["red", "blue", "green", "old", "tiny", "golden"], ["cat", "house", "ship", "tree", "dragon", "lamp"],
           ["at night", "in snow", "on a hill", "by the sea", "in a forest"]),
    "de": (["rote", "blaue", "grüne", "alte", "kleine", "goldene"], ["Katze", "Haus", "Schiff", "Baum", "Drache", "Lampe"],
           ["bei Nacht", "im Schnee", "auf einem Hügel", "am Meer", "im Wald"]),
    "zh": (["红色的", "蓝色的", "绿色的", "古老的", "小小的", "金色的"], ["猫", "房子", "船", "树", "龙", "灯"],
           ["在夜里", "在雪中", "在山上", "在海边", "在森林里"]),
    "ru": (["красная", "синяя", "зелёная", "старая", "крошечная", "золотая"], ["кошка", "дом", "корабль", "дерево", "дракон", "лампа"],
           ["ночью", "в снегу", "на холме", "у моря", "в лесу"]),
}


def corpus(lang: str = "en") -> list[str]:
    adj, noun, place = WORDS[lang]
    return [" ".join(x) for x in itertools.product(adj, noun, place)]


def all_text() -> list[str]:
    return [t for lang in WORDS for t in corpus(lang)]


def pairs(langs=tuple(WORDS), seed: int = 0) -> list[Pair]:
    """Sentences of the synthetic corpus in every language, each its own target (text == en), shuffled."""
    rows = [Pair(t, t, lang, None, f"synthetic:{lang}:{i}") for lang in langs for i, t in enumerate(corpus(lang))]
    random.Random(seed).shuffle(rows)
    return rows


class LinearTeacher:
    """Teacher = fixed random linear maps of the encoder's mean state (tokens and pooled), SD1 widths."""

    family = FAMILIES["sd1"]

    def __init__(self, encoder, seed: int = 0, layer="last"):
        g = torch.Generator().manual_seed(seed)
        h = encoder.info.hidden_size
        self.encoder, self.layer = encoder, layer
        self.w_tok = torch.randn(h, 768, generator=g) / h ** 0.5
        self.w_pool = torch.randn(h, 768, generator=g) / h ** 0.5
        self.fingerprint = f"linear-{seed}"
        self.calls = 0

    def encode(self, texts):
        self.calls += len(texts)
        out = self.encoder.encode(texts, self.layer)
        mean = masked_mean(out.hidden, out.mask)
        return TeacherOutput((mean @ self.w_tok).unsqueeze(1).expand(-1, 77, -1).clone(), mean @ self.w_pool)

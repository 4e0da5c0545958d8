"""Frozen features for text recipes: the encoder on target texts, the teacher on English texts.

Both go through :class:`~babelclip.training.cache.FeatureStore`, so each unique
text runs through each frozen model once; :class:`TextFeatures` then serves
padded training batches from the memory-mapped files.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

import torch

from ..models.encoder import LayerSpec, MultilingualEncoder
from ..models.families import TargetFamily
from .cache import FeatureStore
from .data import Pair
from .recipes import Batch

__all__ = ["Teacher", "TextFeatures", "prepare_text_features", "CLIP_TOKENS"]

CLIP_TOKENS = 77


class Teacher(Protocol):
    """English text -> target conditioning. Implemented by ``models.teacher.CheckpointTeacher`` and the
    ComfyUI CLIP wrapper in ``nodes/``."""

    family: TargetFamily
    fingerprint: str

    def encode(self, texts: Sequence[str]): ...  # -> TeacherOutput(cond [B, 77, D], pooled [B, P])


def _encoder_compute(encoder: MultilingualEncoder, layer: LayerSpec):
    room = encoder.max_length - encoder.special_tokens

    def compute(texts: list[str]) -> list[torch.Tensor]:
        seqs = [encoder.with_special_tokens(encoder.tokenize(t)[0][:room]) for t in texts]
        out = encoder.encode_ids(seqs, layer)
        return [out.hidden[i, : len(s)] for i, s in enumerate(seqs)]
    return compute


def _teacher_compute(teacher: Teacher):
    def compute(texts: list[str]) -> list[torch.Tensor]:
        out = teacher.encode(texts)
        cond, pooled = out.cond.float(), out.pooled.float()
        if cond.shape[1] < CLIP_TOKENS:
            raise ValueError(f"the teacher returned {cond.shape[1]} tokens, expected at least {CLIP_TOKENS}")
        row = torch.zeros(cond.shape[0], 1, cond.shape[2])
        row[:, 0, : pooled.shape[1]] = pooled  # pooled stored as one extra row, zero-padded to the cond width
        return list(torch.cat([cond[:, :CLIP_TOKENS].cpu(), row], 1))
    return compute


class TextFeatures:
    """Training examples backed by two feature stores; ``batch(indices)`` pads and stacks them."""

    def __init__(self, pairs: Sequence[Pair], encoder_store: FeatureStore, teacher_store: FeatureStore,
                 family: TargetFamily):
        self.pairs, self.encoder_store, self.teacher_store, self.family = list(pairs), encoder_store, teacher_store, family

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> Batch:
        hidden = [self.encoder_store.get(self.pairs[i].text) for i in indices]
        teacher = torch.stack([self.teacher_store.get(self.pairs[i].en) for i in indices])
        width = max(h.shape[0] for h in hidden)
        h = torch.zeros(len(hidden), width, hidden[0].shape[1])
        mask = torch.zeros(len(hidden), width, dtype=torch.long)
        for row, x in enumerate(hidden):
            h[row, : x.shape[0]] = x
            mask[row, : x.shape[0]] = 1
        return Batch(h, mask, teacher[:, :CLIP_TOKENS], teacher[:, CLIP_TOKENS, : self.family.pooled_dim])


def prepare_text_features(pairs: Sequence[Pair], encoder: MultilingualEncoder, teacher: Teacher,
                          cache_dir: str | os.PathLike, *, layer: LayerSpec = "last", batch_size: int = 32,
                          progress: Callable[[str, int, int], None] | None = None,
                          should_stop: Callable[[], bool] | None = None) -> TextFeatures:
    """Fill the caches for ``pairs`` (only what is missing) and return the batch server."""
    enc_store = FeatureStore(cache_dir, {"kind": "encoder", "fingerprint": encoder.info.fingerprint,
                                         "model_type": encoder.info.model_type, "layer": str(layer),
                                         "max_length": encoder.max_length}, encoder.info.hidden_size)
    teacher_store = FeatureStore(cache_dir, {"kind": "teacher", "family": teacher.family.name,
                                             "fingerprint": teacher.fingerprint,
                                             "clip_skip": str(getattr(teacher, "clip_skip", None))},
                                 teacher.family.cond_dim)
    report = (lambda name: (lambda done, total: progress(name, done, total))) if progress else (lambda name: None)
    enc_store.fill([p.text for p in pairs], _encoder_compute(encoder, layer), batch_size=batch_size,
                   progress=report("encoder"), should_stop=should_stop)
    teacher_store.fill([p.en for p in pairs], _teacher_compute(teacher), batch_size=batch_size,
                       progress=report("teacher"), should_stop=should_stop)
    return TextFeatures(pairs, enc_store, teacher_store, teacher.family)

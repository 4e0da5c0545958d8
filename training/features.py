"""Frozen features for text recipes: the encoder on target texts, the teacher on English texts.

Everything goes through :class:`~babelclip.training.cache.FeatureStore`, so each
unique text runs through each frozen model once; :class:`TextFeatures` then
serves padded training batches from the files.

The teacher's output is cached in one or two stores, in ``float16``:

* ``mean+pooled`` (always): the mean of its 77 tokens and its pooled vector,
  2 rows per text (3 KB for SD1.x). This is all that ``altclip-kd`` reads for
  token-aligned adapters (``linear``, ``mlp``, ``bottleneck``: they are matched
  on the mean token) and all that ``mclip-trikd`` reads (the pooled vector);
* ``tokens77`` (layout ``"tokens"`` only): the 77 tokens, 77 rows per text
  (118 KB for SD1.x), for what compares token by token: ``altclip-kd`` with the
  ``resampler``, the UNet recipes, and the token MSE of the evaluation.

:func:`teacher_layout_for` says which layout a recipe and adapter need. The
``float32`` cache of 77 tokens + pooled that came before took 240 KB per text
(24 GB for 100k prompts); with layout ``"mean"`` 100k prompts take 300 MB.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ..models.encoder import LayerSpec, MultilingualEncoder
from ..models.families import TargetFamily
from .cache import FeatureStore
from .data import Pair
from .recipes import Batch

__all__ = ["Teacher", "TextFeatures", "prepare_text_features", "teacher_layout_for", "TEACHER_LAYOUTS"]

#: ``"mean"``: token mean + pooled only; ``"tokens"``: also the teacher's tokens (its family's context).
TEACHER_LAYOUTS = ("mean", "tokens")
TEACHER_DTYPE = "float16"


class Teacher(Protocol):
    """English text -> target conditioning. Implemented by ``models.teacher.CheckpointTeacher`` and the
    ComfyUI CLIP wrapper in ``nodes/``."""

    family: TargetFamily
    fingerprint: str

    def encode(self, texts: Sequence[str]): ...  # -> TeacherOutput(cond [B, 77, D], pooled [B, P])


def teacher_layout_for(adapter, recipe=None) -> str:
    """The teacher layout training ``adapter`` with ``recipe`` reads; without a recipe, what the evaluation
    of ``adapter`` reads (its token MSE compares 77 tokens only for adapters that emit 77 tokens)."""
    if recipe is not None:
        return recipe.teacher_layout(adapter)
    return "mean" if adapter.token_aligned else "tokens"


def _encoder_compute(encoder: MultilingualEncoder, layer: LayerSpec):
    room = encoder.max_length - encoder.special_tokens

    def compute(texts: list[str]) -> list[torch.Tensor]:
        seqs = [encoder.with_special_tokens(encoder.tokenize(t)[0][:room]) for t in texts]
        out = encoder.encode_ids(seqs, layer)
        return [out.hidden[i, : len(s)] for i, s in enumerate(seqs)]
    return compute


def _teacher_outputs(teacher: Teacher, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, context, D], summary [B, 2, D])``: the summary is the token mean and the zero-padded pooled;
    ``context`` is the teacher family's ``context_tokens``."""
    out = teacher.encode(texts)
    cond, pooled = out.cond.float().cpu(), out.pooled.float().cpu()
    context = teacher.family.context_tokens
    if cond.shape[1] < context:
        raise ValueError(f"the teacher returned {cond.shape[1]} tokens, expected at least {context}")
    if pooled.shape[1] > cond.shape[2]:
        raise ValueError(f"the teacher's pooled width {pooled.shape[1]} exceeds its token width {cond.shape[2]}")
    cond = cond[:, :context]
    summary = torch.zeros(cond.shape[0], 2, cond.shape[2])
    summary[:, 0] = cond.mean(1)
    summary[:, 1, : pooled.shape[1]] = pooled
    return cond, summary


def _fill_teacher(summary: FeatureStore, tokens: FeatureStore | None, texts: Sequence[str], teacher: Teacher, *,
                  batch_size: int, progress: Callable[[int, int], None] | None,
                  should_stop: Callable[[], bool] | None) -> int:
    """One teacher pass over the texts missing from either store; each store gets what it lacks."""
    unique = list(dict.fromkeys(texts))
    need_summary = summary.absent(unique) if unique else np.zeros(0, bool)
    need_tokens = tokens.absent(unique) if tokens is not None and unique else np.zeros(len(unique), bool)
    todo = np.flatnonzero(need_summary | need_tokens)  # positions in `unique`: no set of strings per store
    for start in range(0, len(todo), batch_size):
        if should_stop is not None and should_stop():
            break
        rows = todo[start: start + batch_size]
        batch = [unique[i] for i in rows]
        cond, summ = _teacher_outputs(teacher, batch)
        pick = np.flatnonzero(need_summary[rows])
        summary.add([batch[i] for i in pick], [summ[i] for i in pick])
        if tokens is not None:
            pick = np.flatnonzero(need_tokens[rows])
            tokens.add([batch[i] for i in pick], [cond[i] for i in pick])
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    return len(todo)


class TextFeatures:
    """Training examples backed by the feature stores; ``batch(indices)`` pads and stacks them.

    ``teacher_store`` holds the teacher's token mean and pooled vector; ``tokens_store`` (or None) its 77 tokens.
    """

    def __init__(self, pairs: Sequence[Pair], encoder_store: FeatureStore, teacher_store: FeatureStore,
                 family: TargetFamily, tokens_store: FeatureStore | None = None):
        self.pairs, self.encoder_store, self.teacher_store, self.family = list(pairs), encoder_store, teacher_store, family
        self.tokens_store = tokens_store

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> Batch:
        hidden = [self.encoder_store.get(self.pairs[i].text) for i in indices]
        english = [self.pairs[i].en for i in indices]
        summary = self.teacher_store.get_many(english)
        width = max(h.shape[0] for h in hidden)
        h = torch.zeros(len(hidden), width, hidden[0].shape[1])
        mask = torch.zeros(len(hidden), width, dtype=torch.long)
        for row, x in enumerate(hidden):
            h[row, : x.shape[0]] = x
            mask[row, : x.shape[0]] = 1
        cond = self.tokens_store.get_many(english) if self.tokens_store is not None else None
        return Batch(h, mask, cond, summary[:, 1, : self.family.pooled_dim], teacher_mean=summary[:, 0])


def prepare_text_features(pairs: Sequence[Pair], encoder: MultilingualEncoder, teacher: Teacher,
                          cache_dir: str | os.PathLike, *, layer: LayerSpec = "last", batch_size: int = 32,
                          progress: Callable[[str, int, int], None] | None = None,
                          should_stop: Callable[[], bool] | None = None,
                          teacher_layout: str = "tokens", encode_english: bool = False) -> TextFeatures:
    """Fill the caches for ``pairs`` (only what is missing) and return the batch server.

    ``teacher_layout``: ``"tokens"`` caches the teacher's 77 tokens too (every recipe and adapter can train on
    it); ``"mean"`` only its token mean and pooled vector (see :func:`teacher_layout_for`), 40x smaller.
    ``encode_english``: also cache the encoder's states of the English side, which evaluation compares the
    translations' with to report the encoder's own retrieval (the ceiling of any adapter on these pairs).
    """
    if teacher_layout not in TEACHER_LAYOUTS:
        raise ValueError(f"teacher_layout must be one of {TEACHER_LAYOUTS}, not {teacher_layout!r}")
    # the vocabulary and the weights digest (a fine-tune shares the first only): the keys cached before the property
    enc_key = {"kind": "encoder", **encoder.info.identity,
               "model_type": encoder.info.model_type, "layer": str(layer), "max_length": encoder.max_length}
    if getattr(encoder, "int8", False):  # its states differ slightly from float32 ones (float32 keys unchanged)
        enc_key["int8"] = True
    elif encoder.dtype != torch.float32:  # so do a float16 / bfloat16 load's (a host may load one on a GPU)
        enc_key["load_dtype"] = str(encoder.dtype).removeprefix("torch.")  # ("dtype": the stored rows')
    enc_store = FeatureStore(cache_dir, enc_key, encoder.info.hidden_size)
    identity = {"kind": "teacher", "family": teacher.family.name, "fingerprint": teacher.fingerprint,
                "clip_skip": str(getattr(teacher, "clip_skip", None))}
    summary_store = FeatureStore(cache_dir, {**identity, "layout": "mean+pooled"}, teacher.family.cond_dim,
                                 TEACHER_DTYPE)
    tokens_store = (FeatureStore(cache_dir, {**identity, "layout": f"tokens{teacher.family.context_tokens}"}, teacher.family.cond_dim,
                                 TEACHER_DTYPE) if teacher_layout == "tokens" else None)
    report = (lambda name: (lambda done, total: progress(name, done, total))) if progress else (lambda name: None)
    texts = [p.text for p in pairs] + ([p.en for p in pairs] if encode_english else [])
    enc_store.fill(texts, _encoder_compute(encoder, layer), batch_size=batch_size, progress=report("encoder"),
                   should_stop=should_stop)
    _fill_teacher(summary_store, tokens_store, [p.en for p in pairs], teacher, batch_size=batch_size,
                  progress=report("teacher"), should_stop=should_stop)
    return TextFeatures(pairs, enc_store, summary_store, teacher.family, tokens_store)

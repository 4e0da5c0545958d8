"""Prompt -> conditioning: weights, chunking, encoder, adapter.

:func:`encode_prompts` turns prompts into the tensors ComfyUI's CONDITIONING
carries. Semantics follow ComfyUI's CLIPTextEncode:

* prompt weights: a weighted token becomes ``z = (z - z_empty) * w + z_empty``,
  where ``z_empty`` is the empty prompt encoded to the same length. For adapters
  whose output tokens are not aligned with the input tokens (``resampler``) the
  same rule is applied to the encoder states the adapter reads;
* long prompts are split into chunks of the encoder's maximum length, each
  wrapped in the encoder's special tokens; chunk outputs are concatenated along
  the tokens and every chunk is padded to the longest one (padding is masked in
  the encoder, as CLIP pads to its context); pooled comes from the first chunk;
* the empty prompt is encoded as the special tokens alone.

:func:`mix_with_clip` combines the result with the stock CLIP conditioning of
the same text, so LoRA trigger words and English tags keep working.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import InvalidDataError, InvalidPromptError
from .adapters import Adapter, Conditioning
from .encoder import LayerSpec, MultilingualEncoder
from .families import CLIP_CONTEXT
from .prompt import parse_prompt_weights

__all__ = ["Conditioning", "encode_prompts", "mix_with_clip", "MIX_MODES", "tokenize_prompt"]

log = logging.getLogger(__name__)

MIX_MODES = ("off", "concat", "blend")


@dataclass
class _Prompt:
    chunks: list[list[int]]  # token ids with special tokens
    weights: list[list[float]]  # one weight per token of each chunk


SYNTAXES = ("comfyui", "webui")


def tokenize_prompt(encoder: MultilingualEncoder, prompt: str, *, strict_syntax: bool = False,
                    syntax: str = "comfyui") -> _Prompt:
    """Parse weights, tokenize the clean text once per part, and split it into wrapped chunks.

    ``syntax``: ``"comfyui"`` reads ComfyUI's weight syntax (:func:`~babelclip.models.prompt.parse_prompt_weights`;
    ``strict_syntax`` as there; unmatched parentheses read as text are named in the log, INFO); ``"webui"`` reads
    the Automatic1111 / Forge emphasis (:func:`~babelclip.models.prompt_webui.parse_webui_prompt`), where each
    ``BREAK`` starts a new chunk."""
    if syntax == "webui":
        from .prompt_webui import parse_webui_prompt

        parts = parse_webui_prompt(prompt).parts
    elif syntax == "comfyui":
        parsed = parse_prompt_weights(prompt, strict=strict_syntax)
        if parsed.literal:
            log.info("Prompt weights: %s", parsed.describe_literal())
        parts = (parsed,)
    else:
        raise InvalidDataError(f"Unknown prompt syntax {syntax!r}; choose one of {', '.join(SYNTAXES)}.")
    room = encoder.max_length - encoder.special_tokens
    if room < 1:
        raise InvalidDataError(f"Encoder {encoder.info.name!r} leaves no room for text in a sequence.")
    pre, post = len(encoder.prefix_tokens), len(encoder.suffix_tokens)
    chunks, weights = [], []
    for part in parts:
        text = part.text
        ids, offsets = encoder.tokenize(text) if text else ([], [])
        char_w = part.char_weights()
        tok_w = [char_w[min(start, len(char_w) - 1)] if char_w else 1.0 for start, _ in offsets]
        for start in range(0, max(len(ids), 1), room):
            piece = ids[start: start + room]
            chunks.append(encoder.with_special_tokens(piece))
            weights.append([1.0] * pre + tok_w[start: start + room] + [1.0] * post)
    return _Prompt(chunks, weights)


@torch.no_grad()  # inference only: no autograd graph through the adapter, whoever calls it
def encode_prompts(encoder: MultilingualEncoder, adapter: Adapter, prompts: Sequence[str], *,
                   layer: LayerSpec | None = None, check_interrupt: Callable[[], None] | None = None,
                   batch_size: int = 16, strict_syntax: bool = False, syntax: str = "comfyui") -> Conditioning:
    """Encode ``prompts`` into conditioning for the adapter's target family.

    Args:
        encoder: the frozen multilingual encoder.
        adapter: an adapter whose ``in_dim`` equals the encoder's hidden size.
        prompts: one or more prompts, any language, with ComfyUI weight syntax.
        layer: encoder layer; by default the layer the adapter was trained on.
        check_interrupt: called between encoder batches (ComfyUI's cancel button).
        batch_size: chunks per encoder forward.
        strict_syntax: False (default) reads the weight syntax as ComfyUI's CLIPTextEncode does (unmatched
            parentheses are text, any finite weight counts); True refuses unmatched parentheses and weights
            outside ``prompt.WEIGHT_RANGE`` with :class:`~babelclip.errors.InvalidPromptError`.
        syntax: ``"comfyui"`` (default) or ``"webui"``: the Automatic1111 / Forge emphasis, ``BREAK`` starting
            a new chunk (:func:`tokenize_prompt`).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise InvalidPromptError("No prompt to encode.")
    if adapter.config.in_dim != encoder.info.hidden_size:
        raise InvalidDataError(
            f"The adapter expects {adapter.config.in_dim}-wide encoder states but encoder "
            f"{encoder.info.name!r} gives {encoder.info.hidden_size}.")
    if layer is None:
        layer = getattr(getattr(adapter, "spec", None), "layer", "last")
    parsed = [tokenize_prompt(encoder, p, strict_syntax=strict_syntax, syntax=syntax) for p in prompts]
    flat = [(c, w) for p in parsed for c, w in zip(p.chunks, p.weights)]
    width = max(len(c) for c, _ in flat)
    empty_hidden = empty_cond = None
    if any(x != 1.0 for _, w in flat for x in w) or len({len(p.chunks) for p in parsed}) > 1:
        e = encoder.encode_ids([encoder.with_special_tokens([])], layer, pad_to=width)
        empty_hidden, empty_cond = e.hidden, adapter(e.hidden, e.mask).cond
    out = [_encode_chunks(encoder, adapter, flat[start: start + batch_size], layer, width, empty_hidden, empty_cond,
                          check_interrupt) for start in range(0, len(flat), batch_size)]
    chunks = Conditioning(*(torch.cat([getattr(o, f) for o in out]) for f in ("cond", "pooled", "mask")))
    return _side_by_side(parsed, chunks, empty_cond, encoder.dtype)


def _encode_chunks(encoder, adapter, part, layer, width, empty_hidden, empty_cond, check_interrupt) -> Conditioning:
    """One encoder batch of prompt chunks ``part`` (ids, weights) through the adapter, with the prompt weights."""
    if check_interrupt is not None:
        check_interrupt()
    enc = encoder.encode_ids([c for c, _ in part], layer, pad_to=width)
    w = torch.ones(enc.mask.shape, dtype=enc.hidden.dtype, device=encoder.device)
    for row, (_, ws) in enumerate(part):
        w[row, : len(ws)] = torch.tensor(ws, dtype=w.dtype)
    weighted = bool((w != 1).any())
    if weighted and not adapter.token_aligned:  # weights act on the encoder states the queries read
        plain = adapter(enc.hidden, enc.mask)
        out = adapter((enc.hidden - empty_hidden) * w.unsqueeze(-1) + empty_hidden, enc.mask)
        out.pooled = plain.pooled
        return out
    out = adapter(enc.hidden, enc.mask)
    if weighted:
        out.cond = (out.cond - empty_cond) * w.unsqueeze(-1) + empty_cond
    return out


def _side_by_side(parsed: list[_Prompt], chunks: Conditioning, empty_cond, dtype) -> Conditioning:
    """Each prompt's chunks side by side along the tokens, prompts with fewer chunks padded with empty chunks;
    pooled from each prompt's first chunk."""
    most = max(len(p.chunks) for p in parsed)
    rows, row_pooled, row_mask, k = [], [], [], 0
    for p in parsed:
        n = len(p.chunks)
        pieces, pmask = list(chunks.cond[k: k + n]), list(chunks.mask[k: k + n])
        row_pooled.append(chunks.pooled[k])
        for _ in range(most - n):
            pieces.append(empty_cond[0])
            pmask.append(torch.zeros_like(pmask[0]))
        rows.append(torch.cat(pieces, 0))
        row_mask.append(torch.cat(pmask, 0))
        k += n
    return Conditioning(torch.stack(rows).to(dtype), torch.stack(row_pooled).to(dtype), torch.stack(row_mask))


def _pad_tokens(x: torch.Tensor, length: int, filler: torch.Tensor) -> torch.Tensor:
    """Extend ``x [B, L, D]`` to ``length`` tokens by repeating ``filler [n, D]`` (cycled)."""
    missing = length - x.shape[1]
    if missing <= 0:
        return x
    reps = math.ceil(missing / filler.shape[0])
    fill = filler.repeat(reps, 1)[:missing].to(x)
    return torch.cat([x, fill.unsqueeze(0).expand(x.shape[0], -1, -1)], 1)


def mix_with_clip(babel: Conditioning, clip_cond: torch.Tensor, clip_pooled: torch.Tensor | None, *,
                  mode: str, strength: float, clip_empty: torch.Tensor | None = None,
                  context: int = CLIP_CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine BabelCLIP conditioning with the stock CLIP conditioning of the same text.

    * ``off``: BabelCLIP alone.
    * ``concat``: BabelCLIP tokens followed by CLIP tokens (each keeps its own meaning).
    * ``blend``: ``(1 - strength) * babel + strength * clip``, token by token. The shorter side
      is padded with its own "nothing": CLIP with its empty-prompt chunk (``clip_empty [context, D]``),
      BabelCLIP with its last (end-of-text) token, both to a whole number of ``context``-token chunks
      (the family's ``context_tokens``).

    The pooled vector is ``(1 - strength) * babel + strength * clip`` in ``concat`` and ``blend``.
    Returns ``(cond, pooled)``.
    """
    if mode not in MIX_MODES:
        raise InvalidDataError(f"Unknown CLIP mix mode {mode!r}; choose one of {', '.join(MIX_MODES)}.")
    if not 0.0 <= strength <= 1.0 or not math.isfinite(strength):
        raise InvalidDataError(f"CLIP mix strength {strength} is outside 0..1.")
    cond, pooled = babel.cond, babel.pooled
    if mode == "off":
        return cond, pooled
    clip_cond = clip_cond.to(cond)
    if clip_cond.shape[-1] != cond.shape[-1]:
        raise InvalidDataError(
            f"The CLIP conditioning is {clip_cond.shape[-1]} wide but the adapter's is {cond.shape[-1]}: "
            f"the adapter was made for another model family.")
    if clip_pooled is not None:
        pooled = (1 - strength) * pooled + strength * clip_pooled.to(pooled)
    if clip_cond.shape[0] != cond.shape[0]:
        clip_cond = clip_cond.expand(cond.shape[0], -1, -1)
    if mode == "concat":
        return torch.cat([cond, clip_cond], 1), pooled
    length = max(cond.shape[1], clip_cond.shape[1])
    length = math.ceil(length / context) * context
    filler = clip_empty if clip_empty is not None else clip_cond[0, -1:]
    clip_cond = _pad_tokens(clip_cond, length, filler.reshape(-1, clip_cond.shape[-1]))
    last = int(babel.mask[0].nonzero().max()) if babel.mask[0].any() else cond.shape[1] - 1
    cond = _pad_tokens(cond, length, cond[0, last: last + 1])
    return (1 - strength) * cond + strength * clip_cond, pooled

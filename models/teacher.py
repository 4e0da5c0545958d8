"""Frozen CLIP teachers read from checkpoint files: English text -> conditioning + pooled.

This is the command-line teacher source: the text encoders of a single-file
SD1.x / SD2.x / SDXL ``.safetensors`` checkpoint (original key layouts) or of a
diffusers folder, rebuilt as ``transformers`` CLIP text models and run the way
ComfyUI's CLIPTextEncode runs them (tokens padded to the family's context,
the family's layer, final layer norm or not, projected pooled output of the end-of-text token). The
ComfyUI node source (a loaded CLIP object) lives in ``nodes/``; both produce a
:class:`TeacherOutput`.

Only the text-encoder tensors are read from a checkpoint (memory-mapped), never
its UNet or VAE. A CLIP BPE vocabulary is not part of a single-file checkpoint:
pass the ``tokenizer/`` folder of a diffusers model or ComfyUI's ``comfy/sd1_tokenizer``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidModelFileError, UnsupportedModelError
from .adapter_file import tensor_hash
from .families import FAMILIES, PAD_END, UNSUPPORTED_FAMILIES, TargetFamily, supported_names
from .prompt import parse_prompt_weights

__all__ = ["TeacherOutput", "CheckpointTeacher", "load_teacher"]

BOS, EOS = 49406, 49407  # CLIP's start / end-of-text ids (the tokenizer's own ids are used when it has them)


@dataclass
class TeacherOutput:
    """``cond [B, context_tokens, cond_dim]`` and ``pooled [B, pooled_dim]``, float32."""

    cond: torch.Tensor
    pooled: torch.Tensor


def _openclip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP text tower (``transformer.resblocks.*``) to transformers' CLIP layout."""
    out: dict[str, torch.Tensor] = {}
    simple = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
              "positional_embedding": "text_model.embeddings.position_embedding.weight",
              "ln_final.weight": "text_model.final_layer_norm.weight",
              "ln_final.bias": "text_model.final_layer_norm.bias"}
    inner = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for key, value in sd.items():
        if key in simple:
            out[simple[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)", key):
            i, part, kind = m.groups()
            prefix = f"text_model.encoder.layers.{i}."
            if part == "attn.in_proj":
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, 0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = chunk.contiguous()
            elif part in inner:
                out[f"{prefix}{inner[part]}.{kind}"] = value
    return out


def _hf_config(sd: dict[str, torch.Tensor], act: str, bos: int, eos: int):
    from transformers import CLIPTextConfig

    vocab, hidden = sd["text_model.embeddings.token_embedding.weight"].shape
    layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    proj = sd.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        hidden_act=act, projection_dim=proj.shape[0] if proj is not None else hidden,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=1)


def _build_tower(sd: dict[str, torch.Tensor], act: str, bos: int = BOS, eos: int = EOS) -> nn.Module:
    from transformers import CLIPTextModelWithProjection

    config = _hf_config(sd, act, bos, eos)
    sd = dict(sd)
    if "text_projection.weight" not in sd:  # SD1's CLIP-L ships no projection; ComfyUI uses identity
        sd["text_projection.weight"] = torch.eye(config.hidden_size, dtype=sd["text_model.final_layer_norm.weight"].dtype)
    sd.pop("text_model.embeddings.position_ids", None)
    # Built on the CPU, not the meta device: non-persistent buffers (position ids) must be real.
    model = CLIPTextModelWithProjection(config)
    missing, _ = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if missing:
        raise InvalidModelFileError(f"The text encoder lacks {len(missing)} tensors (e.g. {missing[0]}).")
    return model.eval().requires_grad_(False)


class CheckpointTeacher(nn.Module):
    """The frozen CLIP text encoder(s) of one checkpoint, run as ComfyUI's CLIPTextEncode."""

    def __init__(self, family: TargetFamily, towers: dict[str, nn.Module], tokenizer, fingerprint: str,
                 source: str = ""):
        super().__init__()
        self.family, self.tokenizer, self.fingerprint, self.source = family, tokenizer, fingerprint, source
        self.towers = nn.ModuleDict(towers)
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.clip_skip: int | None = None  # like CLIPSetLastLayer: -1 last, -2 penultimate, ...

    def tokens(self, text: str, pad: int) -> list[int]:
        """ComfyUI's token stream for one prompt: words tokenized one by one, the context less
        BOS/EOS, then BOS/EOS and padding to the family's context."""
        clean = parse_prompt_weights(text, strict=False).text.replace("\n", " ")
        ids: list[int] = []
        for word in (w for w in clean.split(" ") if w):
            ids += self.tokenizer(word)["input_ids"][1:-1]
        context = self.family.context_tokens
        ids = [self.bos, *ids[: context - 2], self.eos]
        return ids + [pad] * (context - len(ids))

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> TeacherOutput:
        conds, pooled = [], None
        device = next(self.parameters()).device
        for spec in self.family.towers:
            model = self.towers[spec.name]
            pad = self.eos if spec.pad == PAD_END else spec.pad
            ids = torch.tensor([self.tokens(t, pad) for t in texts], device=device)
            out = model(input_ids=ids, output_hidden_states=True)
            layer = spec.layer if self.clip_skip is None else self.clip_skip
            if layer is None:
                z = out.last_hidden_state
            else:
                z = out.hidden_states[layer]
                if spec.final_norm:
                    z = model.text_model.final_layer_norm(z)
            conds.append(z.float())
            if spec.pooled:
                pooled = out.text_embeds.float()
        return TeacherOutput(torch.cat(conds, -1), pooled)


def _read_keys(path: str, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _unsupported(path: str, label: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Checkpoint {path!r} is {label}: not supported yet: SD3 / Flux. BabelCLIP supports {supported_names()} "
        f"checkpoints; pass one of those as the teacher.")


def _by_tower_count() -> list[TargetFamily]:
    """Families with more towers first, so that SDXL's CLIP-L prefix is not read as SD1's."""
    return sorted(FAMILIES.values(), key=lambda f: -len(f.towers))


def _single_file(path: str, ids: tuple[int, int]) -> tuple[TargetFamily, dict[str, nn.Module], dict]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:
        raise InvalidModelFileError(f"Checkpoint {path!r} is not a readable safetensors file ({e}).") from None
    for other in UNSUPPORTED_FAMILIES:
        if any(k.startswith(m) for m in other.single_file_markers for k in keys):
            raise _unsupported(path, other.label)
    for family in _by_tower_count():
        if all(any(k.startswith(t.single_file_prefix) for k in keys) for t in family.towers):
            built, tensors = {}, {}
            for tower in family.towers:
                sd = _read_keys(path, tower.single_file_prefix)
                sd = _openclip_to_hf(sd) if tower.openclip else sd
                tensors.update({f"{tower.name}.{k}": v for k, v in sd.items()})
                built[tower.name] = _build_tower(sd, "gelu" if tower.openclip else "quick_gelu", *ids)
            return family, built, tensors
    layouts = sorted({t.single_file_prefix + "*" for f in FAMILIES.values() for t in f.towers})
    raise UnsupportedModelError(
        f"Checkpoint {path!r} has no {supported_names()} text encoder in a known key layout "
        f"({', '.join(layouts)}).")


def _diffusers_tower(path: str, sub: str) -> tuple[dict, str] | None:
    from safetensors.torch import load_file

    folder = os.path.join(path, sub)
    weights = next((os.path.join(folder, n) for n in ("model.safetensors", "model.fp16.safetensors")
                    if os.path.isfile(os.path.join(folder, n))), None)
    if weights is None:
        return None
    sd = load_file(weights)
    if not any(k.startswith("text_model.") for k in sd):  # transformers 5 drops the prefix
        sd = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        act = json.load(f).get("hidden_act", "quick_gelu")
    return sd, act


def _refuse_unsupported_folder(path: str) -> None:
    """Raise for an SD3 / Flux diffusers folder (its pipeline class or its extra text encoder says so)."""
    try:
        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            pipeline = str(json.load(f).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        pipeline = ""
    for other in UNSUPPORTED_FAMILIES:
        for marker in other.diffusers_markers:
            if marker in pipeline or os.path.isdir(os.path.join(path, marker)):
                raise _unsupported(path, other.label)
    for sub in sorted(n for n in os.listdir(path) if n.startswith("text_encoder")):
        try:
            with open(os.path.join(path, sub, "config.json"), encoding="utf-8") as f:
                model_type = str(json.load(f).get("model_type", ""))
        except (OSError, ValueError, AttributeError):
            continue
        if model_type.startswith("t5"):
            raise _unsupported(path, f"a model with a T5 text encoder ({sub}/)")


def _diffusers_family(path: str, found: dict[str, tuple[dict, str]]) -> TargetFamily:
    """The family whose towers' sub-folders are exactly those present; among several, the one whose first
    tower's width matches (else the first listed: tiny test models have no real width)."""
    candidates = [f for f in FAMILIES.values() if {t.diffusers_folder for t in f.towers} == set(found)]
    if not candidates:
        raise InvalidModelFileError(
            f"Diffusers folder {path!r} has text-encoder folders {sorted(found) or 'none'}; a {supported_names()} "
            f"model has text_encoder/model.safetensors (and text_encoder_2/ for SDXL).")
    for family in candidates:
        first = family.towers[0]
        sd = found[first.diffusers_folder][0]
        if sd["text_model.embeddings.token_embedding.weight"].shape[1] == first.width:
            return family
    return candidates[0]


def _diffusers_folder(path: str, ids: tuple[int, int]) -> tuple[TargetFamily, dict[str, nn.Module], dict]:
    _refuse_unsupported_folder(path)
    subs = sorted({t.diffusers_folder for f in FAMILIES.values() for t in f.towers})
    found = {sub: t for sub in subs if (t := _diffusers_tower(path, sub)) is not None}
    if not found:
        raise InvalidModelFileError(f"Diffusers folder {path!r} has no text_encoder/model.safetensors.")
    family = _diffusers_family(path, found)
    parts = {t.name: found[t.diffusers_folder] for t in family.towers}
    tensors = {f"{n}.{k}": v for n, (sd, _) in parts.items() for k, v in sd.items()}
    return family, {n: _build_tower(sd, act, *ids) for n, (sd, act) in parts.items()}, tensors


def load_teacher(path: str | os.PathLike, tokenizer=None) -> CheckpointTeacher:
    """Load the CLIP teacher of a checkpoint file or diffusers folder (float32, CPU).

    ``tokenizer``: a folder with CLIP's ``vocab.json`` + ``merges.txt``, or a loaded transformers CLIP tokenizer
    (a host's own); default: the diffusers folder's ``tokenizer/``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidModelFileError(f"Checkpoint {path!r} does not exist.")
    if os.path.isdir(path):
        tokenizer = tokenizer or os.path.join(path, "tokenizer")
    elif not path.lower().endswith(".safetensors"):
        raise InvalidModelFileError(
            f"{path!r} is not a .safetensors checkpoint or a diffusers folder; BabelCLIP never unpickles .ckpt files.")
    tok = _clip_tokenizer(path, tokenizer)
    ids = (tok.bos_token_id, tok.eos_token_id)
    family, towers, tensors = _diffusers_folder(path, ids) if os.path.isdir(path) else _single_file(path, ids)
    return CheckpointTeacher(family, towers, tok, tensor_hash(tensors)[:16], path)


def _clip_tokenizer(path: str, tokenizer):
    from transformers import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if tokenizer is None or not os.path.isfile(os.path.join(os.fspath(tokenizer), "vocab.json")):
        raise InvalidModelFileError(
            f"No CLIP tokenizer for {path!r}: pass a folder with vocab.json and merges.txt (a diffusers model's "
            f"tokenizer/ folder, or ComfyUI's comfy/sd1_tokenizer).")
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(os.fspath(tokenizer), local_files_only=True)

"""Frozen text-encoder teachers read from checkpoint files: English text -> conditioning + pooled.

This is the command-line teacher source: the text encoders of a single-file
SD1.x / SD2.x / SDXL / SD3 / Flux ``.safetensors`` checkpoint (original key layouts), of a
diffusers folder, or ComfyUI's separate text-encoder files (``clip_l.safetensors``,
``clip_g.safetensors``, ``t5xxl_fp16.safetensors`` and its fp8 variants, given together),
rebuilt as ``transformers`` CLIP text models and T5 encoders and run the way ComfyUI's
CLIPTextEncode runs them (tokens padded to the family's context, the family's layer,
final layer norm or not, pooled output of the end-of-text token, projected or not). The
ComfyUI node source (a loaded CLIP object) lives in ``nodes/``; both produce a
:class:`TeacherOutput`.

Only the text-encoder tensors are read from a checkpoint (memory-mapped), never
its UNet or VAE. A CLIP BPE vocabulary is not part of a single-file checkpoint:
pass the ``tokenizer/`` folder of a diffusers model or ComfyUI's ``comfy/sd1_tokenizer``;
T5 families also need a T5 tokenizer (ComfyUI's ``comfy/text_encoders/t5_tokenizer`` or a
diffusers folder's ``tokenizer_2`` / ``tokenizer_3``, found there by default).
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
    """``cond [B, context_tokens, cond_dim]`` (the family's head layout: :meth:`TargetFamily.from_host`) and
    ``pooled [B, pooled_dim]``, float32."""

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


def _t5_config(sd: dict[str, torch.Tensor]):
    from transformers import T5Config

    vocab, d_model = sd["shared.weight"].shape
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.block.")})
    heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    ff = sd["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    return T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=ff, num_layers=layers,
                    num_heads=heads, feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False,
                    use_cache=False, pad_token_id=0, eos_token_id=1)


def _dequantize(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 weights from a text-encoder file as ComfyUI stores them: fp16 / bf16, fp8 (``t5xxl_fp8_e4m3fn``),
    or "scaled" fp8 (a ``scale_weight`` per weight, the ``scaled_fp8`` marker key)."""
    out = {}
    for key, value in sd.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        value = value.float()
        scale = sd.get(key[: -len("weight")] + "scale_weight") if key.endswith(".weight") else None
        out[key] = value * scale.float() if scale is not None else value
    return out


def _build_t5(sd: dict[str, torch.Tensor]) -> nn.Module:
    from transformers import T5EncoderModel

    sd = _dequantize(sd)
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    try:
        config = _t5_config(sd)
    except KeyError as e:
        raise InvalidModelFileError(f"The T5 text encoder lacks {e.args[0]}: not a T5 encoder file.") from None
    model = T5EncoderModel(config)
    sd.pop("encoder.embed_tokens.weight", None)
    missing, _ = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "encoder.embed_tokens.weight"]  # tied to shared.weight
    if missing:
        raise InvalidModelFileError(f"The T5 text encoder lacks {len(missing)} tensors (e.g. {missing[0]}).")
    return model.eval().requires_grad_(False)


def _words(text: str) -> list[str]:
    """ComfyUI's tokenizer input: weights removed, newlines as spaces, split on single spaces."""
    clean = parse_prompt_weights(text, strict=False).text.replace("\n", " ")
    return [w for w in clean.split(" ") if w]


class CheckpointTeacher(nn.Module):
    """The frozen text encoder(s) of one checkpoint, run as ComfyUI's CLIPTextEncode.

    ``tokenizer``: CLIP's (every CLIP tower shares it); ``t5_tokenizer``: T5's, for families with a T5 tower."""

    def __init__(self, family: TargetFamily, towers: dict[str, nn.Module], tokenizer, fingerprint: str,
                 source: str = "", t5_tokenizer=None):
        super().__init__()
        self.family, self.tokenizer, self.fingerprint, self.source = family, tokenizer, fingerprint, source
        self.t5_tokenizer = t5_tokenizer
        self.towers = nn.ModuleDict(towers)
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.clip_skip: int | None = None  # like CLIPSetLastLayer: -1 last, -2 penultimate, ... (CLIP towers)

    def tokens(self, text: str, pad: int, context: int | None = None) -> list[int]:
        """ComfyUI's CLIP token stream for one prompt: words tokenized one by one, the context less
        BOS/EOS, then BOS/EOS and padding to the context (the first chunk; default: the family's)."""
        ids: list[int] = []
        for word in _words(text):
            ids += self.tokenizer(word)["input_ids"][1:-1]
        context = context or self.family.context_tokens
        ids = [self.bos, *ids[: context - 2], self.eos]
        return ids + [pad] * (context - len(ids))

    def t5_tokens(self, text: str) -> list[int]:
        """ComfyUI's T5 token stream: no start token, words one by one, end token; never cut (it pads)."""
        ids: list[int] = []
        for word in _words(text):
            ids += self.t5_tokenizer(word)["input_ids"][:-1]
        return ids + [self.t5_tokenizer.eos_token_id]

    def _t5(self, spec, model, texts, device) -> torch.Tensor:
        streams = [self.t5_tokens(t) for t in texts]
        length = max(self.family.context_tokens, *(len(s) for s in streams))
        pad = self.t5_tokenizer.pad_token_id if spec.pad == PAD_END else spec.pad
        ids = torch.tensor([s + [pad] * (length - len(s)) for s in streams], device=device)
        # no attention mask: ComfyUI's Flux/SD3 T5 attends to its padding too
        return model(input_ids=ids).last_hidden_state[:, : self.family.context_tokens].float()

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> TeacherOutput:
        conds, pooled = {}, []
        device = next(self.parameters()).device
        for spec in self.family.towers:
            model = self.towers[spec.name]
            if spec.kind == "t5":
                conds[spec.name] = self._t5(spec, model, texts, device)
                continue
            pad = self.eos if spec.pad == PAD_END else spec.pad
            ids = torch.tensor([self.tokens(t, pad, self.family.tokens_of(spec)) for t in texts], device=device)
            out = model(input_ids=ids, output_hidden_states=True)
            layer = spec.layer if self.clip_skip is None else self.clip_skip
            if layer is None:
                z = out.last_hidden_state
            else:
                z = out.hidden_states[layer]
                if spec.final_norm:
                    z = model.text_model.final_layer_norm(z)
            conds[spec.name] = z.float()
            if spec.pooled:
                pooled.append((out.text_embeds if spec.projected else out.last_hidden_state[
                    torch.arange(len(texts), device=device), (ids == self.eos).int().argmax(-1)]).float())
        cond = torch.cat([conds[t.name] for t in self.family.cond_towers], -1)
        return TeacherOutput(cond, torch.cat(pooled, -1))


def _read_keys(path: str, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _unsupported(path: str, label: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Checkpoint {path!r} is {label}, which BabelCLIP does not support. It supports {supported_names()} "
        f"checkpoints; pass one of those as the teacher.")


def _by_tower_count() -> list[TargetFamily]:
    """Families with more towers first, so that SDXL's CLIP-L prefix is not read as SD1's."""
    return sorted(FAMILIES.values(), key=lambda f: -len(f.towers))


def _build(tower, sd: dict[str, torch.Tensor], ids: tuple[int, int]) -> nn.Module:
    if tower.kind == "t5":
        return _build_t5(sd)
    sd = _openclip_to_hf(sd) if tower.openclip else _dequantize(sd)
    return _build_tower(sd, tower.activation, *ids)


def _keys(path: str) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as e:
        raise InvalidModelFileError(f"Checkpoint {path!r} is not a readable safetensors file ({e}).") from None


#: Key prefixes of a diffusion model without its text encoders (a UNet / DiT-only file), and what it is.
_DENOISER_ONLY = (("double_blocks.", "a Flux diffusion model"), ("model.diffusion_model.double_blocks.", "a Flux "
                  "diffusion model"), ("joint_blocks.", "an SD3 diffusion model"),
                  ("model.diffusion_model.joint_blocks.", "an SD3 diffusion model"))


def _single_file(path: str, ids: tuple[int, int]) -> tuple[TargetFamily, dict[str, nn.Module], dict]:
    keys = _keys(path)
    for family in _by_tower_count():
        if all(any(k.startswith(t.single_file_prefix) for k in keys) for t in family.towers):
            built, tensors = {}, {}
            for tower in family.towers:
                sd = _read_keys(path, tower.single_file_prefix)
                tensors.update({f"{tower.name}.{k}": v for k, v in sd.items()})
                built[tower.name] = _build(tower, sd, ids)
            return family, built, tensors
    for prefix, what in _DENOISER_ONLY:
        if any(k.startswith(prefix) for k in keys):
            raise UnsupportedModelError(
                f"{path!r} is {what} without text encoders. Pass its text-encoder files together instead "
                f"(ComfyUI's models/text_encoders: clip_l.safetensors and t5xxl_fp16.safetensors for Flux; "
                f"clip_l, clip_g and t5xxl for SD3), or a diffusers folder.")
    layouts = sorted({t.single_file_prefix + "*" for f in FAMILIES.values() for t in f.towers})
    raise UnsupportedModelError(
        f"Checkpoint {path!r} has no {supported_names()} text encoder in a known key layout "
        f"({', '.join(layouts)}).")


def _tower_file(path: str) -> tuple[str, int]:
    """``("clip" | "t5", width)`` of one of ComfyUI's separate text-encoder files (transformers key names)."""
    keys = set(_keys(path))
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        if "text_model.embeddings.token_embedding.weight" in keys:
            return "clip", f.get_slice("text_model.embeddings.token_embedding.weight").get_shape()[1]
        if "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
            name = "shared.weight" if "shared.weight" in keys else "encoder.embed_tokens.weight"
            return "t5", f.get_slice(name).get_shape()[1]
    raise UnsupportedModelError(
        f"{path!r} is not a CLIP or T5 text-encoder file in ComfyUI's layout (text_model.* or encoder.block.*).")


def _separate_files(paths: Sequence[str], ids) -> tuple[TargetFamily, dict[str, nn.Module], dict]:
    """The family whose towers are exactly these files: CLIP-L + T5 (Flux), CLIP-L + CLIP-G + T5 (SD3); the
    wider CLIP is CLIP-G."""
    kinds = [(_tower_file(p), p) for p in paths]
    clips = sorted((width, p) for (kind, width), p in kinds if kind == "clip")
    t5s = [p for (kind, _), p in kinds if kind == "t5"]
    names = (["clip_l"] if len(clips) == 1 else ["clip_l", "clip_g"] if len(clips) == 2 else []) + \
            (["t5xxl"] if len(t5s) == 1 else [])
    family = next((f for f in FAMILIES.values() if len(names) == len(paths) and f.tower_names == set(names)), None)
    if family is None:
        combos = "; ".join(f"{f.short}: {' + '.join(t.name for t in f.towers)}" for f in FAMILIES.values()
                           if any(t.kind == "t5" for t in f.towers))
        raise UnsupportedModelError(
            f"The text-encoder files {', '.join(repr(os.path.basename(p)) for p in paths)} hold {len(clips)} CLIP "
            f"and {len(t5s)} T5 encoder(s), which is no family BabelCLIP knows ({combos}).")
    files = dict(zip(["clip_l", "clip_g"], [p for _, p in clips]))
    files.update({"t5xxl": t5s[0]})
    built, tensors = {}, {}
    for tower in family.towers:
        sd = _read_keys(files[tower.name], "")
        tensors.update({f"{tower.name}.{k}": v for k, v in sd.items()})
        built[tower.name] = _build(tower, sd, ids)
    return family, built, tensors


def _diffusers_tower(path: str, sub: str) -> tuple[dict, str, str] | None:
    """``(state dict, activation, kind)`` of a diffusers text-encoder sub-folder, or None without one."""
    from safetensors.torch import load_file

    folder = os.path.join(path, sub)
    weights = next((os.path.join(folder, n) for n in ("model.safetensors", "model.fp16.safetensors")
                    if os.path.isfile(os.path.join(folder, n))), None)
    if weights is None:
        return None
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    sd = load_file(weights)
    if str(config.get("model_type", "")).startswith("t5"):
        return sd, "", "t5"
    if not any(k.startswith("text_model.") for k in sd):  # transformers 5 drops the prefix
        sd = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
    return sd, config.get("hidden_act", "quick_gelu"), "clip"


def _refuse_unsupported_folder(path: str) -> None:
    """Raise for a diffusers folder of a family BabelCLIP does not target (its pipeline class says so)."""
    try:
        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            pipeline = str(json.load(f).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        pipeline = ""
    for other in UNSUPPORTED_FAMILIES:
        for marker in other.diffusers_markers:
            if marker in pipeline or os.path.isdir(os.path.join(path, marker)):
                raise _unsupported(path, other.label)


def _diffusers_family(path: str, found: dict[str, tuple[dict, str, str]]) -> TargetFamily:
    """The family whose towers' sub-folders and kinds are exactly those present; among several, the one whose
    first tower's width matches (else the first listed: tiny test models have no real width)."""
    candidates = [f for f in FAMILIES.values() if {t.diffusers_folder for t in f.towers} == set(found)
                  and all(found[t.diffusers_folder][2] == t.kind for t in f.towers)]
    if not candidates:
        kinds = ", ".join(f"{sub} ({found[sub][2]})" for sub in sorted(found)) or "none"
        raise InvalidModelFileError(
            f"Diffusers folder {path!r} has text-encoder folders {kinds}; a {supported_names()} model has "
            f"text_encoder/model.safetensors (and text_encoder_2/, text_encoder_3/ as its family needs).")
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
    tensors = {f"{n}.{k}": v for n, (sd, _, _) in parts.items() for k, v in sd.items()}
    built = {}
    for tower in family.towers:
        sd, act, _ = parts[tower.name]
        built[tower.name] = _build_t5(sd) if tower.kind == "t5" else _build_tower(_dequantize(sd), act, *ids)
    return family, built, tensors


def load_teacher(path: str | os.PathLike | Sequence[str | os.PathLike], tokenizer=None,
                 t5_tokenizer=None) -> CheckpointTeacher:
    """Load the text-encoder teacher of a checkpoint file, a diffusers folder or ComfyUI's separate
    text-encoder files (a list: ``clip_l`` + ``t5xxl`` for Flux, ``clip_l`` + ``clip_g`` + ``t5xxl`` for SD3);
    float32, CPU.

    ``tokenizer``: a folder with CLIP's ``vocab.json`` + ``merges.txt``, or a loaded transformers CLIP tokenizer
    (a host's own); default: the diffusers folder's ``tokenizer/``. ``t5_tokenizer``: a T5 tokenizer folder or
    object, for Flux / SD3; default: the diffusers folder's tokenizer next to its T5 encoder.
    """
    paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    if len(paths) == 1:
        path = paths[0]
    for p in paths:
        if not os.path.exists(p):
            raise InvalidModelFileError(f"Checkpoint {p!r} does not exist.")
        if len(paths) > 1 and os.path.isdir(p):
            raise InvalidModelFileError(f"{p!r} is a folder: give a diffusers folder alone, or text-encoder files.")
        if not os.path.isdir(p) and not p.lower().endswith(".safetensors"):
            raise InvalidModelFileError(
                f"{p!r} is not a .safetensors checkpoint or a diffusers folder; BabelCLIP never unpickles .ckpt "
                f"files.")
    folder = paths[0] if os.path.isdir(paths[0]) else None
    if folder:
        tokenizer = tokenizer or os.path.join(folder, "tokenizer")
    tok = _clip_tokenizer(paths[0], tokenizer)
    ids = (tok.bos_token_id, tok.eos_token_id)
    if folder:
        family, towers, tensors = _diffusers_folder(folder, ids)
    elif len(paths) > 1:
        family, towers, tensors = _separate_files(paths, ids)
    else:
        family, towers, tensors = _single_file(paths[0], ids)
    t5 = None
    t5_tower = next((t for t in family.towers if t.kind == "t5"), None)
    if t5_tower is not None:
        if t5_tokenizer is None and folder:
            t5_tokenizer = os.path.join(folder, t5_tower.diffusers_folder.replace("text_encoder", "tokenizer"))
        t5 = _t5_tokenizer(paths[0], t5_tokenizer)
    source = path if len(paths) == 1 else os.pathsep.join(paths)
    return CheckpointTeacher(family, towers, tok, tensor_hash(tensors)[:16], source, t5)


def _t5_tokenizer(path: str, tokenizer):
    from transformers import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    folder = os.fspath(tokenizer) if tokenizer is not None else None
    if folder is None or not any(os.path.isfile(os.path.join(folder, n)) for n in ("tokenizer.json", "spiece.model")):
        raise InvalidModelFileError(
            f"No T5 tokenizer for {path!r}: pass a folder with tokenizer.json or spiece.model (ComfyUI's "
            f"comfy/text_encoders/t5_tokenizer, or a diffusers model's tokenizer_2/ (Flux) or tokenizer_3/ (SD3)).")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


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

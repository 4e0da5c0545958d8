"""Converting the peers' published adapter weights into BabelCLIP adapter files.

:func:`convert` reads a peer's file or folder, maps its tensors onto a BabelCLIP architecture that computes
exactly what the peer's own code computes (``tests/test_convert.py`` runs each peer's reference code on random
weights in its exact key layout and compares, to 1e-5), and writes an ordinary adapter file with
:func:`~babelclip.models.save_adapter`: safetensors, full ``babelclip.*`` metadata, and ``babelclip.source``
recording where it came from (kind, origin repository, file, its SHA-256, licence, what was left out).

Pickled peer files (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are opened only with
``torch.load(..., weights_only=True)``, which builds tensors, dicts and plain values and refuses everything
else; a file holding anything but (nested dicts of) tensors is refused.

The peers, and what converts:

``pea`` — PEA-Diffusion's MLP adapters (``LayerNorm`` then bias-free ``Linear`` layers with GELU between).
    SD1.5 files (``layernorm.*``, ``projector.{0,2,4[,6,8]}.weight``, 768 wide) become ``mlp`` adapters
    whose pooled vector is the mean output token (PEA's SD1.5 adapter has none; SD1.x's UNet does not read
    it). SDXL files (plus ``fc.*``: trunk 1280, tokens 2048) become ``mlp`` with ``pool="trunk"``. PEA
    averages the trunk over every position it is given, padding included (its tokenizers pad to a fixed
    length); BabelCLIP averages over the prompt's tokens. Their SD3 and Flux adapters (4096-wide T5-sized
    conditioning) are refused: those families come with BabelCLIP's Flux/SD3 support. A PEA file does not
    say which encoder it was trained on, so ``encoder=`` is required: the folder of that encoder, which
    BabelCLIP must be able to load — Chinese-CLIP ViT-H/14's text model (1024 wide), XLM-R-large (1024, the
    frozen text tower of OpenCLIP's ``xlm-roberta-large-ViT-H-14``), mT5-XL's encoder (2048), AltCLIP's text
    model (768, its projected states). PEA's two-encoder variant (XLM-R ‖ Chinese-CLIP, 2048) and its
    Wukong encoder cannot be loaded by BabelCLIP.

``mulan`` — MuLan's language adapters (``mulankit``'s ``LanguageAdapter``: SD1.5 768, SD2.1 1024; SDXL's
    ``LanguageAdapterXL``: two of them, 1280 then 768) become ``mulan`` adapters, exactly. Dropped, and
    recorded as dropped: SDXL's ``pool_caption_projection`` (it reads InternVL's own pooled vector, and
    MuLan zeroes SDXL's pooled prompt by default: the converted adapter emits zeros, as MuLan) and
    ``add_embedding`` (MuLan *replaces the SDXL UNet's* added-condition embedding with it; conditioning
    cannot carry that, so images differ from MuLan's pipeline when the file has one). PixArt adapters are
    refused (not a BabelCLIP family). **The encoder they need cannot be loaded by BabelCLIP**: MuLan reads
    the 4096-wide text tower of InternVL-14B-224px (QLLaMA), a custom architecture that ``transformers``
    does not ship: it needs the model repository's own code (``auto_map``) or ``mulankit``'s copy, and
    BabelCLIP never runs model code. The converted file is complete and valid, and records that encoder, but
    will not load against any encoder until BabelCLIP supports one; MuLan also prefixes every prompt with
    ``summarize:`` and pads to 83 tokens, which BabelCLIP's encode path does not do.

``mclip`` — Multilingual-CLIP (``M-CLIP/*`` folders: ``config.json`` of model type ``M-CLIP``, weights
    ``transformer.*`` + ``LinearTransformation.*``). M-CLIP maps a *sentence* to CLIP's projected
    text-image space (mean-pooled XLM-R/LaBSE states, one linear map); it was never trained to produce the
    per-token states SD's UNet cross-attends to. It converts to a ``linear`` adapter whose pooled vector is
    M-CLIP's embedding, exactly, and whose tokens are the same linear map applied per token (their mean is
    that embedding): useful for retrieval, evaluation and as the initialisation of a trained adapter, weak
    as a UNet conditioning. Only ViT-L/14 models (768 wide: SD1.x's CLIP-L) fit a family; the ViT-B/32
    (512) and ViT-B/16+ (640) ones are refused. The folder's text tower is written, with its tokenizer, as
    a standard XLM-R (or BERT, for LaBSE) encoder folder at ``encoder_out`` (M-CLIP's own folder names its
    base model instead of holding its config; the config is built from the tensors' shapes, or taken from
    ``encoder_config``). The legacy M-CLIP models (``M-BERT-*``, TensorFlow/pickle) are refused.

``altclip`` — AltCLIP (a full ``AltCLIPModel`` folder such as ``BAAI/AltCLIP``, or an ``AltCLIPTextModel``
    folder). Its text model (XLM-R + ``pre_LN`` + ``transformation``) *is* the encoder BabelCLIP loads
    (:func:`~babelclip.models.load_encoder` reads AltCLIP folders without their vision tower); its output,
    the token-level projection AltDiffusion feeds its UNet, becomes the conditioning unchanged (a ``linear``
    adapter with identity weights), and the pooled vector is AltCLIP's text embedding
    (``text_projection`` of the CLS token; without ``text_projection``, the CLS token itself). Teacher
    learning aligned AltCLIP's *sentence* embedding with CLIP's, not its tokens, so the conditioning fits
    AltDiffusion's retrained UNet better than stock SD1.x. ``encoder_out`` (required when the folder has
    only pickle weights) writes the text model alone as a safetensors folder.

Each output records ``babelclip.source`` = ``{"kind", "repo", "file", "sha256", "license", "dropped", ...}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Mapping

import torch

from ..errors import InvalidDataError, InvalidModelFileError, UnsupportedModelError
from .adapter_file import PICKLE_SUFFIXES, save_adapter
from .adapters import config_to_adapter
from .encoder import TOKENIZER_FOLDER_FILES
from .families import FAMILIES, TargetFamily, get_family
from .weights_format import check_safetensors

__all__ = ["KINDS", "convert", "read_state_dict", "infer_family"]

log = logging.getLogger(__name__)

#: ``kind`` -> what it converts (for ``--help`` and messages).
KINDS: dict[str, str] = {
    "pea": "PEA-Diffusion MLP adapter file (SD1.5, SDXL)",
    "mulan": "MuLan language adapter file (SD1.5, SD2.1, SDXL)",
    "mclip": "Multilingual-CLIP model folder (M-CLIP/*; ViT-L/14 -> SD1.x)",
    "altclip": "AltCLIP model folder (BAAI/AltCLIP*, or its text model)",
}

def _t5_families() -> list[TargetFamily]:
    """The families with a T5 tower (SD3, Flux): BabelCLIP trains adapters for them but converts none yet."""
    return [f for f in FAMILIES.values() if any(t.kind == "t5" for t in f.towers)]


#: Token widths of the peers' adapters for the T5 families (T5-XXL-sized tokens) -> "SD3 or Flux".
_LATER_FAMILIES = {w: " or ".join(f.short for f in _t5_families() if f.host_width == w)
                   for w in {f.host_width for f in _t5_families()}}
_LATER_MESSAGE = ("Converting the peers' Flux/SD3 adapters is not supported yet (their published layouts were not "
                  "checked against BabelCLIP's); train one with `babelclip train` and the model's text encoders "
                  "as --teacher instead. This version converts SD1.x, SD2.x and SDXL adapters.")
_CONVERTED_BY = "babelclip convert"

#: MuLan's encoder: InternVL-14B's text tower (QLLaMA, remote code), which BabelCLIP cannot load.
MULAN_ENCODER = {"name": "InternVL-14B-224px", "model_type": "internvl_qllama", "hidden_size": 4096,
                 "repo_id": "OpenGVLab/InternVL-14B-224px",
                 "note": "needs the model repository's own code; BabelCLIP cannot load it yet"}


# ---------------------------------------------------------------------------------------------------------
# reading peer files
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flatten(obj: Any, path: str, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from a dict of tensors (nested dicts joined with '.'); anything else is refused."""
    if not isinstance(obj, Mapping) or depth > 4:
        what = type(obj).__name__ if not isinstance(obj, Mapping) else "dicts nested too deep"
        raise InvalidModelFileError(
            f"{path!r} holds {what}{f' under {prefix[:-1]!r}' if prefix else ''}, not a state dict of tensors. "
            f"BabelCLIP converts only files of tensors (a module's state_dict); save the adapter's state_dict() "
            f"alone, or use the file the peer published.")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str):
            raise InvalidModelFileError(f"{path!r} has a non-text key {str(key)[:40]!r}; it is not a state dict of "
                                        f"tensors. Use the adapter file the peer published.")
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(_flatten(value, path, name + ".", depth + 1))
        else:
            raise InvalidModelFileError(
                f"{path!r} holds a {type(value).__name__} at {name!r}, not a tensor. BabelCLIP converts only files "
                f"of tensors (a module's state_dict); use the adapter file the peer published.")
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a peer's weights file: safetensors, or a pickle opened with ``weights_only=True``.

    Raises:
        InvalidModelFileError: missing, unreadable, not tensors only, or a pickle that needs more than tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidModelFileError(f"Peer file {path!r} does not exist. Check the path (download it first).")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        check_safetensors(path, what="Peer file", fix="Download it again.")
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise InvalidModelFileError(f"Cannot read peer file {path!r} ({str(e)[:200]}). Download it again.") from None
    if not lower.endswith(PICKLE_SUFFIXES):
        raise InvalidModelFileError(
            f"{path!r} is neither .safetensors nor a PyTorch file ({', '.join(PICKLE_SUFFIXES)}). Give the "
            f"peer's weights file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for any object beyond tensors/dicts/plain values; others if damaged
        raise InvalidModelFileError(
            f"{path!r} cannot be opened safely: it is not a plain file of tensors ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}). BabelCLIP opens pickles only with "
            f"torch.load(weights_only=True), which refuses code and custom objects. Use the weights file the peer "
            f"published, or re-save just the tensors (torch.save(module.state_dict(), ...)) where you trust it."
        ) from None
    return _flatten(obj, path)


def _folder_weights(folder: str) -> tuple[dict[str, torch.Tensor], str, bool]:
    """A model folder's tensors, the file(s) they came from, and whether they were safetensors."""
    names = sorted(os.listdir(folder))
    safe = [n for n in names if n.endswith(".safetensors")]
    if safe:
        tensors: dict[str, torch.Tensor] = {}
        for n in safe:
            tensors.update(read_state_dict(os.path.join(folder, n)))
        return tensors, ",".join(safe), True
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES) and not n.startswith("training_args")]
    if not pickles:
        raise InvalidModelFileError(f"Model folder {folder!r} has no weights (*.safetensors or pytorch_model.bin). "
                                    f"Download the complete folder.")
    tensors = {}
    for n in pickles:
        tensors.update(read_state_dict(os.path.join(folder, n)))
    return tensors, ",".join(pickles), False


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InvalidModelFileError(f"{path!r} does not exist: give the peer's model folder (with config.json).") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidModelFileError(f"Cannot read {path!r} ({e}). Download the folder again.") from None
    if not isinstance(data, dict):
        raise InvalidModelFileError(f"{path!r} is not a JSON object. Download the folder again.")
    return data


# ---------------------------------------------------------------------------------------------------------
# checks shared by every kind
def _expect_keys(sd: Mapping[str, torch.Tensor], expected: set[str], path: str, what: str) -> None:
    missing = sorted(expected - set(sd))
    unknown = sorted(set(sd) - expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"lacks {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if unknown:
            parts.append(f"has unknown {unknown[0]!r}" + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""))
        raise InvalidModelFileError(
            f"{path!r} is not a {what}: it {' and '.join(parts)}. Check --from (kinds: {', '.join(KINDS)}) and "
            f"that this is the peer's published file.")


def _load_into(arch: str, config, tensors: dict[str, torch.Tensor], path: str):
    """The ``arch`` adapter holding ``tensors`` (float32), after checking every name and shape."""
    adapter = config_to_adapter(arch, config)
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    _expect_keys(tensors, set(expected), path, f"{arch!r}-convertible adapter")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise InvalidModelFileError(f"{path!r}: tensor for {k!r} has shape {tuple(tensors[k].shape)}, expected "
                                        f"{shape}. The file is damaged or of another layout.")
    bad = [k for k, t in tensors.items() if not t.is_floating_point() or not torch.isfinite(t).all()]
    if bad:
        raise InvalidModelFileError(f"{path!r}: {bad[0]!r} is not finite floating point. The file is damaged.")
    adapter.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return adapter.eval()


def _family_from(cond: int, pooled: int | None, family: str | None, path: str, hint: str = "") -> TargetFamily:
    """The family whose widths are ``cond`` (and ``pooled``), checked against ``family=`` when given."""
    if family is not None:
        _refuse_later(family)
        fam = get_family(family)
        if fam.cond_dim != cond or (pooled is not None and fam.pooled_dim != pooled):
            raise InvalidDataError(
                f"{path!r} emits {cond}-wide tokens{f' and a {pooled}-wide pooled vector' if pooled else ''}, but "
                f"--family {family} ({fam.label}) needs {fam.cond_dim}/{fam.pooled_dim}. Leave --family out to "
                f"detect it, or give the file for {fam.label}.")
        return fam
    if cond in _LATER_FAMILIES:
        raise UnsupportedModelError(f"{path!r} is a {_LATER_FAMILIES.get(cond, 'SD3 or Flux')} adapter "
                                    f"({cond}-wide conditioning). {_LATER_MESSAGE}")
    fits = [f for f in FAMILIES.values() if f.cond_dim == cond and (pooled is None or f.pooled_dim == pooled)]
    if len(fits) != 1:
        raise UnsupportedModelError(
            f"{path!r} emits {cond}-wide tokens{f' and a {pooled}-wide pooled vector' if pooled else ''}, which "
            f"{'match no' if not fits else 'match more than one'} family BabelCLIP supports "
            f"({', '.join(f'{f.name} {f.cond_dim}/{f.pooled_dim}' for f in FAMILIES.values())}).{hint}")
    return fits[0]


def _refuse_later(family: str) -> None:
    norm = family.lower().replace(".", "").replace("-", "")  # sd3.5 -> sd35, flux.1 -> flux1
    if any(norm.startswith(f.name) for f in _t5_families()):
        raise UnsupportedModelError(f"--family {family}: {_LATER_MESSAGE}")


def infer_family(kind: str, src: str | os.PathLike) -> str:
    """The family name a peer's file or folder is for, from its shapes alone (raises when it cannot tell)."""
    plan = _PLANS[_check_kind(kind)](os.fspath(src), None)
    return plan["family"].name


def _encoder_meta(encoder, width: int, path: str, why: str) -> dict:
    """Identity of the encoder folder ``encoder`` (loaded once, as the adapter will be used), width-checked."""
    from .encoder import load_encoder

    enc = load_encoder(encoder)
    if enc.info.hidden_size != width:
        raise InvalidDataError(
            f"Encoder {os.fspath(encoder)!r} outputs {enc.info.hidden_size}-wide states but {path!r} reads "
            f"{width}-wide ones.{why} Give the encoder the adapter was trained on.")
    return enc.info.to_dict()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidDataError(f"Unknown peer kind {str(kind)[:40]!r}: choose one of "
                               + "; ".join(f"{k} ({v})" for k, v in KINDS.items()) + ".")
    return kind


# ---------------------------------------------------------------------------------------------------------
# PEA-Diffusion
_PEA_ENCODERS = {
    1024: " PEA's 1024-wide encoders: Chinese-CLIP ViT-H/14's text model (OFA-Sys/chinese-clip-vit-huge-patch14) "
          "or XLM-R-large (FacebookAI/xlm-roberta-large, the frozen tower of OpenCLIP xlm-roberta-large-ViT-H-14).",
    2048: " PEA's 2048-wide encoder: mT5-XL's encoder (google/mt5-xl). Its XLM-R + Chinese-CLIP concatenation "
          "(also 2048) is two encoders, which BabelCLIP cannot run as one.",
    768: " PEA's 768-wide encoder: AltCLIP's text model (BAAI/AltCLIP); its Wukong encoder cannot be loaded.",
}


def _plan_pea(src: str, family: str | None) -> dict:
    sd = read_state_dict(src)
    idx = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"projector\.(\d+)\.weight", k)))
    if "layernorm.weight" not in sd or not idx:
        _expect_keys(sd, {"layernorm.weight", "layernorm.bias", "projector.0.weight"}, src,
                     "PEA-Diffusion adapter (layernorm.*, projector.N.weight[, fc.*])")
    if idx != list(range(0, 2 * len(idx), 2)):
        raise InvalidModelFileError(f"{src!r}: PEA projector layers {idx} are not 0, 2, 4, ...; not a PEA-Diffusion "
                                    f"adapter.")
    layers = [sd[f"projector.{i}.weight"] for i in idx]
    in_dim, hidden, out = sd["layernorm.weight"].shape[0], layers[0].shape[0], layers[-1].shape[0]
    for i, w in zip(idx, layers):
        if w.ndim != 2:
            raise InvalidModelFileError(f"{src!r}: 'projector.{i}.weight' has shape {tuple(w.shape)}; not a PEA "
                                        f"adapter.")
    widths = [w.shape[0] for w in layers[:-1]]
    if any(w != hidden for w in widths):
        raise InvalidModelFileError(f"{src!r}: PEA hidden layers of different widths {widths}; BabelCLIP's mlp "
                                    f"adapter has one hidden width.")
    trunk = "fc.weight" in sd
    if trunk:
        cond, pooled = sd["fc.weight"].shape[0], out
        if cond in _LATER_FAMILIES:
            raise UnsupportedModelError(f"{src!r} is a PEA-Diffusion {_LATER_FAMILIES[cond]} adapter ({cond}-wide "
                                        f"conditioning, {pooled}-wide pooled). {_LATER_MESSAGE}")
    else:
        cond, pooled = out, None
        if cond in _LATER_FAMILIES:
            raise UnsupportedModelError(f"{src!r} is a PEA-Diffusion adapter with {cond}-wide (T5-sized) "
                                        f"conditioning, for SD3 or Flux. {_LATER_MESSAGE}")
    known = {"layernorm.weight", "layernorm.bias", *(f"projector.{i}.weight" for i in idx),
             *(("fc.weight", "fc.bias") if trunk else ())}
    _expect_keys(sd, known, src, "PEA-Diffusion adapter")
    fam = _family_from(cond, pooled, family, src)
    from .adapters import MLPConfig

    config = MLPConfig(in_dim=in_dim, cond_dim=fam.cond_dim, pooled_dim=fam.pooled_dim, hidden_dim=hidden,
                       pool="trunk" if trunk else "output", layers=len(idx))
    tensors = {"net.0.weight": sd["layernorm.weight"], "net.0.bias": sd["layernorm.bias"]}
    for n, i in enumerate(idx):
        tensors[f"net.{2 * n + 1}.weight"] = sd[f"projector.{i}.weight"]
    if trunk:
        tensors.update({"head.weight": sd["fc.weight"], "head.bias": sd["fc.bias"]})
    else:  # PEA's SD1.x/SD2.x adapter has no pooled vector: the mean output token (the UNet does not read it)
        tensors["pooled_proj.weight"] = torch.eye(fam.pooled_dim, cond)
    return {"arch": "mlp", "config": config, "tensors": tensors, "family": fam, "in_dim": in_dim,
            "encoder_hint": _PEA_ENCODERS.get(in_dim, ""), "dropped": [],
            "notes": ["PEA averages its trunk over every position, padding included; BabelCLIP over the prompt's "
                      "tokens" if trunk else "pooled = mean output token (PEA's SD1.5 adapter has no pooled vector)"],
            "recipe": "pea-diffusion", "files": [src]}


# ---------------------------------------------------------------------------------------------------------
# MuLan
def _mulan_branch(sd: dict, prefix: str, src: str) -> tuple[dict, int, int, int, int, int]:
    """Tensors of one ``LanguageAdapter`` under ``prefix`` -> (renamed tensors, in, width, queries, enc, dec)."""
    need = [f"{prefix}proj.0.weight", f"{prefix}proj.2.weight", f"{prefix}queries"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise InvalidModelFileError(f"{src!r} is not a MuLan language adapter: it lacks {missing[0]!r}. Check "
                                    f"--from and that this is MuLan's published file (mulanai/mulan-lang-adapter).")
    in_dim, width, queries = sd[f"{prefix}proj.0.weight"].shape[1], sd[f"{prefix}proj.2.weight"].shape[0], \
        sd[f"{prefix}queries"].shape[-2]
    enc = len({m.group(1) for k in sd if (m := re.match(re.escape(prefix) + r"transformer\.encoder\.layers\.(\d+)\.", k))})
    dec = len({m.group(1) for k in sd if (m := re.match(re.escape(prefix) + r"transformer\.decoder\.layers\.(\d+)\.", k))})
    tensors = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return tensors, in_dim, width, queries, enc, dec


def _plan_mulan(src: str, family: str | None) -> dict:
    sd = read_state_dict(src)
    if "linear_1.weight" in sd and "linear_2.weight" in sd and not any(k.startswith(("proj.", "adapter1.")) for k in sd):
        raise UnsupportedModelError(f"{src!r} is MuLan's PixArt adapter (a caption projection for PixArt-α/Σ), "
                                    f"which is not a family BabelCLIP supports (SD1.x, SD2.x, SDXL).")
    from .adapters import MuLanConfig

    dropped: list[str] = []
    notes = ["MuLan prefixes prompts with 'summarize:' and pads them to 83 tokens; BabelCLIP does neither",
             "the adapter attends to every position it is given (MuLan's own behaviour: mask_memory false)"]
    if "adapter1.proj.0.weight" in sd:
        branches, parts = [], []
        for i, p in enumerate(("adapter1.", "adapter2.")):
            t, in_dim, width, queries, enc, dec = _mulan_branch(sd, p, src)
            branches.append((i, t))
            parts.append(width)
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith(("adapter1.", "adapter2."))})
        fam = _family_from(sum(parts), None, family, src)
        if len(fam.towers) != 2:
            raise UnsupportedModelError(f"{src!r} is a two-branch (SDXL) MuLan adapter but emits {sum(parts)} wide "
                                        f"tokens, the width of {fam.label} (one text tower).")
        pool = "zero"
        notes.append("pooled vector: zeros, as MuLan's default (force_sdxl_zero_pool_prompt)")
        if "add_embedding" in dropped:
            notes.append("MuLan replaces the SDXL UNet's add_embedding with the file's; conditioning cannot carry "
                         "that, so the converted adapter drives the checkpoint's own add_embedding")
        if dropped:
            log.warning("%s: left out %s (see babelclip.source.notes)", src, ", ".join(dropped))
    else:
        t, in_dim, width, queries, enc, dec = _mulan_branch(sd, "", src)
        branches, parts = [(0, t)], [width]
        fam = _family_from(width, None, family, src)
        pool = "mean"
        notes.append("pooled vector: mean output token (MuLan's SD1.5/2.1 pipelines have none; the UNet does not "
                     "read it)")
    if not enc or not dec:
        raise InvalidModelFileError(f"{src!r}: MuLan adapter without transformer encoder/decoder layers "
                                    f"('transformer.encoder.layers.0.*'); the file is damaged or of another layout.")
    config = MuLanConfig(in_dim=in_dim, cond_dim=fam.cond_dim, pooled_dim=fam.pooled_dim, num_queries=queries,
                         parts=parts if len(parts) > 1 else [], encoder_layers=enc, decoder_layers=dec,
                         heads=8, ff_mult=4, pool=pool, mask_memory=False)
    tensors = {f"branches.{i}.{k}": v for i, t in branches for k, v in t.items()}
    ff = tensors.get("branches.0.transformer.encoder.layers.0.linear1.weight")
    if ff is not None and ff.shape[0] != parts[0] * 4:
        raise InvalidModelFileError(f"{src!r}: MuLan feed-forward width {ff.shape[0]} is not 4x the model width "
                                    f"{parts[0]}; the file is of another layout.")
    return {"arch": "mulan", "config": config, "tensors": tensors, "family": fam, "in_dim": in_dim,
            "dropped": dropped, "notes": notes, "recipe": "mulan", "files": [src]}


# ---------------------------------------------------------------------------------------------------------
# Multilingual-CLIP
def _mclip_encoder_config(sd: dict, base: str, encoder_config: str | None, src: str) -> dict:
    """config.json of the M-CLIP text tower: the given one, or built from its tensors' shapes."""
    if encoder_config:
        cfg = _read_json(encoder_config)
        if cfg.get("model_type") not in ("xlm-roberta", "bert") or "auto_map" in cfg:
            raise UnsupportedModelError(f"--encoder-config {encoder_config!r} is a {cfg.get('model_type')!r} config; "
                                        f"M-CLIP's text towers are XLM-R or BERT (LaBSE).")
        return cfg
    lower = base.lower()
    if "distilbert" in lower or "distil" in lower:
        raise UnsupportedModelError(f"{src!r} is built on {base!r} (DistilBERT), which BabelCLIP cannot load as an "
                                    f"encoder; use an M-CLIP model built on XLM-R or LaBSE.")
    model_type = "xlm-roberta" if "xlm-roberta" in lower or "xlm_roberta" in lower else \
        "bert" if ("labse" in lower or "bert" in lower) else None
    if model_type is None:
        raise UnsupportedModelError(f"{src!r} is built on {base!r}, not XLM-R or LaBSE/BERT. Give its base model's "
                                    f"config.json with encoder_config= (--encoder-config) if it is one of those.")
    emb = sd["embeddings.word_embeddings.weight"]
    hidden = emb.shape[1]
    layers = len({m.group(1) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    cfg = {"model_type": model_type, "architectures": ["XLMRobertaModel" if model_type == "xlm-roberta" else "BertModel"],
           "vocab_size": emb.shape[0], "hidden_size": hidden, "num_hidden_layers": layers,
           "num_attention_heads": hidden // 64,  # every M-CLIP base (XLM-R base/large, LaBSE) has 64-wide heads
           "intermediate_size": sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
           "max_position_embeddings": sd["embeddings.position_embeddings.weight"].shape[0],
           "type_vocab_size": sd["embeddings.token_type_embeddings.weight"].shape[0],
           "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
           "position_embedding_type": "absolute", "initializer_range": 0.02}
    if model_type == "xlm-roberta":
        cfg.update(layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    else:
        cfg.update(layer_norm_eps=1e-12, pad_token_id=0)
    return cfg


def _plan_mclip(src: str, family: str | None, encoder_config: str | None = None) -> dict:
    if not os.path.isdir(src):
        raise InvalidModelFileError(f"{src!r} is not a folder. --from mclip takes the M-CLIP model folder (e.g. a "
                                    f"download of M-CLIP/XLM-Roberta-Large-Vit-L-14), with config.json.")
    cfg = _read_json(os.path.join(src, "config.json"))
    if cfg.get("model_type") != "M-CLIP":
        raise InvalidModelFileError(
            f"{os.path.join(src, 'config.json')!r} is of model type {cfg.get('model_type')!r}, not 'M-CLIP'. "
            f"--from mclip takes the current Multilingual-CLIP models (M-CLIP/XLM-Roberta-Large-Vit-L-14, "
            f"M-CLIP/LABSE-Vit-L-14, ...); the legacy ones (M-BERT-*) are not supported.")
    sd, files, _safe = _folder_weights(src)
    lin_w, lin_b = sd.get("LinearTransformation.weight"), sd.get("LinearTransformation.bias")
    if lin_w is None or lin_b is None:
        raise InvalidModelFileError(f"{src!r}: its weights lack 'LinearTransformation.weight'/'.bias'; not an M-CLIP "
                                    f"model. Download the complete folder.")
    tower = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    other = sorted(k for k in sd if not k.startswith(("transformer.", "LinearTransformation.")))
    if other or "embeddings.word_embeddings.weight" not in tower:
        raise InvalidModelFileError(f"{src!r}: unexpected M-CLIP tensors ({(other or ['no transformer.*'])[0]!r}); "
                                    f"not an M-CLIP model folder.")
    tower = {k: v for k, v in tower.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    dims, width = lin_w.shape[0], lin_w.shape[1]
    if family is None and not any(f.cond_dim == dims == f.pooled_dim for f in FAMILIES.values()):
        raise UnsupportedModelError(
            f"{src!r} maps into a {dims}-wide CLIP space (M-CLIP for a ViT-B model); only the 768-wide ViT-L/14 "
            f"models match a family BabelCLIP supports (SD1.x's CLIP-L). Use M-CLIP/XLM-Roberta-Large-Vit-L-14 or "
            f"M-CLIP/LABSE-Vit-L-14.")
    fam = _family_from(dims, dims, family, src)
    from .adapters import LinearConfig

    config = LinearConfig(in_dim=width, cond_dim=fam.cond_dim, pooled_dim=fam.pooled_dim)
    tensors = {"proj.weight": lin_w, "proj.bias": lin_b, "pooled_proj.weight": lin_w, "pooled_proj.bias": lin_b}
    enc_cfg = _mclip_encoder_config(tower, str(cfg.get("modelBase", "")), encoder_config, src)
    return {"arch": "linear", "config": config, "tensors": tensors, "family": fam, "in_dim": width,
            "dropped": [], "recipe": "multilingual-clip", "files": [os.path.join(src, f) for f in files.split(",")],
            "notes": ["pooled = M-CLIP's sentence embedding (exact); tokens = its linear map per token, which M-CLIP "
                      "never trained as a UNet conditioning"],
            "encoder_folder": {"config": enc_cfg, "tensors": tower, "src": src, "required": True}}


# ---------------------------------------------------------------------------------------------------------
# AltCLIP
def _plan_altclip(src: str, family: str | None) -> dict:
    if not os.path.isdir(src):
        raise InvalidModelFileError(f"{src!r} is not a folder. --from altclip takes an AltCLIP model folder (e.g. a "
                                    f"download of BAAI/AltCLIP), with config.json.")
    cfg = _read_json(os.path.join(src, "config.json"))
    model_type = cfg.get("model_type")
    if model_type == "altclip":
        text_cfg, prefix = dict(cfg.get("text_config") or {}), "text_model."
    elif model_type == "altclip_text_model":
        text_cfg, prefix = dict(cfg), ""
    else:
        raise InvalidModelFileError(f"{os.path.join(src, 'config.json')!r} is of model type {model_type!r}, not "
                                    f"'altclip' or 'altclip_text_model'. Give an AltCLIP folder (BAAI/AltCLIP).")
    if "auto_map" in cfg:
        raise InvalidModelFileError(f"{os.path.join(src, 'config.json')!r} asks for custom code (auto_map); "
                                    f"BabelCLIP never runs model code. Use the transformers-format AltCLIP folder.")
    sd, files, safe = _folder_weights(src)
    need = [f"{prefix}transformation.weight", f"{prefix}pre_LN.weight", f"{prefix}roberta.embeddings.word_embeddings.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise InvalidModelFileError(f"{src!r}: its weights lack {missing[0]!r}; not an AltCLIP model in "
                                    f"transformers' layout. Download the complete folder.")
    width = sd[f"{prefix}transformation.weight"].shape[0]
    text_proj = sd.get("text_projection.weight") if prefix else None
    pooled = text_proj.shape[0] if text_proj is not None else width
    fam = _family_from(width, pooled, family, src)
    from .adapters import LinearConfig

    config = LinearConfig(in_dim=width, cond_dim=fam.cond_dim, pooled_dim=fam.pooled_dim, pool="first")
    tensors = {"proj.weight": torch.eye(width), "proj.bias": torch.zeros(width),
               "pooled_proj.weight": text_proj if text_proj is not None else torch.eye(width),
               "pooled_proj.bias": torch.zeros(pooled)}
    tower = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not k.endswith("position_ids")}
    text_cfg.update(model_type="altclip_text_model", architectures=["AltCLIPTextModel"])
    text_cfg.pop("auto_map", None)
    return {"arch": "linear", "config": config, "tensors": tensors, "family": fam, "in_dim": width,
            "dropped": [], "recipe": "altclip", "files": [os.path.join(src, f) for f in files.split(",")],
            "notes": ["tokens = AltCLIP's projected token states (AltDiffusion's conditioning), unchanged; pooled = "
                      + ("AltCLIP's text embedding (text_projection of CLS)" if text_proj is not None
                         else "AltCLIP's CLS projection (no text_projection in the folder)")],
            "encoder_folder": {"config": text_cfg, "tensors": tower, "src": src, "required": not safe}}


_PLANS: dict[str, Callable[..., dict]] = {"pea": _plan_pea, "mulan": _plan_mulan, "mclip": _plan_mclip,
                                          "altclip": _plan_altclip}


# ---------------------------------------------------------------------------------------------------------
def _write_encoder_folder(spec: dict, dest: str, overwrite: bool) -> str:
    """Write a text tower (config, safetensors weights, the source's tokenizer files) to ``dest`` atomically."""
    from safetensors.torch import save_file

    dest = os.path.abspath(os.fspath(dest))
    if os.path.exists(dest) and not (overwrite and os.path.isdir(dest)):
        raise InvalidModelFileError(f"Encoder folder {dest!r} already exists; choose another --encoder-out "
                                    f"(folders are never overwritten).")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tokenizer_files = [n for n in TOKENIZER_FOLDER_FILES if os.path.isfile(os.path.join(spec["src"], n))]
    if not tokenizer_files:
        raise InvalidModelFileError(f"{spec['src']!r} has no tokenizer files ({', '.join(TOKENIZER_FOLDER_FILES[:6])}, ...); "
                                    f"download the complete model folder, tokenizer included.")
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".", suffix=".part", dir=parent)
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(spec["config"], f, indent=2, sort_keys=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in spec["tensors"].items()}
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for n in tokenizer_files:
            shutil.copyfile(os.path.join(spec["src"], n), os.path.join(tmp, n))
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def convert(kind: str, src: str | os.PathLike, out: str | os.PathLike, *, family: str | None = None,
            encoder: str | os.PathLike | None = None, encoder_out: str | os.PathLike | None = None,
            encoder_config: str | os.PathLike | None = None, origin: str | None = None,
            license: str | None = None, languages: list[str] | None = None, overwrite: bool = False) -> str:
    """Convert a peer's published adapter into the BabelCLIP adapter file ``out``; return its path.

    Args:
        kind: ``pea``, ``mulan``, ``mclip`` or ``altclip`` (see the module docstring).
        src: the peer's weights file (``pea``, ``mulan``: ``.bin``/``.pth``/``.pt``/``.safetensors``) or model
            folder (``mclip``, ``altclip``).
        out: the adapter file to write (``.safetensors``; never overwritten unless ``overwrite``).
        family: ``sd1``, ``sd2`` or ``sdxl``; detected from the shapes when left out (given, it must agree).
        encoder: the encoder folder the adapter reads (BabelCLIP must load it). Required for ``pea``; for
            ``mulan`` optional (MuLan's InternVL text tower cannot be loaded; its identity is recorded); for
            ``altclip`` the default is ``src`` itself (or ``encoder_out``); not used for ``mclip``.
        encoder_out: where to write the peer's text tower as a standard safetensors encoder folder
            (``mclip``: required; ``altclip``: optional, required when ``src`` has only pickle weights).
        encoder_config: ``mclip`` only: the base model's ``config.json``, instead of one built from the shapes.
        origin: the Hub repo id (or URL) the file came from, recorded in ``babelclip.source``.
        license: its licence id, recorded (and used by the model card).
        languages: language codes to record, if known.

    Raises:
        InvalidModelFileError: missing/unsafe/damaged source, unknown or missing keys, wrong shapes, existing
            ``out``.
        UnsupportedModelError: SD3/Flux/PixArt adapters, encoders BabelCLIP cannot load, widths of no family.
        InvalidDataError: unknown ``kind``, options that do not fit the file.
    """
    kind = _check_kind(kind)
    src, out = os.fspath(src), os.fspath(out)
    if not out.endswith(".safetensors"):
        raise InvalidDataError(f"Output {out!r} must end in .safetensors.")
    if os.path.exists(out) and not overwrite:
        raise InvalidModelFileError(f"{out!r} already exists; choose another --out (adapters are never overwritten).")
    if family is not None:
        _refuse_later(family)
        get_family(family)
    if not os.path.exists(src):
        raise InvalidModelFileError(f"Peer {'folder' if kind in ('mclip', 'altclip') else 'file'} {src!r} does not "
                                    f"exist. Download it first (see the conversion table in the README).")
    if kind == "mclip":
        if encoder_out is None:
            raise InvalidDataError("--from mclip needs --encoder-out DIR: M-CLIP's text tower is written there as a "
                                   "standard encoder folder (M-CLIP's own folder cannot be loaded as one).")
        plan = _plan_mclip(src, family, os.fspath(encoder_config) if encoder_config else None)
    else:
        if encoder_config is not None:
            raise InvalidDataError("--encoder-config applies to --from mclip only.")
        plan = _PLANS[kind](src, family)
    fam: TargetFamily = plan["family"]
    adapter = _load_into(plan["arch"], plan["config"], plan["tensors"], src)

    written_encoder = None
    spec = plan.get("encoder_folder")
    if kind in ("pea", "mulan") and encoder_out is not None:
        raise InvalidDataError(f"--encoder-out applies to --from mclip and altclip; a {kind} file holds no encoder.")
    try:
        if spec is not None and (encoder_out is not None or spec["required"]):
            if encoder_out is None:
                raise InvalidDataError(
                    f"{src!r} has only pickle weights, which BabelCLIP does not load as an encoder: give --encoder-out "
                    f"DIR to write its text model there as safetensors.")
            written_encoder = _write_encoder_folder(spec, encoder_out, overwrite)
            encoder = written_encoder
        elif kind == "altclip" and encoder is None:
            encoder = src
        why = plan.get("encoder_hint", "")
        if encoder is not None:
            enc_meta = _encoder_meta(encoder, plan["in_dim"], src, why)
            if origin and kind in ("mclip", "altclip") and encoder in (src, written_encoder):
                enc_meta["repo_id"] = origin  # the encoder is the peer's own text tower: its model card's base_model
        elif kind == "mulan":
            enc_meta = dict(MULAN_ENCODER)
            if plan["in_dim"] != MULAN_ENCODER["hidden_size"]:
                enc_meta["hidden_size"] = plan["in_dim"]
            log.warning("%s: MuLan adapters read InternVL-14B's text tower, which BabelCLIP cannot load yet; the "
                        "converted adapter records it but will not load against another encoder.", src)
        else:
            raise InvalidDataError(f"--from pea needs --encoder DIR: a PEA file does not say which encoder it reads "
                                   f"({plan['in_dim']}-wide states).{why}")
        source = {"kind": kind, "repo": origin, "file": os.path.basename(os.path.normpath(src)),
                  "files": [os.path.basename(f) for f in plan["files"]],
                  "sha256": _sha256(plan["files"][0]) if len(plan["files"]) == 1 else None,
                  "license": license, "dropped": plan["dropped"], "notes": plan["notes"],
                  "converted_by": _CONVERTED_BY}
        meta = {"encoder": enc_meta, "family": fam.name, "layer": "last", "source": source,
                "recipe": {"name": f"{plan['recipe']} (converted)"},
                "description": f"{KINDS[kind]} converted to BabelCLIP ({plan['arch']} adapter for {fam.label})."}
        if languages:
            meta["languages"] = list(languages)
        return save_adapter(adapter, out, meta, overwrite=overwrite)
    except BaseException:
        if written_encoder is not None:
            shutil.rmtree(written_encoder, ignore_errors=True)
        raise

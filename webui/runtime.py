"""Automatic1111 / Forge at run time: model folders, the loaded checkpoint's family, and the text-encoding hook.

The web UI turns a prompt into conditioning in two steps: its scheduler resolves prompt editing ``[a:b:0.5]``,
alternation ``[a|b]`` and ``AND`` into plain sub-prompts, then calls the checkpoint's
``get_learned_conditioning(texts)`` once per set of sub-prompts (the negative prompt in its own call). BabelCLIP
replaces that second step only, with an *instance* attribute on the loaded model that shadows the method while a
generation with BabelCLIP on runs (:func:`install`), so the web UI's scheduling, negative prompts and hires fix are
untouched, and each sub-prompt is encoded with the web UI's emphasis syntax and ``BREAK``
(:mod:`babelclip.models.prompt_webui`). Errors raised there end the request with BabelCLIP's message (the web UI
only logs errors raised in a script's ``process``).

The conditioning cache of the web UI is keyed by the prompts and the checkpoint, not by BabelCLIP's settings:
:func:`invalidate_if_changed` empties it in place when they change (BabelCLIP turned on or off included).
"""

from __future__ import annotations

import logging
import os

import torch

from ..errors import IncompatibleAdapterError, UnsupportedModelError
from ..models import FAMILIES, encode_prompts, load_adapter, load_encoder, mix_with_clip, read_adapter_spec
from ..models.adapter_file import check_compatible
from ..models.paths import list_files, list_model_folders, resolve_inside

log = logging.getLogger("babelclip.webui")

ADAPTER_FOLDER = "babelclip"
ENCODER_FOLDER = "text_encoders"  # ComfyUI's name; Forge's own models/text_encoder (singular) holds CLIP/T5 modules
ENCODER_SETTING = "babelclip_encoders_dir"
#: the web UI's model flags -> BabelCLIP family (the SDXL refiner also says is_sdxl: told apart by its class)
_FLAGS = (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1"))


def models_dir() -> str:
    from modules import paths

    return paths.models_path


def encoder_dir() -> str:
    from modules import shared

    custom = (getattr(shared.opts, "data", {}) or {}).get(ENCODER_SETTING) or ""
    return custom or os.path.join(models_dir(), ENCODER_FOLDER)


def adapter_dir() -> str:
    return os.path.join(models_dir(), ADAPTER_FOLDER)


def list_encoders() -> list[str]:
    return list_model_folders([encoder_dir()])


def list_adapters() -> list[str]:
    return list_files([adapter_dir()], (".safetensors",))


def model_family(model):
    """The BabelCLIP family of the web UI's loaded checkpoint."""
    if model is None:
        raise UnsupportedModelError("No checkpoint is loaded in the web UI; load an SD1.x, SD2.x or SDXL checkpoint.")
    name = type(model).__name__
    if "Refiner" in name:
        raise UnsupportedModelError(f"The loaded checkpoint is an SDXL refiner ({name}); BabelCLIP conditions the "
                                    f"base model. Use it with an SDXL base checkpoint.")
    for flag, family in _FLAGS:
        if getattr(model, flag, False):
            return FAMILIES[family]
    raise UnsupportedModelError(f"BabelCLIP has no adapters for the loaded checkpoint ({name}); it supports SD1.x, "
                                f"SD2.x and SDXL checkpoints.")


_KEPT: dict[str, tuple] = {}  # "encoder" / "adapter" -> (key, model): the last one of each, reused


def _kept(slot: str, key, load):
    """The model kept in ``slot`` if it was loaded for ``key``, else ``load()`` (which replaces it)."""
    if slot not in _KEPT or _KEPT[slot][0] != key:
        _KEPT.pop(slot, None)  # free the old one before loading the next
        _KEPT[slot] = (key, load())
    return _KEPT[slot][1]


class Job:
    """BabelCLIP's settings for one generation, and the models they name (loaded on first use, kept for reuse)."""

    def __init__(self, encoder: str, adapter: str, mix: str = "off", strength: float = 0.3, int8: bool = False):
        self.encoder_name, self.adapter_name = encoder, adapter
        self.mix, self.strength, self.int8 = mix, float(strength), bool(int8)

    def signature(self) -> tuple:
        path = os.path.join(adapter_dir(), self.adapter_name or "")
        mtime = os.path.getmtime(path) if os.path.isfile(path) else None
        return (self.encoder_name, self.adapter_name, mtime, self.mix, self.strength, self.int8, encoder_dir())

    def infotext(self) -> str:
        mix = f", mix: {self.mix} {self.strength:g}" if self.mix != "off" else ""
        return f"encoder: {self.encoder_name}, adapter: {self.adapter_name}{mix}" + (", int8" if self.int8 else "")

    def models(self, family):
        """The encoder and adapter, checked against each other and the checkpoint's family."""
        if not self.encoder_name or not self.adapter_name:
            raise IncompatibleAdapterError("BabelCLIP is on but no encoder or adapter is chosen: pick both in the "
                                           "BabelCLIP section, or turn BabelCLIP off.")
        enc_path = resolve_inside([encoder_dir()], self.encoder_name, "encoder folder")
        ad_path = resolve_inside([adapter_dir()], self.adapter_name, "adapter")
        spec = read_adapter_spec(ad_path)
        encoder = _kept("encoder", (enc_path, self.int8), lambda: load_encoder(enc_path, int8=self.int8))
        check_compatible(spec, encoder.info, family)
        adapter = _kept("adapter", (ad_path, os.path.getmtime(ad_path), encoder.info.fingerprint),
                        lambda: load_adapter(spec, encoder=encoder.info, family=family))
        return encoder, adapter

    def encode(self, model, original, texts):
        """What ``model.get_learned_conditioning(texts)`` returns, from BabelCLIP (see the module doc)."""
        family = model_family(model)
        negative = getattr(texts, "is_negative_prompt", False)
        if family.name == "sdxl" and negative and all(t == "" for t in texts):
            return original(texts)  # the web UI zeroes an empty SDXL negative prompt: keep its behaviour
        encoder, adapter = self.models(family)
        unique = list(dict.fromkeys(texts))  # alternation repeats texts within one call
        log.info("BabelCLIP encodes %d text(s)%s: %r", len(unique), " (negative)" if negative else "", unique)
        babel = encode_prompts(encoder, adapter, unique, syntax="webui")
        index = [unique.index(t) for t in texts]
        cond, pooled = babel.cond.float().cpu()[index], babel.pooled.float().cpu()[index]
        clip = original(texts) if (self.mix != "off" or family.name == "sdxl") else None
        if isinstance(clip, dict):
            clip_cond, vector = clip["crossattn"], clip["vector"]
            clip_pooled, sizes = vector[:, : family.pooled_dim], vector[:, family.pooled_dim:]
        else:
            clip_cond, clip_pooled, sizes = clip, None, None
        if self.mix != "off":
            babel.cond, babel.pooled = cond, pooled
            cond, mixed_pooled = mix_with_clip(babel, clip_cond.float().cpu(), None if clip_pooled is None else
                                               clip_pooled.float().cpu(), mode=self.mix, strength=self.strength,
                                               context=family.context_tokens)
            pooled = mixed_pooled if mixed_pooled is not None else pooled
        cond = _pad_to_chunks(cond, family.context_tokens)
        if sizes is None:
            return cond
        return {"crossattn": cond.to(clip_cond), "vector": torch.cat([pooled.to(sizes), sizes], dim=1)}


def parse_infotext(value: str) -> dict:
    """``encoder: X, adapter: Y[, mix: M S][, int8]`` (what :meth:`Job.infotext` writes) -> the script's settings,
    for "Send to txt2img" and pasted generation parameters."""
    out = {"enabled": True, "int8": False, "mix": "off"}
    for part in (p.strip() for p in str(value).strip('"').split(",")):
        key, _, rest = part.partition(":")
        if key in ("encoder", "adapter"):
            out[key] = rest.strip()
        elif key == "mix":
            mode, _, strength = rest.strip().partition(" ")
            out["mix"] = mode
            try:
                out["strength"] = float(strength)
            except ValueError:
                pass
        elif key == "int8":
            out["int8"] = True
    return out


def _pad_to_chunks(cond: torch.Tensor, context: int) -> torch.Tensor:
    """Tokens padded with the last one to a whole number of ``context``-token chunks (the web UI's lengths)."""
    extra = -cond.shape[1] % context
    return cond if not extra else torch.cat([cond, cond[:, -1:].expand(-1, extra, -1)], dim=1)


_ACTIVE: Job | None = None
_LAST_SIGNATURE = None


def install(model, job: Job | None) -> None:
    """Make ``model.get_learned_conditioning`` BabelCLIP's for ``job`` (None: the checkpoint's own again)."""
    global _ACTIVE
    _ACTIVE = job
    if model is None:
        return
    model.__dict__.pop("get_learned_conditioning", None)
    if job is None:
        return
    original = type(model).get_learned_conditioning.__get__(model)  # the class's method: never a wrapper

    def get_learned_conditioning(texts):
        if _ACTIVE is None:
            return original(texts)
        return _ACTIVE.encode(model, original, texts)

    model.get_learned_conditioning = get_learned_conditioning


def invalidate_if_changed(p, job: Job | None) -> None:
    """Empty the web UI's conditioning caches (in place: they are shared between runs) when BabelCLIP's settings
    differ from the last generation's."""
    global _LAST_SIGNATURE
    signature = job.signature() if job is not None else None
    if signature == _LAST_SIGNATURE:
        return
    _LAST_SIGNATURE = signature
    for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        cache = getattr(p, name, None)
        if isinstance(cache, list) and cache:
            cache[0] = None

"""Encode nodes: BabelCLIP Text Encode (SD1.x, SD2.x, SD3, and Flux at its default guidance), BabelCLIP Text
Encode SDXL and BabelCLIP Text Encode Flux."""

from __future__ import annotations

import torch

from ..errors import IncompatibleAdapterError
from ..models import FAMILIES, MIX_MODES, encode_prompts, mix_with_clip
from ..models.adapters import Conditioning
from . import comfy_runtime as runtime

LAYER_CHOICES = ("from adapter", "last", "penultimate")

_TOOLTIPS = {
    "encoder": "The multilingual encoder from 'BabelCLIP Load Encoder'.",
    "adapter": "The language adapter from 'BabelCLIP Load Adapter'.",
    "text": "The prompt, in any language the encoder knows. ComfyUI weights work: (word), (word:1.3), \\( \\).",
    "clip": "Optional: the checkpoint's CLIP. Checks that the adapter fits the checkpoint and enables mixing.",
    "clip_mix": "How to combine with the stock CLIP encoding of the same text (needs clip): off; concat = append "
                "CLIP's tokens (keeps LoRA trigger words and English tags working); blend = mix token by token.",
    "clip_strength": "Weight of CLIP in blend mode and in the pooled vector of concat/blend (0 = BabelCLIP only).",
    "encoder_layer": "Which encoder layer feeds the adapter. 'from adapter' uses the layer it was trained on.",
    "strict_syntax": "Off: read the weight syntax exactly as CLIP Text Encode does (an unmatched parenthesis is "
                     "text, e.g. 'emoticon :)'; the console log names it). On: stop with an error on an unmatched "
                     "parenthesis or a weight outside -2..10.",
}


def _inputs(extra: dict | None = None) -> dict:
    required = {
        "encoder": ("BABELCLIP_ENCODER", {"tooltip": _TOOLTIPS["encoder"]}),
        "adapter": ("BABELCLIP_ADAPTER", {"tooltip": _TOOLTIPS["adapter"]}),
        "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": _TOOLTIPS["text"]}),
    }
    required.update(extra or {})
    return {
        "required": required,
        "optional": {
            "clip": ("CLIP", {"tooltip": _TOOLTIPS["clip"]}),
            "clip_mix": (list(MIX_MODES), {"default": "off", "tooltip": _TOOLTIPS["clip_mix"]}),
            "clip_strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": _TOOLTIPS["clip_strength"]}),
            "encoder_layer": (list(LAYER_CHOICES), {"default": "from adapter",
                                                    "tooltip": _TOOLTIPS["encoder_layer"]}),
            "strict_syntax": ("BOOLEAN", {"default": False, "tooltip": _TOOLTIPS["strict_syntax"]}),
        },
    }


def encode(encoder, adapter, text, clip=None, clip_mix="off", clip_strength=0.5, encoder_layer="from adapter",
           strict_syntax=False, size_conditioning: bool = False, guidance: bool = False):
    """Shared body of the encode nodes: returns ``(cond, pooled)`` on ComfyUI's intermediate device, laid out as
    the family's denoiser reads it (SD3: the CLIP part, then the T5 part).

    ``size_conditioning``: the node adds the size embedding, so adapter and CLIP must be of a family that reads it;
    ``guidance``: the node adds Flux's guidance, likewise.
    """
    family = runtime.clip_family(clip) if clip is not None else None
    if guidance and (family or adapter.spec.family).guidance is None:
        fluxes = [f.short for f in FAMILIES.values() if f.guidance is not None]
        raise IncompatibleAdapterError(
            f"'BabelCLIP Text Encode Flux' needs a {'/'.join(fluxes)} adapter and model, but adapter "
            f"{adapter.spec.name!r} is for {adapter.spec.family.label}"
            + (f" and the connected CLIP is {family.label}" if family else "")
            + ". Use 'BabelCLIP Text Encode' (or its SDXL version) for other models.")
    if size_conditioning and not (family or adapter.spec.family).size_conditioning:
        sized = [f.short for f in FAMILIES.values() if f.size_conditioning]
        plain = [f.short for f in FAMILIES.values() if not f.size_conditioning]
        raise IncompatibleAdapterError(
            f"'BabelCLIP Text Encode SDXL' needs an {'/'.join(sized)} adapter and checkpoint, but adapter "
            f"{adapter.spec.name!r} is for {adapter.spec.family.label}"
            + (f" and the connected CLIP is {family.label}" if family else "")
            + f". Use 'BabelCLIP Text Encode' for {'/'.join(plain)}.")
    if clip_mix != "off" and clip is None:
        raise IncompatibleAdapterError(f"clip_mix is {clip_mix!r} but no CLIP is connected: connect the "
                                       f"checkpoint's CLIP output or set clip_mix to 'off'.")
    adapter_module = runtime.ready_to_encode(encoder, adapter, family)
    layer = None if encoder_layer == "from adapter" else encoder_layer
    result = encode_prompts(encoder.encoder, adapter_module, [text], layer=layer,
                            check_interrupt=runtime.check_interrupt, strict_syntax=bool(strict_syntax))
    target = family or adapter.spec.family
    host, mask = target.to_host(result.cond, result.mask)
    result = Conditioning(host, result.pooled, mask)
    clip_cond = clip_pooled = clip_empty = None
    if clip_mix == "blend" and len(target.segments) > 1:
        raise IncompatibleAdapterError(
            f"clip_mix 'blend' mixes token by token, but {target.label} conditioning is {len(target.segments)} "
            f"segments (CLIP, then T5) of different lengths: use 'concat' (appends the stock encoding, so trigger "
            f"words still work) or 'off'.")
    if clip is not None and clip_mix != "off":
        clip_cond, clip_pooled = runtime.clip_encode(clip, text)
        if clip_mix == "blend":
            clip_empty = runtime.clip_encode(clip, "")[0][0, :family.context_tokens]
        cond, pooled = mix_with_clip(result, clip_cond, clip_pooled, mode=clip_mix, strength=clip_strength,
                                     clip_empty=clip_empty, context=family.context_tokens)
    else:
        cond, pooled = result.cond, result.pooled
    out = runtime.intermediate_device()
    return cond.to(out, torch.float32), pooled.to(out, torch.float32)


class TextEncode:
    DESCRIPTION = ("Encodes a prompt in any language with a multilingual encoder + language adapter into "
                   "CONDITIONING that every stock node accepts (replaces CLIP Text Encode).")
    CATEGORY = "BabelCLIP"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Conditioning for KSampler and every node that takes CONDITIONING.",)

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs()

    def encode(self, encoder, adapter, text, **options):
        cond, pooled = encode(encoder, adapter, text, **options)
        return ([[cond, {"pooled_output": pooled}]],)


class TextEncodeSDXL:
    DESCRIPTION = ("SDXL version of BabelCLIP Text Encode: adds the size and crop conditioning of "
                   "CLIPTextEncodeSDXL.")
    CATEGORY = "BabelCLIP"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("SDXL conditioning with pooled output and size/crop conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        size = lambda d, tip: ("INT", {"default": d, "min": 0, "max": 16384, "step": 8, "tooltip": tip})  # noqa: E731
        return _inputs({
            "width": size(1024, "Original image width SDXL is told about (as CLIPTextEncodeSDXL)."),
            "height": size(1024, "Original image height SDXL is told about."),
            "crop_w": size(0, "Horizontal crop offset SDXL is told about (0 = centered, uncropped)."),
            "crop_h": size(0, "Vertical crop offset SDXL is told about."),
            "target_width": size(1024, "Target width SDXL is told about."),
            "target_height": size(1024, "Target height SDXL is told about."),
        })

    def encode(self, encoder, adapter, text, width, height, crop_w, crop_h, target_width, target_height,
               **options):
        cond, pooled = encode(encoder, adapter, text, size_conditioning=True, **options)
        return ([[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


class TextEncodeFlux:
    DESCRIPTION = ("Flux version of BabelCLIP Text Encode: T5-XXL-shaped tokens and CLIP-L's pooled vector from the "
                   "multilingual encoder + a Flux adapter, with the guidance of CLIPTextEncodeFlux. T5-XXL need not "
                   "be loaded at all.")
    CATEGORY = "BabelCLIP"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Flux conditioning (tokens, pooled_output, guidance) for KSampler / SamplerCustomAdvanced.",)

    @classmethod
    def INPUT_TYPES(cls):
        default = next(f.guidance for f in FAMILIES.values() if f.guidance is not None)
        inputs = _inputs({"guidance": ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1,
                                                 "tooltip": "Distilled guidance of Flux-dev models (as "
                                                            "CLIPTextEncodeFlux; schnell ignores it)."})})
        inputs["optional"]["clip"][1]["tooltip"] = (
            "Optional: the Flux CLIP (DualCLIPLoader type flux). Checks that the adapter fits and enables mixing; "
            "concat appends T5's own tokens, so trigger words keep working.")
        return inputs

    def encode(self, encoder, adapter, text, guidance, **options):
        cond, pooled = encode(encoder, adapter, text, guidance=True, **options)
        return ([[cond, {"pooled_output": pooled, "guidance": float(guidance)}]],)

"""Run inside a current ComfyUI (``COMFYUI_PATH``, imported on the CPU): BabelCLIP's Flux / SD3 teachers, the
ComfyUI CLIP-object teacher and the encode nodes against ComfyUI's own CLIPTextEncode, on tiny random towers of
the real widths with ComfyUI's own tokenizers. Prints one JSON line of measurements; the test asserts on them.

Usage: python flux_sd3_check.py <work folder>
"""

from __future__ import annotations

import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(work: str) -> dict:
    comfy_root = os.environ["COMFYUI_PATH"]
    sys.path.insert(0, comfy_root)
    sys.path.insert(0, os.path.dirname(REPO))
    sys.path.insert(1, REPO)
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    import comfy.cli_args  # noqa: F401  (parses --cpu before model_management is imported)

    sys.argv = argv
    import torch

    from tests.tiny_towers import build_tiny_towers

    from babelclip.models import FAMILIES
    from babelclip.models.teacher import load_teacher
    from babelclip.nodes import comfy_runtime
    from babelclip.nodes.loaded_models import ComfyClipTeacher

    clip_tok = os.path.join(comfy_root, "comfy", "sd1_tokenizer")
    t5_tok = os.path.join(comfy_root, "comfy", "text_encoders", "t5_tokenizer")
    # no weights: a teacher encodes English training texts as they are (weights are the encode node's business)
    prompts = ["a red cat on a sofa", "ein rotes Auto, sehr schnell", "一只红猫", "", "word " * 300]
    out: dict = {}
    denoiser: dict = {}
    # One family at a time, its towers built once for every check that reads them and removed after the last:
    # with ComfyUI's real-sized vocabularies they are ~0.7 GB (flux) / ~0.9 GB (sd3) a copy.
    for name in ("flux", "sd3"):
        family = FAMILIES[name]
        folder = os.path.join(work, name)
        towers = build_tiny_towers(folder, name, clip_tokenizer=clip_tok, t5_tokenizer=t5_tok)
        # these checks read the separate tower files only: the single-file and diffusers copies go at once
        os.remove(towers["checkpoint"])
        shutil.rmtree(towers["diffusers"])
        clip = comfy_clip(name, towers)
        teacher = load_teacher([towers["files"][t.name] for t in family.towers], clip_tok, t5_tok)
        node_teacher = ComfyClipTeacher(clip)
        res = {"family_from_clip": comfy_runtime.clip_family(clip).name, "cond_err": 0.0, "pooled_err": 0.0,
               "node_teacher_err": 0.0, "cond_scale": 0.0}
        for text in prompts:
            with torch.inference_mode():
                cond, pooled = comfy_runtime.clip_encode(clip, text)
            ours = teacher.encode([text])
            host, _ = family.to_host(ours.cond)
            n = host.shape[1]
            if name == "sd3":  # CLIP part: its first 77-token chunk; T5 part (after every CLIP chunk): its first 77
                first = len(clip.tokenize(text)["g"]) * 77
                ref = torch.cat([cond[:, :family.context_tokens], cond[:, first: first + family.context_tokens]], 1)
            else:
                ref = cond[:, :n]
            res["cond_err"] = max(res["cond_err"], float((host - ref.float()).abs().max()))
            res["cond_scale"] = max(res["cond_scale"], float(ref.float().abs().max()))
            res["pooled_err"] = max(res["pooled_err"], float((ours.pooled - pooled.float()).abs().max()))
            node = node_teacher.encode([text])
            res["node_teacher_err"] = max(res["node_teacher_err"], float((node.cond - ours.cond).abs().max()),
                                          float((node.pooled - ours.pooled).abs().max()))
        res["shapes"] = [list(cond.shape), list(pooled.shape)]
        res["nodes"] = _nodes(name, clip, work)
        out[name] = res
        if name == "sd3":
            out["unsupported"] = _unsupported_variants(towers)
        if os.environ.get("BABELCLIP_FLUX_SD3_MODELS"):
            denoiser[name] = denoiser_recipes(work, name, towers)
        del clip, teacher, node_teacher, towers
        shutil.rmtree(folder)
    if denoiser:
        out["denoiser"] = denoiser
    return out


def comfy_clip(family: str, towers: dict, **kinds):
    """ComfyUI's own text-encoder class of ``family`` as DualCLIPLoader (flux) / TripleCLIPLoader (sd3) build it,
    ``kinds`` (sd3_clip's clip_l / clip_g / t5) leaving towers out as the loaders of SD3's variants do; each tiny
    tower the class has is loaded into its own part (the stock loaders tell CLIP-G from CLIP-L by its 32 layers)."""
    import torch

    import comfy.sd
    import comfy.utils
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import flux, sd3_clip
    from tests.tiny_towers import COMFY_CONFIGS

    tokenizer_class, clip_class = {"flux": (flux.FluxTokenizer, flux.flux_clip),
                                   "sd3": (sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip)}[family]
    options = {**{f"{t}_model_config": cfg for t, cfg in COMFY_CONFIGS.items()}, "dtype": torch.float32}
    with torch.inference_mode():
        clip = comfy.sd.CLIP(ClipTarget(tokenizer_class, clip_class(dtype_t5=torch.float32, **kinds)),
                             model_options=options)
        for tower, path in towers["files"].items():
            part = getattr(clip.cond_stage_model, tower, None)
            if part is not None:
                missing, _ = part.load_sd(comfy.utils.load_torch_file(path))
                assert not [k for k in missing if "position_ids" not in k and "text_projection" not in k], missing
    return clip


def _unsupported_variants(towers) -> dict:
    """SD3's text encoder without T5 (DualCLIPLoader type sd3 with CLIP-L + CLIP-G) and T5 alone (CLIPLoader
    type sd3 with a T5 file): ComfyUI's own SD3 class with the towers it would load; the error each gets."""
    from babelclip.errors import BabelClipError
    from babelclip.nodes import comfy_runtime

    out = {}
    for label, kinds in (("sd3_without_t5", {"clip_l": True, "clip_g": True, "t5": False}),
                         ("t5_only", {"clip_l": False, "clip_g": False, "t5": True})):
        clip = comfy_clip("sd3", towers, **kinds)
        try:
            out[label] = "detected as " + comfy_runtime.clip_family(clip).name
        except BabelClipError as e:
            out[label] = f"{type(e).__name__}: {e}"
    return out


_MODELS: dict = {}


def _setup_models(work: str):
    """A tiny multilingual encoder in models/text_encoders and random Flux / SD3 adapters in models/babelclip."""
    if _MODELS:
        return _MODELS
    import folder_paths
    import torch

    from babelclip.models import FAMILIES, build_adapter, load_encoder, save_adapter
    from babelclip.models.tiny import build_tiny_encoder

    base = os.path.join(work, "models")
    enc_dir = build_tiny_encoder(os.path.join(base, "text_encoders", "tiny-xlmr"), "xlm-roberta")
    enc = load_encoder(enc_dir)
    for fam in ("flux", "sd3"):
        torch.manual_seed(0)
        adapter = build_adapter("linear", enc.info.hidden_size, FAMILIES[fam])
        save_adapter(adapter, os.path.join(base, "babelclip", f"{fam}.safetensors"),
                     {"encoder": enc.info, "family": fam}, overwrite=True)
    folder_paths.folder_names_and_paths["text_encoders"] = ([os.path.join(base, "text_encoders")], set())
    folder_paths.folder_names_and_paths["babelclip"] = ([os.path.join(base, "babelclip")], {".safetensors"})
    from babelclip import nodes

    _MODELS["nodes"] = nodes
    return _MODELS


def _nodes(name: str, clip, work: str) -> dict:
    """The encode nodes and the Train node with this family's CLIP, as a queued workflow would call them."""
    import torch

    from babelclip.errors import BabelClipError
    from babelclip.models import FAMILIES
    from babelclip.nodes import comfy_runtime

    family = FAMILIES[name]
    n = _setup_models(work)["nodes"].NODE_CLASS_MAPPINGS
    (encoder,) = n["BabelCLIPLoadEncoder"]().load("tiny-xlmr")
    (adapter,) = n["BabelCLIPLoadAdapter"]().load(f"{name}.safetensors")
    other = "sd3" if name == "flux" else "flux"
    (wrong,) = n["BabelCLIPLoadAdapter"]().load(f"{other}.safetensors")
    text = "一只红猫坐在沙发上"
    res: dict = {}
    with torch.inference_mode():
        if name == "flux":
            ((cond, extra),) = n["BabelCLIPTextEncodeFlux"]().encode(encoder, adapter, text, 2.5)[0]
            ((mixed, _),) = n["BabelCLIPTextEncodeFlux"]().encode(encoder, adapter, text, 2.5, clip=clip,
                                                                  clip_mix="concat")[0]
            ((blend, _),) = n["BabelCLIPTextEncodeFlux"]().encode(encoder, adapter, text, 2.5, clip=clip,
                                                                  clip_mix="blend", clip_strength=0.5)[0]
            res["blend_shape"] = list(blend.shape)
        else:
            ((cond, extra),) = n["BabelCLIPTextEncode"]().encode(encoder, adapter, text)[0]
            ((mixed, _),) = n["BabelCLIPTextEncode"]().encode(encoder, adapter, text, clip=clip, clip_mix="concat")[0]
            try:
                n["BabelCLIPTextEncode"]().encode(encoder, adapter, text, clip=clip, clip_mix="blend")
            except BabelClipError as e:
                res["blend_error"] = str(e)
        stock, _ = comfy_runtime.clip_encode(clip, text)
        for node, args in (("BabelCLIPTextEncode", ()), ("BabelCLIPTextEncodeFlux", (3.5,))):
            try:
                n[node]().encode(encoder, wrong, text, *args, clip=clip)
            except BabelClipError as e:
                res.setdefault("wrong_adapter_errors", []).append(str(e))
    tokens = cond.shape[1] // len(family.segments)
    res.update(cond_shape=list(cond.shape), extra={k: (list(v.shape) if torch.is_tensor(v) else v)
                                                    for k, v in extra.items()},
               mixed_tokens=mixed.shape[1], stock_tokens=stock.shape[1], babel_tokens=cond.shape[1],
               clip_zero_padding=float(cond[:, :tokens, family.segment_widths()[0]:].abs().sum()),
               finite=bool(torch.isfinite(cond).all()))
    # the Train node: the CLIP object as teacher, a few altclip-kd steps, an adapter that loads and encodes
    prompts = "\n".join(f"{a}\t{b}" for a, b in [("a red cat", "eine rote Katze"), ("a blue car", "ein blaues Auto"),
                                                  ("a green tree", "ein grüner Baum"), ("a dog", "ein Hund")])
    from babelclip.training.recipes import text_recipe_names

    res["trained"] = {}
    for recipe in text_recipe_names():
        with torch.inference_mode(False):
            out = n["BabelCLIPTrainAdapter"]().train(clip, encoder, recipe, "linear", "(use the text box)", prompts, 3, 1e-3,
                                                     2, 0, f"{name}-{recipe}")
        handle = out["result"][0]
        with torch.inference_mode():
            node = "BabelCLIPTextEncodeFlux" if name == "flux" else "BabelCLIPTextEncode"
            args = (1.0,) if name == "flux" else ()
            ((c, _),) = n[node]().encode(encoder, handle, "ein Hund", *args)[0]
        res["trained"][recipe] = {"family": handle.spec.family.name, "shape": list(c.shape)}
    return res


def denoiser_recipes(work: str, name: str, towers: dict) -> dict:
    """pea and mulan through ComfyUI's own Flux or MMDiT (``name``'s tiny random one of flux_sd3_models.py, loaded
    as UNETLoader loads it) from the Train node, with the family's CLIP object of ``towers`` as teacher; iap
    refused by name."""
    import torch

    import comfy.sd
    import comfy.utils

    from babelclip.errors import BabelClipError

    models = os.environ["BABELCLIP_FLUX_SD3_MODELS"]
    n = _setup_models(work)["nodes"].NODE_CLASS_MAPPINGS
    (encoder,) = n["BabelCLIPLoadEncoder"]().load("tiny-xlmr")
    prompts = "\n".join(f"{a}\t{b}\tde" for a, b in [("a red cat", "eine rote Katze"), ("a blue car", "ein blaues Auto")])
    taesd = {"flux": "taef1", "sd3": "taesd3"}[name]
    clip = comfy_clip(name, towers)
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(os.path.join(models, f"{name}-tiny.safetensors"))
        sd = {}
        for part in ("encoder", "decoder"):
            for k, v in comfy.utils.load_torch_file(os.path.join(models, "vae_approx",
                                                                  f"{taesd}_{part}.safetensors")).items():
                sd[f"taesd_{part}.{k}"] = v
        sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
        vae = comfy.sd.VAE(sd=sd)
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    res = {}
    for recipe in ("pea", "mulan", "iap"):
        try:
            with torch.inference_mode():  # as ComfyUI runs nodes
                result = n["BabelCLIPTrainAdapter"]().train(clip, encoder, recipe, "linear", "(use the text box)",
                                                            prompts, 2, 1e-3, 2, 0, f"{name}-{recipe}", model=model,
                                                            vae=vae, images=images)
            handle = result["result"][0]
            losses = json.loads(handle.spec.metadata.get("babelclip.recipe", "{}"))
            res[recipe] = {"family": handle.spec.family.name, "recipe": losses.get("name"),
                           "final_terms": losses.get("final_terms"),
                           "tensor_hash": handle.spec.metadata["babelclip.tensor_hash"]}
        except BabelClipError as e:
            res[recipe] = f"{type(e).__name__}: {e}"
    return res


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))

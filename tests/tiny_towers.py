"""Tiny random text towers of the Flux and SD3 families, as ComfyUI and diffusers store them.

The widths are the families' own (CLIP-L 768, CLIP-G 1280, T5-XXL 4096), so adapters and conditioning have
their real shapes; depth, heads, feed-forward width and vocabularies are tiny. The CLIP vocabulary is the
repo's tiny BPE, the T5 one a tiny SentencePiece model (``models.tiny``); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import save_file

from babelclip.models import FAMILIES
from babelclip.models.tiny import build_tiny_clip_checkpoint, build_tiny_encoder


#: The tiny towers' sizes other than width, as ComfyUI's ``model_options["<tower>_model_config"]`` overrides.
COMFY_CONFIGS = {
    "clip_l": {"num_hidden_layers": 3, "intermediate_size": 64},
    "clip_g": {"num_hidden_layers": 3, "intermediate_size": 64},
    "t5xxl": {"num_layers": 2, "num_heads": 2, "d_kv": 64, "d_ff": 32},
}


def _clip(tokenizer, width: int, act: str, seed: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=3,
                            num_attention_heads=width // 64, intermediate_size=64,  # as COMFY_CONFIGS max_position_embeddings=77,
                            hidden_act=act, projection_dim=width, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=1)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _t5(vocab: int, width: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=width, d_kv=64, num_heads=2, d_ff=32, num_layers=2,  # COMFY_CONFIGS
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():  # T5's default init leaves the attention near uniform; give the test something to see
        for block in model.encoder.block:
            block.layer[0].SelfAttention.q.weight.normal_(0, 0.01)
            block.layer[0].SelfAttention.k.weight.normal_(0, 0.01)
    return model


def _state(model) -> dict[str, torch.Tensor]:
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    if not any(k.startswith("text_model.") for k in sd) and any(k.startswith("encoder.layers") for k in sd):
        sd = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
    return sd


def build_tiny_towers(folder, family: str, seed: int = 0, *, clip_tokenizer: str | None = None,
                      t5_tokenizer: str | None = None) -> dict:
    """Write ``family``'s (``flux`` or ``sd3``) tiny towers into ``folder`` three ways and return the paths:

    ``files`` (tower name -> ComfyUI text-encoder file), ``checkpoint`` (one file with the family's single-file
    prefixes), ``diffusers`` (a folder with text_encoder*/ and tokenizer*/), ``clip_tokenizer``, ``t5_tokenizer``,
    and ``models`` (tower name -> the transformers module, for reference computations). ``clip_tokenizer`` /
    ``t5_tokenizer``: use these tokenizer folders (ComfyUI's own, whose vocabularies are real-sized)."""
    from transformers import AutoTokenizer, CLIPTokenizer

    fam = FAMILIES[family]
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    clip_tok_dir = clip_tokenizer or build_tiny_clip_checkpoint(os.path.join(folder, "clip"), num_layers=1,
                                                                seed=seed)[1]
    t5_dir = t5_tokenizer or build_tiny_encoder(os.path.join(folder, "t5tok"), "t5", hidden_size=16, num_layers=1,
                                                seed=seed)
    clip_tok = CLIPTokenizer.from_pretrained(clip_tok_dir, local_files_only=True)
    t5_tok = AutoTokenizer.from_pretrained(t5_dir, local_files_only=True)
    t5_vocab = -(-len(t5_tok) // 128) * 128  # T5 rounds its embedding rows up (32100 tokens -> 32128 rows)
    models, files, single = {}, {}, {}
    for i, tower in enumerate(fam.towers):
        if tower.kind == "t5":
            model = _t5(t5_vocab, tower.width, seed + i)
        else:
            model = _clip(clip_tok, tower.width, tower.activation, seed + i, projection=tower.projected)
        models[tower.name] = model
        sd = _state(model)
        files[tower.name] = os.path.join(folder, f"{tower.name}.safetensors")
        save_file(sd, files[tower.name])
        single.update({tower.single_file_prefix + k: v for k, v in sd.items()})
    checkpoint = os.path.join(folder, f"{family}_single_file.safetensors")
    save_file(single, checkpoint)
    diffusers = os.path.join(folder, "diffusers")
    for tower in fam.towers:
        models[tower.name].save_pretrained(os.path.join(diffusers, tower.diffusers_folder))
        tok_dir = os.path.join(diffusers, tower.diffusers_folder.replace("text_encoder", "tokenizer"))
        shutil.copytree(t5_dir if tower.kind == "t5" else clip_tok_dir, tok_dir, dirs_exist_ok=True)
    pipeline = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}[family]
    with open(os.path.join(diffusers, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": pipeline}, f)
    return {"files": files, "checkpoint": checkpoint, "diffusers": diffusers, "clip_tokenizer": clip_tok_dir,
            "t5_tokenizer": t5_dir, "models": models}

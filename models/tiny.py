"""Tiny random encoders and adapters for demos, tests and benchmarks.

Nothing here is downloaded: each builder trains a small tokenizer on the
multilingual sample text below and saves a randomly initialised model with a
real ``transformers`` config, in the same folder layout a Hugging Face download
has. Useless for generating images; useful to run every code path offline.
"""

from __future__ import annotations

import io
import os
from typing import Iterable

import torch

from .families import get_family

__all__ = ["SAMPLE_PROMPTS", "build_tiny_encoder", "TINY_ENCODER_TYPES"]

#: The family whose single-file layout the tiny CLIP checkpoint has.
TINY_CLIP_FAMILY = "sd1"

#: A few image prompts in many scripts (Latin, CJK, Cyrillic, Arabic, Devanagari, ...).
SAMPLE_PROMPTS: tuple[str, ...] = (
    "a red cat sleeping on a wooden roof at sunset",
    "un chat rouge qui dort sur un toit en bois au coucher du soleil",
    "eine rote Katze schläft bei Sonnenuntergang auf einem Holzdach",
    "un gato rojo durmiendo en un tejado de madera al atardecer",
    "一只红色的猫在日落时睡在木屋顶上",
    "夕焼けの木の屋根の上で眠る赤い猫",
    "красная кошка спит на деревянной крыше на закате",
    "قطة حمراء نائمة على سطح خشبي عند غروب الشمس",
    "सूर्यास्त के समय लकड़ी की छत पर सोती हुई लाल बिल्ली",
    "노을 진 나무 지붕 위에서 자는 빨간 고양이",
    "a watercolor painting of a lighthouse in a storm, highly detailed",
    "一幅暴风雨中灯塔的水彩画，细节丰富",
    "акварельная картина маяка во время шторма",
    "portrait of an old fisherman, oil painting, dramatic lighting",
    "老渔夫的肖像，油画，戏剧性的光线",
    "retrato de un viejo pescador, pintura al óleo, iluminación dramática",
    "a bowl of ramen with a soft boiled egg, food photography",
    "半熟卵がのったラーメン、料理写真",
    "mountain village in the snow, cinematic, 8k",
    "गाँव में दिवाली की रात, दीयों की रोशनी",
    "مسجد تحت سماء مليئة بالنجوم",
    "中秋节的月饼和灯笼",
    "a cyberpunk street market at night with neon signs",
    "Ein Fuchs im Herbstwald, Fotografie",
)

TINY_ENCODER_TYPES = ("xlm-roberta", "bert", "t5", "mt5")


def _corpus(extra: Iterable[str] = ()) -> list[str]:
    return list(SAMPLE_PROMPTS) + list(extra)


def _train_sentencepiece(texts: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 4), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    return buf.getvalue()


def _train_wordpiece(texts: list[str], folder: str, vocab_size: int) -> None:
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=False, strip_accents=False, handle_chinese_chars=True)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save_model(folder)


def build_tiny_encoder(folder: str | os.PathLike, model_type: str = "xlm-roberta", *, hidden_size: int = 32,
                       num_layers: int = 2, max_positions: int = 64, seed: int = 0,
                       extra_text: Iterable[str] = ()) -> str:
    """Write a tiny random encoder of ``model_type`` as a Hugging Face folder and return its path.

    ``max_positions`` bounds the sequence length (special tokens included) so
    that chunking of long prompts is easy to exercise.
    """
    import transformers

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    texts = _corpus(extra_text)
    heads = 4
    if model_type in ("xlm-roberta", "t5", "mt5"):
        name = "sentencepiece.bpe.model" if model_type == "xlm-roberta" else "spiece.model"
        with open(os.path.join(folder, name), "wb") as f:
            chars = len({c for t in texts for c in t})
            f.write(_train_sentencepiece(texts, vocab_size=max(300, chars + 300)))
    elif model_type == "bert":
        _train_wordpiece(texts, folder, vocab_size=max(400, len({c for t in texts for c in t}) + 300))
    else:
        raise ValueError(f"no tiny builder for {model_type!r}; choose from {TINY_ENCODER_TYPES}")

    # The tokenizer class is picked from config.json's model_type, so write a stub config first.
    stub = {"xlm-roberta": transformers.XLMRobertaConfig, "bert": transformers.BertConfig,
            "t5": transformers.T5Config, "mt5": transformers.MT5Config}[model_type]()
    stub.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.model_max_length = max_positions
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id

    common = dict(vocab_size=vocab, pad_token_id=pad)
    if model_type in ("xlm-roberta", "bert"):
        cfg_cls = transformers.XLMRobertaConfig if model_type == "xlm-roberta" else transformers.BertConfig
        offset = pad + 1 if model_type == "xlm-roberta" else 0
        config = cfg_cls(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
                         intermediate_size=hidden_size * 2, max_position_embeddings=max_positions + offset,
                         **common)
        model_cls = transformers.XLMRobertaModel if model_type == "xlm-roberta" else transformers.BertModel
        build = lambda: model_cls(config, add_pooling_layer=False)  # noqa: E731
    else:
        cfg_cls = transformers.T5Config if model_type == "t5" else transformers.MT5Config
        config = cfg_cls(d_model=hidden_size, d_kv=hidden_size // heads, num_heads=heads, d_ff=hidden_size * 2,
                         num_layers=num_layers, eos_token_id=tokenizer.eos_token_id,
                         decoder_start_token_id=pad, **common)
        model_cls = transformers.T5EncoderModel if model_type == "t5" else transformers.MT5EncoderModel
        build = lambda: model_cls(config)  # noqa: E731
    torch.manual_seed(seed)
    model = build().eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_clip_checkpoint(folder: str | os.PathLike, *, num_layers: int = 2, seed: int = 0,
                               extra_text: Iterable[str] = ()) -> tuple[str, str]:
    """Write a small random SD1.x-layout checkpoint (text encoder only) and a CLIP BPE tokenizer for it.

    The text encoder has CLIP-L's width (so its output is real SD1.x conditioning) but few layers, a
    small MLP and a vocabulary of a few hundred BPE tokens trained on the sample text. Returns
    ``(checkpoint_path, tokenizer_folder)``.
    """
    import json

    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = os.fspath(folder)
    tok_dir = os.path.join(folder, "clip_tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [t.lower() for t in _corpus(extra_text)]
    alphabet = len({c for t in texts for c in t})
    trainer = trainers.BpeTrainer(vocab_size=2 * alphabet + 600, end_of_word_suffix="</w>",
                                  special_tokens=["<|unk|>"], show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    with open(os.path.join(tok_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tok_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in ["#version: 0.2", *merges]))

    family = get_family(TINY_CLIP_FAMILY)
    (tower,) = family.towers
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=tower.width, num_hidden_layers=num_layers,
                            num_attention_heads=tower.width // 64, intermediate_size=tower.width,
                            max_position_embeddings=family.context_tokens,
                            hidden_act="quick_gelu", bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=vocab["<|endoftext|>"])
    clip = CLIPTextModelWithProjection(config).eval()
    state = {k: v.contiguous() for k, v in clip.state_dict().items() if not k.startswith("text_projection")}
    state = {tower.single_file_prefix + (k if k.startswith("text_model.") else "text_model." + k): v
             for k, v in state.items()}
    path = os.path.join(folder, "tiny-sd15-text-encoder.safetensors")
    save_file(state, path)
    return path, tok_dir

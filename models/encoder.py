"""Frozen multilingual text encoders loaded from local Hugging Face folders.

Supported: XLM-RoBERTa (incl. multilingual-E5), BERT (incl. LaBSE), RoBERTa, the
encoder half of T5 / mT5 / UMT5, and the text towers of AltCLIP and Chinese-CLIP (from
a text-model folder or from the full CLIP folder, whose vision tower is not read).
Everything is loaded offline with ``transformers``, from safetensors weights only,
never with remote code.

AltCLIP's text model ends in its own projection (``pre_LN`` + ``transformation``): its
output, and so the width adapters read, is ``project_dim`` wide (768 for BAAI/AltCLIP),
and only its last layer can be read (the hidden layers are the XLM-R width).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Sequence, Union

import torch
from torch import nn

from ..errors import InvalidDataError, InvalidModelFileError, UnsupportedModelError
from .weights_format import check_safetensors

__all__ = [
    "SUPPORTED_ENCODERS",
    "EncoderInfo",
    "EncodedBatch",
    "MultilingualEncoder",
    "LayerSpec",
    "load_encoder",
    "resolve_layer",
    "weights_digest",
]

log = logging.getLogger(__name__)

#: model_type in config.json -> what it is. T5-family entries load encoder-only.
SUPPORTED_ENCODERS: dict[str, str] = {
    "xlm-roberta": "XLM-RoBERTa (also multilingual-E5)",
    "bert": "BERT (also LaBSE)",
    "roberta": "RoBERTa",
    "t5": "T5 encoder",
    "mt5": "mT5 encoder",
    "umt5": "UMT5 encoder",
    "altclip": "AltCLIP (its text model)",
    "altclip_text_model": "AltCLIP text model",
    "chinese_clip": "Chinese-CLIP (its text model)",
    "chinese_clip_text_model": "Chinese-CLIP text model",
}
#: CLIP-style model types whose text tower is the encoder: model_type -> (text model class, prefix of the
#: tower's tensors in the folder's weights). The full models' vision towers are never read.
_TEXT_TOWERS = {
    "altclip": ("AltCLIPTextModel", "text_model."),
    "altclip_text_model": ("AltCLIPTextModel", ""),
    "chinese_clip": ("ChineseCLIPTextModel", "text_model."),
    "chinese_clip_text_model": ("ChineseCLIPTextModel", ""),
}
#: Towers whose output is projected to ``project_dim``: only their last layer has that width.
_PROJECTED_OUTPUT = ("altclip", "altclip_text_model")
#: Model types whose position ids start after the padding index (RoBERTa style).
_ROBERTA_POSITIONS = ("xlm-roberta", "roberta", "altclip_text_model")
#: every tokenizer file a model folder may carry (what downloads and conversions copy along)
TOKENIZER_FOLDER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                          "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.txt", "vocab.json",
                          "merges.txt")
_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
                    "vocab.txt", "vocab.json")
_ENCODER_ONLY_CLASS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}

#: ``"last"``, ``"penultimate"`` or an index into the hidden states
#: (0 = embeddings, 1..N = layer outputs, negative counts from the end).
LayerSpec = Union[str, int]


@dataclass(frozen=True)
class EncoderInfo:
    """Identity of an encoder, stored in adapter files and checked on load."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    fingerprint: str  # the vocabulary and core sizes: what an adapter must match (see ``weights``)
    repo_id: str = ""  # the Hub repository it was fetched from (``python -m babelclip fetch``), when known
    #: a digest of the checkpoint's weights (:func:`weights_digest`); ``""`` when not computed. Two encoders with
    #: one ``fingerprint`` (a model and a fine-tune of it) run each other's adapters but give other states: caches
    #: of the encoder's outputs are keyed by both.
    weights: str = ""

    @property
    def identity(self) -> dict:
        """The checkpoint's identity, for every key of what the encoder computes (feature caches, code-switched
        copies, host checkpoints' names): the vocabulary (``fingerprint``) and the weights digest (``weights``),
        in that order. A fine-tune shares the first only, so a key that left out either would mix two models."""
        return {"fingerprint": self.fingerprint, "weights": self.weights}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncodedBatch:
    """Encoder output for a padded batch of token sequences.

    ``hidden`` is ``[B, T, H]``; ``mask`` is ``[B, T]`` (1 = real token);
    ``input_ids`` is ``[B, T]``.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor


class _StopForward(Exception):
    """Carries the output of the last block a forward pass needs."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def resolve_layer(layer: LayerSpec, num_layers: int) -> int:
    """Turn a layer spec into an index into ``hidden_states`` (length ``num_layers + 1``)."""
    if isinstance(layer, str):
        key = layer.strip().lower()
        if key == "last":
            return num_layers
        if key == "penultimate":
            return num_layers - 1
        try:
            layer = int(key)
        except ValueError:
            raise InvalidDataError(
                f"Encoder layer {layer!r} is not valid: use 'last', 'penultimate' or an integer "
                f"between {-num_layers - 1} and {num_layers}."
            ) from None
    if isinstance(layer, bool) or not isinstance(layer, int) or not -num_layers - 1 <= layer <= num_layers:
        raise InvalidDataError(
            f"Encoder layer {layer!r} is out of range for an encoder with {num_layers} layers: use "
            f"'last', 'penultimate' or an integer between {-num_layers - 1} and {num_layers}."
        )
    return layer % (num_layers + 1)


class MultilingualEncoder(nn.Module):
    """A frozen multilingual encoder plus its tokenizer.

    Use :func:`load_encoder` to make one. The module is frozen (``eval()``, no
    grad) and is what ComfyUI's memory manager moves between devices.
    """

    def __init__(self, model: nn.Module, tokenizer, info: EncoderInfo, path: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.path = path
        self.model.eval()
        self.requires_grad_(False)
        cfg = model.config
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_length = _max_length(cfg, tokenizer)
        self.prefix_tokens, self.suffix_tokens = _special_token_template(tokenizer)
        self.special_tokens = len(self.prefix_tokens) + len(self.suffix_tokens)
        self.int8 = False  # set by quantize_int8()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @device.setter
    def device(self, value) -> None:
        # ComfyUI's ModelPatcher records the device it moved a model to as ``model.device``;
        # the getter already reads it off the parameters, so there is nothing to store.
        pass

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True):  # stays frozen whatever a caller asks
        return super().train(False)

    # -- tokenization -------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` without special tokens, and each token's character span."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def with_special_tokens(self, ids: Sequence[int]) -> list[int]:
        """Wrap one chunk of token ids with the model's special tokens (CLS/SEP, </s>, ...)."""
        return [*self.prefix_tokens, *ids, *self.suffix_tokens]

    # -- forward ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_ids(self, sequences: Sequence[Sequence[int]], layer: LayerSpec = "last",
                   pad_to: int | None = None) -> EncodedBatch:
        """Encode token-id sequences (special tokens included), right-padded into one batch.

        Padding is masked out of attention, so a sequence's outputs at its real
        positions do not depend on how far it is padded.
        """
        if not sequences:
            raise InvalidDataError("encode_ids() got no sequences to encode.")
        longest = max(len(s) for s in sequences)
        if longest > self.max_length:
            raise InvalidDataError(
                f"A token sequence of {longest} tokens is longer than the encoder "
                f"{self.info.name!r} accepts ({self.max_length}); chunk it first."
            )
        width = max(longest, pad_to or 0)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, : len(seq)] = 1
        device = self.device
        hidden = self.forward(ids.to(device), mask.to(device), layer)
        return EncodedBatch(hidden=hidden, mask=mask.to(device), input_ids=ids.to(device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layer: LayerSpec = "last") -> torch.Tensor:
        index = resolve_layer(layer, self.info.num_layers)
        if index != self.info.num_layers and self.info.model_type in _PROJECTED_OUTPUT:
            raise InvalidDataError(
                f"Encoder {self.info.name!r} ({self.info.model_type}) outputs its projected last layer "
                f"({self.info.hidden_size} wide); its hidden layers have another width. Use layer 'last'.")
        if index == self.info.num_layers:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        blocks = self._blocks()
        if index == 0 or blocks is None:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                             return_dict=True)
            return out.hidden_states[index]
        # Layer ``index`` is the output of block ``index - 1``: stop there instead of running the blocks after it
        # (and keeping every layer's states), which an adapter trained on an earlier layer never reads.
        def stop(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = blocks[index - 1].register_forward_hook(stop)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        except _StopForward as done:
            return done.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"block {index - 1} of {self.info.name!r} never ran")  # pragma: no cover

    def _blocks(self) -> nn.ModuleList | None:
        """The transformer blocks in order (BERT-family ``encoder.layer``, T5-family ``encoder.block``)."""
        enc = getattr(self.model, "encoder", None)
        blocks = getattr(enc, "layer", None) if enc is not None else None
        if blocks is None and enc is not None:
            blocks = getattr(enc, "block", None)
        return blocks if isinstance(blocks, nn.ModuleList) and len(blocks) == self.info.num_layers else None

    @torch.no_grad()
    def encode(self, texts: Sequence[str], layer: LayerSpec = "last") -> EncodedBatch:
        """Encode plain texts (truncated to the encoder's maximum length) as one padded batch."""
        seqs = [self.with_special_tokens(self.tokenize(t)[0][: self.max_length - self.special_tokens])
                for t in texts]
        return self.encode_ids(seqs, layer)


def _special_token_template(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before and after a single sequence.

    Read off the tokenizer itself, so it works for every model family and for
    transformers 4.x and 5.x alike.
    """
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i: i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    raise InvalidModelFileError(
        f"The tokenizer {type(tokenizer).__name__} wraps text in a way BabelCLIP does not understand."
    )


def _max_length(cfg, tokenizer) -> int:
    """Longest sequence (special tokens included) the encoder handles."""
    limits = []
    positions = getattr(cfg, "max_position_embeddings", None)
    if positions:
        if cfg.model_type in _ROBERTA_POSITIONS:
            # RoBERTa-style position ids start after padding_idx.
            positions -= (getattr(cfg, "pad_token_id", 1) or 0) + 1
        limits.append(positions)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 1_000_000:
        limits.append(tok_max)
    return min(limits) if limits else 512


def download_command(repo: str, folder: str) -> str:
    """The shell command that downloads what BabelCLIP loads of an encoder repo (no pickles) into ``folder``.

    ``hf`` is the command-line tool of huggingface-hub (0.34 and later; 1.0 dropped ``huggingface-cli``).
    """
    return (f'hf download {repo} --include "*.json" --include "*.safetensors" --include "*.model" '
            f'--local-dir {folder}')


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise InvalidModelFileError(
            f"Encoder folder {folder!r} has no config.json. Point BabelCLIP at a Hugging Face model "
            f"folder, e.g. one made by `{download_command('FacebookAI/xlm-roberta-large', folder)}`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelFileError(f"Cannot read {path!r}: {e}. Download the encoder folder again.") from None
    if not isinstance(cfg, dict):
        raise InvalidModelFileError(f"{path!r} is not a JSON object. Download the encoder folder again.")
    return cfg


def _check_weights(folder: str) -> None:
    names = os.listdir(folder)
    for n in sorted(n for n in names if n.endswith(".safetensors")):
        check_safetensors(os.path.join(folder, n), what="Encoder weights",
                          fix="Download the real safetensors weights of the encoder again.")
    if any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        return
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles:
        raise InvalidModelFileError(
            f"Encoder folder {folder!r} only has pickle weights ({', '.join(sorted(pickles))}), which "
            f"BabelCLIP never loads because they can run code. Download the safetensors version "
            f"(`{download_command('<repo>', folder)}`) or convert it with `safetensors`' convert script in a "
            f"trusted environment."
        )
    raise InvalidModelFileError(
        f"Encoder folder {folder!r} has no weights (*.safetensors). Download the full model folder."
    )


def _fingerprint(cfg: dict, tokenizer) -> str:
    """The core sizes and the vocabulary: what an adapter is checked against. Not the weights: a fine-tune shares
    it (caches of the encoder's states also key :func:`weights_digest`)."""
    h = hashlib.sha256()
    core = {k: cfg.get(k) for k in ("model_type", "hidden_size", "d_model", "num_hidden_layers",
                                     "num_layers", "vocab_size")}
    h.update(json.dumps(core, sort_keys=True).encode())
    for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


#: values read from each tensor by :func:`weights_digest` (evenly strided); smaller tensors are read whole
WEIGHT_SAMPLES = 4096


def weights_digest(model: nn.Module, samples: int = WEIGHT_SAMPLES) -> str:
    """A short digest that tells a checkpoint's weights from another's, read cheaply: per parameter (by name) its
    name, its shape and at most ``samples`` of its values, evenly strided, as float32 (milliseconds for a 1 GB
    model, where hashing every byte takes seconds).

    The values are cast to float32 and the dtype left out, so that one checkpoint gives one digest whether
    transformers keeps its stored dtype or upcasts it; call it before any cast or int8 quantization of the model.
    Two checkpoints that differ only in values between the samples of every tensor would share it: a fine-tune
    moves (nearly) all of them.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach()
        flat = t.reshape(-1)
        step = max(1, -(-flat.numel() // samples))  # ceil: at most `samples` values
        picked = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()[:16]


def quantize_int8(encoder: MultilingualEncoder) -> MultilingualEncoder:
    """Run the encoder's linear layers in int8 on the CPU (PyTorch dynamic quantization), in place.

    Weights become int8 with one scale per output channel; activations are quantized on the fly, per call.
    At batch 1 the forward is bound by reading the weights (see BENCHMARKS.md, *Encode path at batch 1*):
    with a quarter of the bytes to read it runs 2-4x faster on a CPU. Outputs move slightly (the
    benchmark reports their cosine similarity to float32). The quantized encoder stays on the CPU: PyTorch
    has no CUDA kernels for it. Features cached from it are kept apart from float32 ones.

    Raises:
        UnsupportedModelError: the encoder is not float32 on the CPU, or this PyTorch has no dynamic
            quantization.
    """
    if encoder.int8:
        return encoder
    if encoder.device.type != "cpu" or encoder.dtype != torch.float32:
        raise UnsupportedModelError(
            f"int8 needs the encoder {encoder.info.name!r} in float32 on the CPU, but it is {encoder.dtype} on "
            f"{encoder.device}: load it with the default device and dtype, or turn int8 off.")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise UnsupportedModelError(
            f"This PyTorch ({torch.__version__}) has no dynamic int8 quantization (torch.ao.quantization): "
            f"load encoder {encoder.info.name!r} without int8.") from None
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        quantize_dynamic(encoder.model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    encoder.int8 = True
    return encoder


def refuse_custom_code(cfg: dict, where: str, note: str = "") -> None:
    """Refuse a config (model or tokenizer) that asks for custom code; ``where`` names it, ``note`` ends the
    message (" Nothing was downloaded.")."""
    if "auto_map" in cfg or cfg.get("trust_remote_code"):
        raise InvalidModelFileError(
            f"{where} asks for custom code (auto_map). BabelCLIP never runs code shipped with a model; use a "
            f"standard XLM-RoBERTa, BERT, RoBERTa or (m)T5 encoder.{note}")


def check_encoder_config(cfg: dict, where: str, note: str = "") -> str:
    """Refuse a model config that asks for custom code or names an architecture BabelCLIP does not load; return
    its model type (``where`` and ``note`` as in :func:`refuse_custom_code`)."""
    refuse_custom_code(cfg, where, note)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_ENCODERS:
        raise UnsupportedModelError(
            f"{where} describes a {model_type!r} model; BabelCLIP supports "
            f"{', '.join(f'{k} ({v})' for k, v in SUPPORTED_ENCODERS.items())}.{note}")
    return model_type


def _checked_folder(folder: str) -> tuple[dict, str]:
    """The folder's config and model type, after the checks that need no model: it exists, runs no custom code,
    is a supported architecture, has safetensors weights and tokenizer files."""
    if not os.path.isdir(folder):
        raise InvalidModelFileError(
            f"Encoder folder {folder!r} does not exist. Put the Hugging Face folder of a multilingual "
            f"encoder there (e.g. `{download_command('FacebookAI/xlm-roberta-large', folder)}`)."
        )
    cfg = _read_config(folder)
    model_type = check_encoder_config(cfg, repr(os.path.join(folder, "config.json")))
    _check_weights(folder)
    if not any(os.path.isfile(os.path.join(folder, f)) for f in _TOKENIZER_FILES):
        raise InvalidModelFileError(
            f"Encoder folder {folder!r} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}). "
            f"Download the full model folder, tokenizer included."
        )
    return cfg, model_type


def _load_tokenizer(transformers, folder: str):
    """The folder's own tokenizer (never remote code)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for a bad tokenizer folder
        raise InvalidModelFileError(
            f"Cannot load the tokenizer of encoder {folder!r}: {type(e).__name__}: {e}. The folder needs "
            f"the tokenizer files of the model (tokenizer.json, or sentencepiece.bpe.model / spiece.model / "
            f"vocab.txt); download the full folder."
        ) from None
    return tokenizer


def _load_model(transformers, folder: str, model_type: str):
    """The encoder stack alone (no decoder, no pooling layer), from safetensors weights only."""
    if model_type in _TEXT_TOWERS:
        return _load_text_tower(transformers, folder, model_type)
    cls_name = _ENCODER_ONLY_CLASS.get(model_type)
    model_cls = getattr(transformers, cls_name) if cls_name else transformers.AutoModel
    kwargs = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True}
    if model_type not in _ENCODER_ONLY_CLASS:
        kwargs["add_pooling_layer"] = False
    try:
        model = model_cls.from_pretrained(folder, **kwargs)
    except Exception as e:
        raise InvalidModelFileError(
            f"Cannot load the weights of encoder {folder!r}: {type(e).__name__}: {e}. "
            f"Download the folder again."
        ) from None
    return model


def _fetched_from(folder: str) -> str:
    """The Hub repository ``python -m babelclip fetch`` recorded for ``folder`` (models/hub.py), or ``""``."""
    from .hub import read_source

    repo = read_source(folder).get("repo_id")
    return repo if isinstance(repo, str) else ""


def check_encoder_folder(path: str | os.PathLike) -> dict:
    """The checks :func:`load_encoder` makes before loading any weights (config, no custom code, supported
    architecture, safetensors headers, a tokenizer that loads); returns the config. Used on downloads."""
    import transformers

    folder = os.fspath(path)
    cfg, _model_type = _checked_folder(folder)
    _load_tokenizer(transformers, folder)
    return cfg


def _tower_key(key: str, targets: set[str]) -> str | None:
    """The text model's own name for a tensor of a full CLIP folder or a text-model folder, or None.

    Full folders prefix the tower with ``text_model.``; transformers 4 names blocks ``encoder.layer.N`` where
    transformers 5 renames some models' to ``encoder.layers.N`` when it loads them: either spelling is taken.
    """
    if key.startswith("text_model."):
        key = key[len("text_model."):]
    if key in targets:
        return key
    for old, new in ((".layer.", ".layers."), (".layers.", ".layer.")):
        renamed = key.replace(old, new)
        if renamed in targets:
            return renamed
    return None


def _load_text_tower(transformers, folder: str, model_type: str):
    """The text tower of an AltCLIP / Chinese-CLIP folder (full model or text model), safetensors only.

    Read by BabelCLIP itself rather than ``from_pretrained``: the tower's tensors are picked by name out of
    the full model's weights (the vision tower is never read), whichever transformers version wrote them.
    """
    from safetensors import safe_open

    cls_name = _TEXT_TOWERS[model_type][0]
    model_cls = getattr(transformers, cls_name)
    try:
        config = model_cls.config_class.from_pretrained(folder, local_files_only=True)  # a full config's text_config
        model = model_cls(config, **({"add_pooling_layer": False} if cls_name == "ChineseCLIPTextModel" else {}))
        targets = set(model.state_dict())
        tensors = {}
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".safetensors")):
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                for key in f.keys():
                    own = _tower_key(key, targets)
                    if own is not None:
                        tensors[own] = f.get_tensor(key)
        missing = sorted(set(dict(model.named_parameters())) - set(tensors))  # buffers (position ids) may be absent
        model.load_state_dict(tensors, strict=False)
    except Exception as e:
        raise InvalidModelFileError(
            f"Cannot load the text model of encoder {folder!r}: {type(e).__name__}: {e}. Download the folder again."
        ) from None
    if missing:
        raise InvalidModelFileError(
            f"Encoder folder {folder!r} lacks {len(missing)} tensors of its {cls_name} (first: {missing[0]}). "
            f"Download the complete safetensors weights again.")
    return model.eval()


def _output_width(model_type: str, mcfg) -> int:
    """Width of the states the encoder hands to an adapter."""
    if model_type in _PROJECTED_OUTPUT:
        return int(mcfg.project_dim)
    return int(getattr(mcfg, "hidden_size", None) or mcfg.d_model)


def load_encoder(path: str | os.PathLike, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, int8: bool = False) -> MultilingualEncoder:
    """Load a frozen multilingual encoder from a local Hugging Face folder.

    Args:
        path: folder with ``config.json``, safetensors weights and tokenizer files.
        device: where to put it (default CPU).
        dtype: parameter dtype (default float32).
        int8: run the linear layers in int8 on the CPU (:func:`quantize_int8`; needs the default device and
            dtype).

    Raises:
        InvalidModelFileError: missing/invalid files, pickle-only weights, remote code.
        UnsupportedModelError: an architecture BabelCLIP does not support.
    """
    folder = os.fspath(path)
    cfg, model_type = _checked_folder(folder)
    import transformers  # heavy: imported only when a model is loaded

    tokenizer = _load_tokenizer(transformers, folder)
    model = _load_model(transformers, folder, model_type)
    weights = weights_digest(model)  # of the checkpoint as stored: before the cast and any int8 quantization
    model.to(dtype=dtype or torch.float32)  # after loading: works across transformers 4.x and 5.x
    mcfg = model.config
    num_layers = getattr(mcfg, "num_hidden_layers", None) or mcfg.num_layers
    hidden = _output_width(model_type, mcfg)
    info = EncoderInfo(
        name=os.path.basename(os.path.normpath(folder)),
        model_type=model_type,
        hidden_size=int(hidden),
        num_layers=int(num_layers),
        vocab_size=int(mcfg.vocab_size),
        fingerprint=_fingerprint(cfg, tokenizer),
        repo_id=_fetched_from(folder),
        weights=weights,
    )
    encoder = MultilingualEncoder(model, tokenizer, info, folder)
    if device is not None:
        encoder.to(device)
    if int8:
        quantize_int8(encoder)
    log.info("Loaded encoder %s (%s, %d layers, hidden %d%s)", info.name, model_type, info.num_layers,
             info.hidden_size, ", int8 linear layers" if int8 else "")
    return encoder

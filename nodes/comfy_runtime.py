"""ComfyUI at run time, as the nodes need it: model folders, memory management, family detection, interrupts.

Encoders and adapters are wrapped in ComfyUI's ``ModelPatcher`` so that its
memory manager moves them between the text-encoder device and the offload
device like any CLIP. The wrappers are node *outputs*: ComfyUI caches them per
graph; nothing is kept in a module global or on a node instance.
"""

from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..models import load_adapter, load_encoder, read_adapter_spec
from ..models.adapter_file import AdapterSpec, check_compatible
from ..models.encoder import MultilingualEncoder
from ..errors import UnsupportedModelError
from ..models.families import FAMILIES, UNSUPPORTED_FAMILIES, TargetFamily, supported_names
from ..models.paths import list_files, list_model_folders, resolve_inside

ADAPTER_FOLDER = "babelclip"
ENCODER_FOLDERS = ("text_encoders", "clip")  # current ComfyUI, then the 2024 name


def register_folders() -> None:
    """Add ``models/babelclip`` to ComfyUI's model folders, merging with any user entry."""
    default = os.path.join(folder_paths.models_dir, ADAPTER_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(ADAPTER_FOLDER)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[ADAPTER_FOLDER] = (paths, {".safetensors"})


def adapter_dirs() -> list[str]:
    return list(folder_paths.get_folder_paths(ADAPTER_FOLDER))


def encoder_dirs() -> list[str]:
    dirs: list[str] = []
    for name in ENCODER_FOLDERS:
        if name in folder_paths.folder_names_and_paths:
            dirs += [d for d in folder_paths.get_folder_paths(name) if d not in dirs]
    return dirs


def list_adapters() -> list[str]:
    return list_files(adapter_dirs(), (".safetensors",))


def list_encoders() -> list[str]:
    return list_model_folders(encoder_dirs())


def _devices() -> tuple[torch.device, torch.device, torch.dtype]:
    load = mm.text_encoder_device()
    offload = mm.text_encoder_offload_device()
    if load.type == "cpu":
        dtype = torch.float32
    else:
        dtype = mm.text_encoder_dtype(load)
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):  # fp8 options: HF models can't run them
            dtype = torch.float16
    return load, offload, dtype


def intermediate_device() -> torch.device:
    return mm.intermediate_device() if hasattr(mm, "intermediate_device") else torch.device("cpu")


class ManagedEncoder:
    """A loaded encoder under ComfyUI's memory management (the BABELCLIP_ENCODER type).

    With ``int8`` the encoder's linear layers run in int8 on the CPU and the encoder stays there, outside the
    memory manager (``patcher`` is None): a quantized model cannot move to a GPU, and ComfyUI's size accounting
    reads plain tensors only. Its adapter then runs on the CPU too.
    """

    def __init__(self, name: str, int8: bool = False):
        path = resolve_inside(encoder_dirs(), name, "encoder folder")
        if int8:
            self.encoder: MultilingualEncoder = load_encoder(path, int8=True)
            self.patcher = None
            return
        load, offload, dtype = _devices()
        self.encoder = load_encoder(path, device=offload, dtype=dtype)
        self.patcher = comfy.model_patcher.ModelPatcher(self.encoder, load_device=load, offload_device=offload)

    @property
    def info(self):
        return self.encoder.info


class AdapterHandle:
    """An adapter file whose header is validated; tensors are read on first use (BABELCLIP_ADAPTER)."""

    def __init__(self, name: str):
        self.path = resolve_inside(adapter_dirs(), name, "adapter")
        self.spec: AdapterSpec = read_adapter_spec(self.path)
        self._patcher = None
        self._on_cpu = None

    def patcher_for(self, encoder: ManagedEncoder, family: TargetFamily | None):
        """Check the adapter against the encoder and CLIP, then load it (once) under a ModelPatcher."""
        check_compatible(self.spec, encoder.info, family)
        if self._patcher is None:
            load, offload, _ = _devices()
            adapter = load_adapter(self.spec, encoder=encoder.info, family=family, device=offload,
                                   dtype=encoder.encoder.dtype)
            self._patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=load, offload_device=offload)
        return self._patcher

    def on_cpu_for(self, encoder: ManagedEncoder, family: TargetFamily | None):
        """Check the adapter, then load it (once) in float32 on the CPU, for an int8 encoder."""
        check_compatible(self.spec, encoder.info, family)
        if self._on_cpu is None:
            self._on_cpu = load_adapter(self.spec, encoder=encoder.info, family=family, device="cpu",
                                        dtype=torch.float32)
        return self._on_cpu


def family_from_clip_keys(keys, what: str = "the connected CLIP") -> TargetFamily:
    """The family of a ComfyUI CLIP from its state-dict keys: ComfyUI prefixes each text tower's tensors with
    the tower's name (``clip_l.``, ``clip_g.``, ``t5xxl.``...), the names the family descriptions use."""
    towers = frozenset(k.split(".", 1)[0] for k in keys if "." in k)
    for family in FAMILIES.values():
        if towers == family.tower_names:
            return family
    for other in UNSUPPORTED_FAMILIES:
        if towers == other.tower_names:
            raise UnsupportedModelError(
                f"{what} is {other.label}, which BabelCLIP does not support yet. "
                f"Use an {supported_names()} checkpoint.")
    raise UnsupportedModelError(
        f"Cannot tell which model family {what} belongs to (text-encoder towers: "
        f"{', '.join(sorted(towers)) or 'none'}). BabelCLIP supports {supported_names()}.")


#: ComfyUI's SD3 text-encoder class; its CLIP-L + CLIP-G without T5 has SDXL's tower names but not its layout.
SD3_CLIP_CLASS = "SD3ClipModel"


def clip_family(clip) -> TargetFamily:
    """Family of a ComfyUI CLIP object, from its state-dict key prefixes (and class, for SD3 without T5)."""
    what = "the CLIP connected to BabelCLIP"
    family = family_from_clip_keys(clip.cond_stage_model.state_dict().keys(), what)
    classes = {c.__name__ for c in type(clip.cond_stage_model).__mro__}
    if SD3_CLIP_CLASS in classes and not any(t.kind == "t5" for t in family.towers):
        raise UnsupportedModelError(
            f"{what} is SD3's text encoder without T5-XXL (CLIP-L + CLIP-G only), which BabelCLIP does not support: "
            f"its adapters for SD3 predict the T5 tokens too. Load all three with TripleCLIPLoader (or the "
            f"checkpoint's CLIP), or leave the clip input unconnected.")
    return family


def _tokenize_and_encode(clip, text: str):
    """``(tokens, cond, pooled)``: ComfyUI's token dict of ``text`` and the stock CLIPTextEncode result of it."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return tokens, cond, pooled


def clip_encode(clip, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock CLIPTextEncode result for ``text`` (cond, pooled), in every ComfyUI version."""
    _, cond, pooled = _tokenize_and_encode(clip, text)
    return cond, pooled


#: ComfyUI's token-dict keys of CLIP towers (each a list of 77-token chunks); T5's key is "t5xxl".
CLIP_TOKEN_KEYS = ("l", "g", "h")


def clip_encode_segments(clip, text: str, family: TargetFamily):
    """``(cond, pooled, segment lengths)``: the stock encode of ``text`` and, for a family whose conditioning
    is several segments (SD3: CLIP chunks, then T5), how many tokens each takes (None for one segment)."""
    tokens, cond, pooled = _tokenize_and_encode(clip, text)
    if len(family.segments) == 1:
        return cond, pooled, None
    chunks = max(len(tokens[k]) for k in CLIP_TOKEN_KEYS if k in tokens)
    first = chunks * family.context_tokens
    return cond, pooled, [first, cond.shape[1] - first]


def ready_to_encode(encoder: ManagedEncoder, adapter: AdapterHandle, family: TargetFamily | None):
    """Check the adapter against the encoder and CLIP, put both where they run; returns the adapter module."""
    if encoder.patcher is None:  # int8 encoder: the CPU, outside the memory manager
        return adapter.on_cpu_for(encoder, family)
    patcher = adapter.patcher_for(encoder, family)
    mm.load_models_gpu([encoder.patcher, patcher])
    return patcher.model


def load_encoder_for_features(encoder: ManagedEncoder) -> None:
    """Put the encoder on its device before a feature-cache pass (an int8 encoder is already there)."""
    if encoder.patcher is not None:
        mm.load_models_gpu([encoder.patcher])


def check_interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()

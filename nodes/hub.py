"""Hub nodes: BabelCLIP Load Encoder (Hub), BabelCLIP Load Adapter (Hub).

They download an encoder or adapter by Hugging Face repository id into ComfyUI's model folders (the first
``text_encoders`` / ``clip`` folder, ``models/babelclip``) the first time the workflow runs, then load it like the
local loaders do. A shared workflow that names repositories therefore runs on a machine that has none of the
files. Nothing is downloaded when ComfyUI starts or lists the nodes: only when a queued workflow runs one of them.
"""

from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.utils

from ..errors import InvalidModelFileError
from ..models.hub import HubError, fetch, folder_name
from . import comfy_runtime as runtime

_REPO_TOOLTIP = ("Hugging Face repository id (owner/name). Downloaded once into {folder} under the repository's name "
                 "(only config, tokenizer and *.safetensors files; pickles and custom code are refused), then "
                 "loaded from there. Gated or private repositories need HF_TOKEN or `hf auth login`.")
_REVISION_TOOLTIP = ("Branch, tag or commit. Empty: the copy already downloaded, else the main branch. A different "
                     "revision is fetched again into the same folder.")
_UPDATE_TOOLTIP = "Ask the Hub for a newer commit every time the node runs (otherwise the downloaded copy is used)."


class _Progress:
    """Bytes downloaded as a ComfyUI progress bar; a cancel stops the download (the part kept resumes later)."""

    def __init__(self):
        self.bar = None
        self.cancelled = False

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total)
        try:
            self.bar.update_absolute(done, total)
        except mm.InterruptProcessingException:
            self.cancelled = True
            raise


def _fetch(repo_id: str, kind: str, folder: str, revision: str, update: bool, only: str | None = None):
    repo_id, revision = repo_id.strip(), revision.strip() or None
    if not repo_id:
        raise InvalidModelFileError(f"Give a Hugging Face repository id (owner/name) for the {kind}.")
    progress = _Progress()
    try:
        return fetch(repo_id, kind=kind, dest=os.path.join(folder, folder_name(repo_id)), revision=revision,
                     only=only, reuse=not update, progress=progress)
    except HubError:
        if progress.cancelled:
            raise mm.InterruptProcessingException() from None
        raise


class LoadEncoderHub:
    DESCRIPTION = ("Downloads a multilingual text encoder from the Hugging Face Hub into models/text_encoders (once) "
                   "and loads it, like BabelCLIP Load Encoder.")
    CATEGORY = "BabelCLIP"
    FUNCTION = "load"
    RETURN_TYPES = ("BABELCLIP_ENCODER",)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The multilingual encoder, managed by ComfyUI's model memory manager (int8: kept on the CPU).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "repo_id": ("STRING", {"default": "intfloat/multilingual-e5-large",
                                   "tooltip": _REPO_TOOLTIP.format(folder="models/text_encoders")}),
        }, "optional": {
            "revision": ("STRING", {"default": "", "tooltip": _REVISION_TOOLTIP}),
            "check_for_updates": ("BOOLEAN", {"default": False, "tooltip": _UPDATE_TOOLTIP}),
            "int8_on_cpu": ("BOOLEAN", {"default": False, "tooltip": "As in BabelCLIP Load Encoder."}),
        }}

    def load(self, repo_id, revision="", check_for_updates=False, int8_on_cpu=False):
        base = runtime.encoder_dirs()[0]
        result = _fetch(repo_id, "encoder", base, revision, check_for_updates)
        name = result.path[len(base):].strip("/\\").replace("\\", "/")
        return (runtime.ManagedEncoder(name, int8=int8_on_cpu),)


class LoadAdapterHub:
    DESCRIPTION = ("Downloads a BabelCLIP adapter from the Hugging Face Hub into models/babelclip/<repository name>/ "
                   "(once) and loads it, like BabelCLIP Load Adapter.")
    CATEGORY = "BabelCLIP"
    FUNCTION = "load"
    RETURN_TYPES = ("BABELCLIP_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("The adapter that maps the encoder's states to this checkpoint's conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "repo_id": ("STRING", {"default": "", "tooltip": _REPO_TOOLTIP.format(folder="models/babelclip")}),
        }, "optional": {
            "file": ("STRING", {"default": "", "tooltip": "The adapter file, when the repository holds several "
                                                          "(empty: its only one)."}),
            "revision": ("STRING", {"default": "", "tooltip": _REVISION_TOOLTIP}),
            "check_for_updates": ("BOOLEAN", {"default": False, "tooltip": _UPDATE_TOOLTIP}),
        }}

    def load(self, repo_id, file="", revision="", check_for_updates=False):
        base = runtime.adapter_dirs()[0]
        file = file.strip() or None
        result = _fetch(repo_id, "adapter", base, revision, check_for_updates, only=file)
        adapters = [f for f in result.files if f.endswith(".safetensors")]
        if file is None and len(adapters) != 1:
            raise InvalidModelFileError(
                f"{repo_id} holds {len(adapters)} adapter files ({', '.join(adapters)}): put the one to load in "
                f"the node's 'file' field.")
        folder = result.path[len(base):].strip("/\\").replace("\\", "/")
        return (runtime.AdapterHandle(f"{folder}/{file or adapters[0]}"),)

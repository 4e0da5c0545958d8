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
from .loaders import LoadAdapter, LoadEncoder

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


def _relative(path: str, base: str) -> str:
    """``path`` as the name the local loaders list it by (relative to its model folder, '/'-separated)."""
    return os.path.relpath(path, os.path.abspath(base)).replace(os.sep, "/")


def _fetch(repo_id: str, kind: str, folder: str, revision: str, update: bool):
    repo_id, revision = repo_id.strip(), revision.strip() or None
    if not repo_id:
        raise InvalidModelFileError(f"Give a Hugging Face repository id (owner/name) for the {kind}.")
    progress = _Progress()
    try:
        return fetch(repo_id, kind=kind, dest=os.path.join(folder, folder_name(repo_id)), revision=revision,
                     reuse=not update, progress=progress)
    except HubError:
        if progress.cancelled:
            raise mm.InterruptProcessingException() from None
        raise


class LoadEncoderHub(LoadEncoder):
    DESCRIPTION = ("Downloads a multilingual text encoder from the Hugging Face Hub into models/text_encoders (once) "
                   "and loads it, like BabelCLIP Load Encoder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "repo_id": ("STRING", {"default": "intfloat/multilingual-e5-large",
                                   "tooltip": _REPO_TOOLTIP.format(folder="models/text_encoders")}),
        }, "optional": {
            "revision": ("STRING", {"default": "", "tooltip": _REVISION_TOOLTIP}),
            "check_for_updates": ("BOOLEAN", {"default": False, "tooltip": _UPDATE_TOOLTIP}),
            "int8_on_cpu": LoadEncoder.INPUT_TYPES()["optional"]["int8_on_cpu"],
        }}

    def load(self, repo_id, revision="", check_for_updates=False, int8_on_cpu=False):
        base = runtime.encoder_dirs()[0]
        result = _fetch(repo_id, "encoder", base, revision, check_for_updates)
        return (runtime.ManagedEncoder(_relative(result.path, base), int8=int8_on_cpu),)


class LoadAdapterHub(LoadAdapter):
    DESCRIPTION = ("Downloads a BabelCLIP adapter from the Hugging Face Hub into models/babelclip/<repository name>/ "
                   "(once) and loads it, like BabelCLIP Load Adapter.")

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
        result = _fetch(repo_id, "adapter", base, revision, check_for_updates)  # all of them: adapters are small
        adapters = [f for f in result.files if f.endswith(".safetensors")]
        if file is not None and file not in adapters:
            raise InvalidModelFileError(f"{repo_id} has no adapter file {file!r}; it has {', '.join(adapters)}.")
        if file is None and len(adapters) != 1:
            raise InvalidModelFileError(
                f"{repo_id} holds {len(adapters)} adapter files ({', '.join(adapters)}): put the one to load in "
                f"the node's 'file' field.")
        return (runtime.AdapterHandle(f"{_relative(result.path, base)}/{file or adapters[0]}"),)

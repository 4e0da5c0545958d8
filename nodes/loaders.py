"""Loader nodes: BabelCLIP Load Encoder, BabelCLIP Load Adapter."""

from __future__ import annotations

from ..models.encoder import download_command
from . import comfy_runtime as runtime


class LoadEncoder:
    DESCRIPTION = ("Loads a frozen multilingual text encoder (XLM-RoBERTa, multilingual-E5, LaBSE, mT5, ...) "
                   "from a Hugging Face folder in models/text_encoders (or models/clip).")
    CATEGORY = "BabelCLIP"
    FUNCTION = "load"
    RETURN_TYPES = ("BABELCLIP_ENCODER",)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The multilingual encoder, managed by ComfyUI's model memory manager (int8: kept on the CPU).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder_name": (runtime.list_encoders(), {
                "tooltip": "A folder with config.json, *.safetensors weights and tokenizer files under "
                           "models/text_encoders or models/clip, e.g. one made by `"
                           + download_command("FacebookAI/xlm-roberta-large", "models/text_encoders/xlm-roberta-large")
                           + "`."}),
        }, "optional": {
            "int8_on_cpu": ("BOOLEAN", {
                "default": False,
                "tooltip": "Run the encoder's linear layers in int8 on the CPU: 2-4x faster encoding on a CPU "
                           "(BENCHMARKS.md), a quarter of the memory for those layers, slightly different "
                           "conditioning. The encoder and its adapter then stay on the CPU, also when ComfyUI "
                           "has a GPU (this saves the GPU memory they would take)."}),
        }}

    def load(self, encoder_name, int8_on_cpu=False):
        return (runtime.ManagedEncoder(encoder_name, int8=int8_on_cpu),)


class LoadAdapter:
    DESCRIPTION = ("Loads a BabelCLIP language adapter (.safetensors in models/babelclip). The file's header is "
                   "checked now; its weights load when the encode node checks it against the encoder and CLIP.")
    CATEGORY = "BabelCLIP"
    FUNCTION = "load"
    RETURN_TYPES = ("BABELCLIP_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("The adapter that maps the encoder's states to this checkpoint's conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": (runtime.list_adapters(), {
                "tooltip": "An adapter file in models/babelclip. It must match the encoder (same model) and the "
                           "checkpoint family (SD1.x, SD2.x or SDXL) it was trained for."}),
        }}

    def load(self, adapter_name):
        return (runtime.AdapterHandle(adapter_name),)

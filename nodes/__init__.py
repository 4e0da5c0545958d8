"""ComfyUI nodes of BabelCLIP: the one registry of node ids (prefixed, never renamed)."""

from .encode import TextEncode, TextEncodeFlux, TextEncodeSDXL
from .comfy_runtime import register_folders
from .hub import LoadAdapterHub, LoadEncoderHub
from .loaders import LoadAdapter, LoadEncoder
from .training import EvaluateAdapter, SaveAdapter, TrainAdapter

register_folders()

NODE_CLASS_MAPPINGS = {
    "BabelCLIPLoadEncoder": LoadEncoder,
    "BabelCLIPLoadAdapter": LoadAdapter,
    "BabelCLIPLoadEncoderHub": LoadEncoderHub,
    "BabelCLIPLoadAdapterHub": LoadAdapterHub,
    "BabelCLIPTextEncode": TextEncode,
    "BabelCLIPTextEncodeSDXL": TextEncodeSDXL,
    "BabelCLIPTextEncodeFlux": TextEncodeFlux,
    "BabelCLIPTrainAdapter": TrainAdapter,
    "BabelCLIPEvaluateAdapter": EvaluateAdapter,
    "BabelCLIPSaveAdapter": SaveAdapter,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "BabelCLIPLoadEncoder": "BabelCLIP Load Encoder",
    "BabelCLIPLoadAdapter": "BabelCLIP Load Adapter",
    "BabelCLIPLoadEncoderHub": "BabelCLIP Load Encoder (Hub)",
    "BabelCLIPLoadAdapterHub": "BabelCLIP Load Adapter (Hub)",
    "BabelCLIPTextEncode": "BabelCLIP Text Encode",
    "BabelCLIPTextEncodeSDXL": "BabelCLIP Text Encode SDXL",
    "BabelCLIPTextEncodeFlux": "BabelCLIP Text Encode Flux",
    "BabelCLIPTrainAdapter": "BabelCLIP Train Adapter",
    "BabelCLIPEvaluateAdapter": "BabelCLIP Evaluate Adapter",
    "BabelCLIPSaveAdapter": "BabelCLIP Save Adapter",
}

"""ComfyUI nodes of BabelCLIP: the one registry of node ids (prefixed, never renamed)."""

from .encode import TextEncode, TextEncodeSDXL
from .glue import register_folders
from .loaders import LoadAdapter, LoadEncoder

register_folders()

NODE_CLASS_MAPPINGS = {
    "BabelCLIPLoadEncoder": LoadEncoder,
    "BabelCLIPLoadAdapter": LoadAdapter,
    "BabelCLIPTextEncode": TextEncode,
    "BabelCLIPTextEncodeSDXL": TextEncodeSDXL,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "BabelCLIPLoadEncoder": "BabelCLIP Load Encoder",
    "BabelCLIPLoadAdapter": "BabelCLIP Load Adapter",
    "BabelCLIPTextEncode": "BabelCLIP Text Encode",
    "BabelCLIPTextEncodeSDXL": "BabelCLIP Text Encode SDXL",
}

"""Pure-torch core of BabelCLIP: encoders, adapters, adapter files, conditioning.

Nothing in this package imports ComfyUI. Stable entry points:
:func:`load_encoder`, :func:`load_adapter`, :func:`save_adapter`.
"""

from .adapter_file import AdapterSpec, check_compatible, load_adapter, read_adapter_spec, save_adapter
from .adapters import ARCHITECTURES, Adapter, AdapterOutput, build_adapter, register_arch
from .conditioning import MIX_MODES, Conditioning, encode_prompts, mix_with_clip
from .encoder import SUPPORTED_ENCODERS, EncoderInfo, MultilingualEncoder, load_encoder, quantize_int8
from .families import FAMILIES, TargetFamily, Tower, get_family
from .prompt import parse_prompt_weights

__all__ = [
    "ARCHITECTURES", "Adapter", "AdapterOutput", "AdapterSpec", "Conditioning", "EncoderInfo", "FAMILIES",
    "MIX_MODES", "MultilingualEncoder", "SUPPORTED_ENCODERS", "TargetFamily", "Tower", "build_adapter",
    "check_compatible", "encode_prompts", "get_family", "load_adapter",
    "load_encoder", "mix_with_clip", "parse_prompt_weights", "quantize_int8", "read_adapter_spec",
    "register_arch", "save_adapter",
]

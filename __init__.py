"""BabelCLIP: any-language prompts for frozen English Stable Diffusion checkpoints.

Importable anywhere (``import babelclip``); inside ComfyUI it also exposes its
nodes. The pure core lives in :mod:`babelclip.models` and
:mod:`babelclip.training`; :mod:`babelclip.nodes` is the ComfyUI glue.
"""

import importlib.util

__version__ = "0.1.0"

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}


def _inside_comfyui() -> bool:
    try:
        return (importlib.util.find_spec("folder_paths") is not None
                and importlib.util.find_spec("comfy.model_management") is not None)
    except (ImportError, ValueError):
        return False


if _inside_comfyui():
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]

"""Import helper: puts ComfyUI on sys.path and forces CPU before comfy.model_management is imported."""
import sys, os
COMFY = os.environ.get("COMFYUI_PATH", "/tmp/flux-research/ComfyUI")  # a current ComfyUI checkout
if COMFY not in sys.path:
    sys.path.insert(0, COMFY)
import comfy.options
comfy.options.enable_args_parsing()
_saved = sys.argv
sys.argv = [sys.argv[0], "--cpu"]
import comfy.cli_args  # parses --cpu
sys.argv = _saved
import comfy.model_management as mm
assert mm.cpu_state == mm.CPUState.CPU

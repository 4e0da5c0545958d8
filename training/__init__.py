"""Training subpackage (recipes, feature cache, trainer, evaluation). Pure torch, no ComfyUI imports."""

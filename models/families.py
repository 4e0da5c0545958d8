"""Target model families: the one description of what each checkpoint family is.

A *family* says everything BabelCLIP needs to know about a checkpoint's text side
and the conditioning its denoiser reads: the token context, the text towers
(width, which layer ComfyUI reads, final layer norm, padding token, which one
gives the pooled vector), the key layouts its teacher is loaded from (single-file
prefixes and diffusers sub-folders), extra conditioning (SDXL's size embedding)
and what its denoiser predicts. No other module hard-codes a context length, a
tower width or a family name: they read it here (``tests/test_family_constants.py``
checks that). Adding a family is one :class:`TargetFamily` in :data:`FAMILIES`
plus, where its towers are not CLIP, one teacher loader and one denoiser adapter.

Detecting the family of a *host's* loaded model object (ComfyUI's CLIP state dict)
is the host glue's job; detecting it from checkpoint files is ``models/teacher.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnsupportedModelError

__all__ = ["TargetFamily", "Tower", "FAMILIES", "get_family", "CLIP_CONTEXT", "PAD_END",
           "UNSUPPORTED_FAMILIES", "UnsupportedFamily", "size_conditioning_ids"]

#: CLIP's token window: start token, 75 text tokens, end token (ComfyUI pads every chunk to it).
CLIP_CONTEXT = 77
#: ``Tower.pad`` value meaning "pad with the tokenizer's end-of-text token" (OpenAI CLIP towers).
PAD_END = "end"


@dataclass(frozen=True)
class Tower:
    """One text tower of a family, as ComfyUI's CLIPTextEncode runs it and as checkpoints store it.

    Attributes:
        name: tower id (``clip_l``, ``clip_h``, ``clip_g``); ComfyUI uses the same names as state-dict prefixes.
        width: width of its hidden states (its share of ``cond_dim``).
        layer: None = last layer; negative = a hidden layer (-2 = penultimate).
        final_norm: apply the final layer norm to a hidden layer's output.
        pad: padding token id, or :data:`PAD_END` for the end-of-text token.
        pooled: this tower supplies the pooled vector (its projected end-of-text state).
        single_file_prefix: key prefix of the tower in a single-file checkpoint.
        openclip: the single-file keys use OpenCLIP names (``transformer.resblocks.*``).
        diffusers_folder: the tower's sub-folder in a diffusers model folder.
    """

    name: str
    width: int
    layer: int | None
    final_norm: bool
    pad: int | str
    pooled: bool
    single_file_prefix: str
    openclip: bool
    diffusers_folder: str


@dataclass(frozen=True)
class TargetFamily:
    """Everything one checkpoint family asks of an adapter and of its teacher.

    Attributes:
        name: stable id stored in adapter files (``sd1``, ``sd2``, ``sdxl``).
        label: human-readable name for messages and the UI.
        short: the shortest name users know it by (``SD1.x``).
        towers: the text towers, in the order their tokens are concatenated.
        context_tokens: tokens per chunk the denoiser's cross-attention is used to (CLIP's window).
        size_conditioning: the denoiser also reads the image size / crop embedding (SDXL's ``time_ids``).
        prediction: what the denoiser predicts: ``"eps"`` (noise) or ``"v"`` (SD2.x 768-v checkpoints; their
            512 base models predict eps — the loaded model's own configuration wins where it says).
    """

    name: str
    label: str
    short: str
    towers: tuple[Tower, ...]
    context_tokens: int = CLIP_CONTEXT
    size_conditioning: bool = False
    prediction: str = "eps"
    cond_dim: int = field(init=False)
    pooled_dim: int = field(init=False)

    def __post_init__(self):
        pooled = [t for t in self.towers if t.pooled]
        if len(pooled) != 1:
            raise ValueError(f"family {self.name!r} needs exactly one pooled tower, has {len(pooled)}")
        object.__setattr__(self, "cond_dim", sum(t.width for t in self.towers))
        object.__setattr__(self, "pooled_dim", pooled[0].width)

    @property
    def parts(self) -> tuple[int, ...]:
        """Widths of the towers concatenated into ``cond_dim``."""
        return tuple(t.width for t in self.towers)

    @property
    def tower_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.towers)


FAMILIES: dict[str, TargetFamily] = {
    f.name: f
    for f in (
        TargetFamily("sd1", "SD1.x (CLIP-L)", "SD1.x", (
            Tower("clip_l", 768, None, True, PAD_END, True, "cond_stage_model.transformer.", False,
                   "text_encoder"),)),
        TargetFamily("sd2", "SD2.x (OpenCLIP-H)", "SD2.x", (
            Tower("clip_h", 1024, -2, True, 0, True, "cond_stage_model.model.", True, "text_encoder"),),
            prediction="v"),
        TargetFamily("sdxl", "SDXL (CLIP-L + OpenCLIP-bigG)", "SDXL", (
            Tower("clip_l", 768, -2, False, PAD_END, False, "conditioner.embedders.0.transformer.", False,
                   "text_encoder"),
            Tower("clip_g", 1280, -2, False, 0, True, "conditioner.embedders.1.model.", True, "text_encoder_2")),
            size_conditioning=True),
    )
}


@dataclass(frozen=True)
class UnsupportedFamily:
    """A family users will meet that BabelCLIP does not target yet, and how to recognise its files.

    ``tower_names``: its text towers under the names :class:`Tower` uses; ``single_file_markers``: key prefixes
    only its single-file checkpoints have; ``diffusers_markers``: sub-folders or pipeline class names only its
    diffusers folders have."""

    label: str
    tower_names: frozenset[str]
    single_file_markers: tuple[str, ...] = ()
    diffusers_markers: tuple[str, ...] = ()


UNSUPPORTED_FAMILIES: tuple[UnsupportedFamily, ...] = (
    UnsupportedFamily("SD3 (CLIP-L + CLIP-G + T5-XXL)", frozenset({"clip_l", "clip_g", "t5xxl"}),
                      ("text_encoders.", "model.diffusion_model.joint_blocks.", "joint_blocks."),
                      ("text_encoder_3", "StableDiffusion3")),
    UnsupportedFamily("Flux (CLIP-L + T5-XXL)", frozenset({"clip_l", "t5xxl"}),
                      ("model.diffusion_model.double_blocks.", "double_blocks."), ("Flux",)),
    UnsupportedFamily("SDXL refiner (OpenCLIP-bigG only)", frozenset({"clip_g"})),
    UnsupportedFamily("a T5-only model", frozenset({"t5xxl"})),
)


def supported_names() -> str:
    """``"SD1.x, SD2.x or SDXL"``: the supported families, for messages."""
    shorts = [f.short for f in FAMILIES.values()]
    return ", ".join(shorts[:-1]) + " or " + shorts[-1] if len(shorts) > 1 else shorts[0]


def get_family(name: str) -> TargetFamily:
    """Return the family called ``name`` or raise :class:`UnsupportedModelError`."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"Unknown target family {name!r}. BabelCLIP supports: {', '.join(FAMILIES)}."
        ) from None


def size_conditioning_ids(height: int, width: int) -> tuple[int, int, int, int, int, int]:
    """The size embedding a ``size_conditioning`` family's denoiser reads for an uncropped image of this size:
    ``(original_h, original_w, crop_top, crop_left, target_h, target_w)``, as diffusers' ``time_ids``."""
    return (height, width, 0, 0, height, width)

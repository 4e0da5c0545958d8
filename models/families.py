"""Target model families: the one description of what each checkpoint family is.

A *family* says everything BabelCLIP needs to know about a checkpoint's text side
and the conditioning its denoiser reads: the token context, the text towers
(CLIP or T5, width, which layer ComfyUI reads, final layer norm, padding token, which
ones give the pooled vector and whether projected), how the towers' tokens are laid
out (side by side, or in sequence segments padded to one width as SD3 does), the key
layouts its teacher is loaded from (single-file prefixes and diffusers sub-folders),
extra conditioning (SDXL's size embedding, Flux's guidance) and what its denoiser
predicts.

Adapters work in the family's *head layout*: tokens ``[B, T, cond_dim]`` where
``cond_dim`` is the sum of the conditioning towers' widths, one token per position.
:meth:`TargetFamily.to_host` turns that into what the denoiser reads (for SD3: the
CLIP-L‖G columns zero-padded to 4096, then the T5 columns as further tokens);
:meth:`TargetFamily.from_host` reads a teacher's conditioning back into head layout. No other module hard-codes a context length, a
tower width or a family name: they read it here (``tests/test_family_constants.py``
checks that). Adding a family is one :class:`TargetFamily` in :data:`FAMILIES`
plus, where its towers are not CLIP, one teacher loader and one denoiser adapter.

Detecting the family of a *host's* loaded model object (ComfyUI's CLIP state dict)
is the host glue's job; detecting it from checkpoint files is ``models/teacher.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import UnsupportedModelError

__all__ = ["TargetFamily", "Tower", "FAMILIES", "get_family", "CLIP_CONTEXT", "PAD_END",
           "UNSUPPORTED_FAMILIES", "UnsupportedFamily", "size_conditioning_ids", "T5_CONTEXT_FLUX",
           "TOWER_KINDS"]

#: CLIP's token window: start token, 75 text tokens, end token (ComfyUI pads every chunk to it).
CLIP_CONTEXT = 77
#: ``Tower.pad`` value meaning "pad with the tokenizer's end-of-text token" (OpenAI CLIP towers).
PAD_END = "end"
#: ComfyUI's Flux T5 tokenizer pads every prompt to at least this many tokens (and never chunks).
T5_CONTEXT_FLUX = 256
#: What a tower is: a CLIP text transformer or a T5 encoder.
TOWER_KINDS = ("clip", "t5")


@dataclass(frozen=True)
class Tower:
    """One text tower of a family, as ComfyUI's CLIPTextEncode runs it and as checkpoints store it.

    Attributes:
        name: tower id (``clip_l``, ``clip_h``, ``clip_g``); ComfyUI uses the same names as state-dict prefixes.
        width: width of its hidden states (its share of ``cond_dim``).
        layer: None = last layer; negative = a hidden layer (-2 = penultimate).
        final_norm: apply the final layer norm to a hidden layer's output.
        pad: padding token id, or :data:`PAD_END` for the end-of-text token.
        pooled: this tower supplies (part of) the pooled vector: its end-of-text state after the final layer
            norm, projected or not (``projected``).
        single_file_prefix: key prefix of the tower in a single-file checkpoint.
        openclip: the single-file keys use OpenCLIP names (``transformer.resblocks.*``).
        diffusers_folder: the tower's sub-folder in a diffusers model folder.
        kind: ``"clip"`` or ``"t5"`` (:data:`TOWER_KINDS`).
        cond: its tokens are part of the conditioning (Flux's CLIP-L supplies the pooled vector only).
        projected: the pooled vector goes through the tower's text projection (False: Flux's and SD3's CLIP-L).
        activation: the CLIP MLP's activation (``quick_gelu`` for OpenAI's CLIP-L, ``gelu`` for OpenCLIP's).
        context: tokens per chunk of this tower when it differs from the family's ``context_tokens`` (Flux's
            CLIP-L reads 77-token chunks while its T5 pads to 256).
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
    kind: str = "clip"
    cond: bool = True
    projected: bool = True
    activation: str = "quick_gelu"
    context: int | None = None


@dataclass(frozen=True)
class TargetFamily:
    """Everything one checkpoint family asks of an adapter and of its teacher.

    Attributes:
        name: stable id stored in adapter files (``sd1``, ``sd2``, ``sdxl``).
        label: human-readable name for messages and the UI.
        short: the shortest name users know it by (``SD1.x``).
        towers: the text towers, in the order their tokens are concatenated (pooled parts in the same order).
        context_tokens: tokens per chunk (per segment) the denoiser is used to: CLIP's window, or the length
            ComfyUI pads T5 to (Flux).
        size_conditioning: the denoiser also reads the image size / crop embedding (SDXL's ``time_ids``).
        prediction: what the denoiser predicts: ``"eps"`` (noise), ``"v"`` (SD2.x 768-v checkpoints; their
            512 base models predict eps — the loaded model's own configuration wins where it says) or
            ``"flow"`` (rectified flow: SD3, Flux).
        segments: groups of tower names; each group's tokens sit side by side and the groups follow each other
            along the sequence (SD3: CLIP-L‖G, then T5). Empty: one segment of every conditioning tower.
        token_width: every segment is zero-padded to this width (SD3: 4096); None: no padding.
        guidance: the distilled guidance a Flux-dev denoiser reads by default (CLIPTextEncodeFlux's 3.5);
            None for families without it.
        cond_dim: the adapter's token width: the conditioning towers' widths side by side (head layout).
        pooled_dim: the pooled vector's width: the pooled towers' widths side by side.
    """

    name: str
    label: str
    short: str
    towers: tuple[Tower, ...]
    context_tokens: int = CLIP_CONTEXT
    size_conditioning: bool = False
    prediction: str = "eps"
    segments: tuple[tuple[str, ...], ...] = ()
    token_width: int | None = None
    guidance: float | None = None
    cond_dim: int = field(init=False)
    pooled_dim: int = field(init=False)

    def __post_init__(self):
        cond = [t for t in self.towers if t.cond]
        if not cond or not any(t.pooled for t in self.towers):
            raise ValueError(f"family {self.name!r} needs a conditioning tower and a pooled one")
        if any(t.kind not in TOWER_KINDS for t in self.towers):
            raise ValueError(f"family {self.name!r}: tower kinds must be in {TOWER_KINDS}")
        segments = self.segments or (tuple(t.name for t in cond),)
        if sorted(n for seg in segments for n in seg) != sorted(t.name for t in cond):
            raise ValueError(f"family {self.name!r}: segments {segments} must hold each conditioning tower once")
        object.__setattr__(self, "segments", segments)
        widths = {t.name: t.width for t in self.towers}
        if self.token_width is not None and any(sum(widths[n] for n in seg) > self.token_width for seg in segments):
            raise ValueError(f"family {self.name!r}: a segment is wider than token_width {self.token_width}")
        object.__setattr__(self, "cond_dim", sum(t.width for t in cond))
        object.__setattr__(self, "pooled_dim", sum(t.width for t in self.towers if t.pooled))

    @property
    def parts(self) -> tuple[int, ...]:
        """Widths of the conditioning towers side by side in ``cond_dim`` (head layout)."""
        return tuple(t.width for t in self.cond_towers)

    @property
    def cond_towers(self) -> tuple[Tower, ...]:
        """The towers whose tokens are conditioning, in head-layout order (segment by segment)."""
        by_name = {t.name: t for t in self.towers}
        return tuple(by_name[n] for seg in self.segments for n in seg)

    @property
    def pooled_parts(self) -> tuple[Tower, ...]:
        """The towers whose pooled vectors are concatenated into ``pooled_dim``, in order."""
        return tuple(t for t in self.towers if t.pooled)

    def tokens_of(self, tower: Tower) -> int:
        """Tokens per chunk of ``tower``."""
        return tower.context or self.context_tokens

    @property
    def tower_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.towers)

    @property
    def host_width(self) -> int:
        """Width of a conditioning token as the denoiser reads it."""
        return self.token_width or self.cond_dim

    def segment_widths(self) -> tuple[int, ...]:
        widths = {t.name: t.width for t in self.towers}
        return tuple(sum(widths[n] for n in seg) for seg in self.segments)

    def to_host(self, cond: torch.Tensor, mask: torch.Tensor | None = None):
        """Head layout ``[B, T, cond_dim]`` -> what the denoiser reads: each segment's columns, zero-padded to
        ``token_width``, one segment after the other along the tokens (``[B, n_segments * T, host_width]``).
        Returns ``(cond, mask)``; the identity for one unpadded segment."""
        if len(self.segments) == 1 and self.token_width is None:
            return cond, mask
        pieces = cond.split(self.segment_widths(), -1)
        host = torch.cat([torch.nn.functional.pad(p, (0, self.host_width - p.shape[-1])) for p in pieces], 1)
        return host, (None if mask is None else mask.repeat(1, len(pieces)))

    def from_host(self, cond: torch.Tensor, segment_tokens: Sequence[int] | None = None) -> torch.Tensor:
        """A teacher's conditioning ``[B, L, host_width]`` -> head layout ``[B, context_tokens, cond_dim]``: the first
        ``context_tokens`` of each segment, each segment's own columns. ``segment_tokens``: where each segment
        starts is given by the length of those before it (default ``context_tokens`` each: one CLIP chunk)."""
        if len(self.segments) == 1 and self.token_width is None:
            return cond[:, : self.context_tokens]
        lengths = list(segment_tokens or [self.context_tokens] * len(self.segments))
        if len(lengths) != len(self.segments):
            raise ValueError(f"{self.label}: {len(lengths)} segment lengths for {len(self.segments)} segments")
        parts, start = [], 0
        for n, width in zip(lengths, self.segment_widths()):
            if n < self.context_tokens or start + n > cond.shape[1]:
                raise ValueError(f"{self.label}: a conditioning of {cond.shape[1]} tokens has no "
                                 f"{self.context_tokens}-token segment at {start}")
            parts.append(cond[:, start: start + self.context_tokens, :width])
            start += n
        return torch.cat(parts, -1)


FAMILIES: dict[str, TargetFamily] = {
    f.name: f
    for f in (
        TargetFamily("sd1", "SD1.x (CLIP-L)", "SD1.x", (
            Tower("clip_l", 768, None, True, PAD_END, True, "cond_stage_model.transformer.", False,
                   "text_encoder"),)),
        TargetFamily("sd2", "SD2.x (OpenCLIP-H)", "SD2.x", (
            Tower("clip_h", 1024, -2, True, 0, True, "cond_stage_model.model.", True, "text_encoder",
                  activation="gelu"),),
            prediction="v"),
        TargetFamily("sdxl", "SDXL (CLIP-L + OpenCLIP-bigG)", "SDXL", (
            Tower("clip_l", 768, -2, False, PAD_END, False, "conditioner.embedders.0.transformer.", False,
                   "text_encoder"),
            Tower("clip_g", 1280, -2, False, 0, True, "conditioner.embedders.1.model.", True, "text_encoder_2",
                  activation="gelu")),
            size_conditioning=True),
        TargetFamily("sd3", "SD3 (CLIP-L + CLIP-G + T5-XXL)", "SD3", (
            Tower("clip_l", 768, -2, False, PAD_END, True, "text_encoders.clip_l.transformer.", False,
                  "text_encoder", projected=False),
            Tower("clip_g", 1280, -2, False, 0, True, "text_encoders.clip_g.transformer.", False, "text_encoder_2",
                  activation="gelu"),
            Tower("t5xxl", 4096, None, True, 0, False, "text_encoders.t5xxl.transformer.", False, "text_encoder_3",
                  kind="t5")),
            prediction="flow", segments=(("clip_l", "clip_g"), ("t5xxl",)), token_width=4096),
        TargetFamily("flux", "Flux (CLIP-L + T5-XXL)", "Flux", (
            Tower("clip_l", 768, None, True, PAD_END, True, "text_encoders.clip_l.transformer.", False,
                  "text_encoder", cond=False, projected=False, context=CLIP_CONTEXT),
            Tower("t5xxl", 4096, None, True, 0, False, "text_encoders.t5xxl.transformer.", False, "text_encoder_2",
                  kind="t5")),
            context_tokens=T5_CONTEXT_FLUX, prediction="flow", guidance=3.5),
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
    UnsupportedFamily("SDXL refiner (OpenCLIP-bigG only)", frozenset({"clip_g"})),
    UnsupportedFamily("a T5-only model (Chroma, Flux Kontext without CLIP-L, PixArt, ...)", frozenset({"t5xxl"})),
    UnsupportedFamily("SD3 without CLIP-L (CLIP-G + T5-XXL)", frozenset({"clip_g", "t5xxl"})),
)


def supported_names() -> str:
    """``"SD1.x, SD2.x, SDXL, SD3 or Flux"``: the supported families, for messages."""
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

"""Target model families and the conditioning each one expects (DESIGN.md §4).

A *family* is what an adapter's output must look like for a given checkpoint:
the width of the cross-attention conditioning and of the pooled vector. The
family of a loaded ComfyUI CLIP is read from its state-dict key prefixes, never
from a file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import UnsupportedModelError

__all__ = ["TargetFamily", "FAMILIES", "get_family", "detect_family_from_keys"]


@dataclass(frozen=True)
class TargetFamily:
    """Shape contract of one checkpoint family.

    Attributes:
        name: stable id stored in adapter files (``sd1``, ``sd2``, ``sdxl``).
        label: human-readable name for messages and the UI.
        cond_dim: width of each conditioning token.
        pooled_dim: width of the pooled vector (``pooled_output``).
        parts: widths of the CLIP towers concatenated into ``cond_dim``.
        clip_keys: top-level key prefixes of ComfyUI's CLIP state dict.
    """

    name: str
    label: str
    cond_dim: int
    pooled_dim: int
    parts: tuple[int, ...]
    clip_keys: frozenset[str]


FAMILIES: dict[str, TargetFamily] = {
    f.name: f
    for f in (
        TargetFamily("sd1", "SD1.x (CLIP-L)", 768, 768, (768,), frozenset({"clip_l"})),
        TargetFamily("sd2", "SD2.x (OpenCLIP-H)", 1024, 1024, (1024,), frozenset({"clip_h"})),
        TargetFamily("sdxl", "SDXL (CLIP-L + OpenCLIP-bigG)", 2048, 1280, (768, 1280),
                     frozenset({"clip_l", "clip_g"})),
    )
}

# Families ComfyUI knows that BabelCLIP does not target yet, for clear messages.
_KNOWN_UNSUPPORTED = {
    frozenset({"clip_g"}): "SDXL refiner (OpenCLIP-bigG only)",
    frozenset({"clip_l", "clip_g", "t5xxl"}): "SD3 (CLIP-L + CLIP-G + T5-XXL)",
    frozenset({"clip_l", "t5xxl"}): "Flux (CLIP-L + T5-XXL)",
    frozenset({"t5xxl"}): "a T5-only model",
}


def get_family(name: str) -> TargetFamily:
    """Return the family called ``name`` or raise :class:`UnsupportedModelError`."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"Unknown target family {name!r}. BabelCLIP supports: {', '.join(FAMILIES)}."
        ) from None


def detect_family_from_keys(keys: Iterable[str], what: str = "the connected CLIP") -> TargetFamily:
    """Detect the family from the state-dict keys of a ComfyUI CLIP model.

    ComfyUI names the towers of its text encoders ``clip_l``, ``clip_h``,
    ``clip_g``, ``t5xxl``...; the set of tower prefixes identifies the family.
    """
    towers = frozenset(k.split(".", 1)[0] for k in keys if "." in k)
    for family in FAMILIES.values():
        if towers == family.clip_keys:
            return family
    for known, label in _KNOWN_UNSUPPORTED.items():
        if towers == known:
            raise UnsupportedModelError(
                f"{what} is {label}, which BabelCLIP does not support yet. "
                f"Use an SD1.x, SD2.x or SDXL checkpoint."
            )
    raise UnsupportedModelError(
        f"Cannot tell which model family {what} belongs to (text-encoder towers: "
        f"{', '.join(sorted(towers)) or 'none'}). BabelCLIP supports SD1.x, SD2.x and SDXL."
    )

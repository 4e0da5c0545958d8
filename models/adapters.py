"""Adapter architectures: frozen encoder states -> a checkpoint's conditioning.

One registry (:data:`ARCHITECTURES`) holds every architecture; adapter files name
theirs in ``babelclip.arch`` and are rebuilt from ``babelclip.arch_config``.
Each adapter maps encoder hidden states ``[B, T, in_dim]`` (with an attention
mask) to conditioning tokens ``[B, T', cond_dim]`` and a pooled vector
``[B, pooled_dim]``, where the widths come from the target family.

Parameter counts at XLM-R-large input (``in_dim=1024``), default settings,
checked by ``tests/test_adapters.py`` (SD3's tokens are CLIP-L‖G and T5 side by side, 6,144 wide; Flux's are
T5's, 4,096 wide; the resampler emits each family's context: 77 tokens per segment, 256 for Flux):

==============  ===========================================  ===========  ===========  ===========  ===========
arch            approach it reproduces                        SD1.5        SDXL         SD3          Flux
==============  ===========================================  ===========  ===========  ===========  ===========
``linear``      Multilingual-CLIP projection                  1,574,400    3,411,200    8,396,800    4,985,600
``mlp``         PEA-Diffusion MLP adapter                     3,475,456    6,817,792    20,973,568   9,439,232
``bottleneck``  residual bottleneck adapter (r=64)            1,476,928    4,986,176    19,675,200   7,873,344
``resampler``   MuLan / mCLIP projector (learned queries)     11,480,832   12,858,880   16,599,296   14,177,536
==============  ===========================================  ===========  ===========  ===========  ===========

Options that let :mod:`babelclip.models.convert` reproduce the peers' published adapters exactly:
``linear`` with ``pool="first"`` (AltCLIP's pooled vector from the first, CLS, token); ``mlp`` with
``layers`` (PEA-Diffusion's SD1.5 adapters have 3 or 5 linear layers) and ``pool="trunk"`` (PEA-Diffusion's
SDXL layout: the MLP emits the pooled width, the pooled vector is its token mean and the conditioning a
biased linear map of its GELU); and the ``mulan`` architecture, MuLan's language adapter as published (one
branch per output part: a 2-layer projection, learned queries and a full ``nn.Transformer``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import IncompatibleAdapterError
from .families import CLIP_CONTEXT, TargetFamily

__all__ = [
    "AdapterConfig",
    "AdapterOutput",
    "Conditioning",
    "Adapter",
    "ARCHITECTURES",
    "register_arch",
    "build_adapter",
    "trainable_architectures",
    "masked_mean",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, T, D]`` over the positions where ``mask [B, T]`` is 1."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class AdapterConfig:
    """Settings shared by every architecture."""

    in_dim: int = field(metadata={"help": "hidden size of the multilingual encoder"})
    cond_dim: int = field(metadata={"help": "width of a conditioning token (768 SD1, 1024 SD2, 2048 SDXL)"})
    pooled_dim: int = field(metadata={"help": "width of the pooled vector (768 SD1, 1024 SD2, 1280 SDXL)"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Conditioning:
    """What an adapter and :func:`~babelclip.models.encode_prompts` return: tokens ``cond [B, L, cond_dim]``,
    ``pooled [B, pooled_dim]`` and ``mask [B, L]`` (1 = a real prompt token)."""

    cond: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor


AdapterOutput = Conditioning  # the name adapters' forward() was first documented with


class Adapter(nn.Module):
    """Base class. Subclasses set ``arch``, ``approach``, ``config_class`` and ``token_aligned``.

    ``token_aligned`` is True when output token *i* comes from input token *i*
    (so prompt weights can be applied to the output, as ComfyUI does); False
    when the adapter emits its own tokens (weights are then applied to the
    encoder states it reads).
    """

    arch: ClassVar[str]
    approach: ClassVar[str]
    config_class: ClassVar[type[AdapterConfig]]
    token_aligned: ClassVar[bool] = True
    #: offered for training (False: an architecture that exists to load a peer's published weights)
    trainable: ClassVar[bool] = True

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> AdapterOutput:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


ARCHITECTURES: dict[str, type[Adapter]] = {}


def register_arch(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an architecture to :data:`ARCHITECTURES` under ``cls.arch``."""
    if cls.arch in ARCHITECTURES:
        raise ValueError(f"adapter architecture {cls.arch!r} is registered twice")
    ARCHITECTURES[cls.arch] = cls
    return cls


def trainable_architectures() -> list[str]:
    """The architectures the training CLI and node offer (every registered one but the converters' own)."""
    return [name for name, cls in ARCHITECTURES.items() if cls.trainable]


def build_adapter(arch: str, in_dim: int, family: TargetFamily, *, device=None, dtype=None,
                  **options) -> Adapter:
    """Build a freshly initialised adapter of ``arch`` from ``in_dim`` to ``family``'s widths."""
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise IncompatibleAdapterError(
            f"Unknown adapter architecture {arch!r}; this BabelCLIP knows {', '.join(sorted(ARCHITECTURES))}. "
            f"Update BabelCLIP if the adapter was made by a newer version."
        )
    if any(f.name == "num_queries" for f in dataclasses.fields(cls.config_class)):
        options.setdefault("num_queries", family.context_tokens)  # fixed-length adapters emit the family's context
    config = cls.config_class(in_dim=in_dim, cond_dim=family.cond_dim, pooled_dim=family.pooled_dim, **options)
    return config_to_adapter(arch, config, device=device, dtype=dtype)


def config_to_adapter(arch: str, config: AdapterConfig, *, device=None, dtype=None) -> Adapter:
    """Instantiate ``arch`` from a config (``device='meta'`` allocates nothing)."""
    cls = ARCHITECTURES[arch]
    with torch.device(device or "cpu"):
        adapter = cls(config)
    if dtype is not None:
        adapter.to(dtype)
    return adapter


# ---------------------------------------------------------------------------------------------
#: Where the linear adapter's pooled vector comes from: the masked mean state, or the first (CLS) token.
LINEAR_POOLS = ("mean", "first")


@dataclass
class LinearConfig(AdapterConfig):
    pool_norm: bool = field(default=False, metadata={"help": "scale the mean encoder state to unit RMS before the "
                                                             "pooled projection (its direction only, as retrieval "
                                                             "with the encoder's own embeddings)"})
    pool: str = field(default="mean", metadata={"help": "pooled vector from the masked 'mean' encoder state "
                                                        "(M-CLIP) or the 'first' token (CLS, as AltCLIP)"})

    def __post_init__(self):
        if not isinstance(self.pool_norm, bool):
            raise ValueError(f"pool_norm must be true or false, not {str(self.pool_norm)[:40]!r}")
        if self.pool not in LINEAR_POOLS:
            raise ValueError(f"pool must be one of {LINEAR_POOLS}, not {str(self.pool)[:40]!r}")


@register_arch
class LinearAdapter(Adapter):
    """Token-wise linear map; pooled = linear map of the masked token mean.

    Reproduces Multilingual-CLIP (M-CLIP), whose text tower is a multilingual
    encoder followed by mean pooling and one linear projection.
    """

    arch = "linear"
    approach = "Multilingual-CLIP: token-wise linear + masked mean-pool projection"
    config_class = LinearConfig

    def __init__(self, config: LinearConfig):
        super().__init__(config)
        self.proj = nn.Linear(config.in_dim, config.cond_dim)
        self.pooled_proj = nn.Linear(config.in_dim, config.pooled_dim)

    def forward(self, hidden, mask):
        mean = hidden[:, 0] if self.config.pool == "first" else masked_mean(hidden, mask)
        if self.config.pool_norm:
            mean = nn.functional.normalize(mean, dim=-1) * mean.shape[-1] ** 0.5
        return AdapterOutput(self.proj(hidden), self.pooled_proj(mean), mask)


#: Where an MLP adapter's pooled vector comes from: the mean of its output tokens, the mean encoder state, or
#: (``"trunk"``, PEA-Diffusion's SDXL layout) the mean of the MLP's own output, which a head maps to the tokens.
POOL_SOURCES = ("output", "input", "trunk")


@dataclass
class MLPConfig(AdapterConfig):
    hidden_dim: int = field(default=1024, metadata={"help": "width of the two hidden layers"})
    pool: str = field(default="output", metadata={"help": "pooled vector from the mean 'output' token, a projection "
                                                          "of the mean 'input' (encoder) state, or the mean 'trunk' "
                                                          "(PEA-Diffusion SDXL: MLP -> pooled width, head -> tokens)"})
    layers: int = field(default=3, metadata={"help": "linear layers in the MLP (GELU between them)"})

    def __post_init__(self):
        if self.pool not in POOL_SOURCES:
            raise ValueError(f"pool must be one of {POOL_SOURCES}, not {str(self.pool)[:40]!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layers must be a whole number of at least 1, not {str(self.layers)[:40]!r}")


@register_arch
class MLPAdapter(Adapter):
    """LN -> Linear -> GELU -> Linear -> GELU -> Linear (no biases); pooled = projected token mean.

    Reproduces the PEA-Diffusion adapter. With ``pool="input"`` the pooled vector is instead a linear map of
    the encoder's mean state, the sentence embedding multilingual encoders align across languages. ``layers``
    sets the number of linear layers; ``pool="trunk"`` is PEA-Diffusion's published SDXL layout: the MLP
    ends at the pooled width, pooled = its masked token mean, cond = ``head(GELU(trunk))`` (with bias).
    """

    arch = "mlp"
    approach = "PEA-Diffusion: LN->Linear->GELU->Linear->GELU->Linear, no bias; pooled = token mean"
    config_class = MLPConfig

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        h = config.hidden_dim
        trunk = config.pool == "trunk"
        out = config.pooled_dim if trunk else config.cond_dim
        widths = [config.in_dim] + [h] * (config.layers - 1) + [out]
        mods: list[nn.Module] = [nn.LayerNorm(config.in_dim)]
        for i in range(config.layers):
            if i:
                mods.append(nn.GELU())
            mods.append(nn.Linear(widths[i], widths[i + 1], bias=False))
        self.net = nn.Sequential(*mods)
        if trunk:
            self.head = nn.Linear(config.pooled_dim, config.cond_dim)
        else:
            pool_in = config.cond_dim if config.pool == "output" else config.in_dim
            self.pooled_proj = nn.Linear(pool_in, config.pooled_dim, bias=False)

    def forward(self, hidden, mask):
        if self.config.pool == "trunk":
            trunk = self.net(hidden)
            return AdapterOutput(self.head(nn.functional.gelu(trunk)), masked_mean(trunk, mask), mask)
        cond = self.net(hidden)
        pooled_from = cond if self.config.pool == "output" else hidden
        return AdapterOutput(cond, self.pooled_proj(masked_mean(pooled_from, mask)), mask)


@dataclass
class BottleneckConfig(AdapterConfig):
    rank: int = field(default=64, metadata={"help": "width r of the residual bottleneck"})


@register_arch
class BottleneckAdapter(Adapter):
    """Input projection, then a residual bottleneck ``h + Up(GELU(Down(h)))``; pooled = projected mean.

    A Houlsby-style adapter on top of a linear map: the projection carries the
    bulk of the mapping, the zero-initialised bottleneck learns a correction.
    """

    arch = "bottleneck"
    approach = "residual bottleneck adapter: projection + h + Up(GELU(Down(h))), r=64"
    config_class = BottleneckConfig

    def __init__(self, config: BottleneckConfig):
        super().__init__(config)
        self.in_proj = nn.Linear(config.in_dim, config.cond_dim)
        self.down = nn.Linear(config.cond_dim, config.rank)
        self.up = nn.Linear(config.rank, config.cond_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.pooled_proj = nn.Linear(config.cond_dim, config.pooled_dim)

    def forward(self, hidden, mask):
        h = self.in_proj(hidden)
        cond = h + self.up(nn.functional.gelu(self.down(h)))
        return AdapterOutput(cond, self.pooled_proj(masked_mean(cond, mask)), mask)


@dataclass
class ResamplerConfig(AdapterConfig):
    num_queries: int = field(default=CLIP_CONTEXT, metadata={"help": "number of conditioning tokens emitted "
                                                                     "(build_adapter: the family's context)"})
    width: int = field(default=768, metadata={"help": "internal width of the transformer"})
    layers: int = field(default=1, metadata={"help": "transformer layers (cross-attention + self-attention + FFN)"})
    heads: int = field(default=8, metadata={"help": "attention heads"})
    ff_mult: int = field(default=4, metadata={"help": "FFN width as a multiple of width"})


@register_arch
class ResamplerAdapter(Adapter):
    """Projection + a small transformer whose learned queries attend to the encoder states.

    Reproduces the MuLan language adapter and the mCLIP projector: it emits a
    fixed number of tokens (77 by default) whatever the prompt length.
    """

    arch = "resampler"
    approach = "MuLan / mCLIP projector: projection + transformer with learned queries"
    config_class = ResamplerConfig
    token_aligned = False

    def __init__(self, config: ResamplerConfig):
        super().__init__(config)
        w = config.width
        self.in_proj = nn.Linear(config.in_dim, w)
        self.queries = nn.Parameter(torch.randn(config.num_queries, w) * w ** -0.5)
        layer = nn.TransformerDecoderLayer(w, config.heads, dim_feedforward=w * config.ff_mult, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, config.layers)
        self.norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, config.cond_dim)
        self.pooled_proj = nn.Linear(w, config.pooled_dim)

    def forward(self, hidden, mask):
        memory = self.in_proj(hidden)
        q = self.queries.unsqueeze(0).expand(hidden.shape[0], -1, -1)
        x = self.norm(self.blocks(q, memory, memory_key_padding_mask=mask == 0))
        out_mask = torch.ones(x.shape[:2], dtype=mask.dtype, device=mask.device)
        return AdapterOutput(self.out_proj(x), self.pooled_proj(x.mean(1)), out_mask)


# ---------------------------------------------------------------------------------------------
#: Where the ``mulan`` adapter's pooled vector comes from: zeros (MuLan's own SDXL default) or the mean output token.
MULAN_POOLS = ("zero", "mean")
MAX_MULAN_PARTS = 8


@dataclass
class MuLanConfig(AdapterConfig):
    num_queries: int = field(default=CLIP_CONTEXT, metadata={"help": "learned queries = conditioning tokens emitted "
                                                                     "(MuLan's published adapters: 120)"})
    parts: list = field(default_factory=list, metadata={"help": "output width of each branch, concatenated in this "
                                                                "order (empty: one branch of cond_dim; MuLan SDXL: "
                                                                "[1280, 768])"})
    encoder_layers: int = field(default=1, metadata={"help": "transformer encoder layers over the projected states"})
    decoder_layers: int = field(default=1, metadata={"help": "transformer decoder layers (queries attend to states)"})
    heads: int = field(default=8, metadata={"help": "attention heads"})
    ff_mult: int = field(default=4, metadata={"help": "FFN width as a multiple of a branch's width"})
    pool: str = field(default="zero", metadata={"help": "pooled vector: 'zero' (MuLan forces SDXL's pooled prompt "
                                                        "to zeros) or the 'mean' output token (needs cond_dim == "
                                                        "pooled_dim)"})
    mask_memory: bool = field(default=True, metadata={"help": "hide padding from attention (MuLan itself attends "
                                                              "to every position it is given: false)"})

    def __post_init__(self):
        parts = list(self.parts) or [self.cond_dim]
        if len(parts) > MAX_MULAN_PARTS or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65536
                                               for p in parts):
            raise ValueError(f"parts must be at most {MAX_MULAN_PARTS} whole widths, not {str(self.parts)[:60]!r}")
        if sum(parts) != self.cond_dim:
            raise ValueError(f"parts {parts} must add up to cond_dim {self.cond_dim}")
        if any(p % self.heads for p in parts):
            raise ValueError(f"every part width {parts} must be a multiple of heads={self.heads}")
        if self.pool not in MULAN_POOLS:
            raise ValueError(f"pool must be one of {MULAN_POOLS}, not {str(self.pool)[:40]!r}")
        if self.pool == "mean" and self.cond_dim != self.pooled_dim:
            raise ValueError(f"pool='mean' needs cond_dim == pooled_dim, not {self.cond_dim} and {self.pooled_dim}")
        if not isinstance(self.mask_memory, bool):
            raise ValueError(f"mask_memory must be true or false, not {str(self.mask_memory)[:40]!r}")
        self.parts = parts


class _MuLanBranch(nn.Module):
    """One output part: ``Linear -> GELU -> Linear``, then ``nn.Transformer(src=states, tgt=queries)``."""

    def __init__(self, config: MuLanConfig, width: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(config.in_dim, width), nn.GELU(), nn.Linear(width, width))
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, width) * width ** -0.5)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ... norm_first was True": harmless
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(d_model=width, nhead=config.heads,
                                              num_encoder_layers=config.encoder_layers,
                                              num_decoder_layers=config.decoder_layers,
                                              dim_feedforward=width * config.ff_mult, dropout=0.0, batch_first=True,
                                              norm_first=True)

    def forward(self, hidden, padding):
        tgt = self.queries.expand(hidden.shape[0], -1, -1)
        return self.transformer(src=self.proj(hidden), tgt=tgt, src_key_padding_mask=padding,
                                memory_key_padding_mask=padding)


@register_arch
class MuLanAdapter(Adapter):
    """MuLan's language adapter: per output part, a 2-layer projection of the encoder states, a transformer
    encoder over them and a decoder whose learned queries read them; the parts are concatenated.

    The layout of MuLan's published adapters (``mulankit``'s ``LanguageAdapter``; SDXL: two branches, 1280
    then 768 wide), so that they convert without loss. Emits ``num_queries`` tokens whatever the prompt length.
    """

    arch = "mulan"
    approach = "MuLan: per part Linear-GELU-Linear + nn.Transformer (encoder + decoder with learned queries)"
    config_class = MuLanConfig
    token_aligned = False
    trainable = False  # converted MuLan files load; training one from scratch is not a tested recipe

    def __init__(self, config: MuLanConfig):
        super().__init__(config)
        self.branches = nn.ModuleList(_MuLanBranch(config, w) for w in config.parts)

    def forward(self, hidden, mask):
        padding = (mask == 0) if self.config.mask_memory else None
        cond = torch.cat([b(hidden, padding) for b in self.branches], -1)
        if self.config.pool == "mean":
            pooled = cond.mean(1)
        else:
            pooled = cond.new_zeros(cond.shape[0], self.config.pooled_dim)
        out_mask = torch.ones(cond.shape[:2], dtype=mask.dtype, device=mask.device)
        return AdapterOutput(cond, pooled, out_mask)

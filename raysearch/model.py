"""A permutation-equivariant particle transformer (PET-like backbone) and its three heads.

The backbone maps a padded particle set to one token per particle plus a class token:
    standardise features -> per-particle MLP embedding (+ optional k-NN local block in deta-dphi)
    -> prepend class token -> add condition vector (time / jet type / multiplicity) to every token
    -> pre-norm transformer blocks (scaled_dot_product_attention with key-padding masks) -> LayerNorm.
Nothing depends on particle order, and padded slots are never attended to, so outputs are
equivariant (per particle) or invariant (class token) under permutations of the real particles.

Heads (`raysearch.objectives` holds their losses): classifier on the class token; masked-particle
modeling (mask token + angular cue -> hidden features); flow matching (own input embedding for the
generated features, time and condition embeddings, per-particle velocity).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raysearch.errors import fail

SIZES: dict[str, dict[str, Any]] = {
    # ~0.2M parameters: trains usefully on 2 CPU cores.
    "tiny": dict(width=64, depth=4, heads=4, mlp_ratio=2.0, knn=8),
    # OmniLearned-small-like.
    "s": dict(width=128, depth=8, heads=8, mlp_ratio=2.0, knn=10),
    "m": dict(width=512, depth=12, heads=16, mlp_ratio=2.0, knn=10),
    "l": dict(width=1024, depth=16, heads=16, mlp_ratio=2.0, knn=10),
}


@dataclass
class ModelConfig:
    """Backbone and head sizes; `size` picks defaults from `SIZES`, other fields override them."""

    size: str = "tiny"
    """Named size: tiny, s, m or l."""
    width: int | None = None
    """Token width (embedding dimension)."""
    depth: int | None = None
    """Number of transformer blocks."""
    heads: int | None = None
    """Attention heads per block."""
    mlp_ratio: float | None = None
    """Hidden width of each block's MLP relative to `width`."""
    knn: int | None = None
    """Neighbours of the local block in deta-dphi; 0 turns the block off."""
    dropout: float = 0.0
    """Dropout inside blocks (fine-tuning may raise it)."""
    features: tuple[str, ...] = ()
    """Input particle feature names (set from the pre-training data)."""
    num_classes: int = 0
    """Classes of the pre-training classifier head."""
    fm_features: tuple[str, ...] = ("deta", "dphi", "log_pt_rel")
    """Features the flow-matching head generates; chosen to map 1:1 onto JetNet's
    (etarel, phirel, log ptrel) so that a pre-trained generator transfers to JetNet-style generation."""
    max_particles: int = 128
    """Slots per jet; the multiplicity condition is n / max_particles."""

    def __post_init__(self):
        if self.size not in SIZES:
            fail(f"model.size: unknown size {self.size!r}, expected one of {sorted(SIZES)}")
        for k, v in SIZES[self.size].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.features, self.fm_features = tuple(self.features), tuple(self.fm_features)
        if self.width % self.heads:
            fail(f"model.width ({self.width}) must be a multiple of model.heads ({self.heads})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"], d["fm_features"] = list(self.features), list(self.fm_features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            fail(f"model: unknown field(s) {sorted(unknown)}, expected some of {sorted(known)}")
        return cls(**d)

    def angle_index(self) -> tuple[int, int]:
        """Indices of (deta, dphi) in `features` (the MPM cue and the k-NN metric)."""
        for a, b in (("deta", "dphi"), ("etarel", "phirel")):
            if a in self.features and b in self.features:
                return self.features.index(a), self.features.index(b)
        fail(f"model.features: need angular coordinates (deta, dphi) among {list(self.features)}")


class Mlp(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class Block(nn.Module):
    """Pre-norm transformer block; attention via scaled_dot_product_attention with a padding mask."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = Mlp(width, int(width * mlp_ratio), width, dropout)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.norm2(x))


class LocalBlock(nn.Module):
    """k nearest neighbours in (deta, dphi): mean of MLP(x_i, x_j - x_i) over real neighbours."""

    def __init__(self, n_features: int, width: int, k: int, angle_index: tuple[int, int]):
        super().__init__()
        self.k, self.angle_index = k, list(angle_index)
        self.edge = Mlp(2 * n_features, width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, f = x.shape
        k = min(self.k, n - 1)
        if k <= 0:
            return torch.zeros(b, n, self.edge[-1].out_features, device=x.device, dtype=x.dtype)
        pos = x[..., self.angle_index]
        d = torch.cdist(pos, pos)
        big = torch.finfo(d.dtype).max
        d = d.masked_fill(~mask.unsqueeze(1), big)
        d.diagonal(dim1=1, dim2=2).fill_(big)
        dist, idx = d.topk(k, dim=-1, largest=False)
        valid = (dist < big).unsqueeze(-1) & mask.unsqueeze(-1).unsqueeze(-1)
        nbr = torch.gather(x.unsqueeze(1).expand(b, n, n, f), 2, idx.unsqueeze(-1).expand(b, n, k, f))
        centre = x.unsqueeze(2).expand_as(nbr)
        msg = self.edge(torch.cat([centre, nbr - centre], dim=-1)) * valid
        return msg.sum(2) / valid.sum(2).clamp(min=1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (B,) -> (B, dim)."""
    half = dim // 2
    # Frequencies from 100 down to 0.1 per unit time: resolves both coarse and fine time steps.
    freqs = 100.0 * torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class Backbone(nn.Module):
    """Shared particle transformer; saved and loaded as its own artefact."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nf = len(cfg.features)
        self.register_buffer("feat_mean", torch.zeros(nf))
        self.register_buffer("feat_std", torch.ones(nf))
        self.embed = Mlp(nf, cfg.width, cfg.width)
        self.local = LocalBlock(nf, cfg.width, cfg.knn, cfg.angle_index()) if cfg.knn else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-3))

    def standardize(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ((x - self.feat_mean) / self.feat_std) * mask.unsqueeze(-1)

    def embed_particles(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Standardised features (B, N, F) -> tokens (B, N, width), zero at padding."""
        h = self.embed(x)
        if self.local is not None:
            h = h + self.local(x, mask)
        return h * mask.unsqueeze(-1)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor,
               cond: torch.Tensor | None = None) -> torch.Tensor:
        """Particle tokens (B, N, W) -> (B, 1 + N, W); index 0 is the class token."""
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        if cond is not None:
            x = x + cond.unsqueeze(1)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)
        attn_mask = keep[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return self.norm(x)


class ClassifierHead(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, num_classes))

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.net(encoded[:, 0])


class MPMHead(nn.Module):
    """Masked particle modeling: masked slots keep only (deta, dphi); the rest is reconstructed.

    Continuous features are regressed (standardised MSE); the one-hot particle-type columns, when
    the data has them, are predicted with cross-entropy.
    """

    TYPE_FEATURES = ("is_charged_hadron", "is_neutral_hadron", "is_photon", "is_electron", "is_muon")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ai = cfg.angle_index()
        self.angle_index = list(ai)
        self.type_index = [cfg.features.index(f) for f in self.TYPE_FEATURES if f in cfg.features]
        if len(self.type_index) != len(self.TYPE_FEATURES):
            self.type_index = []
        self.reg_index = [i for i in range(len(cfg.features)) if i not in ai and i not in self.type_index]
        self.mask_token = nn.Parameter(torch.zeros(cfg.width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.cue = nn.Linear(2, cfg.width)
        self.out = Mlp(cfg.width, cfg.width, len(self.reg_index) + len(self.type_index))


class FlowMatchingHead(nn.Module):
    """Per-particle velocity of the features `cfg.fm_features`, conditioned on time, class, multiplicity."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        nf = len(cfg.fm_features)
        self.register_buffer("feat_mean", torch.zeros(nf))
        self.register_buffer("feat_std", torch.ones(nf))
        self.embed = Mlp(nf, cfg.width, cfg.width)
        self.time = Mlp(cfg.width, cfg.width, cfg.width)
        self.cond_class = nn.Embedding(max(num_classes, 1), cfg.width)
        self.cond_mult = nn.Linear(1, cfg.width)
        self.out = Mlp(cfg.width, cfg.width, nf)
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.width, self.max_particles = cfg.width, cfg.max_particles

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-3))

    def condition(self, t: torch.Tensor, label: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        mult = (n.float() / self.max_particles).unsqueeze(1)
        return self.time(timestep_embedding(t, self.width)) + self.cond_class(label) + self.cond_mult(mult)

    def velocity(self, backbone: Backbone, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                 label: torch.Tensor) -> torch.Tensor:
        """Velocity (B, N, F_fm) at standardised state x_t; zero at padding."""
        tokens = self.embed(x_t) * mask.unsqueeze(-1)
        enc = backbone.encode(tokens, mask, self.condition(t, label, mask.sum(1)))
        return self.out(enc[:, 1:]) * mask.unsqueeze(-1)


HEAD_NAMES = ("cls", "mpm", "fm")


class JetModel(nn.Module):
    """Backbone plus the heads of the objectives in use (a head whose weight is 0 is not built)."""

    def __init__(self, cfg: ModelConfig, heads: tuple[str, ...] = HEAD_NAMES):
        super().__init__()
        self.cfg = cfg
        unknown = set(heads) - set(HEAD_NAMES)
        if unknown:
            fail(f"heads: unknown head(s) {sorted(unknown)}, expected some of {list(HEAD_NAMES)}")
        self.backbone = Backbone(cfg)
        self.heads = nn.ModuleDict()
        if "cls" in heads:
            if cfg.num_classes < 2:
                fail("model.num_classes: the classification head needs at least 2 classes")
            self.heads["cls"] = ClassifierHead(cfg.width, cfg.num_classes)
        if "mpm" in heads:
            self.heads["mpm"] = MPMHead(cfg)
        if "fm" in heads:
            self.heads["fm"] = FlowMatchingHead(cfg, cfg.num_classes)

    def forward(self, batch, mix, objectives, class_weights=None, generator=None):
        """The mixed pre-training loss of a batch (a `LossOutput`); DDP wraps this call."""
        from raysearch.objectives.mix import mix_loss

        return mix_loss(self, batch, mix, objectives, class_weights, generator)

    def classify(self, particles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class logits from standardised-on-the-fly raw features."""
        x = self.backbone.standardize(particles, mask)
        enc = self.backbone.encode(self.backbone.embed_particles(x, mask), mask)
        return self.heads["cls"](enc)

    def fm_index(self) -> list[int]:
        missing = [f for f in self.cfg.fm_features if f not in self.cfg.features]
        if missing:
            fail(f"model.fm_features: {missing} are not among the input features {list(self.cfg.features)}")
        return [self.cfg.features.index(f) for f in self.cfg.fm_features]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""A permutation-equivariant particle transformer (PET-like backbone) and its three heads.

The backbone maps a padded particle set to one token per particle plus a class token:
    standardise features -> per-particle MLP embedding (+ optional k-NN local block in deta-dphi)
    -> prepend the class token and any condition tokens -> add the time embedding to every token
    -> pre-norm transformer blocks (scaled_dot_product_attention with key-padding masks) -> LayerNorm.
Nothing depends on particle order, and padded slots are never attended to, so outputs are
equivariant (per particle) or invariant (class token) under permutations of the real particles.

Heads (`raysearch.objectives` holds their losses): classifier on the class token; masked-particle
modeling (mask token + angular cue -> hidden features); flow matching (own input embedding for the
generated features, one condition token per generation condition, per-particle velocity).

Why conditions are tokens and time is added: a condition (jet type, multiplicity, jet pT, jet mass)
is information about the whole jet that particles look up through attention, like the class token,
and more conditions cost one token each rather than a wider embedding. The time sets how noisy every
particle's own input is, so each token gets it directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
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

CONDITIONS = ("type", "multiplicity", "jet_pt", "jet_mass")
"""Possible generation conditions; all but `type` are continuous values, standardised by the head."""


def continuous_conditions(conditions: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in conditions if c != "type")


def jet_conditions(conditions: tuple[str, ...]) -> tuple[str, ...]:
    """The conditions read from jet-level features (all but type and multiplicity), in order."""
    return tuple(c for c in conditions if c not in ("type", "multiplicity"))


def condition_stats(conditions: tuple[str, ...], n_particles: np.ndarray, jet: np.ndarray,
                    jet_features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and width of each continuous condition over the given jets (for the head's buffers)."""
    cols = []
    for c in continuous_conditions(conditions):
        if c == "multiplicity":
            cols.append(np.asarray(n_particles, np.float64))
        else:
            cols.append(np.asarray(jet, np.float64)[:, jet_condition_index((c,), jet_features, "data")[0]])
    if not cols:
        return np.zeros(0, np.float32), np.ones(0, np.float32)
    v = np.stack(cols, axis=1)
    return v.mean(0).astype(np.float32), v.std(0).astype(np.float32)


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
    """Slots per jet of the pre-training data."""
    fm_matched_source: bool = True
    """Flow matching's Gaussian source matched to the data: each generated feature standardised with
    the training data's mean and width (so eps ~ N(mean, width) in raw units). False: N(0, 1) in raw
    feature units."""
    jet_features: tuple[str, ...] = ()
    """Jet-level feature names of the pre-training data (set from it); jet pT/mass conditions are read
    from these columns."""
    fm_conditions: tuple[str, ...] = ("type", "multiplicity")
    """What generation is conditioned on, one condition token each: some of `type` (jet class),
    `multiplicity` (number of particles), `jet_pt`, `jet_mass`. The default is JetNet's usual set;
    adding jet_pt/jet_mass generates jets of a requested pT and mass (the held-out real jets' values
    at evaluation, so W1M then measures how well the mass condition is met)."""

    def __post_init__(self):
        if self.size not in SIZES:
            fail(f"model.size: unknown size {self.size!r}, expected one of {sorted(SIZES)}")
        for k, v in SIZES[self.size].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.features, self.fm_features = tuple(self.features), tuple(self.fm_features)
        self.jet_features, self.fm_conditions = tuple(self.jet_features), tuple(self.fm_conditions)
        bad = [c for c in self.fm_conditions if c not in CONDITIONS]
        if bad or len(set(self.fm_conditions)) != len(self.fm_conditions):
            fail(f"model.fm_conditions: expected distinct names among {list(CONDITIONS)}, "
                 f"got {list(self.fm_conditions)}")
        if self.width % self.heads:
            fail(f"model.width ({self.width}) must be a multiple of model.heads ({self.heads})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("features", "fm_features", "jet_features", "fm_conditions"):
            d[k] = list(d[k])
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

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor, time: torch.Tensor | None = None,
               cond_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Particle tokens (B, N, W) -> (B, 1 + N, W); index 0 is the class token.

        `time` (B, W) is added to every token; `cond_tokens` (B, K, W) join the sequence after the
        class token (always attended to) and are dropped from the output.
        """
        b = tokens.shape[0]
        k = 0 if cond_tokens is None else cond_tokens.shape[1]
        parts = [self.cls_token.expand(b, -1, -1).to(tokens.dtype)]
        if k:
            parts.append(cond_tokens)
        x = torch.cat(parts + [tokens], dim=1)
        if time is not None:
            x = x + time.unsqueeze(1)
        keep = torch.cat([torch.ones(b, 1 + k, dtype=torch.bool, device=mask.device), mask], dim=1)
        attn_mask = keep[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = self.norm(x)
        return torch.cat([x[:, :1], x[:, 1 + k:]], dim=1) if k else x


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
    """Per-particle velocity of the features `cfg.fm_features`, conditioned on time and `cfg.fm_conditions`.

    Each condition becomes one token: the jet type through an embedding, each continuous condition
    (multiplicity, jet pT, jet mass; standardised with the training data's mean and width, kept in
    the head's buffers so a reused head reads new data in the same units) through its own small MLP.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        nf = len(cfg.fm_features)
        self.register_buffer("feat_mean", torch.zeros(nf))
        self.register_buffer("feat_std", torch.ones(nf))
        self.continuous = continuous_conditions(cfg.fm_conditions)
        self.jet_conditions = jet_conditions(cfg.fm_conditions)
        """Conditions read from jet-level features (callers pass them in this order)."""
        # Replaced by the data's statistics before training; multiplicity starts on a sensible scale.
        half = cfg.max_particles / 2
        mult = [c == "multiplicity" for c in self.continuous]
        self.register_buffer("cond_mean", torch.tensor([half if m else 0.0 for m in mult]))
        self.register_buffer("cond_std", torch.tensor([half / 2 if m else 1.0 for m in mult]))
        self.embed = Mlp(nf, cfg.width, cfg.width)
        self.time = Mlp(cfg.width, cfg.width, cfg.width)
        self.cond_type = nn.Embedding(max(num_classes, 1), cfg.width) if "type" in cfg.fm_conditions else None
        self.cond_value = nn.ModuleDict({c: Mlp(1, cfg.width, cfg.width) for c in self.continuous})
        self.out = Mlp(cfg.width, cfg.width, nf)
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.width, self.matched_source = cfg.width, cfg.fm_matched_source

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor,
                          cond_mean: torch.Tensor | None = None, cond_std: torch.Tensor | None = None) -> None:
        """Data statistics: feature ones define the source (ignored without `fm_matched_source`)."""
        if self.matched_source:
            self.feat_mean.copy_(mean)
            self.feat_std.copy_(std.clamp(min=1e-3))
        if cond_mean is not None:
            self.cond_mean.copy_(cond_mean)
            self.cond_std.copy_(cond_std.clamp(min=1e-3))

    def condition_tokens(self, label: torch.Tensor, n: torch.Tensor,
                         jet: torch.Tensor | None) -> torch.Tensor | None:
        """(B, K, W) tokens of the conditions; `jet` (B, len(jet_conditions)) holds the jet-level ones."""
        values = {"multiplicity": n.float()}
        if self.jet_conditions:
            if jet is None or jet.shape[-1] != len(self.jet_conditions):
                fail(f"generation: conditioned on {list(self.jet_conditions)}, which need their jet values")
            values.update({c: jet[:, i].float() for i, c in enumerate(self.jet_conditions)})
        tokens = [self.cond_type(label)] if self.cond_type is not None else []
        for i, c in enumerate(self.continuous):
            z = (values[c] - self.cond_mean[i]) / self.cond_std[i]
            tokens.append(self.cond_value[c](z.unsqueeze(1)))
        return torch.stack(tokens, dim=1) if tokens else None

    def velocity(self, backbone: Backbone, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                 label: torch.Tensor, jet: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, N, F_fm) at standardised state x_t; zero at padding."""
        tokens = self.embed(x_t) * mask.unsqueeze(-1)
        time = self.time(timestep_embedding(t, self.width))
        enc = backbone.encode(tokens, mask, time, self.condition_tokens(label, mask.sum(1), jet))
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

    def jet_condition_index(self) -> list[int]:
        """Columns of the batch's jet features that hold the flow-matching head's jet conditions."""
        return jet_condition_index(self.heads["fm"].jet_conditions, self.cfg.jet_features, "model.jet_features")


def jet_condition_index(conditions: tuple[str, ...], available: tuple[str, ...], where: str) -> list[int]:
    """Indices of the jet-level generation conditions among `available` feature names."""
    missing = [c for c in conditions if c not in available]
    if missing:
        fail(f"{where}: generation is conditioned on {missing}, which the data lacks (it has {list(available)})")
    return [list(available).index(c) for c in conditions]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Save and load models with the backbone and each head as separate artefacts.

Layout of a model directory:
    model.json       ModelConfig and the list of heads
    backbone.pt      backbone state dict (includes the feature standardisation)
    head_<name>.pt   one state dict per head
so a downstream task can load the backbone with or without any given head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raysearch.errors import fail
from raysearch.model import JetModel, ModelConfig

# Fields that must agree for a backbone's weights to fit a model.
_SHAPE_FIELDS = ("width", "depth", "heads", "mlp_ratio", "knn", "features")


def save_model(model: JetModel, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    torch.save(model.backbone.state_dict(), d / "backbone.pt")
    for name, head in model.heads.items():
        torch.save(head.state_dict(), d / f"head_{name}.pt")
    (d / "model.json").write_text(json.dumps({"config": model.cfg.to_dict(),
                                              "heads": list(model.heads)}, indent=1))
    return d


def read_model_config(directory: str | Path) -> tuple[ModelConfig, list[str]]:
    path = Path(directory) / "model.json"
    if not path.is_file():
        fail(f"{path}: missing (is {directory} a raysearch model checkpoint?)")
    try:
        d = json.loads(path.read_text())
        return ModelConfig.from_dict(d["config"]), list(d["heads"])
    except (KeyError, ValueError, TypeError) as err:
        fail(f"{path}: malformed model description ({err})")


def load_model(directory: str | Path, heads: tuple[str, ...] | None = None) -> JetModel:
    """Rebuild a saved model with `heads` (default: all saved heads)."""
    cfg, saved = read_model_config(directory)
    heads = tuple(saved if heads is None else heads)
    missing = [h for h in heads if h not in saved]
    if missing:
        fail(f"{directory}: has no head(s) {missing}; it has {saved}")
    model = JetModel(cfg, heads)
    load_backbone(model, directory)
    for h in heads:
        model.heads[h].load_state_dict(torch.load(Path(directory) / f"head_{h}.pt", weights_only=True))
    return model


def load_backbone(model: JetModel, directory: str | Path) -> None:
    """Load a saved backbone into `model`; a backbone of another shape is a clear error."""
    cfg, _ = read_model_config(directory)
    mismatch = [f"{f}: checkpoint {getattr(cfg, f)!r} vs model {getattr(model.cfg, f)!r}"
                for f in _SHAPE_FIELDS if getattr(cfg, f) != getattr(model.cfg, f)]
    if mismatch:
        fail(f"{directory}: backbone does not fit this model ({'; '.join(mismatch)})")
    state = torch.load(Path(directory) / "backbone.pt", weights_only=True)
    model.backbone.load_state_dict(state)


def load_head(model: JetModel, directory: str | Path, name: str) -> bool:
    """Load head `name` from `directory` if it was saved there and fits; return whether it was."""
    path = Path(directory) / f"head_{name}.pt"
    if not path.is_file():
        return False
    state = torch.load(path, weights_only=True)
    own = model.heads[name].state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.heads[name].load_state_dict(fits, strict=False)
    return len(fits) == len(own)

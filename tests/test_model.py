"""Model and objectives: symmetry, padding, overfitting, the mix, the sampler, checkpoints."""

from __future__ import annotations

import pytest
import torch

from raysearch.batch import JetBatch
from raysearch.checkpoint import load_backbone, load_model, save_model
from raysearch.errors import UserError
from raysearch.model import CONDITIONS, JetModel, ModelConfig, count_parameters
from raysearch.objectives import Mix, ObjectiveConfig, mix_loss
from raysearch.objectives.classification import classification_loss
from raysearch.objectives.flow_matching import fm_loss, sample
from raysearch.objectives.masked_particles import mpm_loss
from raysearch.schema import JET_FEATURES, JETCLASS_FEATURES


def make_batch(b=6, n=16, n_real=None, seed=0, classes=3) -> JetBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, len(JETCLASS_FEATURES), generator=g)
    pid = torch.randint(0, 5, (b, n), generator=g)
    x[..., 8:13] = torch.nn.functional.one_hot(pid, 5).float()
    n_real = n_real if n_real is not None else torch.randint(4, n + 1, (b,), generator=g)
    mask = torch.arange(n).unsqueeze(0) < torch.as_tensor(n_real).unsqueeze(1)
    x = x * mask.unsqueeze(-1)
    jet = torch.rand(b, len(JET_FEATURES), generator=g) * 500 + 500
    return JetBatch(x, mask, torch.randint(0, classes, (b,), generator=g), jet)


def tiny(**kw) -> ModelConfig:
    """Generation conditioned on everything, so the symmetry tests cover the condition tokens."""
    return ModelConfig(**{**dict(size="tiny", features=JETCLASS_FEATURES, num_classes=3, max_particles=32,
                                 jet_features=JET_FEATURES, fm_conditions=CONDITIONS), **kw})


def all_outputs(model, batch, t=0.3):
    torch.manual_seed(0)
    x = model.backbone.standardize(batch.particles, batch.mask)
    enc = model.backbone.encode(model.backbone.embed_particles(x, batch.mask), batch.mask)
    fm_x = batch.particles[..., model.fm_index()]
    jet = batch.jet[:, model.jet_condition_index()]
    v = model.heads["fm"].velocity(model.backbone, fm_x, torch.full((len(batch),), t), batch.mask, batch.label, jet)
    return model.heads["cls"](enc), enc[:, 1:], v


def test_tiny_size_and_named_sizes():
    assert 1e5 < count_parameters(JetModel(tiny())) < 6e5
    s = ModelConfig(size="s", features=JETCLASS_FEATURES, num_classes=10)
    assert (s.width, s.depth, s.heads) == (128, 8, 8)
    assert ModelConfig(size="s", depth=2, features=JETCLASS_FEATURES).depth == 2
    with pytest.raises(UserError, match="model.size"):
        ModelConfig(size="huge")


def test_permutation_equivariance():
    torch.manual_seed(1)
    model = JetModel(tiny()).eval()
    batch = make_batch(n_real=torch.full((6,), 16))
    perm = torch.randperm(16)
    permuted = JetBatch(batch.particles[:, perm], batch.mask[:, perm], batch.label, batch.jet)
    with torch.no_grad():
        a, b = all_outputs(model, batch), all_outputs(model, permuted)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)           # jet-level: invariant
    torch.testing.assert_close(a[1][:, perm], b[1], atol=1e-5, rtol=1e-4)  # per particle: permuted
    torch.testing.assert_close(a[2][:, perm], b[2], atol=1e-5, rtol=1e-4)


def test_padding_changes_nothing_and_never_leaks():
    torch.manual_seed(2)
    model = JetModel(tiny()).eval()
    batch = make_batch(n=12)
    pad = 9
    garbage = torch.randn(len(batch), pad, batch.particles.shape[-1]) * 50  # finite junk in padded slots
    n_real = batch.mask.sum(1)
    # Move padding to the end with junk in it: real particles stay first.
    padded = JetBatch(torch.cat([batch.particles, garbage], 1),
                      torch.cat([batch.mask, torch.zeros(len(batch), pad, dtype=torch.bool)], 1),
                      batch.label, batch.jet)
    padded.particles[~padded.mask] = torch.randn(int((~padded.mask).sum()), padded.particles.shape[-1]) * 50
    with torch.no_grad():
        a, b = all_outputs(model, batch), all_outputs(model, padded)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)
    for i, n in enumerate(n_real.tolist()):
        torch.testing.assert_close(a[1][i, :n], b[1][i, :n], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a[2][i, :n], b[2][i, :n], atol=1e-5, rtol=1e-4)
        assert torch.all(b[2][i, n:] == 0)


def _overfit(loss_fn, heads, steps=150, lr=3e-3):
    torch.manual_seed(3)
    model = JetModel(tiny(), heads)
    batch = make_batch(b=12, seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        g = torch.Generator().manual_seed(5)  # the same masks / noise every step: a pure overfit
        loss = loss_fn(model, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["cls", "mpm", "fm"])
def test_each_objective_overfits_a_fixed_batch(name):
    fn = {"cls": lambda m, b, g: classification_loss(m, b),
          "mpm": lambda m, b, g: mpm_loss(m, b, 0.4, g),
          "fm": lambda m, b, g: fm_loss(m, b, g)}[name]
    losses = _overfit(fn, (name,))
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


def test_mix_is_the_weighted_sum_and_counts_passes():
    torch.manual_seed(6)
    model = JetModel(tiny())
    batch = make_batch()
    mix = Mix(cls=0.5, mpm=2.0, fm=1.5)
    out = mix_loss(model, batch, mix, ObjectiveConfig(), generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    terms = {"cls": classification_loss(model, batch), "mpm": mpm_loss(model, batch, 0.4, g),
             "fm": fm_loss(model, batch, g)}
    expected = 0.5 * terms["cls"] + 2.0 * terms["mpm"] + 1.5 * terms["fm"]
    torch.testing.assert_close(out.total, expected)
    for k in terms:
        torch.testing.assert_close(out.raw[k], terms[k])
        torch.testing.assert_close(out.weighted[k], getattr(mix, k) * terms[k])
    assert out.forward_passes == 3


def test_zero_weight_heads_are_not_built():
    mix = Mix(cls=1.0, mpm=0.0, fm=0.0)
    model = JetModel(tiny(), mix.heads)
    assert list(model.heads) == ["cls"]
    out = mix_loss(model, make_batch(), mix)
    assert out.forward_passes == 1 and set(out.raw) == {"cls"}
    assert count_parameters(model) < count_parameters(JetModel(tiny()))


@pytest.mark.parametrize("weights, message", [
    (dict(cls=-1.0, mpm=1.0), "mix.cls: weights must be >= 0"),
    (dict(), "not all 0"),
    (dict(fm=float("nan")), "mix.fm: expected a finite number"),
])
def test_bad_mixes_are_rejected(weights, message):
    with pytest.raises(UserError, match=message):
        Mix(**weights)


def test_sampler_shapes_and_masking():
    model = JetModel(tiny(), ("fm",)).eval()
    n = torch.tensor([3, 10, 1])
    jet = torch.full((3, 2), 700.0)
    x, mask = sample(model, torch.tensor([0, 1, 2]), n, max_particles=12, steps=4, solver="euler", jet=jet)
    assert x.shape == (3, 12, 3) and mask.shape == (3, 12)
    assert mask.sum(1).tolist() == [3, 10, 1]
    assert torch.all(x[~mask] == 0) and torch.isfinite(x).all()
    with pytest.raises(UserError, match="solver"):
        sample(model, torch.tensor([0]), torch.tensor([2]), 4, solver="rk99", jet=jet[:1])
    with pytest.raises(UserError, match=r"conditioned on \['jet_pt', 'jet_mass'\]"):
        sample(model, torch.tensor([0]), torch.tensor([2]), 4)


@pytest.mark.parametrize("matched", [True, False])
def test_source_is_matched_to_the_data_or_standard_normal(matched):
    # The velocity head starts at exactly zero, so an untrained sampler returns its source.
    model = JetModel(tiny(fm_matched_source=matched, fm_conditions=("type",)), ("fm",)).eval()
    mean, std = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.1, 0.5, 2.0])
    model.heads["fm"].set_normalization(mean, std)
    x, m = sample(model, torch.zeros(4000, dtype=torch.long), torch.full((4000,), 4), 4, steps=2,
                  generator=torch.Generator().manual_seed(0))
    want_mean, want_std = (mean, std) if matched else (torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(x[m].mean(0), want_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(x[m].std(0), want_std, atol=0.05, rtol=0.02)


def test_flow_matching_learns_a_known_2d_distribution():
    torch.manual_seed(0)
    feats = ("deta", "dphi", "log_pt")
    cfg = ModelConfig(size="tiny", features=feats, fm_features=("deta", "dphi"), num_classes=1,
                      max_particles=8, knn=0, depth=2)
    model = JetModel(cfg, ("fm",))
    mean, std = torch.tensor([0.5, -0.3]), torch.tensor([0.2, 0.4])
    model.heads["fm"].set_normalization(torch.zeros(2), torch.ones(2))  # learn it from raw units
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    mask = torch.ones(64, 8, dtype=torch.bool)
    for _ in range(400):
        x = torch.zeros(64, 8, 3)
        x[..., :2] = mean + std * torch.randn(64, 8, 2)
        loss = fm_loss(model, JetBatch(x, mask, torch.zeros(64, dtype=torch.long), torch.zeros(64, 1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    gen, m = sample(model, torch.zeros(256, dtype=torch.long), torch.full((256,), 8), 8, steps=20)
    pts = gen[m]
    torch.testing.assert_close(pts.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(pts.std(0), std, atol=0.06, rtol=0)


def test_flow_matching_follows_a_continuous_jet_condition():
    # The particles' mean deta moves with jet pT: jets generated at a requested pT must follow it.
    torch.manual_seed(0)
    feats = ("deta", "dphi", "log_pt")
    cfg = ModelConfig(size="tiny", features=feats, fm_features=("deta", "dphi"), num_classes=1, max_particles=8,
                      knn=0, depth=2, jet_features=("jet_pt",), fm_conditions=("jet_pt",))
    model = JetModel(cfg, ("fm",))
    model.heads["fm"].set_normalization(torch.zeros(2), torch.ones(2), torch.tensor([750.0]), torch.tensor([150.0]))
    shift = lambda pt: (pt - 750) / 250 * 0.5  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    mask = torch.ones(64, 8, dtype=torch.bool)
    for _ in range(400):
        pt = 500 + 500 * torch.rand(64, 1)
        x = torch.zeros(64, 8, 3)
        x[..., 0] = shift(pt) + 0.2 * torch.randn(64, 8)
        x[..., 1] = 0.2 * torch.randn(64, 8)
        loss = fm_loss(model, JetBatch(x, mask, torch.zeros(64, dtype=torch.long), pt))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for pt in (550.0, 950.0):
        gen, m = sample(model, torch.zeros(256, dtype=torch.long), torch.full((256,), 8), 8, steps=20,
                        jet=torch.full((256, 1), pt))
        pts = gen[m]
        assert abs(pts[:, 0].mean().item() - shift(pt)) < 0.06, (pt, pts[:, 0].mean().item())
        assert abs(pts[:, 0].std().item() - 0.2) < 0.06


def test_unknown_or_missing_conditions_are_clear_errors():
    with pytest.raises(UserError, match="model.fm_conditions: expected distinct names"):
        tiny(fm_conditions=("type", "jet_eta"))
    model = JetModel(tiny(jet_features=("jet_pt",)), ("fm",))
    with pytest.raises(UserError, match=r"generation is conditioned on \['jet_mass'\], which the data lacks"):
        fm_loss(model, make_batch())


def test_seeded_training_is_reproducible():
    def run():
        torch.manual_seed(11)
        model = JetModel(tiny())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(12)
        for _ in range(3):
            loss = mix_loss(model, make_batch(), Mix(1, 1, 1), generator=g).total
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(run(), run())


def test_checkpoint_round_trip_and_shape_mismatch(tmp_path):
    torch.manual_seed(0)
    model = JetModel(tiny())
    model.backbone.set_normalization(torch.arange(13.0), torch.ones(13) * 2)
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m", heads=("cls",))
    assert list(back.heads) == ["cls"]
    b = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.eval().classify(b.particles, b.mask), back.eval().classify(b.particles, b.mask))
    other = JetModel(ModelConfig(size="tiny", width=32, features=JETCLASS_FEATURES, num_classes=3))
    with pytest.raises(UserError, match="width: checkpoint 64 vs model 32"):
        load_backbone(other, tmp_path / "m")

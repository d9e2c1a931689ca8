"""Downstream metrics against references and analytic cases; fine-tuning behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from sklearn.metrics import roc_auc_score

from raysearch.checkpoint import save_model
from raysearch.errors import UserError
from raysearch.metrics.classification import classification_metrics, rejection_at
from raysearch.metrics.efp import FPD_GRAPHS, W1EFP_GRAPHS, connected_graphs, efps
from raysearch.metrics.generation import (fpd_infinity, frechet_distance, generation_metrics, kernel_distance,
                                          kpd_median, normalise_features)
from raysearch.model import JetModel, ModelConfig
from raysearch.schema import JETCLASS_FEATURES
from raysearch.tasks.base import FinetuneConfig
from raysearch.tasks.generation import Generation
from raysearch.tasks.top_tagging import TopTagging


def test_auc_of_perfect_random_and_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    assert classification_metrics(y, y.astype(float))["auc"] == 1.0
    assert abs(classification_metrics(y, rng.random(4000))["auc"] - 0.5) < 0.03
    s = y + rng.normal(0, 1, 4000)
    assert classification_metrics(y, s)["auc"] == pytest.approx(roc_auc_score(y, s))


def test_rejection_on_a_constructed_roc():
    # 100 signal scored 1..100; 1000 background scored uniformly below: at 50% signal efficiency the
    # threshold is 51, passing exactly the background above 51.
    sig = np.arange(1, 101, dtype=float)
    bkg = np.linspace(0, 100, 1000, endpoint=False) + 0.05
    y = np.r_[np.ones(100), np.zeros(1000)]
    rej, bound = rejection_at(y, np.r_[sig, bkg], 0.5)
    passing = np.sum(bkg >= 51) / 1000
    assert not bound and rej == pytest.approx(1 / passing, rel=0.02)
    rej, bound = rejection_at(np.r_[np.ones(10), np.zeros(50)], np.r_[np.ones(10), np.zeros(50)], 0.3)
    assert bound and rej == 50  # no background passes: a lower bound of 1/(1/N_bkg)


def test_w1_fpd_kpd_analytic_cases():
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    assert wasserstein_distance(a, a) == 0
    assert wasserstein_distance(a, a + 0.7) == pytest.approx(0.7)
    x = rng.normal(size=(3000, 5))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert frechet_distance(x, x + 0.5) == pytest.approx(5 * 0.25, rel=0.05)
    assert frechet_distance(x, x + 1.0) > frechet_distance(x, x + 0.5)
    y = rng.normal(size=(3000, 5))
    assert abs(kernel_distance(x, y)) < 0.05 < kernel_distance(x, y + 0.5)


def _jets(n, rng, m=10, spread=0.2):
    p = np.zeros((n, m, 3))
    p[..., 0] = rng.normal(0, spread, (n, m))
    p[..., 1] = rng.normal(0, spread, (n, m))
    pt = rng.exponential(1.0, (n, m))
    p[..., 2] = pt / pt.sum(1, keepdims=True)
    return p, np.ones((n, m), bool)


def test_fpd_is_extrapolated_to_infinite_samples_and_kpd_is_a_median():
    rng = np.random.default_rng(3)
    real, same, shifted = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4)) + 0.5
    scale = np.abs(real).max(0)
    analytic = float(np.sum((0.5 / scale) ** 2))  # FD of N(0, 1) and N(0.5, 1) after JetNet's normalisation
    value, err = fpd_infinity(real, shifted, num_batches=10, seed=0)
    assert value == pytest.approx(analytic, rel=0.03) and err < 0.05 * value
    # Equal distributions: consistent with zero, far below a plain small-sample FD (its 1/N bias).
    null, null_err = fpd_infinity(real, same, num_batches=10, seed=0)
    x, y = normalise_features(real, same)
    assert null < 3 * null_err and null < analytic / 100 and null < frechet_distance(x[:300], y[:300]) / 10
    k_null, _ = kpd_median(real, same, batch_size=1000)
    k_shift, k_err = kpd_median(real, shifted, batch_size=1000)
    assert abs(k_null) < k_shift / 20 and k_err < k_shift


def test_efp_graphs_are_the_published_sets():
    # Connected multigraphs with d = 1..4 edges: 1, 2, 5, 12 (arXiv:1712.07124, Table 1); with the
    # disconnected products and the empty graph, 36 EFPs with d <= 4, JetNet's FPD/KPD features.
    assert [len(connected_graphs(d)) for d in (1, 2, 3, 4)] == [1, 2, 5, 12]
    assert len(FPD_GRAPHS) == 36 and len(W1EFP_GRAPHS) == 5


def _brute_force_efp(product, z, theta):
    """Sum over every assignment of particles to vertices, straight from the definition."""
    value = 1.0
    for g in product:
        n = 1 + max((max(e) for e in g), default=0)
        idx = np.array(np.meshgrid(*[np.arange(len(z))] * n, indexing="ij")).reshape(n, -1)
        term = np.prod(z[idx], axis=0)
        for a, b in g:
            term = term * theta[idx[a], idx[b]]
        value *= term.sum()
    return value


def test_efps_match_a_brute_force_sum_and_metrics_see_a_wider_jet():
    rng = np.random.default_rng(2)
    p, mask = _jets(3, rng, m=5)
    mask[2, 4] = False  # one jet with a padded slot
    p[2, 4] = 0
    ours = efps(p, mask, FPD_GRAPHS)
    for n in range(3):
        q = p[n][mask[n]]
        z = q[:, 2] / q[:, 2].sum()
        dphi = (q[:, None, 1] - q[None, :, 1] + np.pi) % (2 * np.pi) - np.pi
        theta = np.hypot(q[:, None, 0] - q[None, :, 0], dphi)
        expected = [_brute_force_efp(g, z, theta) for g in FPD_GRAPHS]
        np.testing.assert_allclose(ours[n], expected, rtol=1e-9)
    real, rm = _jets(800, rng)
    same, sm = _jets(800, rng)
    wide, wm = _jets(800, rng, spread=0.4)
    close, far = generation_metrics(real, rm, same, sm), generation_metrics(real, rm, wide, wm)
    for k in ("w1m", "w1p", "w1efp", "fpd", "kpd"):
        assert far[k] > 3 * close[k], k


@pytest.fixture
def tiny_ft():
    return FinetuneConfig(epochs=3, batch_size=32, lr=2e-3, min_steps=30, gen_samples=100,
                          gen_eval_samples=60, ode_steps=4, bootstrap=2,
                          model=ModelConfig(size="tiny", depth=2))


def test_top_tagging_improves_over_the_untrained_head(data_root, tiny_ft):
    reports = []
    final = TopTagging().run(tiny_ft, data_root, 100, 0, None, lambda m, s: reports.append(m))
    untrained = FinetuneConfig(**{**tiny_ft.__dict__, "lr": 1e-12, "min_steps": 1, "epochs": 1})
    base = TopTagging().run(untrained, data_root, 100, 0, None, lambda m, s: None)
    assert final["best_val_auc"] > base["val_auc"] + 0.1 and final["best_val_auc"] > 0.8
    assert {"test_auc", "test_acc", "test_rej30", "test_rej50"} <= set(final)
    # Evaluated every epoch, or proportionally less often when a small budget gets more epochs.
    assert reports[-1]["epoch"] == final["epoch"] and len(reports) >= tiny_ft.epochs


def test_budget_larger_than_data_is_a_clear_error(data_root, tiny_ft):
    with pytest.raises(UserError, match="10000 jets requested but the training split has only 240"):
        TopTagging().run(tiny_ft, data_root, 10000, 0, None, lambda m, s: None)


def test_checkpoint_loading_changes_outputs_and_size_mismatch_errors(data_root, tmp_path, tiny_ft):
    torch.manual_seed(0)
    cfg = ModelConfig(size="tiny", depth=2, features=JETCLASS_FEATURES, num_classes=10)
    model = JetModel(cfg, ("cls",))
    save_model(model, tmp_path / "a")
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    save_model(model, tmp_path / "b")
    from raysearch.tasks.base import assemble
    a, b = assemble(cfg, (), tmp_path / "a"), assemble(cfg, (), tmp_path / "b")
    x = torch.randn(2, 8, 13)
    mask = torch.ones(2, 8, dtype=torch.bool)
    ea = a.backbone.encode(a.backbone.embed_particles(x, mask), mask)
    eb = b.backbone.encode(b.backbone.embed_particles(x, mask), mask)
    assert not torch.allclose(ea, eb)
    torch.testing.assert_close(a.backbone.state_dict()["cls_token"], JetModel(cfg).backbone.state_dict()["cls_token"] * 0
                               + torch.load(tmp_path / "a" / "backbone.pt")["cls_token"])
    small = ModelConfig(size="tiny", width=32, depth=2, features=JETCLASS_FEATURES, num_classes=10)
    with pytest.raises(UserError, match="backbone does not fit"):
        assemble(small, (), tmp_path / "a")


def test_generation_runs_and_reports_jetnet_metrics(data_root, tiny_ft):
    final = Generation().run(tiny_ft, data_root, 100, 0, None, lambda m, s: None)
    for k in ("test_w1m", "test_w1p", "test_w1efp", "test_fpd", "test_kpd", "test_w1m_err"):
        assert np.isfinite(final[k]), k
    assert final["pretrained_fm_head"] == 0.0


def test_resume_from_a_mid_run_or_final_checkpoint(data_root, tiny_ft):
    states = []
    final = TopTagging().run(tiny_ft, data_root, 60, 0, None, lambda m, s: states.append((m, s)))
    # Interrupted after the final report: reported again, nothing trained.
    again = []
    assert TopTagging().run(tiny_ft, data_root, 60, 0, None, lambda m, s: again.append(m),
                            resume=states[-1][1]) == final
    assert again == [final]
    # Interrupted mid-run: continues from the next epoch.
    later = []
    TopTagging().run(tiny_ft, data_root, 60, 0, None, lambda m, s: later.append(m), resume=states[0][1])
    assert [m["epoch"] for m in later] == [m["epoch"] for m, _ in states[1:]]

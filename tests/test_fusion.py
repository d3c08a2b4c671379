"""Fusion heads: conformance for every head, presence handling, modality dropout,
weights, the Cox (Efron) loss against scikit-survival, and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lungfuse.plugins.fusion import plugin as P
from lungfuse.testing import check_fusion_plugin

HEADS = [P.ConcatFusion, P.LateFusion, P.GatedFusion, P.KroneckerFusion, P.TransformerFusion]


@pytest.mark.parametrize("plugin", HEADS, ids=lambda p: p.name)
@pytest.mark.parametrize("dims", [{"ct": 8, "mutations": 5, "expression": 3}, {"ct": 6},
                                  {"ct": 4, "omics": 7}, {"a": 3, "b": 4, "c": 5, "d": 2}],
                         ids=["three", "one", "two", "four"])
def test_head_passes_conformance(plugin, dims) -> None:
    check_fusion_plugin(plugin, embedding_dims=dims)


@pytest.mark.parametrize("plugin", HEADS, ids=lambda p: p.name)
def test_registered_through_entry_points(plugin) -> None:
    from lungfuse.core.registry import FUSION_GROUP, default_registry

    assert default_registry().get(FUSION_GROUP, plugin.name) is plugin


def _inputs(b: int = 64, dims: dict[str, int] | None = None, seed: int = 0):
    dims = dims or {"a": 4, "b": 3, "c": 5}
    g = torch.Generator().manual_seed(seed)
    emb = {m: torch.randn(b, d, generator=g) for m, d in dims.items()}
    present = {m: torch.rand(b, generator=g) < 0.7 for m in dims}
    return dims, emb, present


def test_modality_dropout_hides_some_but_never_all_present() -> None:
    dims, emb, present = _inputs(b=2000)
    head = P.ConcatFusion(P.ConcatConfig(modality_dropout=0.6)).build(dims, 1)
    head.train()
    torch.manual_seed(0)
    mask = head.presence(emb, present)
    orig = torch.stack([present[m] for m in dims], 1)
    assert not (mask & ~orig).any(), "dropout must never turn an absent modality on"
    assert (mask.any(1) == orig.any(1)).all(), "a patient with data must keep some modality"
    dropped = (orig & ~mask).sum() / orig.sum()
    assert 0.4 < float(dropped) < 0.6  # ~p, a little less: one modality is always kept
    head.eval()
    assert torch.equal(head.presence(emb, present), orig), "no dropout in eval mode"


def test_absent_modality_uses_learned_embedding() -> None:
    dims, emb, present = _inputs()
    head = P.ConcatFusion(P.ConcatConfig()).build(dims, 1).eval()
    before = head(emb, present)
    with torch.no_grad():
        head.absent[0].add_(1.0)
    after = head(emb, present)
    changed = (before - after).abs()[:, 0] > 1e-6
    assert torch.equal(changed, ~present["a"]), "only patients without `a` depend on its absent vector"


def test_missing_key_counts_as_absent() -> None:
    dims, emb, present = _inputs()
    head = P.GatedFusion(P.GatedConfig()).build(dims, 1).eval()
    no_c = {m: e for m, e in emb.items() if m != "c"}
    ref = head(emb, {**present, "c": torch.zeros_like(present["c"])})
    assert torch.allclose(head(no_c, {m: p for m, p in present.items() if m != "c"}), ref)


@pytest.mark.parametrize("plugin", [P.GatedFusion, P.LateFusion], ids=lambda p: p.name)
def test_modality_weights_follow_presence(plugin) -> None:
    dims, emb, present = _inputs()
    head = plugin(plugin.config_model()).build(dims, 1).eval()
    w = head.modality_weights(emb, present)
    only_a = present["a"] & ~present["b"] & ~present["c"]
    assert only_a.any()
    assert torch.allclose(w[only_a], torch.tensor([1.0, 0.0, 0.0]).expand(int(only_a.sum()), 3))
    none = ~(present["a"] | present["b"] | present["c"])
    assert (w[none] == 0).all()


def test_late_weights_are_learned() -> None:
    dims, emb, present = _inputs()
    head = P.LateFusion(P.LateConfig()).build(dims, 1).eval()
    with torch.no_grad():
        head.logits.copy_(torch.tensor([2.0, 0.0, 0.0]))
    all3 = {m: torch.ones(4, dtype=torch.bool) for m in dims}
    w = head.modality_weights({m: e[:4] for m, e in emb.items()}, all3)
    expected = torch.softmax(torch.tensor([2.0, 0.0, 0.0]), 0)
    assert torch.allclose(w, expected.expand(4, 3), atol=1e-6)


def test_kronecker_full_product_for_two_low_rank_otherwise() -> None:
    cfg = P.KroneckerConfig(factor_dim=5, rank=3)
    two = P.KroneckerFusion(cfg).build({"a": 4, "b": 3}, 1)
    three = P.KroneckerFusion(cfg).build({"a": 4, "b": 3, "c": 2}, 1)
    assert two.full and two.mlp[0].in_features == 36  # (5+1)^2
    assert not three.full and tuple(three.factors[0].shape) == (3, 6, cfg.hidden_dim)


def test_kronecker_models_an_interaction() -> None:
    """A bilinear head fits y = x_a * x_b (no additive signal) far better than chance."""
    torch.manual_seed(0)
    n = 256
    xa, xb = torch.randn(n, 1), torch.randn(n, 1)
    y = (xa * xb > 0).float()[:, 0]
    head = P.KroneckerFusion(P.KroneckerConfig(dropout=0.0, modality_dropout=0.0,
                                               factor_dim=4, hidden_dim=16)).build({"a": 1, "b": 1}, 1)
    opt = torch.optim.Adam(head.parameters(), lr=0.03)
    present = {"a": torch.ones(n, dtype=torch.bool), "b": torch.ones(n, dtype=torch.bool)}
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head({"a": xa, "b": xb}, present)[:, 0], y)
        loss.backward()
        opt.step()
    acc = ((head.eval()({"a": xa, "b": xb}, present)[:, 0] > 0).float() == y).float().mean()
    assert acc > 0.85


def test_transformer_heads_must_divide_hidden() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="divisible"):
        P.TransformerConfig(hidden_dim=30, heads=4)


def test_plugin_module_imports_without_torch() -> None:
    code = ("import sys, lungfuse.plugins.fusion.plugin as p; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(p.GatedFusion.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "gated"


def test_cox_efron_loss_matches_scikit_survival() -> None:
    """Minimising our Cox loss (torchsurv, Efron ties) over a linear predictor gives the
    coefficients scikit-survival's Cox model finds with ties='efron'."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    from lungfuse.core.fusion_model import cox_loss

    rng = np.random.default_rng(0)
    n = 80
    x = rng.normal(size=(n, 2))
    t = np.ceil(rng.exponential(np.exp(-(0.8 * x[:, 0] - 0.5 * x[:, 1])) * 5))  # many ties
    e = rng.random(n) < 0.7
    assert len(np.unique(t[e])) < e.sum(), "the data must have tied event times"
    ref = CoxPHSurvivalAnalysis(ties="efron", alpha=0.0).fit(x, Surv.from_arrays(e, t)).coef_
    breslow = CoxPHSurvivalAnalysis(ties="breslow", alpha=0.0).fit(x, Surv.from_arrays(e, t)).coef_

    beta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    xt, tt, et = torch.tensor(x), torch.tensor(t), torch.tensor(e)
    opt = torch.optim.LBFGS([beta], lr=1, max_iter=200, tolerance_grad=1e-10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cox_loss(xt @ beta, et, tt)
        loss.backward()
        return loss

    opt.step(closure)
    got = beta.detach().numpy()
    assert np.allclose(got, ref, atol=2e-3), (got, ref)
    assert not np.allclose(got, breslow, atol=2e-3), "test data should tell Efron from Breslow"

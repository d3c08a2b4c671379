"""Conformance checks for lungfuse plugins, to run in a plugin's own test suite.

>>> from lungfuse.testing import check_modality_plugin
>>> check_modality_plugin(MyModality)            # uses MyModality.example(...) data

Each check raises ``AssertionError`` naming the plugin and the rule it broke, in the
spirit of scikit-learn's ``check_estimator``.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungfuse.core.contracts import (
    COMPATIBLE_API_VERSIONS,
    FusionConfig,
    FusionPlugin,
    ModalityConfig,
    ModalityContext,
    ModalityPlugin,
)

__all__ = ["check_fusion_plugin", "check_modality_plugin", "example_cohort"]


def _fail(plugin: Any, rule: str) -> AssertionError:
    return AssertionError(f"plugin {getattr(plugin, 'name', plugin)!r}: {rule}")


def _check_declaration(plugin: type, base: type, config_base: type) -> None:
    from pydantic import BaseModel, ValidationError

    if not (isinstance(plugin, type) and issubclass(plugin, base)):
        raise _fail(plugin, f"must be a subclass of {base.__name__}")
    if not isinstance(getattr(plugin, "name", None), str) or not plugin.name:
        raise _fail(plugin, "must declare a non-empty string `name`")
    if plugin.api_version not in COMPATIBLE_API_VERSIONS:
        raise _fail(plugin, f"declares API version {plugin.api_version!r}, supported: "
                    f"{sorted(COMPATIBLE_API_VERSIONS)}")
    cfg = getattr(plugin, "config_model", None)
    if not (isinstance(cfg, type) and issubclass(cfg, BaseModel) and issubclass(cfg, config_base)):
        raise _fail(plugin, f"config_model must subclass {config_base.__name__}")
    kind = cfg.model_fields.get("kind")
    if kind is None or getattr(kind.annotation, "__args__", None) != (plugin.name,):
        raise _fail(plugin, f"config_model.kind must be Literal[{plugin.name!r}]")
    if kind.default != plugin.name:
        raise _fail(plugin, f"config_model.kind should default to {plugin.name!r}")
    try:
        cfg.model_validate({"kind": plugin.name, "__surely_not_a_setting__": 1},
                           context={"check_paths": False})
    except ValidationError as exc:
        if not any(e["type"] == "extra_forbidden" for e in exc.errors()):
            raise _fail(plugin, "config_model must refuse unknown keys (extra='forbid')") from None
    else:
        raise _fail(plugin, "config_model must refuse unknown keys (extra='forbid')")


def example_cohort(n: int = 16, seed: int = 0):
    """A small cohort table (TCGA-style patient ids, binary and survival outcomes)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    ids = [f"TCGA-LF-{i:04d}" for i in range(n)]
    df = pd.DataFrame({
        "patient_id": ids,
        "malignant": np.tile([0, 1], n // 2 + 1)[:n],
        "time": rng.uniform(1, 60, n).round(1),
        "event": rng.integers(0, 2, n),
        "age": rng.integers(45, 85, n),
    }).set_index("patient_id")
    return df


OUTCOME_COLUMNS = ("malignant", "time", "event")


def check_modality_plugin(
    plugin: type[ModalityPlugin],
    config: ModalityConfig | Mapping[str, Any] | None = None,
    cohort: Any = None,
    workdir: str | Path | None = None,
) -> None:
    """Check a modality plugin against the contract of :class:`ModalityPlugin`.

    Without ``config``/``cohort``, the plugin's ``example()`` writes a tiny dataset for
    :func:`example_cohort`. Checks: declaration (name, API version, config model that
    refuses unknown keys); ``available`` is a subset of the cohort; ``prepare`` on half
    the patients then ``transform`` on all gives a finite float table indexed by patient
    id, only covered patients, stable columns; training-patient features do not depend
    on held-out patients' outcomes; state survives ``state_dict``/``load_state_dict``;
    the encoder maps ``(batch, n_features)`` to ``(batch, embedding_dim)`` and trains.
    """
    import numpy as np
    import pandas as pd

    _check_declaration(plugin, ModalityPlugin, ModalityConfig)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    root = Path(workdir) if workdir is not None else Path(tmp.name)
    try:
        if cohort is None:
            cohort = example_cohort()
        ids = list(cohort.index.astype(str))
        if config is None:
            config = plugin.example(root, ids)
        if isinstance(config, Mapping):
            config = plugin.config_model.model_validate(dict(config))
        ctx = ModalityContext(workdir=root / "work", seed=0, progress=False)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        features_only = cohort.drop(columns=[c for c in OUTCOME_COLUMNS if c in cohort.columns])

        inst = plugin(config)
        avail = inst.available(features_only, ctx)
        if not isinstance(avail, set | frozenset):
            raise _fail(plugin, f"available() must return a set, got {type(avail).__name__}")
        if not avail <= set(ids):
            raise _fail(plugin, "available() returned patients not in the cohort")
        if not avail:
            raise _fail(plugin, "available() covers no patient of the example cohort")

        train_ids = ids[::2]
        inst.prepare(cohort.loc[train_ids], ctx)
        feats = inst.transform(features_only, ctx)
        _check_features(plugin, feats, avail, ids)

        # the same fit on the same patients, with held-out outcomes scrambled: same features
        scrambled = cohort.copy()
        test_ids = [p for p in ids if p not in train_ids]
        for col in OUTCOME_COLUMNS:
            if col in scrambled.columns:
                scrambled.loc[test_ids, col] = scrambled.loc[test_ids, col].to_numpy()[::-1]
        again = plugin(config)
        again.prepare(scrambled.loc[train_ids], ctx)
        feats2 = again.transform(features_only, ctx)
        if not feats.columns.equals(feats2.columns) or not np.allclose(
            feats.sort_index().to_numpy(), feats2.sort_index().to_numpy(), atol=1e-5
        ):
            raise _fail(plugin, "prepare() on the same training patients is not reproducible")

        # fitted state round-trips
        restored = plugin(config)
        restored.load_state_dict(inst.state_dict())
        feats3 = restored.transform(features_only, ctx)
        if not feats.columns.equals(feats3.columns) or not np.allclose(
            feats.sort_index().to_numpy(), feats3.sort_index().to_numpy(), atol=1e-5
        ):
            raise _fail(plugin, "transform() after load_state_dict(state_dict()) differs")

        # a subset of patients transforms to the same rows
        sub = features_only.iloc[: max(2, len(ids) // 3)]
        part = inst.transform(sub, ctx)
        if not set(part.index) <= set(sub.index):
            raise _fail(plugin, "transform(patients) returned patients it was not given")
        common = part.index.intersection(feats.index)
        if len(common) and not np.allclose(part.loc[common].to_numpy(),
                                           feats.loc[common].to_numpy(), atol=1e-5):
            raise _fail(plugin, "a patient's features depend on which other patients are transformed")

        _check_encoder(plugin, inst, feats.shape[1])
        assert isinstance(feats, pd.DataFrame)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _check_features(plugin: Any, feats: Any, avail: set[str], ids: list[str]) -> None:
    import numpy as np
    import pandas as pd

    if not isinstance(feats, pd.DataFrame):
        raise _fail(plugin, f"transform() must return a DataFrame, got {type(feats).__name__}")
    if feats.index.name != "patient_id":
        raise _fail(plugin, "transform() must index its result by 'patient_id'")
    if feats.index.has_duplicates:
        raise _fail(plugin, "transform() returned a patient twice")
    if not set(feats.index) <= avail:
        raise _fail(plugin, "transform() returned rows for patients available() does not cover "
                    "(absent patients must be absent, not zero rows)")
    if feats.shape[1] == 0 or len(feats) == 0:
        raise _fail(plugin, "transform() returned an empty table")
    if not all(np.issubdtype(t, np.floating) for t in feats.dtypes):
        raise _fail(plugin, "transform() must return float columns only")
    if not np.isfinite(feats.to_numpy()).all():
        raise _fail(plugin, "transform() returned NaN or infinite values")


def _check_encoder(plugin: Any, inst: ModalityPlugin, n_features: int) -> None:
    import torch

    enc = inst.build_encoder(n_features)
    if not isinstance(enc, torch.nn.Module):
        raise _fail(plugin, "build_encoder() must return a torch.nn.Module")
    dim = getattr(enc, "embedding_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise _fail(plugin, "the encoder must expose an integer `embedding_dim`")
    torch.manual_seed(0)
    x = torch.randn(4, n_features)
    enc.train()
    out = enc(x)
    if tuple(out.shape) != (4, dim):
        raise _fail(plugin, f"encoder output shape {tuple(out.shape)}, expected (4, {dim})")
    out.pow(2).mean().backward()
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters()):
        raise _fail(plugin, "no gradient reaches the encoder's parameters")
    enc.eval()
    with torch.no_grad():
        one = enc(x[:1])
    if tuple(one.shape) != (1, dim) or not torch.isfinite(one).all():
        raise _fail(plugin, "encoder fails on a batch of one in eval mode")


def check_fusion_plugin(
    plugin: type[FusionPlugin],
    config: FusionConfig | Mapping[str, Any] | None = None,
    embedding_dims: Mapping[str, int] | None = None,
) -> None:
    """Check a fusion plugin against the contract of :class:`FusionPlugin`.

    For three modalities of different sizes and every presence pattern (all missing
    included): the output has shape ``(batch, out_dim)`` and is finite; in eval mode the
    embedding values of an absent modality do not change the output; gradients reach the
    parameters; a batch of one works; ``modality_weights`` (if offered) is a distribution
    over present modalities.
    """
    import torch

    _check_declaration(plugin, FusionPlugin, FusionConfig)
    if config is None:
        config = plugin.config_model()
    if isinstance(config, Mapping):
        config = plugin.config_model.model_validate(dict(config))
    dims = dict(embedding_dims or {"ct": 8, "mutations": 5, "expression": 3})
    names = list(dims)
    torch.manual_seed(0)
    for out_dim in (1, 2):
        head = plugin(config).build(dims, out_dim)
        if not isinstance(head, torch.nn.Module):
            raise _fail(plugin, "build() must return a torch.nn.Module")
        patterns = list(itertools.product([True, False], repeat=len(names)))
        b = len(patterns)
        emb = {m: torch.randn(b, d) for m, d in dims.items()}
        present = {m: torch.tensor([p[i] for p in patterns]) for i, m in enumerate(names)}
        head.train()
        out = head(emb, present)
        if tuple(out.shape) != (b, out_dim):
            raise _fail(plugin, f"output shape {tuple(out.shape)}, expected ({b}, {out_dim})")
        if not torch.isfinite(out).all():
            raise _fail(plugin, "non-finite output in training mode")
        out.sum().backward()
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()):
            raise _fail(plugin, "no gradient reaches the head's parameters")
        head.eval()
        with torch.no_grad():
            ref = head(emb, present)
            noisy = {m: torch.where(present[m][:, None], e, torch.randn_like(e) * 10)
                     for m, e in emb.items()}
            alt = head(noisy, present)
            if not torch.isfinite(ref).all():
                raise _fail(plugin, "non-finite output in eval mode")
            if not torch.allclose(ref, alt, atol=1e-5):
                raise _fail(plugin, "the values of an absent modality's embedding change the output")
            one = head({m: e[:1] for m, e in emb.items()}, {m: p[:1] for m, p in present.items()})
            if tuple(one.shape) != (1, out_dim):
                raise _fail(plugin, "fails on a batch of one")
            if not torch.allclose(one, ref[:1], atol=1e-5):
                raise _fail(plugin, "a patient's output depends on the rest of the batch in eval mode")
            if hasattr(head, "modality_weights"):
                w = head.modality_weights(emb, present)
                if tuple(w.shape) != (b, len(names)):
                    raise _fail(plugin, f"modality_weights shape {tuple(w.shape)}, "
                                f"expected ({b}, {len(names)})")
                mask = torch.stack([present[m] for m in names], 1)
                if (w[~mask].abs() > 1e-6).any():
                    raise _fail(plugin, "modality_weights gives weight to an absent modality")
                anyp = mask.any(1)
                if not torch.allclose(w[anyp].sum(1), torch.ones(int(anyp.sum())), atol=1e-4):
                    raise _fail(plugin, "modality_weights over present modalities must sum to 1")

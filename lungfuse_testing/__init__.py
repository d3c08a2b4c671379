"""Conformance checks for lungfuse plugins, to run in a plugin's own test suite.

Read like scikit-learn's estimator checks: one ``check_*`` function per rule of the
plugin contract, a generator that yields them bound to one plugin, a run-them-all entry
point, and a pytest helper that makes each check its own test::

    from lungfuse.testing import check_modality_plugin, parametrize_modality_checks

    def test_everything():                       # one test, stops at the first failure
        check_modality_plugin(MyModality)        # data from MyModality.example(...)

    @parametrize_modality_checks(MyModality)     # one test per rule, named after it:
    def test_conformance(check):                 # test_conformance[check_state_round_trip]
        check()

A check raises ``AssertionError("plugin '<name>': <the rule broken>")``, or
:class:`unittest.SkipTest` when it cannot run for the plugin (pytest shows a skip;
``check_*_plugin`` warns with :class:`ConformanceWarning`). The declaration rules are
the registry's own (:func:`lungfuse.core.registry.declaration_problem`).

Modality rules (:data:`MODALITY_CHECKS`): declaration, config model, example data,
``available``, the feature table, the same columns every call, per-patient features,
a reproducible ``prepare``, no leakage (the fit uses training patients only), state
round trip through :mod:`lungfuse.core.state_io`, encoder output and training.
Fusion rules (:data:`FUSION_CHECKS`): declaration, config model, output for every
presence pattern, training, absent values ignored, batch of one, modality weights.

Each ``check_*`` takes a case (:class:`ModalityCase` / :class:`FusionCase`) or a plugin
class, e.g. ``check_state_round_trip(MyModality)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungfuse.core.contracts import FusionConfig, FusionPlugin, ModalityConfig, ModalityPlugin

from ._base import Check, ConformanceWarning, check_config_model, check_declaration, run_all
from ._fusion import (
    FUSION_CHECKS,
    FusionCase,
    check_fusion_batch_of_one,
    check_fusion_ignores_absent_values,
    check_fusion_modality_weights,
    check_fusion_output,
    check_fusion_trains,
    fusion_checks,
)
from ._modality import (
    MODALITY_CHECKS,
    OUTCOME_COLUMNS,
    ConfigFactory,
    ModalityCase,
    check_available,
    check_encoder_output,
    check_encoder_trains,
    check_example_data,
    check_prepare_reproducible,
    check_prepare_uses_training_rows_only,
    check_state_round_trip,
    check_transform_columns_stable,
    check_transform_features,
    check_transform_per_patient,
    example_cohort,
    modality_checks,
)

__all__ = [
    "FUSION_CHECKS",
    "MODALITY_CHECKS",
    "OUTCOME_COLUMNS",
    "Check",
    "ConfigFactory",
    "ConformanceWarning",
    "FusionCase",
    "ModalityCase",
    "check_available",
    "check_config_model",
    "check_declaration",
    "check_encoder_output",
    "check_encoder_trains",
    "check_example_data",
    "check_fusion_batch_of_one",
    "check_fusion_ignores_absent_values",
    "check_fusion_modality_weights",
    "check_fusion_output",
    "check_fusion_plugin",
    "check_fusion_trains",
    "check_modality_plugin",
    "check_prepare_reproducible",
    "check_prepare_uses_training_rows_only",
    "check_state_round_trip",
    "check_transform_columns_stable",
    "check_transform_features",
    "check_transform_per_patient",
    "example_cohort",
    "fusion_checks",
    "modality_checks",
    "parametrize_fusion_checks",
    "parametrize_modality_checks",
]


def check_modality_plugin(
    plugin: type[ModalityPlugin],
    config: ModalityConfig | Mapping[str, Any] | ConfigFactory | None = None,
    cohort: Any = None,
    workdir: str | Path | None = None,
) -> None:
    """Run every modality check on ``plugin``; raise the first failure.

    Without ``config``, the plugin's ``example()`` writes a tiny dataset for ``cohort``
    (default :func:`example_cohort`); ``config`` may also be a config (or mapping) of
    existing data, or a callable ``(folder, patient_ids) -> config`` that writes data.
    The data and fits go to ``workdir`` (default: a temporary folder, removed after).
    """
    with ModalityCase(plugin, config=config, cohort=cohort, workdir=workdir) as case:
        run_all(Check(getattr(f, "__wrapped__", f), case) for f in MODALITY_CHECKS)


def check_fusion_plugin(
    plugin: type[FusionPlugin],
    config: FusionConfig | Mapping[str, Any] | None = None,
    embedding_dims: Mapping[str, int] | None = None,
) -> None:
    """Run every fusion check on ``plugin``; raise the first failure.

    ``embedding_dims`` (default three modalities of 8, 5 and 3) are the modalities the
    head is built for; ``config`` defaults to ``plugin.config_model()``.
    """
    run_all(fusion_checks(plugin, config=config, embedding_dims=embedding_dims))


def parametrize_modality_checks(
    plugin: type[ModalityPlugin],
    config: ModalityConfig | Mapping[str, Any] | ConfigFactory | None = None,
    cohort: Any = None,
) -> Any:
    """A ``pytest.mark.parametrize("check", ...)`` decorator over :func:`modality_checks`,
    each check its own test id. The checks share one fit of the plugin, made by the
    first check that needs it, in a temporary folder kept until the interpreter exits.
    """
    from ._base import parametrize

    return parametrize(list(modality_checks(plugin, config=config, cohort=cohort)))


def parametrize_fusion_checks(
    plugin: type[FusionPlugin],
    config: FusionConfig | Mapping[str, Any] | None = None,
    embedding_dims: Mapping[str, int] | None = None,
) -> Any:
    """A ``pytest.mark.parametrize("check", ...)`` decorator over :func:`fusion_checks`,
    each check its own test id."""
    from ._base import parametrize

    return parametrize(list(fusion_checks(plugin, config=config,
                                          embedding_dims=embedding_dims)))

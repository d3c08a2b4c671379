"""The fusion-plugin checks: one function per rule of :class:`FusionPlugin`.

Each check builds heads for three modalities of different sizes (or the given
``embedding_dims``), for one and for two outputs, and feeds them a batch with one row
per presence pattern: every subset of the modalities present, all missing included.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lungfuse.core.contracts import FusionConfig, FusionPlugin

from ._base import Check, check_config_model, check_declaration, fail

#: Output sizes every head is built for: a logit / log-risk, and a two-output task.
OUT_DIMS = (1, 2)
ATOL = 1e-5


class FusionCase:
    """A fusion plugin, its config (default: ``config_model()``) and the embedding sizes
    it is checked with (default: three modalities of 8, 5 and 3)."""

    base = FusionPlugin

    def __init__(self, plugin: type[FusionPlugin],
                 config: FusionConfig | Mapping[str, Any] | None = None,
                 embedding_dims: Mapping[str, int] | None = None) -> None:
        self.plugin = plugin
        self._config_arg = config
        self.dims = dict(embedding_dims or {"ct": 8, "mutations": 5, "expression": 3})
        self.names = list(self.dims)

    @property
    def config(self) -> FusionConfig:
        cfg = self._config_arg
        if cfg is None:
            return self.plugin.config_model()
        if isinstance(cfg, Mapping):
            return self.plugin.config_model.model_validate(dict(cfg))
        return cfg

    def head(self, out_dim: int) -> Any:
        """A freshly built head (seeded), checked to be a ``torch.nn.Module``."""
        import torch

        torch.manual_seed(0)
        head = self.plugin(self.config).build(self.dims, out_dim)
        if not isinstance(head, torch.nn.Module):
            raise fail(self.plugin, "build() must return a torch.nn.Module")
        return head

    def inputs(self) -> tuple[dict[str, Any], dict[str, Any], int]:
        """``(embeddings, present, batch)``: one row per presence pattern."""
        import torch

        patterns = list(itertools.product([True, False], repeat=len(self.names)))
        g = torch.Generator().manual_seed(0)
        emb = {m: torch.randn(len(patterns), d, generator=g) for m, d in self.dims.items()}
        present = {m: torch.tensor([p[i] for p in patterns]) for i, m in enumerate(self.names)}
        return emb, present, len(patterns)


def _takes_case(func: Callable[[FusionCase], None]) -> Callable[[Any], None]:
    """Let a check be called with a plugin class too (default config and sizes)."""

    @functools.wraps(func)
    def check(case: FusionCase | type[FusionPlugin]) -> None:
        return func(case if isinstance(case, FusionCase) else FusionCase(case))

    return check


@_takes_case
def check_fusion_output(case: FusionCase) -> None:
    """For every presence pattern (all missing included) the output has shape
    ``(batch, out_dim)`` and is finite, in training and in eval mode."""
    import torch

    for out_dim in OUT_DIMS:
        head = case.head(out_dim)
        emb, present, b = case.inputs()
        for mode in ("train", "eval"):
            getattr(head, mode)()
            with torch.set_grad_enabled(mode == "train"):
                out = head(emb, present)
            if tuple(out.shape) != (b, out_dim):
                raise fail(case.plugin, f"output shape {tuple(out.shape)}, expected "
                           f"({b}, {out_dim})")
            if not torch.isfinite(out).all():
                raise fail(case.plugin, f"non-finite output in {mode} mode"
                           " (a patient with every modality missing included)")


@_takes_case
def check_fusion_trains(case: FusionCase) -> None:
    """A loss on the output sends gradients to the head's parameters."""
    for out_dim in OUT_DIMS:
        head = case.head(out_dim).train()
        emb, present, _ = case.inputs()
        head(emb, present).sum().backward()
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()):
            raise fail(case.plugin, "no gradient reaches the head's parameters")


@_takes_case
def check_fusion_ignores_absent_values(case: FusionCase) -> None:
    """In eval mode, the embedding values of an absent modality do not change the output
    (a missing modality arrives as whatever the batch held, often zeros)."""
    import torch

    for out_dim in OUT_DIMS:
        head = case.head(out_dim).eval()
        emb, present, _ = case.inputs()
        with torch.no_grad():
            ref = head(emb, present)
            noisy = {m: torch.where(present[m][:, None], e, torch.randn_like(e) * 10)
                     for m, e in emb.items()}
            if not torch.allclose(ref, head(noisy, present), atol=ATOL):
                raise fail(case.plugin,
                           "the values of an absent modality's embedding change the output")


@_takes_case
def check_fusion_batch_of_one(case: FusionCase) -> None:
    """A batch of one works, and in eval mode a patient's output does not depend on the
    rest of the batch (scoring sees one patient at a time)."""
    import torch

    for out_dim in OUT_DIMS:
        head = case.head(out_dim).eval()
        emb, present, _ = case.inputs()
        with torch.no_grad():
            ref = head(emb, present)
            one = head({m: e[:1] for m, e in emb.items()}, {m: p[:1] for m, p in present.items()})
        if tuple(one.shape) != (1, out_dim):
            raise fail(case.plugin, "fails on a batch of one")
        if not torch.allclose(one, ref[:1], atol=ATOL):
            raise fail(case.plugin,
                       "a patient's output depends on the rest of the batch in eval mode")


@_takes_case
def check_fusion_modality_weights(case: FusionCase) -> None:
    """``modality_weights(embeddings, present)``, where a head offers it (reports draw it),
    has shape ``(batch, n_modalities)`` and is a distribution over the present modalities:
    0 for an absent one, summing to 1 where any is present. A head without it passes."""
    import torch

    for out_dim in OUT_DIMS:
        head = case.head(out_dim).eval()
        if not hasattr(head, "modality_weights"):
            return
        emb, present, b = case.inputs()
        with torch.no_grad():
            w = head.modality_weights(emb, present)
        n = len(case.names)
        if tuple(w.shape) != (b, n):
            raise fail(case.plugin, f"modality_weights shape {tuple(w.shape)}, expected ({b}, {n})")
        mask = torch.stack([present[m] for m in case.names], 1)
        if (w[~mask].abs() > 1e-6).any():
            raise fail(case.plugin, "modality_weights gives weight to an absent modality")
        anyp = mask.any(1)
        if not torch.allclose(w[anyp].sum(1), torch.ones(int(anyp.sum())), atol=1e-4):
            raise fail(case.plugin, "modality_weights over present modalities must sum to 1")


FUSION_CHECKS: tuple[Callable[[Any], None], ...] = (
    check_declaration,
    check_config_model,
    check_fusion_output,
    check_fusion_trains,
    check_fusion_ignores_absent_values,
    check_fusion_batch_of_one,
    check_fusion_modality_weights,
)


def fusion_checks(
    plugin: type[FusionPlugin],
    config: FusionConfig | Mapping[str, Any] | None = None,
    embedding_dims: Mapping[str, int] | None = None,
) -> Iterator[Check]:
    """Yield every fusion check bound to one :class:`FusionCase`, in order."""
    case = FusionCase(plugin, config=config, embedding_dims=embedding_dims)
    for func in FUSION_CHECKS:
        yield Check(getattr(func, "__wrapped__", func), case)

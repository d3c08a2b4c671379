"""Fusion plugins: configs and factories for the five built-in heads.

This module is what the ``lungfuse.fusion`` entry points name, so it imports no torch;
each ``build()`` imports :mod:`lungfuse.plugins.fusion.heads` lazily.

Heads (all take any subset of modalities per patient, see ``heads.py``):

- ``concat``: absent embeddings replaced by a learned "absent" vector, concatenated with
  the presence mask, then an MLP.
- ``late``: one small head per modality; the outputs are averaged with learned weights
  renormalised over the modalities a patient has.
- ``gated``: attention pooling: a score per modality embedding, softmax over the present
  ones, weighted sum of projected embeddings, then an MLP. The weights are reported.
- ``kronecker``: PathomicFusion-style gated bilinear fusion; a 1 is appended to each
  gated embedding so unimodal terms survive the outer product. Two modalities: the full
  outer product; more: a low-rank (LMF) factorisation.
- ``transformer``: one token per modality plus a CLS token; absent modalities are masked
  out of attention with a key-padding mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from lungfuse.core.contracts import FusionConfig, FusionPlugin

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ConcatConfig",
    "ConcatFusion",
    "GatedConfig",
    "GatedFusion",
    "KroneckerConfig",
    "KroneckerFusion",
    "LateConfig",
    "LateFusion",
    "TransformerConfig",
    "TransformerFusion",
]


class ConcatConfig(FusionConfig):
    """Concatenation + MLP."""

    kind: Literal["concat"] = "concat"
    layers: int = Field(default=1, ge=1, le=8, description="Hidden layers of the MLP.")


class LateConfig(FusionConfig):
    """Late fusion: a head per modality, combined by learned weights."""

    kind: Literal["late"] = "late"


class GatedConfig(FusionConfig):
    """Attention-gated pooling over modality embeddings."""

    kind: Literal["gated"] = "gated"


class KroneckerConfig(FusionConfig):
    """PathomicFusion-style gated bilinear (Kronecker) fusion."""

    kind: Literal["kronecker"] = "kronecker"
    factor_dim: int = Field(
        default=16, ge=1, le=256,
        description="Size each gated modality embedding is projected to before the product "
        "(the full product of two modalities has (factor_dim+1)^2 entries).",
    )
    rank: int = Field(default=4, ge=1, le=64,
                      description="Rank of the low-rank product for more than two modalities.")


class TransformerConfig(FusionConfig):
    """A small transformer over modality tokens."""

    kind: Literal["transformer"] = "transformer"
    heads: int = Field(default=4, ge=1, le=32, description="Attention heads (divide hidden_dim).")
    layers: int = Field(default=2, ge=1, le=12)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.hidden_dim % self.heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by heads "
                             f"({self.heads})")
        return self


class _Base(FusionPlugin):
    api_version = 1
    _head: str

    def build(self, embedding_dims: Mapping[str, int], out_dim: int = 1) -> torch.nn.Module:
        from lungfuse.plugins.fusion import heads

        return getattr(heads, self._head)(dict(embedding_dims), out_dim, self.config)


class ConcatFusion(_Base):
    name = "concat"
    config_model = ConcatConfig
    description = "Concatenated embeddings (absent ones learned) + presence mask -> MLP"
    _head = "ConcatHead"


class LateFusion(_Base):
    name = "late"
    config_model = LateConfig
    description = "A head per modality, combined by learned weights over present modalities"
    _head = "LateHead"


class GatedFusion(_Base):
    name = "gated"
    config_model = GatedConfig
    description = "Attention-gated pooling of modality embeddings (weights reportable)"
    _head = "GatedHead"


class KroneckerFusion(_Base):
    name = "kronecker"
    config_model = KroneckerConfig
    description = "Gated bilinear (Kronecker) fusion, low-rank for more than two modalities"
    _head = "KroneckerHead"


class TransformerFusion(_Base):
    name = "transformer"
    config_model = TransformerConfig
    description = "Transformer over modality tokens + CLS with a key-padding mask"
    _head = "TransformerHead"

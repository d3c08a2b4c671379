"""Encoders for genomic feature vectors (torch imported here, never by ``plugin.py``).

``snn``: a self-normalising network (Klambauer et al., 2017), the genomic branch design
of PathomicFusion: blocks ``Linear → SELU → AlphaDropout``. SELU,
:math:`\\lambda (x \\text{ if } x > 0 \\text{ else } \\alpha (e^x - 1))` with
λ ≈ 1.0507, α ≈ 1.6733, keeps activations near zero mean / unit variance when weights are
LeCun-normal, :math:`W \\sim \\mathcal{N}(0, 1/\\text{fan\\_in})`, and AlphaDropout keeps
those moments under dropout. ``mlp``: blocks ``Linear → ReLU → Dropout`` (He init).
Both end in a ``Linear`` to ``embedding_dim`` and expose ``embedding_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GenomicEncoder(nn.Module):
    """``(batch, n_features) → (batch, embedding_dim)`` feed-forward encoder."""

    def __init__(self, kind: str, n_features: int, hidden: Sequence[int], embedding_dim: int,
                 dropout: float) -> None:
        super().__init__()
        if kind not in ("snn", "mlp"):
            raise ValueError(f"unknown encoder {kind!r}; use 'snn' or 'mlp'")
        self.kind = kind
        self.embedding_dim = int(embedding_dim)
        layers: list[nn.Module] = []
        width = int(n_features)
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if kind == "snn":
                layers += [nn.SELU(), nn.AlphaDropout(dropout)]
            else:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, self.embedding_dim))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, nn.Linear):
                # snn: LeCun normal (std = 1/sqrt(fan_in)); mlp: He normal for ReLU
                nl = "linear" if self.kind == "snn" else "relu"
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=nl)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_encoder(kind: str, n_features: int, hidden: Sequence[int], embedding_dim: int,
                  dropout: float) -> GenomicEncoder:
    return GenomicEncoder(kind, n_features, hidden, embedding_dim, dropout)

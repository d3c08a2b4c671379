"""The clinical encoder (torch imported here, never by ``plugin.py``).

A small MLP: blocks ``Linear → ReLU → Dropout`` (He-normal weights, zero biases), then a
``Linear`` to ``embedding_dim``. Clinical inputs are a handful of standardised numbers,
indicators and one-hot levels, so a narrow network is enough; ``hidden: []`` gives a
single linear map (a logistic-regression-like branch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ClinicalEncoder(nn.Module):
    """``(batch, n_features) → (batch, embedding_dim)`` feed-forward encoder."""

    def __init__(self, n_features: int, hidden: Sequence[int], embedding_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        layers: list[nn.Module] = []
        width = int(n_features)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, self.embedding_dim))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

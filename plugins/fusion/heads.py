"""Fusion heads (torch modules). Imported lazily by :mod:`lungfuse.plugins.fusion.plugin`.

Every head takes ``embeddings: {modality: (B, D_m)}`` and ``present: {modality: (B,)
bool}`` and returns ``(B, out_dim)``. Shared machinery lives in :class:`FusionHead`:

* **Absent embeddings.** Where ``present[m]`` is false the embedding is replaced by a
  learned vector ``a_m`` (``torch.where``, so the values passed for an absent modality
  never reach the output nor receive gradient).
* **Modality dropout.** In training mode each present modality of each patient is hidden
  with probability ``p`` (config ``modality_dropout``); a patient whose present modalities
  would all be hidden keeps one of them (chosen at random), so nobody is trained on nothing.
* **Batch independence.** No batch statistics (no BatchNorm): a patient's output in eval
  mode does not depend on the rest of the batch.

A modality missing from ``embeddings`` altogether counts as absent for every patient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ConcatHead",
    "FusionHead",
    "GatedHead",
    "KroneckerHead",
    "LateHead",
    "TransformerHead",
    "masked_softmax",
]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    r"""Softmax of ``scores`` (B, M) over the entries where ``mask`` is true.

    :math:`w_{bm} = \mathbb{1}[m \in P_b]\, e^{s_{bm}} / \sum_{j \in P_b} e^{s_{bj}}`; rows with
    no present entry get all-zero weights (not NaN).
    """
    neg = torch.finfo(scores.dtype).min
    s = scores.masked_fill(~mask, neg)
    w = torch.softmax(s, dim=1) * mask.to(scores.dtype)
    return w / w.sum(1, keepdim=True).clamp_min(1e-12)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float, layers: int = 1) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class FusionHead(nn.Module):
    """Base: presence masks, learned absent embeddings and modality dropout."""

    def __init__(self, embedding_dims: Mapping[str, int], out_dim: int, config: Any) -> None:
        super().__init__()
        if not embedding_dims:
            raise ValueError("a fusion head needs at least one modality")
        self.names = list(embedding_dims)
        self.dims = [int(embedding_dims[m]) for m in self.names]
        self.out_dim = int(out_dim)
        self.hidden = int(config.hidden_dim)
        self.dropout = float(config.dropout)
        self.modality_dropout = float(config.modality_dropout)
        self.absent = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in self.dims])

    # -- shared pieces -------------------------------------------------------------------
    def presence(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """(B, M) bool mask, with modality dropout applied in training mode."""
        b = next(iter(embeddings.values())).shape[0]
        ref = next(iter(embeddings.values()))
        cols = []
        for m in self.names:
            p = present.get(m)
            if p is None or m not in embeddings:
                cols.append(torch.zeros(b, dtype=torch.bool, device=ref.device))
            else:
                cols.append(p.reshape(b).to(device=ref.device, dtype=torch.bool))
        mask = torch.stack(cols, 1)
        if self.training and self.modality_dropout > 0:
            drop = torch.rand(mask.shape, device=mask.device) < self.modality_dropout
            kept = mask & ~drop
            lost_all = ~kept.any(1) & mask.any(1)
            # a patient who would lose every modality keeps one present one, at random
            pick = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
            one = nn.functional.one_hot(pick.argmax(1), mask.shape[1]).bool()
            mask = torch.where(lost_all[:, None], one, kept)
        return mask

    def fill(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> list[Tensor]:
        """Embeddings with absent entries replaced by the learned absent vectors."""
        ref = next(iter(embeddings.values()))
        out = []
        for i, m in enumerate(self.names):
            a = self.absent[i].to(ref.dtype).expand(mask.shape[0], -1)
            e = embeddings.get(m)
            if e is None:
                out.append(a)
                continue
            out.append(torch.where(mask[:, i : i + 1], e.to(ref.dtype), a))
        return out

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        mask = self.presence(embeddings, present)
        return self.fuse(self.fill(embeddings, mask), mask)

    def fuse(self, filled: list[Tensor], mask: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class ConcatHead(FusionHead):
    """``MLP([e_1 | … | e_M | mask])`` with absent ``e_m`` replaced by learned vectors."""

    def __init__(self, embedding_dims: Mapping[str, int], out_dim: int, config: Any) -> None:
        super().__init__(embedding_dims, out_dim, config)
        d_in = sum(self.dims) + len(self.dims)
        self.mlp = _mlp(d_in, self.hidden, out_dim, self.dropout, getattr(config, "layers", 1))

    def fuse(self, filled: list[Tensor], mask: Tensor) -> Tensor:
        return self.mlp(torch.cat([*filled, mask.to(filled[0].dtype)], 1))


class LateHead(FusionHead):
    r"""Late fusion: :math:`y_b = \sum_{m \in P_b} w_{bm} f_m(e_{bm})` with
    :math:`w_{b\cdot} = \mathrm{softmax}_{P_b}(\alpha)` for learned logits :math:`\alpha`;
    a patient with no modality gets a learned constant."""

    def __init__(self, embedding_dims: Mapping[str, int], out_dim: int, config: Any) -> None:
        super().__init__(embedding_dims, out_dim, config)
        self.heads = nn.ModuleList(_mlp(d, self.hidden, out_dim, self.dropout) for d in self.dims)
        self.logits = nn.Parameter(torch.zeros(len(self.dims)))
        self.empty = nn.Parameter(torch.zeros(out_dim))

    def _weights(self, mask: Tensor) -> Tensor:
        return masked_softmax(self.logits.expand(mask.shape[0], -1), mask)

    def fuse(self, filled: list[Tensor], mask: Tensor) -> Tensor:
        outs = torch.stack([h(e) for h, e in zip(self.heads, filled, strict=True)], 1)  # B,M,O
        w = self._weights(mask)
        y = (w[:, :, None] * outs).sum(1)
        return torch.where(mask.any(1, keepdim=True), y, self.empty.expand_as(y))

    def modality_weights(self, embeddings: Mapping[str, Tensor],
                         present: Mapping[str, Tensor]) -> Tensor:
        """(B, M) weights of each modality's head, zero for absent ones."""
        was = self.training
        self.eval()
        try:
            return self._weights(self.presence(embeddings, present)).detach()
        finally:
            self.train(was)


class GatedHead(FusionHead):
    r"""Attention-gated pooling (Ilse et al.-style): :math:`h_m = \mathrm{ReLU}(W_m e_m)`,
    :math:`s_m = v^\top \tanh(U h_m)`, :math:`w = \mathrm{softmax}_{P_b}(s)`,
    :math:`y = \mathrm{MLP}(\sum_m w_m h_m)`; a patient with no modality uses a learned
    pooled vector. The weights :math:`w` are what :meth:`modality_weights` reports."""

    def __init__(self, embedding_dims: Mapping[str, int], out_dim: int, config: Any) -> None:
        super().__init__(embedding_dims, out_dim, config)
        h = self.hidden
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU()) for d in self.dims)
        self.score = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))
        self.empty = nn.Parameter(torch.zeros(h))
        self.mlp = _mlp(h, h, out_dim, self.dropout)

    def _attend(self, filled: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        hs = torch.stack([p(e) for p, e in zip(self.proj, filled, strict=True)], 1)  # B,M,H
        w = masked_softmax(self.score(hs).squeeze(-1), mask)
        return hs, w

    def fuse(self, filled: list[Tensor], mask: Tensor) -> Tensor:
        hs, w = self._attend(filled, mask)
        pooled = (w[:, :, None] * hs).sum(1)
        pooled = torch.where(mask.any(1, keepdim=True), pooled, self.empty.expand_as(pooled))
        return self.mlp(pooled)

    def modality_weights(self, embeddings: Mapping[str, Tensor],
                         present: Mapping[str, Tensor]) -> Tensor:
        """(B, M) attention weights, summing to 1 over present modalities (0 for absent)."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                mask = self.presence(embeddings, present)
                return self._attend(self.fill(embeddings, mask), mask)[1]
        finally:
            self.train(was)


class KroneckerHead(FusionHead):
    r"""Gated bilinear fusion in the manner of PathomicFusion (Chen et al., 2020).

    Per modality: :math:`h_m = \mathrm{ReLU}(W_m e_m) \in \mathbb{R}^k`, a gate
    :math:`z_m = \sigma(\mathrm{Bilinear}(e_m, c_m))` where :math:`c_m` concatenates the
    other modalities' embeddings, and :math:`o_m = [z_m \odot h_m,\ 1]` (an absent modality
    uses a learned :math:`o_m`). The 1 keeps the unimodal and lower-order terms.

    * Two modalities: the full Kronecker product :math:`o_1 \otimes o_2 \in
      \mathbb{R}^{(k+1)^2}`, then an MLP.
    * Otherwise: the low-rank multimodal fusion (LMF, Liu et al., 2018) of the same
      product, :math:`f = \sum_{r=1}^{R} \lambda_r \prod_m (o_m^\top W_m^{(r)})`, never
      materialising the :math:`\prod_m (k+1)` tensor; then an MLP.
    """

    def __init__(self, embedding_dims: Mapping[str, int], out_dim: int, config: Any) -> None:
        super().__init__(embedding_dims, out_dim, config)
        k = int(getattr(config, "factor_dim", 16))
        self.k = k
        self.rank = int(getattr(config, "rank", 4))
        total = sum(self.dims)
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(d, k), nn.ReLU()) for d in self.dims)
        self.gates = nn.ModuleList(
            nn.Bilinear(d, total - d, k) if total - d > 0 else nn.Linear(d, k) for d in self.dims
        )
        self.absent_factor = nn.Parameter(torch.zeros(len(self.dims), k))
        self.drop = nn.Dropout(self.dropout)
        h = self.hidden
        self.full = len(self.dims) == 2
        if self.full:
            self.mlp = _mlp((k + 1) ** 2, h, out_dim, self.dropout)
        else:
            std = 1.0 / math.sqrt(k + 1)
            self.factors = nn.ParameterList(
                nn.Parameter(torch.randn(self.rank, k + 1, h) * std) for _ in self.dims
            )
            self.rank_weights = nn.Parameter(torch.full((self.rank,), 1.0 / self.rank))
            self.lmf_bias = nn.Parameter(torch.zeros(h))
            self.mlp = nn.Sequential(nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(h, out_dim))

    def _factors(self, filled: list[Tensor], mask: Tensor) -> list[Tensor]:
        one = filled[0].new_ones(mask.shape[0], 1)
        outs = []
        for i, e in enumerate(filled):
            h = self.proj[i](e)
            others = [f for j, f in enumerate(filled) if j != i]
            z = torch.sigmoid(self.gates[i](e, torch.cat(others, 1)) if others else self.gates[i](e))
            o = torch.where(mask[:, i : i + 1], z * h, self.absent_factor[i].expand_as(h))
            outs.append(torch.cat([self.drop(o), one], 1))
        return outs

    def fuse(self, filled: list[Tensor], mask: Tensor) -> Tensor:
        o = self._factors(filled, mask)
        if self.full:
            prod = torch.einsum("bi,bj->bij", o[0], o[1]).flatten(1)
            return self.mlp(prod)
        fused = None
        for o_m, w in zip(o, self.factors, strict=True):
            t = torch.einsum("bk,rkh->brh", o_m, w)
            fused = t if fused is None else fused * t
        assert fused is not None
        f = torch.einsum("brh,r->bh", fused, self.rank_weights) + self.lmf_bias
        return self.mlp(f)


class TransformerHead(FusionHead):
    """One token per modality (``Linear(e_m) + type_m``) and a CLS token through a
    pre-norm transformer encoder; absent modalities are excluded from attention by a key
    padding mask (the CLS token is always attendable), the CLS output is the prediction."""

    def __init__(self, embedding_dims: Mapping[str, int], out_dim: int, config: Any) -> None:
        super().__init__(embedding_dims, out_dim, config)
        h = self.hidden
        n_heads = int(getattr(config, "heads", 4))
        if h % n_heads:
            raise ValueError(f"hidden_dim {h} must be divisible by heads {n_heads}")
        self.tokens = nn.ModuleList(nn.Linear(d, h) for d in self.dims)
        self.type_emb = nn.Parameter(torch.randn(len(self.dims), h) * 0.02)
        self.cls = nn.Parameter(torch.randn(h) * 0.02)
        layer = nn.TransformerEncoderLayer(h, n_heads, dim_feedforward=2 * h,
                                           dropout=self.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, int(getattr(config, "layers", 2)),
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, out_dim)

    def fuse(self, filled: list[Tensor], mask: Tensor) -> Tensor:
        b = mask.shape[0]
        toks = torch.stack([t(e) for t, e in zip(self.tokens, filled, strict=True)], 1)
        toks = toks + self.type_emb[None]
        seq = torch.cat([self.cls.expand(b, 1, -1), toks], 1)
        pad = torch.cat([mask.new_zeros(b, 1), ~mask], 1)  # True = ignore
        x = self.encoder(seq, src_key_padding_mask=pad)
        return self.out(self.norm(x[:, 0]))

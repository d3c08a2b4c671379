"""Inf-Net's training loss, with the per-pixel weighting actually applied.

For logits ``z``, mask ``y`` and an optional per-pixel validity/loss weight ``v`` (pseudo
labels: 0 ignores a pixel), the structure loss of one map is::

    w      = 1 + 5 * |avgpool_31(y) - y|                  (kernel 31, stride 1, pad 15)
    wbce   = sum(v * w * BCE(z, y)) / sum(v * w)          (BCE per pixel, reduction="none")
    p      = sigmoid(z)
    wiou   = 1 - (sum(v w p y) + 1) / (sum(v w (p + y - p y)) + 1)
    L(z,y) = mean over the batch of (wbce + wiou)

(the published code passes ``reduce='none'`` to ``binary_cross_entropy_with_logits``, a
deprecated argument that still averages, so its weight never applies to the BCE term).
The total is the sum of ``L`` over the four maps (deep supervision) plus plain BCE of the
edge map against the edge image of the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def boundary_weight(mask: Tensor, kernel: int = 31, gain: float = 5.0) -> Tensor:
    """``1 + gain * |avgpool_k(mask) - mask|`` (hard pixels near boundaries weigh more)."""
    pooled = F.avg_pool2d(mask, kernel_size=kernel, stride=1, padding=kernel // 2,
                          count_include_pad=True)
    return 1.0 + gain * (pooled - mask).abs()


def structure_loss(logits: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """Weighted BCE + weighted IoU per sample, averaged over the batch (see module doc)."""
    mask = mask.to(logits.dtype)
    w = boundary_weight(mask)
    if valid is not None:
        w = w * valid.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (w * bce).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)
    p = torch.sigmoid(logits)
    inter = (p * mask * w).sum((2, 3))
    union = ((p + mask) * w).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def edge_loss(logits: Tensor, edge: Tensor, valid: Tensor | None = None) -> Tensor:
    """Plain BCE on the edge map (masked mean where ``valid`` is given)."""
    edge = edge.to(logits.dtype)
    if valid is None:
        return F.binary_cross_entropy_with_logits(logits, edge)
    v = valid.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, edge, reduction="none")
    return (v * bce).sum() / v.sum().clamp_min(1e-6)


def infnet_loss(maps: tuple[Tensor, ...], mask: Tensor, edge: Tensor,
                valid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Deep-supervised total over ``(map5, map4, map3, map2, edge)``."""
    parts = {f"map{k}": structure_loss(m, mask, valid) for k, m in zip((5, 4, 3, 2), maps[:4],
                                                                        strict=True)}
    parts["edge"] = edge_loss(maps[4], edge, valid)
    total = sum(parts.values())
    return total, parts  # type: ignore[return-value]

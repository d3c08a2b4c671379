"""Segmentation metrics, per image then averaged (as the published Inf-Net numbers).

For a probability map ``p`` and a binary mask ``y`` of one image, thresholded at ``t``::

    Dice_t = 2 TP / (2 TP + FP + FN)     (1 when prediction and mask are both empty)
    Sen    = TP / (TP + FN)   Spe = TN / (TN + FP)   MAE = mean |p - y|

``mean_dice`` averages ``Dice_t`` over 256 thresholds ``t = k/255``, ``k = 0..255`` (the
authors' evaluation thresholds the 8-bit map at every grey level). Confusion counts come
from ``torchmetrics.functional.classification.binary_stat_scores``.
Per-nodule 3D Dice stacks slices into a volume and scores each labelled nodule against
the predicted connected components that touch it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _counts(prob: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """(n, 4) tp, fp, tn, fn per image for ``prob >= threshold`` against a 0/1 mask."""
    pred = prob >= threshold
    pos = mask == 1
    return torch.stack([(pred & pos).sum(1), (pred & ~pos).sum(1), (~pred & ~pos).sum(1),
                        (~pred & pos).sum(1)], 1)


def _dice(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.ones_like(den, dtype=torch.float))


def segmentation_metrics(prob: Tensor, mask: Tensor, threshold: float = 0.5,
                         n_thresholds: int = 256) -> dict[str, Tensor]:
    """Per-image metrics (tensors of shape ``(n,)``) for probabilities ``(n, [1,] h, w)``."""
    prob = prob.detach().float().reshape(prob.shape[0], -1)
    mask = (mask.detach().reshape(mask.shape[0], -1) > 0.5).long()
    c = _counts(prob, mask, threshold).float()
    tp, fp, tn, fn = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    out = {
        "dice": _dice(tp, fp, fn),
        "sensitivity": torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.ones_like(tp)),
        "specificity": torch.where(tn + fp > 0, tn / (tn + fp).clamp_min(1), torch.ones_like(tn)),
        "mae": (prob - mask.float()).abs().mean(1),
    }
    # mean Dice over thresholds k/255: quantise like an 8-bit map, then count per level
    q = torch.round(prob * 255).long().clamp(0, 255)
    levels = torch.arange(n_thresholds, dtype=torch.long) * 255 // max(n_thresholds - 1, 1)
    dices = []
    for t in levels.tolist():
        pred = q >= t
        tp_t = (pred & (mask == 1)).sum(1).float()
        fp_t = (pred & (mask == 0)).sum(1).float()
        fn_t = (~pred & (mask == 1)).sum(1).float()
        dices.append(_dice(tp_t, fp_t, fn_t))
    out["mean_dice"] = torch.stack(dices, 1).mean(1)
    return out


def summarise(per_image: dict[str, list[float] | Tensor]) -> dict[str, float]:
    return {k: float(torch.as_tensor(v, dtype=torch.float).mean()) for k, v in per_image.items()}


def nodule_dice_3d(pred: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Dice per ground-truth nodule (label k > 0 in ``labels``) in 3D.

    The prediction for nodule k is the union of predicted 26-connected components that
    overlap it, so neighbouring nodules do not count against each other.
    """
    from scipy import ndimage

    pred = np.asarray(pred) > 0
    comp, _ = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    out: dict[int, float] = {}
    for k in np.unique(labels):
        if k <= 0:
            continue
        gt = labels == k
        touching = np.unique(comp[gt])
        touching = touching[touching > 0]
        p = np.isin(comp, touching) if touching.size else np.zeros_like(gt)
        inter = np.logical_and(p, gt).sum()
        out[int(k)] = float(2 * inter / (p.sum() + gt.sum()))
    return out

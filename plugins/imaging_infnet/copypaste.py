"""Bidirectional copy-paste training of Inf-Net (``semi.method: bcp``).

BCP (Bai, Chen, Li, Shen and Wang, "Bidirectional Copy-Paste for Semi-Supervised Medical
Image Segmentation", CVPR 2023) lets labelled and unlabelled slices share one input: a
box of one is pasted into the other, in both directions, so that the student learns the
labelled slices' nodules on unlabelled surroundings and the unlabelled slices' contents on
labelled surroundings, and the two kinds of data stop being learnt apart. Fitted to
Inf-Net, every optimiser step ``t`` of the on-line phase (the same phase, resumable state,
EMA teacher and schedules as ``fixmatch``, :mod:`.fixmatch`) takes a labelled batch
``(x, y, v)`` (augmented as the supervised loader does; ``v`` the labelled pixel weights)
and an unlabelled batch ``u``:

1. ``u_w = W(u)``: the weak view (flips, rotation, scale) of :func:`.fixmatch.weak_view`;
2. **pseudo masks** from the teacher (EMA of the student with ``ema_decay``, else the
   student; eval mode, no gradient): ``ŷ = LCC([sigmoid(map2(u_w)) >= 0.5])``, the
   largest 8-connected component of the thresholded map (BCP's filter; an empty mask
   stays empty). Every pixel counts (``tau`` is not read), as in BCP;
3. **one box per mixed slice** ``B_i``: a square of side ``round(copy_paste_box · S)`` at a
   uniformly drawn position (BCP: 2/3 of the side). Mixed slice ``i`` pairs unlabelled
   slice ``i`` with labelled slice ``i mod |x|``; even ``i`` paste the labelled box into
   the unlabelled slice, odd ``i`` the unlabelled box into the labelled slice::

       x̃_i = B_i ⊙ x_j + (1 - B_i) ⊙ u_w,i      ỹ_i = B_i ⊙ y_j + (1 - B_i) ⊙ ŷ_i     (i even)
       x̃_i = B_i ⊙ u_w,i + (1 - B_i) ⊙ x_j      ỹ_i = B_i ⊙ ŷ_i + (1 - B_i) ⊙ y_j     (i odd)

   with ``R_i`` the pixels that show the labelled slice (``B_i`` or ``1 - B_i``);
4. the loss, with ``ℓ(·; w)`` Inf-Net's deep-supervised structure + edge loss with
   per-pixel weight ``w`` (``losses.py``)::

       L_t = ℓ(f(x), y; v) + ℓ(f(x̃), ỹ; R ⊙ ṽ) + λ_u · r(t) · ℓ(f(x̃), ỹ; 1 - R)

   BCP weighs the two regions of a mixed image 1 and α = 0.5 (``lambda_u``, with the
   ramp-up ``r`` of :func:`.fixmatch.rampup`; ``rampup_steps: 0`` is BCP's constant
   weight). BCP's self-training step has no term for the plain labelled batch; it is
   kept here so that ``lambda_u: 0`` is the phase on labelled pixels alone (the control
   that tells what the pseudo masks add beyond pasting labelled nodules into new
   surroundings). BCP's first stage, copy-paste among labelled slices, is the supervised
   model the phase starts from;
5. Adam at the poly learning rate, gradient clipping, then the EMA teacher update, as in
   ``fixmatch``; ``final_model: teacher`` hands on the EMA teacher.

All randomness of step ``t`` comes from generators seeded by ``(train.seed, t)``, so a
resumed run takes the same steps as an uninterrupted one; the unlabelled slices' true
masks are never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .dataset import edge_of, standardise
from .fixmatch import (
    OnlineTrainer,
    _draw,
    _images,
    _labelled_batch,
    rampup,
    step_seed,
    weak_view,
)
from .losses import infnet_loss
from .network import InfNet


def largest_component(mask: Tensor) -> Tensor:
    """Per slice of a 0/1 ``(n, S, S)`` mask, its largest 8-connected component (ties:
    the first in scan order); empty slices stay empty."""
    from scipy import ndimage

    out = torch.zeros_like(mask)
    arr = mask.detach().cpu().numpy() > 0.5
    eight = np.ones((3, 3), dtype=bool)
    for i in range(arr.shape[0]):
        lab, n = ndimage.label(arr[i], structure=eight)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        keep = lab == int(np.argmax(sizes)) + 1
        out[i] = torch.from_numpy(keep).to(mask.dtype)
    return out


def paste_boxes(n: int, size: int, share: float, gen: torch.Generator) -> Tensor:
    """``(n, S, S)`` 0/1: per slice a square of side ``round(share · S)`` (at least 1 px,
    at most ``S - 1``) at a uniformly drawn position."""
    side = min(size - 1, max(1, round(share * size)))
    boxes = torch.zeros(n, size, size)
    x0 = torch.randint(0, size - side + 1, (n,), generator=gen)
    y0 = torch.randint(0, size - side + 1, (n,), generator=gen)
    for i in range(n):
        boxes[i, int(y0[i]):int(y0[i]) + side, int(x0[i]):int(x0[i]) + side] = 1.0
    return boxes


def copy_paste(xl: Tensor, yl: Tensor, vl: Tensor, u: Tensor, yu: Tensor, boxes: Tensor
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mixed slices of the module doc (step 3): images ``(n, 3, S, S)``, targets and
    labelled weights ``(n, S, S)``, and ``R``, the pixels that show the labelled slice.
    ``n = len(u)``; labelled slice ``i mod len(xl)`` goes with unlabelled slice ``i``."""
    n = u.shape[0]
    j = torch.arange(n) % xl.shape[0]
    even = (torch.arange(n) % 2 == 0).to(boxes.dtype).view(n, 1, 1)
    region = even * boxes + (1 - even) * (1 - boxes)  # R: where the labelled slice shows
    r3 = region[:, None]
    x = r3 * xl[j] + (1 - r3) * u
    y = region * yl[j] + (1 - region) * yu
    v = region * vl[j]
    return x, y, v, region


class CopyPasteTrainer(OnlineTrainer):
    """The ``bcp`` on-line phase: :class:`.fixmatch.OnlineTrainer`'s state, resume and
    schedules with the copy-paste step of the module doc."""

    def step(self, t: int, student: InfNet, teacher: InfNet | None,
             opt: torch.optim.Optimizer) -> dict[str, float]:
        s = self.semi
        gen = torch.Generator().manual_seed(step_seed(self.train.seed, t))
        bl, bu = s.batch_size, s.unlabelled_batch_size or s.batch_size
        xl, yl, vl = _labelled_batch(self.labelled, _draw(len(self.labelled), bl, gen), gen)
        uw = weak_view(_images(self.unlabelled, _draw(len(self.unlabelled), bu, gen)), gen)
        mean, std = student.input_mean, student.input_std
        yu = largest_component((self.teacher_probs(student, teacher, uw) >= 0.5).float())
        boxes = paste_boxes(bu, uw.shape[-1], s.copy_paste_box, gen)
        xm, ym, vm, region = copy_paste(xl, yl, vl, uw, yu, boxes)

        student.train()
        maps = student(torch.cat([standardise(xl, mean, std), standardise(xm, mean, std)]))
        lab = tuple(mp[:bl] for mp in maps)
        mix = tuple(mp[bl:] for mp in maps)
        ones = bool((vl == 1).all())
        loss_x, _ = infnet_loss(lab, yl[:, None], edge_of(yl)[:, None],
                                None if ones else vl[:, None])
        edge = edge_of(ym)[:, None]
        loss_pl, _ = infnet_loss(mix, ym[:, None], edge, vm[:, None])
        loss_u, _ = infnet_loss(mix, ym[:, None], edge, (1 - region)[:, None])
        self.optimise(t, loss_x + loss_pl + s.lambda_u * rampup(t, s.rampup_steps) * loss_u,
                      student, teacher, opt)
        return {"loss_x": float((loss_x + loss_pl).detach()), "loss_u": float(loss_u.detach()),
                "confident": 1.0, "positive": float(yu.mean())}


def online_trainer(method: str, *args: Any, **kwargs: Any) -> OnlineTrainer:
    """The on-line phase of ``method`` (``fixmatch`` or ``bcp``)."""
    cls = CopyPasteTrainer if method == "bcp" else OnlineTrainer
    return cls(*args, **kwargs)


__all__: Sequence[str] = ("CopyPasteTrainer", "copy_paste", "largest_component",
                          "online_trainer", "paste_boxes")

"""On-line consistency training of Inf-Net (``semi.method: fixmatch``).

FixMatch (Sohn et al., NeurIPS 2020) for segmentation as UniMatch (Yang et al., CVPR 2023)
does it, fitted to Inf-Net's deeply supervised outputs. Every optimiser step ``t`` of
the on-line phase takes a labelled batch ``(x, y)`` and an unlabelled batch ``u``:

1. **weak view** ``u_w = W(u)``: random flips, rotation (±15°) and scale (0.9-1.1);
2. **pseudo labels** from the teacher (the EMA of the student with ``ema_decay``, else the
   student itself, in eval mode, no gradient): ``p = sigmoid(map2(u_w))``,
   ``ŷ = [p >= 0.5]`` and a per-pixel mask ``m = [max(p, 1 - p) >= τ]``;
3. **strong view** ``u_s = A(u_w)``: intensity jitter (contrast, brightness, gamma),
   Gaussian blur, Gaussian noise, then CutMix with probability ``cutmix``: a box of
   another slice's strong view is pasted in, and the same box of *its* ``ŷ`` and ``m``
   into the targets, so image and pseudo label stay aligned (the geometric transform is
   the weak view's, shared by both);
4. **feature perturbation** (UniMatch's FP stream, ``feature_dropout = q > 0``): the weak
   view's four backbone feature maps pass channel dropout (rate ``q``) before the decoder;
5. the loss: the labelled term is Inf-Net's deep-supervised structure + edge loss
   ``ℓ`` (``losses.py``); the unlabelled term ``ℓ_u`` is, with ``unlabelled_loss: bce``
   (the default, FixMatch's and UniMatch's form), the per-pixel BCE of each of the four
   side outputs against ``ŷ`` over the confident pixels, divided by *all* pixels::

       ℓ_u(z, ŷ; m) = Σ_{k=2..5} Σ_px m · BCE(z_k, ŷ) / N_px

   with ``unlabelled_loss: balanced``, half the mean BCE over the confident pixels
   called nodule plus half the mean over those called background (``F``, ``B``: the
   confident pixels of each class in the batch)::

       ℓ_u(z, ŷ; m) = Σ_{k=2..5} ½ Σ_F BCE(z_k, 1) / |F| + ½ Σ_B BCE(z_k, 0) / |B|

   or, with ``unlabelled_loss: structure``, ``ℓ`` itself with per-pixel weight ``m``
   (weighted BCE + weighted IoU of each map + edge loss). The IoU term of a pseudo mask
   with no confident nodule pixel, ``1 - 1 / (Σ m w p + 1)``, pushes every confident
   pixel's probability toward 0 until the whole map's sum is far below 1, and nodules
   are so small that most unlabelled crops have such a mask; so ``structure`` drives the
   student toward "no nodule" (docs/semi_supervised.md, "Why fixmatch lost")::

       L_t = ℓ(f(x), y) + λ_u · r(t) · U_t
       U_t = ℓ_u(f(u_s), ŷ_mix; m_mix)                                (q = 0)
       U_t = ½ ℓ_u(f(u_s), ŷ_mix; m_mix) + ½ ℓ_u(f_q(u_w), ŷ; m)      (q > 0)
       r(t) = exp(-5 (1 - min(t / T_r, 1))²)                          (ramp-up, T_r steps)

6. Adam at ``lr · (1 - t / T)^0.9`` (UniMatch's poly decay over the ``T = steps``
   steps), gradients clipped at ``train.grad_clip``, then the EMA teacher update
   ``θ_T ← d θ_T + (1 - d) θ_S`` (buffers copied).

The phase hands on the student, or with ``final_model: teacher`` (and ``ema_decay``)
the EMA teacher, as Mean Teacher evaluates it.

All the randomness of step ``t`` (batch draws, augmentations, CutMix boxes, dropout)
comes from generators seeded by ``(train.seed, t)``, so a run killed after its last
saved step and resumed from ``online.pt`` (student, teacher, optimiser, step; written
every ``checkpoint_every`` steps) takes the same steps as an uninterrupted one.
The unlabelled slices' true masks are never read: only their images are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lungfuse.core.atomic import atomic_path
from lungfuse.core.errors import ConfigError, DataError

from .config import SemiSettings, TrainSettings
from .dataset import SliceItem, augment, edge_of, standardise
from .losses import infnet_loss
from .network import InfNet

ONLINE_FORMAT = "lungfuse-infnet-fixmatch/1"


# ----------------------------------------------------------------------------- schedules
def rampup(step: int, rampup_steps: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = min(step / rampup_steps, 1)`` (1 when no ramp-up)."""
    if rampup_steps <= 0:
        return 1.0
    t = min(step / rampup_steps, 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    """``base (1 - step / total)^power`` (UniMatch's schedule)."""
    return base * (1.0 - min(step, total) / max(total, 1)) ** power


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw of ``step`` (independent of the steps before it)."""
    return int(np.random.SeedSequence([int(seed), int(step), 7331]).generate_state(1)[0])


# ----------------------------------------------------------------------------- views
def _u(gen: torch.Generator, n: int, a: float, b: float) -> Tensor:
    return torch.empty(n).uniform_(a, b, generator=gen)


def weak_view(x: Tensor, gen: torch.Generator, max_rot_deg: float = 15.0,
              scale: tuple[float, float] = (0.9, 1.1)) -> Tensor:
    """Per slice of ``x (n, 3, S, S)`` in [0, 1]: random flips, rotation and scale in one
    affine warp (outside the slice: its darkest value, i.e. air)."""
    n = x.shape[0]
    fx = torch.where(_u(gen, n, 0, 1) < 0.5, -1.0, 1.0)
    fy = torch.where(_u(gen, n, 0, 1) < 0.5, -1.0, 1.0)
    th = torch.deg2rad(_u(gen, n, -max_rot_deg, max_rot_deg))
    sc = _u(gen, n, *scale)
    cos, sin = torch.cos(th) / sc, torch.sin(th) / sc
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    air = x.amin((1, 2, 3), keepdim=True)
    out = F.grid_sample(x - air, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False) + air
    return out.clamp(0, 1)


def _blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one ``(3, S, S)`` image."""
    r = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=img.dtype) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = img.shape[0]
    x = F.pad(img[None], (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[0]


def strong_view(x: Tensor, gen: torch.Generator) -> Tensor:
    """Photometric perturbation of weak views ``(n, 3, S, S)`` in [0, 1] (no geometry, so
    the weak view's pseudo labels still fit): contrast ×[0.75, 1.25] about the slice
    mean, brightness ±0.1, gamma [0.7, 1.5], Gaussian blur (σ 0.3-1.2 px, half of the
    slices), Gaussian noise (σ up to 0.04)."""
    n = x.shape[0]
    c = _u(gen, n, 0.75, 1.25).view(n, 1, 1, 1)
    b = _u(gen, n, -0.1, 0.1).view(n, 1, 1, 1)
    g = _u(gen, n, 0.7, 1.5).view(n, 1, 1, 1)
    blur, sig = _u(gen, n, 0, 1), _u(gen, n, 0.3, 1.2)
    noise = _u(gen, n, 0, 0.04).view(n, 1, 1, 1)
    m = x.mean((1, 2, 3), keepdim=True)
    y = ((x - m) * c + m + b).clamp(0, 1) ** g
    y = torch.stack([_blur(y[i], float(sig[i])) if blur[i] < 0.5 else y[i] for i in range(n)])
    y = y + noise * torch.randn(y.shape, generator=gen)
    return y.clamp(0, 1)


def cutmix_boxes(n: int, size: int, p: float, gen: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
    """Per slice: a 0/1 box ``(n, S, S)`` (all zero when not mixed, probability
    ``1 - p``) and the partner index whose content goes into it. Box area 2-40 % of the
    slice, aspect ratio 0.3-3.3 (UniMatch's ``obtain_cutmix_box``); the partner is
    another slice of the batch."""
    boxes = torch.zeros(n, size, size)
    shift = int(torch.randint(1, max(n, 2), (1,), generator=gen)) if n > 1 else 0
    partner = (torch.arange(n) + shift) % max(n, 1)
    mix, area, ratio = _u(gen, n, 0, 1), _u(gen, n, 0.02, 0.4), _u(gen, n, 0.3, 1 / 0.3)
    fx, fy = _u(gen, n, 0, 1), _u(gen, n, 0, 1)
    for i in range(n):
        if n < 2 or mix[i] >= p:
            continue
        a = float(area[i]) * size * size
        w = min(size, max(1, int(math.sqrt(a * float(ratio[i])))))
        h = min(size, max(1, int(math.sqrt(a / float(ratio[i])))))
        x0 = int(float(fx[i]) * (size - w + 1))
        y0 = int(float(fy[i]) * (size - h + 1))
        boxes[i, y0:y0 + h, x0:x0 + w] = 1.0
    return boxes, partner


def apply_cutmix(img: Tensor, target: Tensor, valid: Tensor, boxes: Tensor,
                 partner: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Paste each partner's box into image ``(n, 3, S, S)``, pseudo mask and pixel
    weight ``(n, S, S)``: the same pixels of all three."""
    b = boxes.to(img.dtype)
    img = img * (1 - b[:, None]) + img[partner] * b[:, None]
    target = target * (1 - b) + target[partner] * b
    valid = valid * (1 - b) + valid[partner] * b
    return img, target, valid


def unlabelled_bce(maps: Sequence[Tensor], target: Tensor, valid: Tensor) -> Tensor:
    """FixMatch's unlabelled loss for Inf-Net: per-pixel BCE of each side output
    ``maps[:4]`` (logits ``(n, 1, S, S)``) against the hard pseudo mask ``target``, kept
    where ``valid`` is 1, summed over the maps and divided by the number of *all* pixels
    (as UniMatch divides its masked cross-entropy), so a slice with few confident pixels
    weighs little. No IoU or edge term: they would turn an empty pseudo mask into a push
    of every pixel toward 0."""
    n_px = max(target.numel(), 1)
    v = valid.to(maps[0].dtype)
    y = target.to(maps[0].dtype)
    total = maps[0].new_zeros(())
    for z in maps[:4]:
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        total = total + (v * bce).sum() / n_px
    return total


def unlabelled_balanced_bce(maps: Sequence[Tensor], target: Tensor, valid: Tensor
                            ) -> Tensor:
    """Class-balanced form of :func:`unlabelled_bce`: for each side output, half the mean
    BCE over the confident pixels called nodule plus half the mean over the confident
    pixels called background (a class with no confident pixel in the batch adds 0).
    Nodules cover about 0.2 % of the unlabelled pixels, so in ``bce`` the pseudo nodule
    pixels carry almost none of the gradient and the term mostly repeats "background"
    where the student already agrees; here they carry half of it, as the IoU term gives
    nodule pixels their weight in the labelled loss (without its push of an empty mask
    to 0)."""
    v = valid.to(maps[0].dtype)
    y = target.to(maps[0].dtype)
    fg, bg = v * y, v * (1 - y)
    n_fg, n_bg = fg.sum().clamp(min=1), bg.sum().clamp(min=1)
    total = maps[0].new_zeros(())
    for z in maps[:4]:
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        total = total + 0.5 * (fg * bce).sum() / n_fg + 0.5 * (bg * bce).sum() / n_bg
    return total


def pseudo_targets(prob: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Hard pseudo mask ``[p >= 0.5]`` and confident-pixel mask ``[max(p, 1-p) >= τ]``."""
    return (prob >= 0.5).to(prob.dtype), (torch.maximum(prob, 1 - prob) >= tau).to(prob.dtype)


@torch.no_grad()
def ema_update(teacher: InfNet, student: InfNet, decay: float) -> None:
    """``θ_T <- d θ_T + (1 - d) θ_S`` for parameters; buffers (BatchNorm statistics)
    copied from the student."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


# ----------------------------------------------------------------------------- training
@dataclass
class OnlineStats:
    """Sums over the steps taken (so that a resumed run reports the whole phase)."""

    steps: int = 0
    loss_x: float = 0.0
    loss_u: float = 0.0
    confident: float = 0.0  # share of unlabelled pixels whose pseudo label counted
    positive: float = 0.0  # share of those labelled nodule
    extra: dict[str, float] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"loss_x": self.loss_x / n, "loss_u": self.loss_u / n,
                "confident": self.confident / n, "positive": self.positive / n}


def _images(items: Sequence[Any], idx: Tensor) -> Tensor:
    return torch.stack([items[int(i)].image for i in idx]).float()


def _draw(n: int, k: int, gen: torch.Generator) -> Tensor:
    """``k`` indices out of ``n``: without replacement when ``n >= k``."""
    if n >= k:
        return torch.randperm(n, generator=gen)[:k]
    return torch.randint(0, n, (k,), generator=gen)


def _labelled_batch(pool: Sequence[SliceItem], idx: Tensor, gen: torch.Generator
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Augmented labelled slices (as the supervised loader augments them)."""
    xs, ys, vs = [], [], []
    for i in idx:
        it = pool[int(i)]
        mask = it.mask.float()
        w = it.weight.float() if it.weight is not None else torch.ones_like(mask)
        x, y, v = augment(it.image.float(), mask, w, gen)
        xs.append(x)
        ys.append(y)
        vs.append(v)
    return torch.stack(xs), torch.stack(ys), torch.stack(vs)


class OnlineTrainer:
    """The on-line phase: ``semi.steps`` steps from the given student (and teacher),
    resumable from ``state_path``. ``on_step(t)`` is called before step ``t`` (tests
    interrupt it there)."""

    def __init__(self, labelled: Sequence[SliceItem], unlabelled: Sequence[Any],
                 train: TrainSettings, semi: SemiSettings, state_path: Path,
                 fingerprint: str, progress: bool = False,
                 on_step: Callable[[int], None] | None = None) -> None:
        if not len(labelled) or not len(unlabelled):
            raise DataError("fixmatch needs labelled and unlabelled slices")
        self.labelled, self.unlabelled = list(labelled), list(unlabelled)
        self.train, self.semi = train, semi
        self.state_path = Path(state_path)
        self.fingerprint = fingerprint
        self.progress, self.on_step = progress, on_step
        self.stats = OnlineStats()

    # --- state -----------------------------------------------------------------------
    def _save(self, step: int, student: InfNet, teacher: InfNet | None,
              opt: torch.optim.Optimizer) -> None:
        obj = {"format": ONLINE_FORMAT, "fingerprint": self.fingerprint, "step": step,
               "student": student.state_dict(),
               "teacher": None if teacher is None else teacher.state_dict(),
               "optimizer": opt.state_dict(), "stats": {
                   "steps": self.stats.steps, "loss_x": self.stats.loss_x,
                   "loss_u": self.stats.loss_u, "confident": self.stats.confident,
                   "positive": self.stats.positive}}
        with atomic_path(self.state_path) as tmp:
            torch.save(obj, tmp)

    def _load(self, student: InfNet, teacher: InfNet | None,
              opt: torch.optim.Optimizer) -> int:
        from lungfuse.core.state_io import load_torch

        obj = load_torch(self.state_path, "semi-supervised state",
                         f"delete {self.state_path.parent} to start over")
        if not isinstance(obj, dict) or obj.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.state_path}: written by a different semi-supervised "
                              "configuration or data; use another out_dir/state_dir or "
                              "delete it to start over")
        student.load_state_dict(obj["student"])
        if teacher is not None and obj.get("teacher") is not None:
            teacher.load_state_dict(obj["teacher"])
        opt.load_state_dict(obj["optimizer"])
        s = obj.get("stats") or {}
        self.stats = OnlineStats(int(s.get("steps", 0)), float(s.get("loss_x", 0.0)),
                                 float(s.get("loss_u", 0.0)), float(s.get("confident", 0.0)),
                                 float(s.get("positive", 0.0)))
        return int(obj["step"])

    # --- one step ----------------------------------------------------------------------
    def _unlabelled_loss(self, maps: Sequence[Tensor], target: Tensor, valid: Tensor
                         ) -> Tensor:
        """``ℓ_u``: masked BCE over all pixels (``bce``), its class-balanced form
        (``balanced``) or Inf-Net's loss (``structure``)."""
        if self.semi.unlabelled_loss == "bce":
            return unlabelled_bce(maps, target[:, None], valid[:, None])
        if self.semi.unlabelled_loss == "balanced":
            return unlabelled_balanced_bce(maps, target[:, None], valid[:, None])
        loss, _ = infnet_loss(tuple(maps), target[:, None], edge_of(target)[:, None],
                              valid[:, None])
        return loss

    @staticmethod
    def teacher_probs(student: InfNet, teacher: InfNet | None, views: Tensor) -> Tensor:
        """``sigmoid(map2)`` of the teacher (else the student) on ``views`` in [0, 1]:
        eval mode, no gradient, the labeller's mode restored."""
        labeller = teacher if teacher is not None else student
        was = labeller.training
        labeller.eval()
        with torch.no_grad():
            x = standardise(views, student.input_mean, student.input_std)
            prob = torch.sigmoid(labeller(x)[3][:, 0].float())
        labeller.train(was)
        return prob

    def optimise(self, t: int, loss: Tensor, student: InfNet, teacher: InfNet | None,
                 opt: torch.optim.Optimizer) -> None:
        """Step ``t``'s update: poly learning rate, backward, clipping, Adam, then the EMA
        teacher."""
        for g in opt.param_groups:
            g["lr"] = poly_lr(self.semi.lr, t, self.semi.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), self.train.grad_clip)
        opt.step()
        if teacher is not None and self.semi.ema_decay is not None:
            ema_update(teacher, student, self.semi.ema_decay)

    def step(self, t: int, student: InfNet, teacher: InfNet | None,
             opt: torch.optim.Optimizer) -> dict[str, float]:
        """One optimiser step ``t`` (see the module doc); returns its losses."""
        s, tr = self.semi, self.train
        seed = step_seed(tr.seed, t)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout of the FP stream
        bl, bu = s.batch_size, s.unlabelled_batch_size or s.batch_size
        xl, yl, vl = _labelled_batch(self.labelled, _draw(len(self.labelled), bl, gen), gen)
        u = _images(self.unlabelled, _draw(len(self.unlabelled), bu, gen))
        uw = weak_view(u, gen)
        mean, std = student.input_mean, student.input_std
        y, m = pseudo_targets(self.teacher_probs(student, teacher, uw), s.tau)
        us = strong_view(uw, gen)
        boxes, partner = cutmix_boxes(bu, us.shape[-1], s.cutmix, gen)
        us, ymix, mmix = apply_cutmix(us, y, m, boxes, partner)

        student.train()
        parts = [standardise(xl, mean, std), standardise(us, mean, std)]
        fp = s.feature_dropout > 0
        if fp:
            parts.append(standardise(uw, mean, std))
        feats = student.features(torch.cat(parts))
        if fp:
            k = bl + bu
            feats = [torch.cat([f[:k], F.dropout2d(f[k:], s.feature_dropout)]) for f in feats]
        maps, _ = student._decode(feats)  # the forward pass, with the perturbed features
        lab = tuple(mp[:bl] for mp in maps)
        strong = tuple(mp[bl:bl + bu] for mp in maps)
        ones = bool((vl == 1).all())
        loss_x, _ = infnet_loss(lab, yl[:, None], edge_of(yl)[:, None],
                                None if ones else vl[:, None])
        loss_u = self._unlabelled_loss(strong, ymix, mmix)
        if fp:
            pert = tuple(mp[bl + bu:] for mp in maps)
            loss_u = 0.5 * loss_u + 0.5 * self._unlabelled_loss(pert, y, m)
        self.optimise(t, loss_x + s.lambda_u * rampup(t, s.rampup_steps) * loss_u,
                      student, teacher, opt)
        conf = float(m.mean())
        pos = float((y * m).sum() / m.sum().clamp(min=1))
        return {"loss_x": float(loss_x.detach()), "loss_u": float(loss_u.detach()),
                "confident": conf, "positive": pos}

    # --- the phase ---------------------------------------------------------------------
    def run(self, student: InfNet, teacher: InfNet | None) -> tuple[InfNet, InfNet | None]:
        """Steps ``0..steps-1`` (from the saved step when ``state_path`` exists)."""
        from .progress import enabled

        opt = torch.optim.Adam(student.parameters(), lr=self.semi.lr)
        start = self._load(student, teacher, opt) if self.state_path.exists() else 0
        total = self.semi.steps
        bar = None
        if enabled(self.progress) and start < total:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, desc=f"semi {self.semi.method}",
                       unit="step")
        for t in range(start, total):
            if self.on_step:
                self.on_step(t)
            r = self.step(t, student, teacher, opt)
            st = self.stats
            st.steps += 1
            st.loss_x += r["loss_x"]
            st.loss_u += r["loss_u"]
            st.confident += r["confident"]
            st.positive += r["positive"]
            if (t + 1) % self.semi.checkpoint_every == 0 or t + 1 == total:
                self._save(t + 1, student, teacher, opt)
            if bar is not None:
                bar.set_postfix(loss_x=f"{r['loss_x']:.3f}", loss_u=f"{r['loss_u']:.3f}",
                                confident=f"{r['confident']:.2f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        return student, teacher

"""2.5D slice pool for Inf-Net training and inference.

A slice input is the stack of axial slices ``z-1, z, z+1`` (clamped at the ends) as three
channels, HU-windowed to ``[0, 1]`` by ``(clip(hu, lo, hi) - lo) / (hi - lo)`` (default
-1000..400), then standardised with the backbone's mean/std per channel. A slice is either
the whole slice resized to ``img_size`` or a ``crop_mm``-wide square centred on a nodule.

The pool (:class:`SlicePool`) is a plain list of :class:`SliceItem` that can grow: the
semi-supervised stage adds pseudo-labelled slices with :meth:`SlicePool.add_pseudo`
(image, predicted mask, optional per-pixel loss weight where 0 ignores a pixel); edges are
always derived from the (augmented) mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .config import SliceSettings
from .ctio import Case, Volume


def window(hu: Tensor | np.ndarray, s: SliceSettings) -> Tensor:
    """HU -> [0, 1] over the window ``[hu_min, hu_max]``."""
    t = torch.as_tensor(hu, dtype=torch.float32)
    return (t.clamp(s.hu_min, s.hu_max) - s.hu_min) / (s.hu_max - s.hu_min)


def standardise(x01: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[0, 1] image(s) ``(..., 3, h, w)`` -> the backbone's input range."""
    m = torch.as_tensor(mean, dtype=x01.dtype, device=x01.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x01.dtype, device=x01.device).view(-1, 1, 1)
    return (x01 - m) / s


def edge_of(mask: Tensor, width: int = 1) -> Tensor:
    """Edge image of a (soft) mask ``(..., h, w)``: dilation minus erosion, > 0.5 -> 1."""
    m = (mask > 0.5).float()
    shape = m.shape
    m4 = m.reshape(-1, 1, *shape[-2:])
    k = 2 * width + 1
    dil = F.max_pool2d(m4, k, stride=1, padding=width)
    ero = -F.max_pool2d(-m4, k, stride=1, padding=width)
    return (dil - ero).reshape(shape)


def stack_slices(arr: np.ndarray, z: int, context: int = 1) -> np.ndarray:
    """``(2*context+1, y, x)`` slices around ``z`` (indices clamped to the volume)."""
    zs = np.clip(np.arange(z - context, z + context + 1), 0, arr.shape[0] - 1)
    return arr[zs]


def _resize(t: Tensor, size: int, mode: str) -> Tensor:
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t[None], size=(size, size), mode=mode, **kw)[0]


def crop_box(vol: Volume, s: SliceSettings,
             centre_xy: Sequence[float] | None) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)`` in pixels of the ``crop_mm`` square centred on ``centre_xy``."""
    if centre_xy is None:
        centre_xy = (vol.array.shape[2] / 2, vol.array.shape[1] / 2)
    half = (s.crop_mm / 2.0) / vol.spacing[:2]  # pixels in x, y
    x0 = int(round(centre_xy[0] - half[0]))
    y0 = int(round(centre_xy[1] - half[1]))
    return x0, y0, max(1, int(round(2 * half[0]))), max(1, int(round(2 * half[1])))


def cut_slice(vol: Volume, z: int, s: SliceSettings, labels: np.ndarray | None = None,
              centre_xy: Sequence[float] | None = None) -> tuple[Tensor, Tensor | None]:
    """Windowed input ``(3, S, S)`` in [0, 1] and the label slice ``(S, S)`` (nearest).

    ``mode="full"``: the whole slice resized. ``mode="crop"``: a square of ``crop_mm``
    centred on ``centre_xy`` (voxel x, y), padded with air outside the scan.
    """
    img = torch.from_numpy(np.ascontiguousarray(stack_slices(vol.array, z, s.context)))
    lab = None if labels is None else torch.from_numpy(
        np.ascontiguousarray(labels[z].astype(np.float32)))[None]
    if s.mode == "crop":
        x0, y0, w, h = crop_box(vol, s, centre_xy)
        pad = (max(0, -x0), max(0, x0 + w - img.shape[2]), max(0, -y0), max(0, y0 + h - img.shape[1]))
        if any(pad):
            img = F.pad(img, pad, value=s.hu_min)
            if lab is not None:
                lab = F.pad(lab, pad, value=0.0)
            x0 += pad[0]
            y0 += pad[2]
        img = img[:, y0:y0 + h, x0:x0 + w]
        if lab is not None:
            lab = lab[:, y0:y0 + h, x0:x0 + w]
    x = _resize(window(img, s), s.img_size, "bilinear")
    y = None if lab is None else _resize(lab, s.img_size, "nearest")[0]
    return x, y


@dataclass
class SliceItem:
    """One training slice. ``image`` is windowed [0,1] ``(3,S,S)`` float16; ``mask``
    ``(S,S)`` float16 in [0,1]; ``weight`` optional ``(S,S)`` per-pixel loss weight
    (0 = ignore), for pseudo labels."""

    image: Tensor
    mask: Tensor
    weight: Tensor | None = None
    uid: str = ""
    patient_id: str | None = None
    z: int = -1
    source: str = "labelled"
    meta: dict = field(default_factory=dict)


class SlicePool(list):
    """A growable list of :class:`SliceItem` (the semi-supervised stage appends to it)."""

    def add_pseudo(self, images: Tensor, masks: Tensor, weights: Tensor | None = None,
                   source: str = "pseudo", **meta: object) -> None:
        """Append pseudo-labelled slices: ``images (n,3,S,S)`` windowed [0,1], ``masks
        (n,S,S)`` (probabilities or 0/1), optional ``weights (n,S,S)``."""
        for i in range(images.shape[0]):
            self.append(SliceItem(images[i].half(), masks[i].half(),
                                  None if weights is None else weights[i].half(),
                                  source=source, meta=dict(meta)))

    @property
    def patient_ids(self) -> set[str]:
        return {it.patient_id for it in self if it.patient_id}


def build_pool(cases: Iterable[Case], s: SliceSettings, negatives_per_positive: float = 0.5,
               seed: int = 0, max_slices: int | None = None) -> SlicePool:
    """Positive slices (any nodule voxel) plus sampled negatives from each scan.

    In crop mode a positive is centred on its nodule's centre (in-plane) and a negative
    on a random in-body point; in full mode both are whole slices.
    """
    rng = np.random.default_rng(seed)
    pool = SlicePool()
    for case in cases:
        vol, lab = case.volume, case.labels
        nz = lab.shape[0]
        pos = [int(z) for z in np.nonzero(lab.reshape(nz, -1).any(1))[0]]
        neg_all = [z for z in range(nz) if z not in set(pos)]
        n_neg = min(len(neg_all), int(math.ceil(negatives_per_positive * max(len(pos), 1))))
        neg = sorted(rng.choice(neg_all, size=n_neg, replace=False).tolist()) if n_neg else []
        for z in pos:
            centre = None
            if s.mode == "crop":
                ks = [k for k in np.unique(lab[z]) if k > 0]
                yy, xx = np.nonzero(lab[z] == ks[0])
                centre = (float(xx.mean()), float(yy.mean()))
            x, y = cut_slice(vol, z, s, lab, centre)
            pool.append(SliceItem(x.half(), (y > 0).half(), None, case.uid, case.patient_id, z))
        for z in neg:
            centre = None
            if s.mode == "crop":
                body = np.argwhere(vol.array[z] > -500)
                if len(body):
                    yy, xx = body[rng.integers(len(body))]
                    centre = (float(xx), float(yy))
            x, y = cut_slice(vol, z, s, lab, centre)
            pool.append(SliceItem(x.half(), (y > 0).half(), None, case.uid, case.patient_id, z,
                                  source="negative"))
    if max_slices is not None and len(pool) > max_slices:
        keep = sorted(rng.choice(len(pool), size=max_slices, replace=False).tolist())
        pool = SlicePool(pool[i] for i in keep)
    return pool


def augment(img: Tensor, mask: Tensor, weight: Tensor, gen: torch.Generator,
            max_rot_deg: float = 10.0, scale: tuple[float, float] = (0.9, 1.1)
            ) -> tuple[Tensor, Tensor, Tensor]:
    """Random flips, small rotation/scale (one affine warp), gain/offset/noise."""
    def u(a: float, b: float) -> float:
        return float(torch.empty(1).uniform_(a, b, generator=gen))

    if u(0, 1) < 0.5:
        img, mask, weight = img.flip(-1), mask.flip(-1), weight.flip(-1)
    if u(0, 1) < 0.5:
        img, mask, weight = img.flip(-2), mask.flip(-2), weight.flip(-2)
    th = math.radians(u(-max_rot_deg, max_rot_deg))
    sc = u(*scale)
    theta = torch.tensor([[math.cos(th) / sc, -math.sin(th) / sc, 0.0],
                          [math.sin(th) / sc, math.cos(th) / sc, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, *img.shape[-2:]], align_corners=False)
    air = img.amin()
    img = F.grid_sample(img[None] - air, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0] + air
    mask = F.grid_sample(mask[None, None], grid, mode="bilinear", align_corners=False)[0, 0]
    weight = F.grid_sample(weight[None, None], grid, mode="nearest", padding_mode="border",
                           align_corners=False)[0, 0]
    img = (img * u(0.9, 1.1) + u(-0.05, 0.05) + 0.01 * torch.randn(img.shape, generator=gen))
    return img.clamp(0, 1), mask, weight


class SliceDataset(Dataset):
    """Items ``{"image", "mask", "edge", "valid"}`` from a pool (augmented if asked)."""

    def __init__(self, pool: Sequence[SliceItem], mean: Sequence[float], std: Sequence[float],
                 train: bool = False, seed: int = 0) -> None:
        self.pool = pool
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        it = self.pool[i]
        img = it.image.float()
        mask = it.mask.float()
        weight = it.weight.float() if it.weight is not None else torch.ones_like(mask)
        if self.train:
            gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
            img, mask, weight = augment(img, mask, weight, gen)
        return {
            "image": standardise(img, self.mean, self.std),
            "mask": mask[None],
            "edge": edge_of(mask)[None],
            "valid": weight[None],
        }


def volume_inputs(vol: Volume, s: SliceSettings, zs: Iterable[int] | None = None,
                  centre_xy: Sequence[float] | None = None) -> tuple[list[int], Tensor]:
    """Windowed [0,1] inputs ``(n, 3, S, S)`` for slices ``zs`` (default: all)."""
    zs = list(range(vol.array.shape[0])) if zs is None else [int(z) for z in zs]
    xs = [cut_slice(vol, z, s, None, centre_xy)[0] for z in zs]
    return zs, torch.stack(xs) if xs else torch.empty(0, 3, s.img_size, s.img_size)

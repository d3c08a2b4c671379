"""Semi-supervised Inf-Net: pseudo labels on unlabelled slices of training patients.

Four variants (settings in :class:`~.config.SemiSettings`), all starting from a model
trained on the labelled slices ``L`` and ending with a fine-tune on ``L`` alone:

* **progressive** (Semi-Inf-Net, Fan et al. 2020). The unlabelled slices ``U`` are put in a
  seeded order once. Round ``r`` takes the next ``K`` of them, predicts them with the
  current model, appends them with their pseudo masks ``y = [p >= 0.5]`` (edges follow from
  the mask) to the pool for good, and fine-tunes on ``L + pseudo(1..r)``. A round adds
  exactly ``K`` slices (the last one the remainder).
* **confidence** (filtered, refreshed). Round ``r`` re-labels all of ``U[:rK]`` with the
  teacher (the student, or its exponential moving average ``θ_T <- d θ_T + (1 - d) θ_S``
  after every optimiser step when ``ema_decay = d``), keeps slice ``i`` only when its mean
  confidence ``c_i = mean_px max(p, 1 - p) >= τ`` (``confidence_over: foreground``: the
  mean over the pixels with ``p > lo`` only, see :func:`slice_confidence`), gives weight 0
  to pixels with
  ``lo < p < hi`` (the uncertain band) so the loss ignores them, and replaces the previous
  round's pseudo set with this one.
* **fixmatch** (FixMatch, Sohn et al. 2020, as UniMatch, Yang et al. 2023, does it for
  segmentation): one on-line phase instead of rounds (:mod:`.fixmatch`): every step, the
  teacher's confident pixels on a weak view of unlabelled slices supervise the student on
  a strong view (and on dropout-perturbed features), beside a labelled batch.
* **bcp** (bidirectional copy-paste, Bai et al. 2023): the same kind of on-line phase
  (:mod:`.copypaste`), on labelled and unlabelled slices pasted into each other, the
  labelled pixels supervised by their masks and the unlabelled ones by the teacher's.

The unlabelled slices ``U`` are every ``slice_stride``-th slice of unlabelled scans, or
the slices (crops) at the points of a LUNA16-style candidates file (``semi.candidates``,
:mod:`.candidates`); their labels are never read.

Leakage: the unlabelled pool is made of slices of *training* patients; test patients
never appear there (:func:`check_no_test_patients` is called when the pool is built and
again before every round). The final checkpoint lists every patient whose pixels trained
it (labelled, unlabelled and validation), like the supervised one.

Resume: each finished round ``r`` leaves ``state_dir/model_r.pt`` (student and teacher)
then ``state_dir/round_r.pt`` (its pseudo slices, masks, weights, validation Dice), both
written atomically, in that order; the model of round ``r - 1`` is deleted only after
that. A run killed during round ``r`` restarts at ``r`` from ``model_{r-1}`` and rebuilds
exactly the same pool from the round files; a state directory written by a different
configuration or data is refused. An on-line phase (fixmatch, bcp) is the one round ``r = 1``; within
it, ``state_dir/online.pt`` holds the state every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lungfuse.core.atomic import atomic_path
from lungfuse.core.errors import ConfigError, DataError

from .config import FastPath, SemiSettings, SliceSettings, TrainSettings
from .copypaste import online_trainer
from .dataset import SliceItem, SlicePool, cut_slice
from .fixmatch import ema_update
from .metrics import segmentation_metrics
from .network import InfNet

log = logging.getLogger("lungfuse.imaging")
STATE_FORMAT = "lungfuse-infnet-semi/1"


# ----------------------------------------------------------------------------- unlabelled pool
@dataclass
class Candidate:
    """An unlabelled slice: windowed [0, 1] image ``(3, S, S)`` (float16).

    ``hidden_mask`` is the ground truth where the experiment hid it (bench diagnostics of
    pseudo-label quality only; training never reads it). ``centre`` is the in-plane voxel
    point ``(x, y)`` a crop was centred on (candidates file, crop mode), else None."""

    uid: str
    patient_id: str | None
    z: int
    image: Tensor
    hidden_mask: Tensor | None = field(default=None, repr=False)
    centre: tuple[float, float] | None = None

    @property
    def key(self) -> str:
        if self.centre is None:
            return f"{self.uid}:{self.z}"
        return f"{self.uid}:{self.z}@{round(self.centre[0])},{round(self.centre[1])}"

    @property
    def patient(self) -> str:
        return self.patient_id or self.uid


def candidates_from_cases(cases: Sequence[Any], slices: SliceSettings,
                          stride: int = 1) -> list[Candidate]:
    """Every ``stride``-th slice of unlabelled scans (whole slices, labels never read)."""
    s = slices if slices.mode == "full" else slices.model_copy(update={"mode": "full"})
    out = []
    for c in cases:
        for z in range(0, c.volume.array.shape[0], stride):
            x, _ = cut_slice(c.volume, z, s)
            out.append(Candidate(c.uid, c.patient_id, z, x.half()))
    return out


def _points_in(cases: Sequence[Any], points: Sequence[Any], slices: SliceSettings,
               neighbours: int, source: str
               ) -> Iterator[tuple[Any, int, tuple[float, float] | None]]:
    """``(case, slice, centre)`` for every candidate point of ``cases`` and its
    ``neighbours`` slices either side; a point outside its scan is an error naming its
    line of ``source``. Points of other scans are skipped."""
    by_uid = {c.uid: c for c in cases}
    for q in points:
        case = by_uid.get(q.uid)
        if case is None:
            continue
        vol = case.volume
        x, y, z = (float(v) for v in vol.world_to_index(q.world))
        nz, ny, nx = vol.array.shape
        if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5 and -0.5 <= z < nz - 0.5):
            raise DataError(f"{source}, line {q.line}: point {q.world} mm lies outside series "
                            f"{q.uid} (voxel {x:.1f}, {y:.1f}, {z:.1f} of {nx}x{ny}x{nz})")
        centre = (x, y) if slices.mode == "crop" else None
        z0 = int(round(z))
        for zz in range(max(0, z0 - neighbours), min(nz, z0 + neighbours + 1)):
            yield case, zz, centre


def candidates_at_points(cases: Sequence[Any], points: Sequence[Any], slices: SliceSettings,
                         neighbours: int = 0, source: str = "candidates") -> list[Candidate]:
    """Unlabelled slices at candidate points (:class:`~.candidates.CandidatePoint`): for a
    point at voxel ``(x, y, z)`` of its scan, the slices ``round(z) ± 0..neighbours``,
    each a crop centred on ``(x, y)`` in crop mode, else the whole slice (a slice taken
    twice is kept once). Only the scans' images are read, never their labels; a point
    outside its scan is an error naming its line of ``source``. Points of scans not in
    ``cases`` (labelled, validation or test scans) are skipped."""
    out: list[Candidate] = []
    for case, zz, centre in _points_in(cases, points, slices, neighbours, source):
        img, _ = cut_slice(case.volume, zz, slices, None, centre)
        out.append(Candidate(case.uid, case.patient_id, zz, img.half(), centre=centre))
    return _dedupe(out)


def labelled_at_points(cases: Sequence[Any], points: Sequence[Any], slices: SliceSettings,
                       neighbours: int = 0, source: str = "candidates") -> list[SliceItem]:
    """The labelled scans' slices cut exactly as :func:`candidates_at_points` cuts the
    unlabelled ones, with their true masks (``source`` ``"candidate"``): with them the
    supervised model has seen crops centred on look-alikes before it labels U's
    (``semi.labelled_candidates``). A slice taken twice is kept once."""
    out: list[SliceItem] = []
    seen: set[str] = set()
    for case, zz, centre in _points_in(cases, points, slices, neighbours, source):
        key = f"{case.uid}:{zz}" if centre is None else \
            f"{case.uid}:{zz}@{round(centre[0])},{round(centre[1])}"
        if key in seen:
            continue
        seen.add(key)
        img, y = cut_slice(case.volume, zz, slices, case.labels, centre)
        out.append(SliceItem(img.half(), (y > 0).half(), None, case.uid, case.patient_id, zz,
                             source="candidate", meta={"centre": centre}))
    return out


def split_labelled(pool: Sequence[SliceItem], fraction: float, seed: int = 0
                   ) -> tuple[SlicePool, list[Candidate]]:
    """Keep the labels of ``round(fraction * n)`` slices (at least 1, seeded); the others
    become unlabelled candidates whose masks are hidden (kept only for diagnostics)."""
    n = len(pool)
    if n < 2:
        raise DataError(f"labelled_fraction needs at least 2 training slices, got {n}")
    n_lab = min(n - 1, max(1, int(round(fraction * n))))
    perm = np.random.default_rng(seed).permutation(n)
    lab = SlicePool(pool[i] for i in sorted(perm[:n_lab].tolist()))
    cands = [Candidate(pool[i].uid, pool[i].patient_id, pool[i].z, pool[i].image,
                       hidden_mask=pool[i].mask) for i in sorted(perm[n_lab:].tolist())]
    return lab, _dedupe(cands)


def _dedupe(cands: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    out = []
    for c in cands:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def read_test_patients(settings: SemiSettings) -> set[str]:
    """Test patient ids from ``test_patients`` and ``test_patients_file``."""
    ids = {str(p) for p in settings.test_patients}
    path = settings.test_patients_file
    if path is None:
        return ids
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        if "patient_id" not in df.columns:
            raise DataError(f"{path}: no 'patient_id' column; give a run's splits file or a "
                            f"text file with one patient id per line")
        if "split" in df.columns:
            df = df[df["split"].astype(str) == "test"]
        ids |= {str(p) for p in df["patient_id"]}
    else:
        ids |= {ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}
    return ids


def check_no_test_patients(candidates: Sequence[Candidate], test_patients: set[str],
                           where: str = "unlabelled pool") -> None:
    """Refuse (DataError) any unlabelled slice of a test patient."""
    bad = sorted({c.patient for c in candidates} & set(test_patients))
    if bad:
        raise DataError(f"{where}: {len(bad)} test patient(s) among the unlabelled slices "
                        f"(e.g. {bad[0]}); pseudo labels must come from training patients only")


# ----------------------------------------------------------------------------- model helpers
@torch.no_grad()
def predict_probs(model: InfNet, images01: Tensor, batch_size: int = 32) -> Tensor:
    """``sigmoid(map2)`` ``(n, S, S)`` for windowed inputs ``(n, 3, S, S)`` (eval mode)."""
    from .infer import Predictor

    was_training = model.training
    pred = Predictor(model, SliceSettings(img_size=images01.shape[-1]),
                     FastPath(enabled=False, batch_size=batch_size))
    out = pred.predict(images01.float())
    model.train(was_training)
    return out


def slice_confidence(prob: Tensor, over: str = "slice", lo: float = 0.2) -> Tensor:
    """Per-slice confidence ``(n,)`` of probability maps ``(n, H, W)``.

    ``slice``: ``mean max(p, 1 - p)`` over every pixel, which the background dominates.
    ``foreground``: the same mean over the pixels the model thinks may be nodule
    (``p > lo``): high when the predicted nodule is crisp. A slice with no such pixel gets
    NaN, which no ``tau`` keeps: a confidently empty mask is what a missed nodule looks like.
    """
    c = torch.maximum(prob, 1 - prob)
    if over == "slice":
        return c.mean((1, 2))
    if over != "foreground":
        raise ValueError(f"confidence over {over!r}: expected 'slice' or 'foreground'")
    fg = prob > lo
    n = fg.sum((1, 2))
    mean = (c * fg).sum((1, 2)) / n.clamp(min=1)
    return torch.where(n > 0, mean, torch.full_like(mean, float("nan")))


def pool_dice(model: InfNet, pool: Sequence[SliceItem], positives_only: bool = False) -> float:
    """Mean per-slice Dice at 0.5 of ``model`` on ``pool`` (NaN for an empty pool).

    ``positives_only`` scores only slices whose mask has a nodule (as `segment evaluate`)."""
    items = [it for it in pool if not positives_only or bool((it.mask > 0.5).any())]
    if not items:
        return float("nan")
    x = torch.stack([it.image for it in items])
    y = torch.stack([it.mask for it in items]).float()
    prob = predict_probs(model, x)
    return float(segmentation_metrics(prob, y, n_thresholds=2)["dice"].mean())


class EMATeacher(L.Callback):
    """After every optimiser step: ``θ_T <- d θ_T + (1 - d) θ_S``; buffers copied."""

    def __init__(self, teacher: InfNet, decay: float) -> None:
        self.teacher, self.decay = teacher, float(decay)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        ema_update(self.teacher, pl_module.model, self.decay)


def _clone(model: InfNet) -> InfNet:
    m = InfNet.from_hparams(model.hparams_dict)
    m.load_state_dict(model.state_dict())
    return m


# ----------------------------------------------------------------------------- rounds
#: Settings that do not change what training computes (left out of the fingerprint; the
#: candidates file acts through the unlabelled keys, which are in it).
_NOT_FINGERPRINTED = {"state_dir", "rounds", "checkpoint_every", "candidates",
                      "candidate_neighbours", "candidates_per_series"}
#: Settings only the on-line phases read (left out for the other methods, so that their
#: state directories written before these settings existed still resume).
_FIXMATCH_ONLY = {"steps", "unlabelled_batch_size", "lambda_u", "rampup_steps",
                  "feature_dropout", "cutmix", "unlabelled_loss", "final_model"}
#: Settings only bcp reads (left out for the others, for the same reason).
_BCP_ONLY = {"copy_paste_box"}
#: Methods trained in one on-line phase (round 1) instead of pseudo-label rounds.
ONLINE = ("fixmatch", "bcp")


@dataclass
class RoundRecord:
    round: int
    added: int
    pool_size: int
    val_dice: float
    pseudo_dice: float | None = None  # vs hidden truth, where known (diagnostics)
    kept: int | None = None
    steps: int | None = None  # fixmatch: optimiser steps of the on-line phase
    online: dict[str, float] | None = None  # fixmatch: mean losses, confident share


FitFn = Callable[..., Any]


class SemiTrainer:
    """Runs (or resumes) the pseudo-label rounds; :meth:`run` returns the final model.

    ``fit_fn`` defaults to :func:`~.train.fit` (tests count or interrupt its calls).
    ``on_round`` is called with the round number before each round's work starts.
    """

    def __init__(self, labelled: SlicePool, candidates: Sequence[Candidate],
                 val_pool: SlicePool | None, slices: SliceSettings, train: TrainSettings,
                 semi: SemiSettings, state_dir: Path, training_patients: Sequence[str],
                 test_patients: set[str] | None = None, progress: bool = True,
                 fit_fn: FitFn | None = None,
                 on_round: Callable[[int], None] | None = None) -> None:
        if not len(labelled):
            raise DataError("semi-supervised training needs labelled slices; none were found")
        if not len(candidates):
            raise DataError("semi-supervised training needs unlabelled slices: set "
                            "semi.unlabelled_series or semi.labelled_fraction")
        self.test_patients = set(test_patients or ())
        check_no_test_patients(candidates, self.test_patients)
        lab_bad = sorted({it.patient_id or it.uid for it in labelled} & self.test_patients)
        if lab_bad:
            raise DataError(f"labelled pool: test patient {lab_bad[0]} among the training "
                            f"slices; remove test patients from training")
        self.labelled = SlicePool(labelled)
        self.candidates = list(candidates)
        self.by_key = {c.key: c for c in self.candidates}
        if len(self.by_key) != len(self.candidates):
            raise DataError("unlabelled pool: the same (series, slice) appears twice")
        self.val_pool = val_pool
        self.slices, self.train, self.semi = slices, train, semi
        self.state_dir = Path(state_dir)
        self.training_patients = sorted(set(training_patients)
                                        | {c.patient for c in self.candidates})
        self.progress = progress
        if fit_fn is None:
            from .train import fit as fit_fn
        self.fit_fn = fit_fn
        self.on_round = on_round
        self.order = self._order()
        k = semi.k_per_round
        self.n_rounds = semi.rounds or math.ceil(len(self.order) / k)
        self.n_rounds = min(self.n_rounds, math.ceil(len(self.order) / k))
        if semi.method in ONLINE:
            self.n_rounds = 1  # the on-line phase
        self.on_step: Callable[[int], None] | None = None  # fixmatch: before each step
        self.history: list[RoundRecord] = []
        self.pool = SlicePool(self.labelled)

    # --- bookkeeping -------------------------------------------------------------------
    def _order(self) -> list[str]:
        keys = sorted(self.by_key)
        perm = np.random.default_rng(self.train.seed + 7919).permutation(len(keys))
        return [keys[i] for i in perm]

    def fingerprint(self) -> str:
        """Hash of what determines the rounds: settings, labelled and unlabelled slices."""
        d = {
            "semi": self.semi.model_dump(mode="json", exclude=_NOT_FINGERPRINTED | (
                set() if self.semi.method in ONLINE else _FIXMATCH_ONLY) | (
                set() if self.semi.method == "bcp" else _BCP_ONLY)),
            "train": self.train.model_dump(mode="json", exclude={"num_workers", "epochs"}),
            "slices": self.slices.model_dump(mode="json"),
            "labelled": sorted(f"{it.uid}:{it.z}:{it.source}" for it in self.labelled),
            "order": self.order,
        }
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def _path(self, kind: str, r: int) -> Path:
        return self.state_dir / f"{kind}_{r:03d}.pt"

    def _save_models(self, r: int, student: InfNet, teacher: InfNet | None) -> None:
        obj = {"format": STATE_FORMAT, "round": r, "fingerprint": self._fp,
               "hparams": student.hparams_dict, "student": student.state_dict(),
               "teacher": None if teacher is None else teacher.state_dict()}
        with atomic_path(self._path("model", r)) as tmp:
            torch.save(obj, tmp)

    def _load_models(self, r: int) -> tuple[InfNet, InfNet | None]:
        from lungfuse.core.state_io import load_torch

        obj = load_torch(self._path("model", r), "semi-supervised state",
                         f"delete {self.state_dir} to start over")
        if not isinstance(obj, dict) or obj.get("fingerprint") != self._fp:
            raise ConfigError(f"{self._path('model', r)}: written by a different "
                              "semi-supervised configuration or data; use another "
                              "out_dir/state_dir or delete it to start over")
        hp = obj["hparams"]
        student = InfNet.from_hparams(hp, str(self._path("model", r)))
        student.load_state_dict(obj["student"])
        teacher = None
        if obj.get("teacher") is not None:
            teacher = _clone(student)
            teacher.load_state_dict(obj["teacher"])
        return student, teacher

    def _save_round(self, r: int, keys: list[str], masks: Tensor | None,
                    weights: Tensor | None, rec: RoundRecord) -> None:
        obj = {"format": STATE_FORMAT, "round": r, "fingerprint": self._fp, "keys": keys,
               "masks": masks, "weights": weights, "record": rec.__dict__,
               "order": self.order if r == 0 else None}
        with atomic_path(self._path("round", r)) as tmp:
            torch.save(obj, tmp)
        old = self._path("model", r - 1)
        if r > 0 and old.exists():
            old.unlink()

    def _load_round(self, r: int) -> dict[str, Any]:
        from lungfuse.core.state_io import load_torch

        p = self._path("round", r)
        obj = load_torch(p, "semi-supervised state", f"delete {self.state_dir} to start over")
        if not isinstance(obj, dict) or obj.get("fingerprint") != self._fp:
            raise ConfigError(f"{self.state_dir}: written by a different semi-supervised "
                              f"configuration or data; use another out_dir/state_dir or "
                              f"delete it to start over")
        return obj

    def finished_rounds(self) -> int:
        """Highest ``r`` whose round file and model both exist (-1: nothing to resume)."""
        r = -1
        while self._path("round", r + 1).exists():
            r += 1
        while r >= 0 and not self._path("model", r).exists():
            r -= 1  # a model is deleted only after the next round file: cannot happen
        return r

    def _items(self, keys: list[str], masks: Tensor, weights: Tensor | None,
               r: int) -> list[SliceItem]:
        out = []
        for i, k in enumerate(keys):
            c = self.by_key[k]
            out.append(SliceItem(c.image, masks[i].half(),
                                 None if weights is None else weights[i].half(), c.uid,
                                 c.patient_id, c.z, source="pseudo", meta={"round": r}))
        return out

    def _restore(self, last: int) -> None:
        """Rebuild pool and history from round files ``0..last``."""
        self.pool = SlicePool(self.labelled)
        pseudo: list[SliceItem] = []
        for r in range(last + 1):
            obj = self._load_round(r)
            self.history.append(RoundRecord(**obj["record"]))
            if r == 0:
                continue
            items = self._items(obj["keys"], obj["masks"], obj["weights"], r) \
                if obj["keys"] else []
            pseudo = pseudo + items if self.semi.method == "progressive" else items
        self.pool.extend(pseudo)

    # --- the work ------------------------------------------------------------------------
    def _settings(self, r: int, final: bool = False) -> TrainSettings:
        s = self.semi
        upd: dict[str, Any] = {"seed": self.train.seed + r}
        if final:
            upd.update(lr=s.final_lr, epochs=max(s.final_epochs, 1))
        else:
            upd.update(lr=s.lr, epochs=s.epochs_per_round, batch_size=s.batch_size)
        return self.train.model_copy(update=upd)

    def _fit(self, pool: SlicePool, settings: TrainSettings, init: InfNet | None,
             teacher: InfNet | None, work: Path) -> InfNet:
        kw: dict[str, Any] = {"init_weights": init, "progress": False}
        if teacher is not None and self.semi.ema_decay is not None:
            kw["callbacks"] = [EMATeacher(teacher, self.semi.ema_decay)]
        module, _ = self.fit_fn(pool, self.val_pool, self.slices, settings, work,
                                self.training_patients, **kw)
        shutil.rmtree(work, ignore_errors=True)
        return module.model

    def _pseudo(self, r: int, labeller: InfNet) -> tuple[list[str], Tensor, Tensor | None,
                                                         RoundRecord]:
        s, k = self.semi, self.semi.k_per_round
        if s.method == "progressive":
            keys = self.order[(r - 1) * k: r * k]
        else:
            keys = self.order[: r * k]
        cands = [self.by_key[q] for q in keys]
        check_no_test_patients(cands, self.test_patients, where=f"round {r}")
        x = torch.stack([c.image for c in cands])
        prob = predict_probs(labeller, x)
        weights = None
        if s.method == "confidence":
            lo, hi = s.ignore_band
            conf = slice_confidence(prob, s.confidence_over, lo)
            keep = (conf >= s.tau).nonzero().flatten().tolist()
            w = ((prob <= lo) | (prob >= hi)).float()
            keys = [keys[i] for i in keep]
            cands = [cands[i] for i in keep]
            prob, weights = prob[keep], w[keep]
        masks = (prob >= 0.5).float() if s.hard_labels else prob
        truth = [c.hidden_mask for c in cands]
        pdice = None
        if cands and all(t is not None for t in truth):
            pdice = float(segmentation_metrics(masks, torch.stack(truth).float(),
                                               n_thresholds=2)["dice"].mean())
        rec = RoundRecord(r, len(keys), 0, float("nan"), pdice,
                          len(keys) if s.method == "confidence" else None)
        return keys, masks.half(), None if weights is None else weights.half(), rec

    def _online(self, student: InfNet, teacher: InfNet | None
                ) -> tuple[InfNet, InfNet | None, RoundRecord]:
        """fixmatch, bcp: the on-line phase (round 1), resumable from ``online.pt``."""
        check_no_test_patients(self.candidates, self.test_patients, where="round 1")
        online = online_trainer(self.semi.method, self.labelled, self.candidates, self.train,
                                self.semi, self.state_dir / "online.pt", self._fp,
                                self.progress, self.on_step)
        student, teacher = online.run(student, teacher)
        if self.semi.final_model == "teacher" and teacher is not None:
            student = _clone(teacher)  # the EMA model goes on (Mean Teacher's choice)
        rec = RoundRecord(1, len(self.candidates), len(self.labelled), float("nan"),
                          steps=online.stats.steps, online=online.stats.mean())
        return student, teacher, rec

    def run(self, init: InfNet | None = None) -> InfNet:
        """All rounds (resuming finished ones), then the labelled fine-tune."""
        from .progress import enabled

        self._fp = self.fingerprint()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        final_path = self.state_dir / "final.pt"
        last = self.finished_rounds()
        if last >= 0:
            self._restore(last)
            log.info("semi: resuming after round %d (%d slices in the pool)", last,
                     len(self.pool))
        if final_path.exists() and last == self.n_rounds:
            from lungfuse.core.state_io import load_torch

            obj = load_torch(final_path, "semi-supervised state",
                             f"delete {self.state_dir} to start over")
            if isinstance(obj, dict) and obj.get("fingerprint") == self._fp:
                student = InfNet.from_hparams(obj["hparams"], str(final_path))
                student.load_state_dict(obj["student"])
                self.final_val_dice = float(obj.get("val_dice", float("nan")))
                return student.eval()
        bar = None
        if enabled(self.progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=self.n_rounds + 2, desc=f"semi {self.semi.method}",
                       initial=last + 1)
        work = self.state_dir / "work"
        if last < 0:  # round 0: supervised model on the labelled slices
            if self.on_round:
                self.on_round(0)
            student = _clone(init) if init is not None else self._fit(
                self.labelled, self.train, None, None, work)
            teacher = _clone(student) if self.semi.ema_decay is not None else None
            rec = RoundRecord(0, 0, len(self.pool), pool_dice(student, self.val_pool or []))
            self._save_models(0, student, teacher)
            self._save_round(0, [], None, None, rec)
            self.history.append(rec)
            last = 0
            self._tick(bar, rec)
        else:
            student, teacher = self._load_models(last)
        for r in range(last + 1, self.n_rounds + 1):
            if self.on_round:
                self.on_round(r)
            if self.semi.method in ONLINE:
                student, teacher, rec = self._online(student, teacher)
                rec.val_dice = pool_dice(student, self.val_pool or [])
                self._save_models(r, student, teacher)
                self._save_round(r, [], None, None, rec)
                (self.state_dir / "online.pt").unlink(missing_ok=True)
                self.history.append(rec)
                self._tick(bar, rec)
                continue
            keys, masks, weights, rec = self._pseudo(r, teacher or student)
            items = self._items(keys, masks, weights, r)
            if self.semi.method == "progressive":
                pool = SlicePool(self.pool)
                pool.extend(items)
            else:
                pool = SlicePool(self.labelled)
                pool.extend(items)
            student = self._fit(pool, self._settings(r), student, teacher, work)
            self.pool = pool
            rec.pool_size = len(pool)
            rec.val_dice = pool_dice(student, self.val_pool or [])
            self._save_models(r, student, teacher)
            self._save_round(r, keys, masks, weights, rec)
            self.history.append(rec)
            self._tick(bar, rec)
        if self.on_round:
            self.on_round(self.n_rounds + 1)
        if self.semi.final_epochs > 0:
            student = self._fit(self.labelled, self._settings(self.n_rounds + 1, final=True),
                                student, None, work)
        final_dice = pool_dice(student, self.val_pool or [])
        with atomic_path(final_path) as tmp:
            torch.save({"format": STATE_FORMAT, "fingerprint": self._fp,
                        "hparams": student.hparams_dict, "student": student.state_dict(),
                        "val_dice": final_dice}, tmp)
        self.final_val_dice = final_dice
        if bar is not None:
            bar.set_postfix(round="final", pool=len(self.labelled), val_dice=f"{final_dice:.3f}")
            bar.update(1)
            bar.close()
        return student.eval()

    @staticmethod
    def _tick(bar: Any, rec: RoundRecord) -> None:
        log.info("semi: round %d: +%d slices, pool %d, val Dice %.4f", rec.round, rec.added,
                 rec.pool_size, rec.val_dice)
        if bar is not None:
            bar.set_postfix(round=rec.round, pool=rec.pool_size, val_dice=f"{rec.val_dice:.3f}")
            bar.update(1)


# ----------------------------------------------------------------------------- CLI entry
def train_semi(cfg: Any, cases: list[Any], progress: bool = True,
               begin: Any = None) -> tuple[Path, SemiTrainer]:
    """``lungfuse segment train`` with ``mode: semi``: split scans as the supervised mode
    (seeded validation scans), build labelled and unlabelled pools, run the rounds and
    write ``out_dir/infnet.pt``. With ``semi.candidates`` the unlabelled slices are cut
    at the file's points (read and checked first, before any scan is cut). ``begin()``
    is called once every input has been checked, just before training starts (the CLI
    writes its status file there, so a refused input leaves no output folder)."""
    from .dataset import build_pool
    from .train import load_checkpoint, save_checkpoint

    semi: SemiSettings = cfg.semi
    t: TrainSettings = cfg.train
    points = None
    if semi.candidates is not None:
        from .candidates import read_candidates, sample_per_series
        from .ctio import find_volumes

        points = sample_per_series(read_candidates(semi.candidates,
                                                   set(find_volumes(cfg.ct_root))),
                                   semi.candidates_per_series, t.seed)
    test = read_test_patients(semi)
    pid = {c.uid: c.patient_id or c.uid for c in cases}
    dropped = [c.uid for c in cases if pid[c.uid] in test]
    if dropped:
        log.info("semi: %d scan(s) of test patients left out", len(dropped))
    cases = [c for c in cases if pid[c.uid] not in test]
    unl_uids = set(semi.unlabelled_series)
    unknown = sorted(unl_uids - {c.uid for c in cases} - set(dropped))
    if unknown:
        log.warning("semi: unlabelled series %s not found under ct_root; ignored", unknown[0])
    bad = sorted(unl_uids & set(dropped))
    if bad:
        raise DataError(f"semi.unlabelled_series: {bad[0]} belongs to a test patient; "
                        f"unlabelled slices must come from training patients")
    labelled_cases = [c for c in cases if c.uid not in unl_uids]
    unl_cases = [c for c in cases if c.uid in unl_uids]
    rng = np.random.default_rng(t.seed)
    order = rng.permutation(len(labelled_cases))
    n_val = int(round(t.val_fraction * len(labelled_cases))) if len(labelled_cases) > 1 else 0
    val = [labelled_cases[i] for i in order[:n_val]]
    trn = [labelled_cases[i] for i in order[n_val:]]
    pool = build_pool(trn, cfg.slices, t.negatives_per_positive, t.seed, t.max_slices)
    vpool = build_pool(val, cfg.slices, t.negatives_per_positive, t.seed) if val else None
    if points is None:
        cands = candidates_from_cases(unl_cases, cfg.slices, semi.slice_stride)
    else:
        cands = candidates_at_points(unl_cases, points, cfg.slices, semi.candidate_neighbours,
                                     str(semi.candidates))
        without = sorted({c.uid for c in unl_cases} - {q.uid for q in points})
        if without:
            log.warning("semi: %d unlabelled series without candidates (e.g. %s) add no "
                        "slices", len(without), without[0])
    if points is not None and semi.labelled_candidates:
        extra = labelled_at_points(trn, points, cfg.slices, semi.candidate_neighbours,
                                   str(semi.candidates))
        pool = SlicePool([*pool, *extra])
        if t.max_slices is not None and len(pool) > t.max_slices:  # the cap holds for both
            keep = np.random.default_rng(t.seed + 1).choice(len(pool), size=t.max_slices,
                                                            replace=False)
            pool = SlicePool(pool[i] for i in sorted(keep.tolist()))
    if semi.labelled_fraction is not None:
        pool, hidden = split_labelled(pool, semi.labelled_fraction, t.seed)
        cands = cands + hidden
    ids = sorted({pid[c.uid] for c in cases})
    init = load_checkpoint(semi.init_checkpoint)[0] if semi.init_checkpoint else None
    if begin is not None:
        begin()
    trainer = SemiTrainer(pool, cands, vpool, cfg.slices, t, semi,
                          semi.state_dir or Path(cfg.out_dir) / "semi", ids, test,
                          progress=progress)
    model = trainer.run(init)
    out = save_checkpoint(Path(cfg.out_dir) / "infnet.pt", model,
                          training_patients=trainer.training_patients, slices=cfg.slices,
                          extra={"mode": "semi", "method": semi.method,
                                 "rounds": trainer.n_rounds, "n_labelled": len(pool),
                                 "n_unlabelled": len(cands),
                                 "history": [h.__dict__ for h in trainer.history]})
    return out, trainer

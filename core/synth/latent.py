"""The latent patient model: covariates, per-modality risk components, labels, outcome.

Nothing here writes files; :func:`draw_cohort` returns plain numpy/python structures that
the CT and omics writers render. See docs/synthetic.md for the model in full.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from lungfuse.core.synth.presets import SynthConfig, planned_count


def rng_for(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """An independent generator per (seed, stream, index): patient *i*'s CT does not
    depend on how many patients come before or after it."""
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode()), int(index)])


# gene: (base frequency, smoking slope on logit, weight on malignancy, weight on hazard)
DRIVERS: dict[str, tuple[float, float, float, float]] = {
    "TP53": (0.45, 0.5, 0.5, 0.4),
    "KRAS": (0.28, 0.4, 0.6, 0.3),
    "EGFR": (0.15, -0.9, 0.4, -0.6),
    "STK11": (0.15, 0.3, 0.6, 0.7),
    "KEAP1": (0.15, 0.3, 0.5, 0.6),
    "SMARCA4": (0.06, 0.2, 0.3, 0.4),
    "BRAF": (0.06, 0.0, 0.3, 0.2),
    "PIK3CA": (0.05, 0.0, 0.2, 0.1),
    "NF1": (0.06, 0.2, 0.2, 0.1),
    "CDKN2A": (0.05, 0.2, 0.3, 0.2),
    "RB1": (0.04, 0.2, 0.2, 0.2),
    "MET": (0.03, 0.0, 0.2, 0.0),
    "ERBB2": (0.02, -0.3, 0.2, 0.0),
}

SHAPES = ("round", "lobulated", "spiculated")
SOLIDITY = ("ground-glass", "part-solid", "solid")


@dataclass
class Nodule:
    """One nodule's intended physical properties (placement happens in the CT renderer)."""

    diameter_mm: float
    shape: str
    solidity: str


@dataclass
class Geometry:
    """A scan's grid: sizes (x, y, z), spacing and origin in mm (LPS, direction identity)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


@dataclass
class Cohort:
    """Everything drawn for a cohort, indexed by patient position."""

    patient_ids: list[str]
    seriesuids: list[str | None]
    age: np.ndarray
    sex: list[str]
    pack_years: np.ndarray
    family_history: np.ndarray
    has_ct: np.ndarray
    has_rna: np.ndarray
    has_dna: np.ndarray
    zero_calls: np.ndarray
    geometry: list[Geometry | None]
    nodules: list[list[Nodule]]
    drivers: dict[str, np.ndarray]
    prolif: np.ndarray
    immune: np.ndarray
    nrf2: np.ndarray
    components: dict[str, np.ndarray]
    risk: np.ndarray
    malignant: np.ndarray
    time: np.ndarray
    event: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


#: Share of synthetic patients with a family history of lung cancer (first-degree relative).
FAMILY_HISTORY_RATE = 0.2


def patient_id(i: int) -> str:
    """The i-th (0-based) patient's 12-character TCGA-style id: ``TCGA-LF-0001``."""
    block, num = divmod(i, 9999)
    tss = "LF" if block == 0 else "L" + "ABCDEGHIJKMNOPQRSTUVWXYZ"[block - 1]
    return f"TCGA-{tss}-{num + 1:04d}"


def series_uid(seed: int, pid: str) -> str:
    """A DICOM-style UID under the ``2.25`` (UUID-derived) root, deterministic in the seed."""
    import hashlib

    h = hashlib.sha256(f"lungfuse-synth:{seed}:{pid}:ct".encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big"))


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return (x - x.mean()) / (sd if sd > 1e-9 else 1.0)


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    return rng.permutation(pool)[:k] if k > 0 else np.zeros(0, dtype=int)


def draw_geometry(rng: np.random.Generator, cfg: SynthConfig) -> Geometry:
    nx = ny = cfg.size_xy
    nz = int(rng.integers(cfg.slices[0], cfg.slices[1] + 1))
    sxy = float(np.round(rng.uniform(*cfg.spacing_xy), 4))
    sz = float(np.round(rng.uniform(*cfg.spacing_z), 3))
    ox = float(np.round(-nx * sxy / 2 + rng.uniform(-25, 25), 3))
    oy = float(np.round(-ny * sxy / 2 + rng.uniform(-25, 25), 3))
    oz = float(np.round(-rng.uniform(60, 360), 3))
    return Geometry((nx, ny, nz), (sxy, sxy, sz), (ox, oy, oz))


def max_diameter(geom: Geometry | None, cfg: SynthConfig) -> float:
    """The largest nodule the (miniature) lungs of this grid hold comfortably."""
    hi = cfg.diameter_mm[1]
    if geom is None:  # no scan: the cap of a typical scan of this preset, for consistency
        nz = (cfg.slices[0] + cfg.slices[1]) // 2
        sxy, sz = sum(cfg.spacing_xy) / 2, sum(cfg.spacing_z) / 2
        geom = Geometry((cfg.size_xy, cfg.size_xy, nz), (sxy, sxy, sz), (0.0, 0.0, 0.0))
    fov_x = geom.size[0] * geom.spacing[0]
    fov_y = geom.size[1] * geom.spacing[1]
    z_ext = geom.size[2] * geom.spacing[2]
    # lungs are ellipses with semi-axes 0.34 x 0.52 of the half-FOV (see ct.py)
    lung_w = 2 * 0.34 * fov_x / 2 * 0.85  # tapered towards the apex
    lung_h = 2 * 0.52 * fov_y / 2 * 0.85
    return float(max(cfg.diameter_mm[0], min(hi, 0.75 * lung_w, 0.75 * lung_h, 0.4 * z_ext)))


def _draw_nodules(rng: np.random.Generator, u: float, cap: float,
                  cfg: SynthConfig) -> list[Nodule]:
    lo = cfg.diameter_mm[0]
    probs = np.array([0.1, 0.45, 0.3, 0.15, 0.1, 0.05, 0.03, 0.02, 0.01, 0.01])
    probs = probs[: cfg.max_nodules + 1]
    n = int(rng.choice(len(probs), p=probs / probs.sum()))
    out: list[Nodule] = []
    for j in range(n):
        if j == 0:  # the index nodule carries the imaging risk signal
            d = np.exp(np.log(7.0) + 0.5 * u + 0.15 * rng.normal())
            s = 1.0 * u + 0.8 * rng.normal()
            t = 0.8 * u + 0.8 * rng.normal()
            shape = SHAPES[2] if s > 0.8 else SHAPES[1] if s > -0.3 else SHAPES[0]
            solid = SOLIDITY[2] if t > -0.2 else SOLIDITY[1] if t > -1.0 else SOLIDITY[0]
        else:  # incidental, mostly benign-looking nodules
            d = np.exp(np.log(4.5) + 0.3 * rng.normal())
            shape = str(rng.choice(SHAPES[:2], p=[0.8, 0.2]))
            solid = str(rng.choice(SOLIDITY, p=[0.3, 0.1, 0.6]))
        out.append(Nodule(float(np.round(np.clip(d, lo, cap), 2)), shape, solid))
    return out


def imaging_score(nods: list[Nodule]) -> float:
    """Raw imaging risk of the largest nodule: 1.5 log d + 0.8 shape + 0.6 solidity."""
    if not nods:
        return 1.5 * np.log(2.0)
    idx = max(nods, key=lambda n: n.diameter_mm)
    shape = {"round": 0.0, "lobulated": 0.5, "spiculated": 1.0}[idx.shape]
    solid = {"ground-glass": 0.0, "part-solid": 0.6, "solid": 1.0}[idx.solidity]
    return float(1.5 * np.log(max(idx.diameter_mm, 2.0)) + 0.8 * shape + 0.6 * solid)


def draw_cohort(cfg: SynthConfig) -> Cohort:
    """Draw covariates, modality availability, latent features, labels and survival."""
    n = cfg.patients
    rng = rng_for(cfg.seed, "cohort")
    pids = [patient_id(i) for i in range(n)]

    # covariates
    age = np.clip(np.round(rng.normal(66, 9, n)), 35, 90).astype(np.int64)
    sex = ["F" if x else "M" for x in rng.random(n) < 0.5]
    never = rng.random(n) < 0.15
    pack = np.where(never, 0.0, np.clip(np.exp(rng.normal(np.log(30), 0.6, n)), 1, 150))
    pack = np.round(pack, 1)
    smoke_z = _standardise(np.log1p(pack))

    # family history of lung cancer (a Brock model input): its own stream, so adding it
    # left every other draw as it was; independent of the latent risk
    family_history = rng_for(cfg.seed, "family_history").random(n) < FAMILY_HISTORY_RATE

    # availability (missing completely at random, exact counts)
    order = rng.permutation(n)
    no_gen = np.zeros(n, bool)
    no_gen[order[: planned_count(n, cfg.no_genomics_fraction)]] = True
    # no CT: prefer patients who keep genomics, so nobody is left with nothing (drawn
    # even when CT is off, so `with_ct` changes nothing else in the cohort)
    pool = np.concatenate([rng.permutation(np.flatnonzero(~no_gen)),
                           rng.permutation(np.flatnonzero(no_gen))])
    has_ct = np.zeros(n, bool)
    if cfg.with_ct:
        has_ct[:] = True
        has_ct[pool[: planned_count(n, cfg.no_ct_fraction)]] = False
    gen = np.flatnonzero(~no_gen)
    has_rna = ~no_gen
    has_dna = ~no_gen.copy()
    has_dna[_pick(rng, gen, planned_count(len(gen), cfg.expression_only_fraction))] = False
    dna = np.flatnonzero(has_dna)
    zero_calls = np.zeros(n, bool)
    zero_calls[_pick(rng, dna, planned_count(len(dna), cfg.zero_calls_fraction))] = True

    # imaging latent and nodules
    u_img = rng.normal(size=n)
    geoms: list[Geometry | None] = []
    nods: list[list[Nodule]] = []
    for i in range(n):
        r = rng_for(cfg.seed, "nodules", i)
        g = draw_geometry(r, cfg)  # drawn for everyone: CT on/off changes no other draw
        geoms.append(g if has_ct[i] else None)
        nods.append(_draw_nodules(r, float(u_img[i]), max_diameter(g, cfg), cfg))
    z_img = _standardise(np.array([imaging_score(x) for x in nods]))

    # drivers: logit(p) = logit(base) + slope * smoking
    drivers: dict[str, np.ndarray] = {}
    for g, (base, slope, _, _) in DRIVERS.items():
        p = 1 / (1 + np.exp(-(np.log(base / (1 - base)) + slope * smoke_z)))
        drivers[g] = rng.random(n) < p
    drivers["EGFR"] &= ~drivers["KRAS"]  # mutually exclusive in practice
    for g in drivers:
        drivers[g] &= ~zero_calls  # "sequenced, nothing called" patients are quiet
    mut_raw = sum(DRIVERS[g][2] * drivers[g] for g in DRIVERS)
    mut_surv = sum(DRIVERS[g][3] * drivers[g] for g in DRIVERS)
    z_mut = _standardise(np.asarray(mut_raw, float))

    # expression latents: proliferation up, immune down; NRF2 follows KEAP1/STK11
    prolif = rng.normal(size=n)
    immune = rng.normal(size=n)
    nrf2 = 1.5 * (drivers["KEAP1"] | drivers["STK11"]) + 0.5 * rng.normal(size=n)
    z_expr = _standardise(prolif - 0.6 * immune)

    z_cov = _standardise(0.04 * (age - 66) + 0.8 * smoke_z)
    noise = rng.normal(size=n)
    risk = (cfg.w_img * z_img + cfg.w_mut * z_mut + cfg.w_expr * z_expr
            + cfg.w_cov * z_cov + cfg.noise_sd * noise)
    k = planned_count(n, cfg.malignant_fraction)
    malignant = np.zeros(n, np.int64)
    malignant[np.argsort(-risk, kind="stable")[:k]] = 1

    # survival: Weibull(shape 1.3) proportional hazards, uniform censoring
    lp = (0.6 * z_img + 0.6 * _standardise(np.asarray(mut_surv, float)) + 0.6 * z_expr
          + 0.4 * z_cov + 0.8 * malignant + 0.3 * rng.normal(size=n))
    shape_k = 1.3
    scale = cfg.median_survival_months / np.log(2) ** (1 / shape_k)
    t_event = scale * (-np.log(rng.random(n)) / np.exp(lp)) ** (1 / shape_k)
    t_cens = rng.uniform(*cfg.censor_months, size=n)
    time = np.round(np.maximum(np.minimum(t_event, t_cens), 0.1), 2)
    event = (t_event <= t_cens).astype(np.int64)

    return Cohort(
        patient_ids=pids,
        seriesuids=[series_uid(cfg.seed, p) if has_ct[i] else None for i, p in enumerate(pids)],
        age=age, sex=sex, pack_years=pack, family_history=family_history, has_ct=has_ct, has_rna=has_rna, has_dna=has_dna,
        zero_calls=zero_calls, geometry=geoms, nodules=nods, drivers=drivers,
        prolif=prolif, immune=immune, nrf2=nrf2,
        components={"z_img": z_img, "z_mut": z_mut, "z_expr": z_expr, "z_cov": z_cov,
                    "noise": noise},
        risk=risk, malignant=malignant, time=time, event=event,
        extra={"u_img": u_img, "lp_survival": lp, "mut_surv": np.asarray(mut_surv, float)},
    )

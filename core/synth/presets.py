"""Presets and knobs of the synthetic cohort generator.

Every knob has one default per preset; ``generate(..., **knobs)`` overrides any of them.
Knobs are plain numbers, booleans or ``(low, high)`` ranges so that they round-trip
through ``synth.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lungfuse.core.errors import ConfigError

#: Bump when the output of a given (preset, seed, knobs) changes.
SYNTH_FORMAT_VERSION = 1


@dataclass
class SynthConfig:
    """All knobs of the generator (see docs/synthetic.md for the generative model)."""

    preset: str = "tiny"
    patients: int = 8
    seed: int = 0
    long: bool = False

    # cohort and missingness (fractions are turned into exact counts, see ``planned_count``)
    malignant_fraction: float = 0.5
    no_ct_fraction: float = 0.1
    no_genomics_fraction: float = 0.3
    expression_only_fraction: float = 0.1  # of patients with genomics: RNA but no DNA
    zero_calls_fraction: float = 0.1  # of DNA-sequenced patients: sequenced, no calls

    # CT
    with_ct: bool = True
    size_xy: int = 64
    slices: tuple[int, int] = (24, 40)
    spacing_xy: tuple[float, float] = (0.6, 0.9)
    spacing_z: tuple[float, float] = (1.0, 2.5)
    max_nodules: int = 3
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    n_subsets: int = 10
    noise_hu: float = 18.0

    # genomics
    n_genes: int = 200
    n_modules: int = 6
    module_size: int = 12
    passenger_mean: float = 8.0
    expression_samples: int = 0  # total expression rows; 0 = one per patient with RNA
    chunk_rows: int = 1000  # Parquet row-group size for expression

    # latent risk: weights of the standardised components (see docs/synthetic.md)
    w_img: float = 1.0
    w_mut: float = 0.8
    w_expr: float = 0.8
    w_cov: float = 0.4
    noise_sd: float = 0.5

    # survival
    median_survival_months: float = 36.0
    censor_months: tuple[float, float] = (6.0, 84.0)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "demo": {
        "patients": 60,
        "size_xy": 128,
        "slices": (48, 80),
        "n_genes": 2000,
        "n_modules": 10,
        "module_size": 40,
        "passenger_mean": 40.0,
    },
    "bench": {
        "patients": 400,
        "with_ct": False,
        "size_xy": 128,
        "slices": (48, 80),
        "n_genes": 20000,
        "n_modules": 40,
        "module_size": 100,
        "passenger_mean": 120.0,
        "expression_samples": 10000,
    },
}


def make_config(preset: str, patients: int | None, seed: int, long: bool,
                knobs: dict[str, Any]) -> SynthConfig:
    """Resolve a preset plus overrides into a validated :class:`SynthConfig`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown synth preset '{preset}'; choose one of "
                          f"{', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(SynthConfig)} - {"preset", "seed", "long",
                                                                    "patients"}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise ConfigError(f"unknown synth knob(s) {', '.join(unknown)}; "
                          f"known knobs are listed in docs/synthetic.md")
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update(knobs)
    if patients is not None:
        values["patients"] = patients
    cfg = SynthConfig(preset=preset, seed=int(seed), long=bool(long), **values)
    for k in ("slices", "spacing_xy", "spacing_z", "diameter_mm", "censor_months"):
        v = getattr(cfg, k)
        if len(v) != 2 or v[0] > v[1]:
            raise ConfigError(f"synth knob {k} must be a (low, high) pair, got {v!r}")
        setattr(cfg, k, tuple(v))
    if cfg.patients < 2:
        raise ConfigError(f"synth needs at least 2 patients, got {cfg.patients}")
    if cfg.patients > 9999 * 26:
        raise ConfigError(f"synth supports at most {9999 * 26} patients, got {cfg.patients}")
    for k in ("malignant_fraction", "no_ct_fraction", "no_genomics_fraction",
              "expression_only_fraction", "zero_calls_fraction"):
        if not 0.0 <= getattr(cfg, k) <= 1.0:
            raise ConfigError(f"synth knob {k} must be in [0, 1], got {getattr(cfg, k)}")
    if cfg.size_xy < 32 or cfg.slices[0] < 8:
        raise ConfigError("synth volumes must be at least 32 px in-plane and 8 slices")
    if cfg.n_genes < 60:
        raise ConfigError(f"synth needs n_genes >= 60 (the named panels), got {cfg.n_genes}")
    for k in ("chunk_rows", "n_subsets", "n_modules", "module_size"):
        if int(getattr(cfg, k)) < 1:
            raise ConfigError(f"synth knob {k} must be >= 1, got {getattr(cfg, k)}")
    if cfg.spacing_xy[0] <= 0 or cfg.spacing_z[0] <= 0 or cfg.diameter_mm[0] <= 0:
        raise ConfigError("synth knobs spacing_xy, spacing_z and diameter_mm must be positive")
    if not 0 <= cfg.max_nodules <= 9:
        raise ConfigError(f"synth knob max_nodules must be in 0..9, got {cfg.max_nodules}")
    return cfg


def planned_count(n: int, fraction: float) -> int:
    """Exact number of items out of ``n`` for a fraction: round, but at least 1 when the
    fraction is positive and at most ``n - 1`` when it is below 1 (so both groups exist)."""
    if n <= 0 or fraction <= 0:
        return 0
    if fraction >= 1:
        return n
    k = int(round(n * fraction))
    return max(1, min(n - 1, k)) if n > 1 else k

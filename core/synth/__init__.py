"""Synthetic cohorts in the real formats: LUNA16 CT, MAF mutations, expression, clinical.

>>> from lungfuse.core.synth import generate
>>> res = generate("data/tiny", preset="tiny", seed=0)      # doctest: +SKIP
>>> res.clinical                                             # doctest: +SKIP

Layout written under ``out_dir`` (see docs/synthetic.md for the generative model)::

    clinical.parquet            patient_id, seriesuid, age, sex, pack_years, family_history
                                (0/1), malignant, time, event
    ct/subset{k}/<uid>.mhd/.raw int16 HU, LUNA16 layout
    ct/annotations.csv          seriesuid, coordX, coordY, coordZ, diameter_mm (world mm)
    ct/candidates.csv           seriesuid, coordX, coordY, coordZ, class (LUNA16 candidates)
    ct/masks/<uid>.mhd/.zraw    uint8 nodule labels 1..n in annotations.csv row order
    omics/mutations.parquet     MAF columns
    omics/sequenced_samples.txt every DNA-sequenced sample (also those with no calls)
    omics/expression.parquet    wide (sample + one float32 column per gene) or long
    truth.parquet               latent risk components per patient (analysis/tests only)
    synth.json                  preset, seed, knobs, version
    .lungfuse-synth             marker: this folder is synth output (see below)

Everything is written into a temporary folder next to ``out_dir`` and renamed at the end,
so a crash leaves nothing half-written. The same seed and knobs give the same bytes.
``overwrite`` replaces only an earlier synth output: a non-empty folder without the
marker, or holding entries synth does not write (the user's files), is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungfuse.core.errors import DataError
from lungfuse.core.synth.presets import PRESETS, SYNTH_FORMAT_VERSION, SynthConfig, planned_count

__all__ = ["generate", "SynthResult", "SynthConfig", "PRESETS", "SYNTH_MARKER", "planned_count"]

#: File written into every synth output; ``overwrite`` replaces only folders holding it.
SYNTH_MARKER = ".lungfuse-synth"
#: The top-level entries a synth output may hold.
_SYNTH_ENTRIES = frozenset({"clinical.parquet", "ct", "omics", "truth.parquet", "synth.json",
                            SYNTH_MARKER})


@dataclass(frozen=True)
class SynthResult:
    """Where everything was written (final paths under ``out_dir``)."""

    out_dir: Path
    clinical: Path
    ct_dir: Path | None
    annotations: Path | None
    masks_dir: Path | None
    mutations: Path
    sequenced_samples: Path
    expression: Path
    truth: Path
    manifest: Path
    n_patients: int
    n_series: int
    n_nodules: int
    n_mutations: int
    n_expression_samples: int
    #: LUNA16-style detector candidates (true nodules and look-alikes; see candidates.py)
    candidates: Path | None = None


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("LUNGFUSE_NO_PROGRESS", "") not in ("1", "true", "yes")


def _non_empty(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        return True
    return any(path.iterdir())


def _check_replaceable(out: Path) -> None:
    """Refuse to replace ``out`` unless it is an earlier synth output and nothing else:
    ``--overwrite`` must never delete a user's folder or files put beside the data."""
    if not (out / SYNTH_MARKER).is_file():
        raise DataError(f"output folder {out} is not empty and is not a lungfuse synth output "
                        f"(no {SYNTH_MARKER} file); --overwrite replaces only earlier synth "
                        "output: choose another folder, or empty this one yourself")
    extra = sorted(p.name for p in out.iterdir() if p.name not in _SYNTH_ENTRIES)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DataError(f"output folder {out} holds files synth did not write ({shown}); "
                        "--overwrite would delete them: move them out or choose another folder")


def generate(out_dir: str | os.PathLike[str], preset: str = "tiny", patients: int | None = None,
             seed: int = 0, long: bool = False, progress: bool = True, overwrite: bool = False,
             **knobs: Any) -> SynthResult:
    """Write a synthetic cohort to ``out_dir`` and return its paths.

    ``preset`` sets the defaults (tiny / demo / bench), ``patients`` and ``knobs`` override
    them (see :class:`~lungfuse.core.synth.presets.SynthConfig`). ``out_dir`` must not exist
    or be empty unless ``overwrite``. Raises ConfigError for bad knobs, DataError for an
    occupied ``out_dir``.
    """
    from lungfuse.core.synth.presets import make_config

    out = Path(out_dir)
    if seed < 0:
        from lungfuse.core.errors import ConfigError

        raise ConfigError(f"synth seed must be >= 0, got {seed}")
    cfg = make_config(preset, patients, seed, long, knobs)
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} is a file; choose a folder")
    if _non_empty(out):
        if not overwrite:
            raise DataError(f"output folder {out} is not empty; choose another or pass "
                            "--overwrite (which replaces an earlier synth output only)")
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    try:
        counts = _write_all(cfg, tmp, _progress_enabled(progress))
        os.chmod(tmp, 0o755)
        if out.exists():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                old.rmdir()
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                out.rmdir()
                os.replace(tmp, out)
        else:
            os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    has_ct = counts["n_series"] > 0
    return SynthResult(
        out_dir=out, clinical=out / "clinical.parquet",
        ct_dir=out / "ct" if has_ct else None,
        annotations=out / "ct" / "annotations.csv" if has_ct else None,
        masks_dir=out / "ct" / "masks" if has_ct else None,
        candidates=out / "ct" / "candidates.csv" if has_ct else None,
        mutations=out / "omics" / "mutations.parquet",
        sequenced_samples=out / "omics" / "sequenced_samples.txt",
        expression=out / "omics" / "expression.parquet",
        truth=out / "truth.parquet", manifest=out / "synth.json",
        n_patients=cfg.patients, **counts,
    )


def _write_all(cfg: SynthConfig, root: Path, progress: bool) -> dict[str, int]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from lungfuse.core.atomic import write_json
    from lungfuse.core.synth import omics
    from lungfuse.core.synth.latent import draw_cohort

    cohort = draw_cohort(cfg)
    n = cfg.patients

    # clinical
    clinical = pa.table({
        "patient_id": pa.array(cohort.patient_ids, pa.string()),
        "seriesuid": pa.array(cohort.seriesuids, pa.string()),
        "age": pa.array(cohort.age, pa.int64()),
        "sex": pa.array(cohort.sex, pa.string()),
        "pack_years": pa.array(cohort.pack_years, pa.float64()),
        "family_history": pa.array(cohort.family_history.astype(np.int64), pa.int64()),
        "malignant": pa.array(cohort.malignant, pa.int64()),
        "time": pa.array(cohort.time, pa.float64()),
        "event": pa.array(cohort.event, pa.int64()),
    })
    pq.write_table(clinical, root / "clinical.parquet")

    # CT
    n_series = n_nodules = 0
    placed_all: list[list[Any]] = [[] for _ in range(n)]
    if cohort.has_ct.any():
        from lungfuse.core.synth.ct_write import write_ct

        n_series, n_nodules, placed_all = write_ct(cfg, cohort, root / "ct", progress)

    # omics
    omics_dir = root / "omics"
    omics_dir.mkdir()
    genes, modules = omics.gene_universe(cfg)
    n_mut = omics.write_mutations(cfg, cohort, genes, omics_dir)
    n_rows = max(cfg.expression_samples, int(cohort.has_rna.sum()))
    with tqdm(total=n_rows, desc="synth expression", unit="sample",
              disable=not progress or n_rows < 2000) as bar:
        n_expr = omics.write_expression(cfg, cohort, genes, modules, omics_dir, bar.update)

    # truth
    idx_nod = [max(x, key=lambda q: q.diameter_mm) if x else None for x in cohort.nodules]
    truth: dict[str, Any] = {
        "patient_id": pa.array(cohort.patient_ids, pa.string()),
        "has_ct": pa.array(cohort.has_ct, pa.bool_()),
        "has_expression": pa.array(cohort.has_rna, pa.bool_()),
        "sequenced": pa.array(cohort.has_dna, pa.bool_()),
        "zero_calls": pa.array(cohort.zero_calls, pa.bool_()),
        "malignant": pa.array(cohort.malignant, pa.int64()),
        "risk": pa.array(cohort.risk, pa.float64()),
    }
    for k, v in cohort.components.items():
        truth[k] = pa.array(v, pa.float64())
    for k, v in cohort.extra.items():
        truth[k] = pa.array(v, pa.float64())
    truth["n_nodules_drawn"] = pa.array([len(x) for x in cohort.nodules], pa.int64())
    truth["n_nodules_rendered"] = pa.array([len(x) for x in placed_all], pa.int64())
    truth["index_diameter_mm"] = pa.array(
        [q.diameter_mm if q else 0.0 for q in idx_nod], pa.float64())
    truth["index_shape"] = pa.array([q.shape if q else None for q in idx_nod], pa.string())
    truth["index_solidity"] = pa.array([q.solidity if q else None for q in idx_nod], pa.string())
    truth["prolif"] = pa.array(cohort.prolif, pa.float64())
    truth["immune"] = pa.array(cohort.immune, pa.float64())
    truth["nrf2"] = pa.array(cohort.nrf2, pa.float64())
    for g, v in cohort.drivers.items():
        truth[f"driver_{g}"] = pa.array(np.asarray(v, bool), pa.bool_())
    pq.write_table(pa.table(truth), root / "truth.parquet")

    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("lungfuse")
    except PackageNotFoundError:  # pragma: no cover - source checkout without install
        pkg_version = "unknown"
    counts = {"n_series": n_series, "n_nodules": n_nodules, "n_mutations": n_mut,
              "n_expression_samples": n_expr}
    write_json(root / "synth.json", {
        "preset": cfg.preset, "seed": cfg.seed, "knobs": cfg.to_json(),
        "version": {"lungfuse": pkg_version, "synth_format": SYNTH_FORMAT_VERSION},
        "counts": {"patients": n, "malignant": int(cohort.malignant.sum()),
                   "with_ct": int(cohort.has_ct.sum()),
                   "with_expression": int(cohort.has_rna.sum()),
                   "sequenced": int(cohort.has_dna.sum()),
                   "sequenced_zero_calls": int(cohort.zero_calls.sum()), **counts},
        "genes": len(genes), "presets": sorted(PRESETS),
    })
    (root / SYNTH_MARKER).write_text(
        "Written by `lungfuse synth`. `lungfuse synth --overwrite` may replace this folder "
        "(and only folders holding this file).\n", encoding="utf-8")
    return counts

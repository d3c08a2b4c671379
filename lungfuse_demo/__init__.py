"""``lungfuse demo OUT``: the whole platform on a synthetic cohort, end to end, on a CPU.

Steps (each timed; the timings are printed and saved to ``OUT/demo.json``):

1. **synthesise** the demo cohort (``lungfuse synth --preset demo``: LUNA16-style CT with
   nodule masks, MAF mutations, expression, clinical outcome) and set aside three groups
   of patients: a few CT patients on whom the segmenter is trained (never in the fused
   cohort, so no fold's held-out patient was seen by the segmenter), two "new" patients
   to score at the end, and the fused-model cohort;
2. **train the Inf-Net** segmenter (small ``test_resnet`` backbone, semi-supervised when
   the imaging plugin offers it: labelled scans plus pseudo-labelled slices of unlabelled
   scans; supervised otherwise), through ``lungfuse segment train``;
3. **extract CT features** of the cohort with it, fold by fold, into the feature cache
   that the run and the ablation then share;
4. **train the fused model** (Inf-Net CT + mutations + expression + clinical covariates:
   age, sex, pack-years; gated fusion head, K-fold cross-validation, calibrated) with
   ``lungfuse run``, and beside it the ``logreg`` baseline on the same folds and features;
5. **ablate**: every modality subset with the chosen heads on the same splits, and a
   baseline row (logistic regression on all four modalities' features);
6. **score** the two new patients (one of them without genomics) with ``lungfuse score``;
7. **survival example**: the same modalities predicting time to event (the cohort's
   ``time`` counts months), with risk by year 1-6 from each fold's Breslow baseline and
   its calibration per year in the run report; the two new patients scored with it get
   their risk by year (mean and spread over the fold models) on their pages;
8. **reports**: ``report.html`` in the run and ablation folders and a page per patient.

Layout of ``OUT``::

    data/            the synthetic cohort (+ cohort.parquet, new_patients.parquet)
    segment/         segmenter config, checkpoint (infnet.pt)
    experiment.yaml  the fused-model config
    cache/           prepared features shared by the run and the ablation
    runs/<run>/      run folder with report.html
    runs/<ablation>/ ablation folder with report.html, ablation.md, ablation.png
    scores/          scores.parquet/json, report.html, patients/<id>.html
    survival.yaml    the survival example's config; its run is runs/demo-survival-*/
    scores_survival/ the new patients scored by it (risk by year on their pages)
    demo.json        where everything is and how long each step took
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from lungfuse.core import atomic
from lungfuse.core.errors import DataError

__all__ = ["DemoSettings", "demo_command", "run_demo"]

log = logging.getLogger("lungfuse")
MARKER = "demo.json"


def _signatures() -> Path:
    """Gene sets shipped with the genomics plugin (proliferation, cytotoxic immune, NRF2
    targets, lung lineage): the demo summarises expression by their scores."""
    from importlib.resources import files

    return Path(str(files("lungfuse.plugins.genomics") / "data" / "lung_signatures.gmt"))


@dataclass
class DemoSettings:
    """Sizes of the demo; the defaults fit the time budget on a 2-core CPU."""

    patients: int = 132  # synthesised: pretrain + new + cohort
    pretrain_scans: int = 10  # CT patients the segmenter is trained on (not in the cohort)
    unlabelled_scans: int = 4  # of those, used without their masks (semi-supervised)
    folds: int = 3
    heads: tuple[str, ...] = ("gated", "concat")
    seg_epochs: int = 6
    seg_channel: int = 16
    img_size: int = 128
    max_epochs: int = 40
    patience: int = 8
    bootstrap: int = 300
    seed: int = 0
    preset: str = "demo"
    synth_knobs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    out: Path
    timings: dict[str, float]
    paths: dict[str, str]
    summary: dict[str, Any]


class _Steps:
    """Times named steps and echoes one line per step."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.echo(f"[{len(self.timings) + 1}] {name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.echo(f"    {name}: {self.timings[name]:.1f} s")


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists() and not (out / "data" / "synth.json").exists():
            raise DataError(f"{out} exists, is not empty and holds no earlier demo; choose "
                            "another folder (the demo replaces only its own output)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _partition(clinical: Any, data: Path, s: DemoSettings) -> dict[str, list[str]]:
    """Pretraining CT patients, two new patients (one without genomics), the cohort."""
    seq = set((data / "omics" / "sequenced_samples.txt").read_text(encoding="utf-8").split())
    import pyarrow.parquet as pq

    expr = set(pq.read_table(data / "omics" / "expression.parquet", columns=["sample"])
               .column("sample").to_pylist())
    omics_patients = {x[:12] for x in seq | expr}
    ids = sorted(clinical.index)
    has_ct = {p for p in ids if isinstance(clinical.loc[p, "seriesuid"], str)}
    pretrain = [p for p in ids if p in has_ct][: s.pretrain_scans]
    rest = [p for p in ids if p not in pretrain]
    mut = {x[:12] for x in seq}
    both = {x[:12] for x in expr} & mut
    full = [p for p in reversed(rest) if p in has_ct and p in both] or \
        [p for p in reversed(rest) if p in has_ct and p in omics_patients]
    no_omics = [p for p in reversed(rest) if p in has_ct and p not in omics_patients]
    new = [full[0]] + ([no_omics[0]] if no_omics else [full[1]])
    cohort = [p for p in rest if p not in new]
    return {"pretrain": pretrain, "new": new, "cohort": cohort}


def _segment_config(out: Path, data: Path, uids: list[str], unlabelled: list[str],
                    s: DemoSettings) -> tuple[Path, bool]:
    """Write the segmenter config; semi-supervised when the imaging plugin supports it."""
    import yaml

    from lungfuse.plugins.imaging_infnet.config import SegmentConfig

    semi = "mode" in SegmentConfig.model_fields and "semi" in SegmentConfig.model_fields
    cfg: dict[str, Any] = {
        "ct_root": str(data / "ct"), "annotations": str(data / "ct" / "annotations.csv"),
        "masks_dir": str(data / "ct" / "masks"), "series": uids,
        "out_dir": str(out / "segment"),
        "slices": {"img_size": s.img_size},
        "train": {"backbone": "test_resnet", "channel": s.seg_channel, "epochs": s.seg_epochs,
                  "batch_size": 16, "lr": 2e-3, "multiscale": [1.0], "val_fraction": 0.0,
                  "negatives_per_positive": 0.5, "seed": s.seed},
        "fast": {"enabled": False},
    }
    if semi:
        cfg["mode"] = "semi"
        cfg["semi"] = {"method": "progressive", "unlabelled_series": unlabelled,
                       "k_per_round": 24, "rounds": 2, "epochs_per_round": 2,
                       "final_epochs": 1, "slice_stride": 2, "batch_size": 16}
    path = out / "segment" / "segment.yaml"
    atomic.write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path, semi


def _experiment(out: Path, data: Path, checkpoint: Path, s: DemoSettings) -> dict[str, Any]:
    return {
        "name": "demo", "seed": s.seed,
        "cohort": {"clinical": str(data / "cohort.parquet")},
        "task": {"kind": "binary", "outcome": "malignant"},
        "modalities": [
            {"kind": "infnet", "name": "ct", "ct_root": str(data / "ct"),
             "annotations": str(data / "ct" / "annotations.csv"),
             "masks_dir": str(data / "ct" / "masks"), "checkpoint": str(checkpoint),
             "fast": {"enabled": False}, "embedding_dim": 16, "hidden_dim": 32},
            {"kind": "mutations", "path": str(data / "omics" / "mutations.parquet"),
             "sequenced_samples": str(data / "omics" / "sequenced_samples.txt"),
             "panel": "lung", "embedding_dim": 16, "hidden": [32]},
            {"kind": "expression", "path": str(data / "omics" / "expression.parquet"),
             "selection": "gmt", "gmt": str(_signatures()), "embedding_dim": 16, "hidden": [32]},
            # age, sex, pack-years of the synthetic cohort, from the cohort table
            {"kind": "clinical", "numeric": ["age", "pack_years"], "categorical": ["sex"],
             "embedding_dim": 8, "hidden": [16]},
        ],
        # a classical model on the same folds and features, reported beside the fused one
        "baselines": ["logreg"],
        "fusion": {"kind": "gated", "hidden_dim": 32, "modality_dropout": 0.2},
        # holdout, not the default auto (inner CV below 1000 training patients): the demo
        # trains 15 modality subsets x 2 heads, and inner CV's six fits per fold would
        # multiply that time; on a small real cohort keep the default (docs/training.md)
        "training": {"max_epochs": s.max_epochs, "batch_size": 16, "lr": 3e-3,
                     "patience": s.patience, "val_fraction": 0.2, "selection": "holdout"},
        "evaluation": {"folds": s.folds, "bootstrap": s.bootstrap, "calibration": "platt"},
        "output_dir": str(out / "runs"),
    }


def _survival_experiment(exp: dict[str, Any], out: Path) -> dict[str, Any]:
    """The survival example: the fused model's config predicting time to event. The
    synthetic cohort's ``time`` counts months, so horizons are years 1-6 (the default)."""
    import copy

    cfg = copy.deepcopy(exp)
    cfg["name"] = "demo-survival"
    cfg["task"] = {"kind": "survival", "time": "time", "event": "event"}
    cfg["evaluation"] = {**cfg["evaluation"], "time_unit": "months"}
    cfg["evaluation"].pop("calibration", None)  # binary only
    if "baselines" in cfg:  # a classical Cox model beside it, on the same folds
        cfg["baselines"] = ["coxnet"]
    cfg["output_dir"] = str(out / "runs")
    return cfg


def _score_input(out: Path, data: Path, clinical: Any, new: list[str]) -> Path:
    """The scoring input for the new patients: their CT (with the annotated nodule
    location where there is one) and the omics files, which cover whom they cover."""
    import yaml

    from lungfuse.plugins.imaging_infnet.ctio import find_volumes, read_annotations

    vols = find_volumes(data / "ct")
    ann = read_annotations(data / "ct" / "annotations.csv")
    pts = []
    for p in new:
        entry: dict[str, Any] = {"id": p}
        uid = clinical.loc[p, "seriesuid"]
        if isinstance(uid, str) and uid in vols:
            entry["ct"] = str(vols[uid])
            a = ann[ann["seriesuid"] == uid]
            if len(a):
                r = a.sort_values("diameter_mm").iloc[-1]
                entry["nodule"] = {"x": float(r.coordX), "y": float(r.coordY),
                                   "z": float(r.coordZ), "diameter_mm": float(r.diameter_mm)}
        pts.append(entry)
    spec = {"patients": pts, "clinical": str(data / "new_patients.parquet"),
            "modalities": {
                "mutations": {"path": str(data / "omics" / "mutations.parquet"),
                              "sequenced_samples": str(data / "omics" / "sequenced_samples.txt")},
                "expression": {"path": str(data / "omics" / "expression.parquet")}}}
    path = out / "score_input.yaml"
    atomic.write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def run_demo(out: str | os.PathLike[str], settings: DemoSettings | None = None,
             echo: Callable[[str], None] = click.echo, progress: bool = True) -> DemoResult:
    """Run every step of the demo into ``out`` (replacing an earlier demo there)."""
    import pandas as pd

    s = settings or DemoSettings()
    out = Path(out).resolve()
    t_all = time.perf_counter()
    _prepare_out(out)
    steps = _Steps(echo)
    data = out / "data"
    paths: dict[str, str] = {}
    summary: dict[str, Any] = {}

    with steps.step("synthesise the demo cohort"):
        from lungfuse.core.synth import generate

        res = generate(data, preset=s.preset, patients=s.patients, seed=s.seed,
                       progress=progress, **s.synth_knobs)
        clinical = pd.read_parquet(res.clinical).set_index("patient_id")
        groups = _partition(clinical, data, s)
        atomic.write_parquet(data / "cohort.parquet",
                         clinical.loc[groups["cohort"]].reset_index(), index=False)
        new_tab = clinical.loc[groups["new"]].drop(columns=["malignant", "time", "event"])
        atomic.write_parquet(data / "new_patients.parquet", new_tab.reset_index(), index=False)
        summary["patients"] = {k: len(v) for k, v in groups.items()}
        summary["new_patients"] = groups["new"]
        echo(f"    {res.n_patients} patients, {res.n_series} CT series, {res.n_nodules} "
             f"nodules; segmenter set {len(groups['pretrain'])}, cohort "
             f"{len(groups['cohort'])}, new patients {', '.join(groups['new'])}")

    with steps.step("train the Inf-Net segmenter"):
        from lungfuse.plugins.imaging_infnet.cli import segment

        uids = [str(clinical.loc[p, "seriesuid"]) for p in groups["pretrain"]]
        seg_cfg, semi = _segment_config(out, data, uids, uids[-s.unlabelled_scans:], s)
        args = ["train", str(seg_cfg)] + ([] if progress else ["--no-progress"])
        segment.main(args=args, prog_name="lungfuse segment", standalone_mode=False)
        checkpoint = out / "segment" / "infnet.pt"
        summary["segmenter"] = {"semi_supervised": semi, "scans": len(uids),
                                "unlabelled_scans": s.unlabelled_scans if semi else 0,
                                "backbone": "test_resnet", "epochs": s.seg_epochs}
        paths["segmenter"] = str(checkpoint)

    import yaml

    exp = _experiment(out, data, checkpoint, s)
    atomic.write_text(out / "experiment.yaml", yaml.safe_dump(exp, sort_keys=False))
    paths["config"] = str(out / "experiment.yaml")
    cache = out / "cache"

    with steps.step("extract CT features (per fold, cached)"):
        from lungfuse.core.features import prepare_fold_features
        from lungfuse.core.study import Study

        study = Study.from_config(out / "experiment.yaml")
        cohort = study.cohort
        assert cohort is not None
        cls, mcfg = study.modalities["ct"]
        n_ct = 0
        for seed, fold in study.folds:
            ids = study.fold_ids(seed, fold)
            prep = prepare_fold_features("ct", cls, mcfg, cohort, ids["train"], seed=seed,
                                         fold=fold, workdir=out / "work" / "ct",
                                         cache_dir=cache, progress=progress)
            n_ct = len(prep.features)
        summary["ct_feature_patients"] = n_ct

    with steps.step("train the fused model (lungfuse run)"):
        from lungfuse.core.run import run_experiment

        run = run_experiment(out / "experiment.yaml", cache_dir=cache, progress=progress,
                             report=False)
        paths["run"] = str(run.run_dir)
        summary["run_metrics"] = {k: run.metrics["overall"][k] for k in
                                  ("auroc", "brier", "ece")}
        summary["baselines"] = {
            k: {"auroc": b["metrics"]["overall"]["auroc"], "difference": b["difference"]}
            for k, b in run.metrics.get("baselines", {}).items() if b.get("status") == "ok"}
        summary["baseline_verdict"] = run.metrics.get("baseline_verdict", [])

    with steps.step("ablation (modality subsets x heads)"):
        from lungfuse.core.ablation import run_ablation

        abl = run_ablation(out / "experiment.yaml", heads=list(s.heads), cache_dir=cache,
                           progress=progress, report=False)
        paths["ablation"] = str(abl.folder)
        summary["ablation_reference"] = abl.reference
        summary["ablation"] = [{"variant": r["variant"], "auroc": r["auroc"],
                                "ci": [r["auroc_ci_low"], r["auroc_ci_high"]]}
                               for _, r in abl.table.iterrows()]

    with steps.step("score two new patients (lungfuse score)"):
        from lungfuse.core.scoring import score_patients

        spec = _score_input(out, data, clinical, groups["new"])
        scored = score_patients(Path(paths["run"]), spec, out / "scores",
                                progress=progress).patients
        paths["scores"] = str(out / "scores")
        summary["scores"] = [{"patient_id": r["patient_id"], "risk": r["risk"],
                              "uncertainty": r["uncertainty"], "missing": r["missing"],
                              "status": r.get("status", "scored"), "page": r.get("page")}
                             for r in scored]

    with steps.step("survival example (risk by year)"):
        from lungfuse.core.run import run_experiment
        from lungfuse.core.scoring import score_patients

        surv_cfg = _survival_experiment(exp, out)
        atomic.write_text(out / "survival.yaml", yaml.safe_dump(surv_cfg, sort_keys=False))
        srun = run_experiment(out / "survival.yaml", cache_dir=cache, progress=progress)
        paths["survival_run"] = str(srun.run_dir)
        paths["survival_report"] = str(srun.run_dir / "report.html")
        summary["survival_metrics"] = {k: srun.metrics["overall"][k]
                                       for k in ("harrell_c", "uno_c")}
        summary["survival_calibration"] = [
            {"horizon": h["label"], "estimable": h["estimable"],
             "mean_predicted": h["over_folds"]["mean_predicted"]["mean"],
             "observed": h["over_folds"]["observed"]["mean"],
             "ici": h["over_folds"]["ici"]["mean"]}
            for h in srun.metrics.get("horizons", [])]
        sscored = score_patients(srun.run_dir, spec, out / "scores_survival",
                                 progress=progress).patients
        paths["survival_scores"] = str(out / "scores_survival")
        paths["survival_pages"] = ", ".join(
            str(out / "scores_survival" / sc["page"]) for sc in sscored if sc.get("page"))
        summary["survival_scores"] = [
            {"patient_id": r["patient_id"], "status": r.get("status"),
             "risk_by_year": [{"horizon": h["label"], "mean": h["mean"], "min": h["min"],
                               "max": h["max"]} for h in r.get("risk_by_year") or []]}
            for r in sscored]

    with steps.step("write the reports"):
        from lungfuse.core.report import render_folder

        paths["run_report"] = str(render_folder(Path(paths["run"])))
        paths["ablation_report"] = str(render_folder(Path(paths["ablation"])))
        paths["scores_report"] = str(Path(paths["scores"]) / "report.html")
        paths["figure"] = str(Path(paths["ablation"]) / "ablation.png")
        paths["patient_pages"] = ", ".join(
            str(out / "scores" / sc["page"]) for sc in summary["scores"] if sc.get("page"))

    total = round(time.perf_counter() - t_all, 1)
    result = DemoResult(out, {**steps.timings, "total": total}, paths, summary)
    atomic.write_json(out / MARKER, {"timings_s": result.timings, "paths": paths,
                                 "summary": summary, "settings": {
                                     k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in s.__dict__.items()}})
    _echo_summary(result, echo)
    return result


def _echo_summary(r: DemoResult, echo: Callable[[str], None]) -> None:
    m = r.summary.get("run_metrics", {})
    echo("")
    echo("lungfuse demo: done in {:.1f} s".format(r.timings["total"]))
    if m:
        a = m["auroc"]
        echo(f"  fused model (CT + mutations + expression + clinical), held-out AUROC "
             f"{a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
    for k, b in r.summary.get("baselines", {}).items():
        a, d = b["auroc"], b["difference"]
        echo(f"  baseline {k} (same folds and features), held-out AUROC {a['value']:.3f} "
             f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}]; fused - {k} {d['difference']:+.3f} "
             f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    for line in r.summary.get("baseline_verdict", []):
        echo(f"  {line}")
    if r.summary.get("ablation_reference"):
        echo(f"  best single modality: {r.summary['ablation_reference']}")
    for sc in r.summary.get("scores", []):
        miss = f" (missing: {', '.join(sc['missing'])})" if sc["missing"] else ""
        if sc.get("risk") is None:
            echo(f"  patient {sc['patient_id']}: not scored ({sc.get('status', 'error')})")
            continue
        echo(f"  patient {sc['patient_id']}: risk {sc['risk']:.3f} ± {sc['uncertainty']:.3f}{miss}")
    sm = r.summary.get("survival_metrics")
    if sm:
        echo(f"  survival example, held-out Harrell's C {sm['harrell_c']['value']:.3f}; risk by "
             "year:")
    for sc in r.summary.get("survival_scores", []):
        by = ", ".join(f"{h['horizon']} {h['mean']:.2f}" if h["mean"] is not None else
                       f"{h['horizon']} n/a" for h in sc["risk_by_year"])
        echo(f"    patient {sc['patient_id']}: {by or sc.get('status')}")
    echo("")
    echo("  timings (s):")
    for k, v in r.timings.items():
        echo(f"    {k:<42} {v:7.1f}")
    echo("")
    for k in ("run_report", "ablation_report", "scores_report", "patient_pages", "figure",
              "survival_report", "survival_pages"):
        if k in r.paths:
            echo(f"  {k.replace('_', ' ')}: {r.paths[k]}")
    echo(f"  everything: {r.out / MARKER}")


@click.command("demo")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default="demo-output")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo_command(out: Path, no_progress: bool) -> None:
    """Run lungfuse end to end on a synthetic cohort into OUT (default demo-output).

    Synthesises a cohort, trains a small semi-supervised Inf-Net, extracts CT features,
    trains and cross-validates the fused CT + genomics model, runs a small ablation,
    scores two new patients and writes the reports; prints where they are and how long
    each step took. An earlier demo in OUT is replaced.
    """
    from lungfuse.core.rundir import progress_enabled

    show = progress_enabled(False if no_progress else None)
    logging.getLogger("lungfuse").setLevel(logging.WARNING)
    run_demo(out, progress=show)

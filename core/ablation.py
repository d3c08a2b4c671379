"""``lungfuse ablate CONFIG``: modality subsets × fusion heads on identical splits.

Every non-empty subset :math:`S \\subseteq M` of the configured modalities (or of a given
list), with every chosen head, is trained and evaluated on the same split table (same
cohort, same split seeds, same folds, same per-fold training seeds) as ``lungfuse run``.

Feature preparation is the expensive part (an Inf-Net trained per fold, gene selection),
and it depends only on (modality, split seed, fold), never on the variant. Each modality is
therefore prepared once per fold through :func:`lungfuse.core.features.prepare_fold_features`
with the ablation's feature cache, and the prepared features are shared by the
:math:`(2^{|M|}-1)\\cdot|H|` variants. The set-up (config, plugins, cohort, splits, time
grid, fold list) is the same :class:`~lungfuse.core.study.Study` ``lungfuse run`` builds,
and each variant's held-out predictions come from the same
:func:`~lungfuse.core.folds.train_fold` and prediction table. A patient who has none of
a variant's modalities still gets that variant's prediction (the head's output with
nothing present), so every variant is scored on exactly the same held-out patients and
the comparison is paired.

Table (``ablation.parquet`` and ``ablation.md``), one row per variant: for each metric the
pooled held-out estimate with its bootstrap 95% CI (first split seed), and the mean and
standard deviation over folds. Each variant is compared with the best single-modality
variant (by the primary metric: AUROC, or Harrell's C for survival) with a paired
bootstrap: the same resample of held-out patients for both, :math:`\\Delta = m(a) - m(b)`,
95% CI from the 2.5th/97.5th percentiles, and the share of resamples with
:math:`\\Delta \\le 0`.

Resuming: each finished (variant, seed, fold) writes its held-out predictions atomically;
rerunning with the same ``--dir`` skips what is there (prepared features come back from
the cache), so a killed ablation resumes where it stopped. A different config for an
existing folder is refused.

Folder::

    ablation.json  config.yaml  splits.parquet  ablation.parquet  ablation.md
    ablation.png  comparisons.parquet  report.html
    features/<modality>/<cache key>/{features.parquet, state.json, state.safetensors}
    variants/<variant>/{seed<S>-fold<K>.parquet, predictions.parquet, metrics.json}
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lungfuse.core import atomic
from lungfuse.core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from lungfuse.core.registry import Registry

__all__ = ["AblationResult", "ablate_command", "markdown_table", "run_ablation", "variants_of"]

log = logging.getLogger("lungfuse")

PRIMARY = {"binary": "auroc", "survival": "harrell_c"}


@dataclass(frozen=True)
class Variant:
    """One ablation arm: a modality subset and a fusion head."""

    modalities: tuple[str, ...]
    head: str

    @property
    def label(self) -> str:
        return f"{'+'.join(self.modalities)} | {self.head}"

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{'+'.join(self.modalities)}__{self.head}")


@dataclass
class AblationResult:
    folder: Path
    table: pd.DataFrame
    reference: str
    trained: int  # (variant, seed, fold) trainings done by this call
    skipped: int  # already done by an earlier (killed) call


def variants_of(modalities: Sequence[str], heads: Sequence[str]) -> list[Variant]:
    """Every non-empty subset of ``modalities`` (by size, then config order) × ``heads``."""
    subsets = [c for k in range(1, len(modalities) + 1)
               for c in itertools.combinations(modalities, k)]
    return [Variant(tuple(s), h) for h in heads for s in subsets]


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured markdown table of ``df`` (NaN shown as –)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if v != v else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


def _head_config(cfg: Any, registry: Registry, head: str) -> Any:
    """The fusion config of ``head``: the configured one, or the shared settings
    (hidden_dim, dropout, modality_dropout) of the configured head with defaults."""
    from lungfuse.core.contracts import FusionConfig
    from lungfuse.core.registry import FUSION_GROUP

    if head == cfg.fusion.kind:
        return cfg.fusion
    cls = registry.get(FUSION_GROUP, head)
    shared = {k: getattr(cfg.fusion, k) for k in FusionConfig.model_fields if k != "kind"}
    return cls.config_model.model_validate({"kind": head, **shared})


def _config_hash(cfg: Any, modalities: Sequence[str], heads: Sequence[str]) -> str:
    from lungfuse.core.config import config_to_dict

    resolved = config_to_dict(cfg)
    if not resolved.get("baselines"):  # the hash of a folder without baselines is unchanged
        resolved.pop("baselines", None)
    blob = json.dumps({"config": resolved, "modalities": list(modalities),
                       "heads": list(heads)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _same_config(folder: Path, state: dict[str, Any], cfg: Any,
                 modalities: Sequence[str], heads: Sequence[str]) -> bool:
    """Whether an ablation folder whose stored hash differs from ``cfg``'s is still of the
    same config: its ``config.yaml`` validated with the current schema (settings added
    since it was written take their defaults, :func:`~lungfuse.core.rundir.
    normalised_stored_config`) equals ``cfg``, with the same modalities and heads. The
    raw hash alone would refuse every folder written before a new setting existed."""
    import yaml

    from lungfuse.core.config import config_to_dict
    from lungfuse.core.rundir import _config_difference, normalised_stored_config

    if list(state.get("modalities") or []) != list(modalities) or \
            list(state.get("heads") or []) != list(heads):
        return False
    try:
        stored = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(stored, dict):
        return False
    return _config_difference(config_to_dict(cfg),
                              normalised_stored_config(stored, folder, type(cfg))) is None


def _paired(pred_a: pd.DataFrame, pred_b: pd.DataFrame, task: str, n: int,
            seed: int) -> dict[str, float]:
    """Paired bootstrap of the primary metric, variant a minus variant b (first seed):
    the evaluation's :func:`~lungfuse.core.evaluation.paired_difference`, which the run's
    model-versus-baseline comparison uses too."""
    from lungfuse.core.evaluation import paired_difference

    return paired_difference(pred_a, pred_b, task, n, seed)


def _row(v: Variant, metrics: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    row: dict[str, Any] = {"variant": v.label, "modalities": "+".join(v.modalities),
                           "n_modalities": len(v.modalities), "head": v.head}
    first = next(iter(metrics["per_seed"].values()))
    row["patients"] = int(first["n"])
    per_fold = first["per_fold"]
    # mean ± sd over every (seed, fold) test fold where the metrics hold it (item 4 of
    # issue 13); metrics.json of older ablation folders: the first seed's folds
    summary = metrics.get("fold_summary", {})
    for k, m in metrics["overall"].items():
        row[k] = m["value"]
        row[f"{k}_ci_low"] = m["ci_low"]
        row[f"{k}_ci_high"] = m["ci_high"]
        if k in summary:
            row[f"{k}_fold_mean"] = summary[k]["mean"]
            row[f"{k}_fold_sd"] = summary[k]["sd"]
            continue
        vals = np.asarray([f[k] for f in per_fold.values()], float)
        fin = vals[np.isfinite(vals)]
        row[f"{k}_fold_mean"] = float(fin.mean()) if len(fin) else float("nan")
        row[f"{k}_fold_sd"] = float(fin.std(ddof=1)) if len(fin) > 1 else float("nan")
    return row


def _ablation_baselines(cfg: Any, registry: Registry, names: Sequence[str],
                        source: str) -> list[Any]:
    """The config's baselines for an ablation of modalities ``names``: a baseline without
    its own ``modalities`` uses all of them (one row per baseline, compared with the
    reference variant); one naming a modality outside the ablation is a ConfigError."""
    from lungfuse.core.baselines import resolve_baselines

    out = resolve_baselines(cfg, registry, source)
    for b in out:
        if b.config.modalities is None:
            b.modalities = list(names)
        outside = [m for m in b.modalities if m not in names]
        if outside:
            raise ConfigError(f"{source}: baseline '{b.label}' uses modality '{outside[0]}', "
                              f"which this ablation leaves out (ablated: {', '.join(names)})")
    return out


def _baseline_variant(b: Any, v: Variant, folder: Path, study: Any,
                      features: Callable[[str, int, int, list[str]], Any],
                      model_pred: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Baseline ``b`` as ablation row ``v``: fitted on each fold's non-test patients with
    the fold's prepared features (the ones the variants share), its held-out scores in
    prediction-table form with their metrics, under ``variants/<id>/`` (kept on resume).
    A baseline that fails is a DataError naming it: an ablation row cannot be left blank."""
    import pandas as pd

    from lungfuse.core.baselines import as_prediction_table, run_baselines
    from lungfuse.core.errors import DataError
    from lungfuse.core.evaluation import evaluate_predictions

    vdir = folder / "variants" / v.id
    if (vdir / "metrics.json").exists() and (vdir / "predictions.parquet").exists():
        return (pd.read_parquet(vdir / "predictions.parquet"),
                json.loads((vdir / "metrics.json").read_text(encoding="utf-8")))

    def features_of(m: str, seed: int, fold: int) -> pd.DataFrame:
        return features(m, seed, fold, study.fold_ids(seed, fold)["train"]).features

    raw, failed = run_baselines([b], study.splits, study.folds, study.cohort, features_of)
    if failed:
        raise DataError(f"baseline '{b.label}' failed ({failed[b.label]}); fix or remove it "
                        "from `baselines` and rerun with the same --dir")
    pred = as_prediction_table(raw, b.label, model_pred, study.task)
    pred.insert(0, "variant", v.label)
    metrics = evaluate_predictions(pred, study.cfg, study.cohort, study.time_grid)
    atomic.write_parquet(vdir / "predictions.parquet", pred, index=False)
    atomic.write_json(vdir / "metrics.json", metrics)
    return pred, metrics


@contextlib.contextmanager
def _records_end(path: Path, base_state: dict[str, Any]) -> Iterator[None]:
    """An ablation that stops early says so in ``ablation.json``: "interrupted" (Ctrl-C,
    SIGTERM) or "failed", with the reason; rerunning with the same ``--dir`` resumes it."""
    from lungfuse.core.rundir import RunInterrupted, one_line

    try:
        yield
    except KeyboardInterrupt as exc:
        why = str(exc) if isinstance(exc, RunInterrupted) else "Ctrl-C (KeyboardInterrupt)"
        atomic.write_json(path, {**base_state, "status": "interrupted", "reason": why,
                             "finished": time.time()})
        raise
    except BaseException as exc:
        atomic.write_json(path, {**base_state, "status": "failed", "reason": one_line(exc),
                             "finished": time.time()})
        raise


def run_ablation(
    config: Any,
    *,
    modalities: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    folds: int | None = None,
    ablation_dir: Path | None = None,
    output_dir: Path | None = None,
    cache_dir: Path | None = None,
    registry: Registry | None = None,
    plugins: Iterable[type] | None = None,
    progress: bool | None = None,
    report: bool = True,
) -> AblationResult:
    """Run (or resume) an ablation; see the module docstring."""
    import numpy as np
    import pandas as pd
    import yaml
    from tqdm.auto import tqdm

    from lungfuse.core.config import config_to_dict
    from lungfuse.core.evaluation import evaluate_predictions
    from lungfuse.core.features import prepare_fold_features
    from lungfuse.core.folds import train_fold
    from lungfuse.core.registry import FUSION_GROUP
    from lungfuse.core.rundir import new_run_dir, progress_enabled
    from lungfuse.core.study import Study

    started = time.time()
    study = Study.from_config(config, registry, plugins, folds=folds)
    cfg, reg, cohort, splits = study.cfg, study.registry, study.cohort, study.splits
    assert cohort is not None and splits is not None
    all_mods = study.modalities
    names = list(modalities) if modalities else list(all_mods)
    unknown = [m for m in names if m not in all_mods]
    if unknown:
        raise ConfigError(f"ablation modality '{unknown[0]}' is not in the config "
                          f"(configured: {', '.join(all_mods)}); use the modality names")
    if len(set(names)) != len(names):
        raise ConfigError(f"ablation modalities list a name twice: {', '.join(names)}")
    heads = list(dict.fromkeys(heads or [cfg.fusion.kind]))
    head_cfgs = {h: _head_config(cfg, reg, h) for h in heads}
    head_plugins = {h: reg.get(FUSION_GROUP, h)(head_cfgs[h]) for h in heads}
    mods = {m: all_mods[m] for m in names}
    variants = variants_of(names, heads)
    baselines = _ablation_baselines(cfg, reg, names, str(config) if isinstance(
        config, str | Path) else "this config")
    from lungfuse.core.baselines import check_cohort_columns

    check_cohort_columns(baselines, study.cohort.without_outcomes().columns, str(config)
                         if isinstance(config, str | Path) else "this config")
    bvariants = [Variant(tuple(b.modalities), f"{b.label} (baseline)") for b in baselines]
    chash = _config_hash(cfg, names, heads)

    out_root = Path(output_dir) if output_dir is not None else Path(cfg.output_dir)
    if ablation_dir is not None and (Path(ablation_dir) / "ablation.json").exists():
        folder = Path(ablation_dir)
        state = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
        if state.get("config_hash") != chash and not _same_config(folder, state, cfg, names,
                                                                  heads):
            raise ConfigError(f"{folder} holds an ablation of another config (or other "
                              "modalities/heads); resume it with the same settings or choose "
                              "another --dir")
    else:
        folder = new_run_dir(out_root, f"{cfg.name}-ablation", ablation_dir, named_by="--dir")
    cache = Path(cache_dir) if cache_dir is not None else folder / "features"
    show = progress_enabled(progress)

    atomic.write_text(folder / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    atomic.write_parquet(folder / "splits.parquet", splits, index=False)
    base_state = {"config_hash": chash, "modalities": names, "heads": heads,
                  "variants": [{"id": v.id, "label": v.label, "modalities": list(v.modalities),
                                "head": v.head} for v in variants]
                  + [{"id": v.id, "label": v.label, "modalities": list(v.modalities),
                      "head": v.head, "baseline": b.label} for v, b in zip(bvariants, baselines,
                                                                            strict=True)],
                  "task": cfg.task.kind, "started": started}
    atomic.write_json(folder / "ablation.json", {**base_state, "status": "running"})
    with _records_end(folder / "ablation.json", base_state):

        coverage = study.check_coverage(names)
        grid = study.time_grid
        fold_keys = study.folds
        prepared: dict[tuple[str, int, int], Any] = {}

        def features(m: str, seed: int, fold: int, train: list[str]) -> Any:
            key = (m, seed, fold)
            if key not in prepared:  # once per (modality, seed, fold), shared by all variants
                cls, mcfg = mods[m]
                prepared[key] = prepare_fold_features(
                    m, cls, mcfg, cohort, train, seed=seed, fold=fold,
                    workdir=folder / "modalities" / m / f"seed{seed}-fold{fold}", cache_dir=cache,
                    progress=False)
            return prepared[key]

        trained = skipped = 0
        results: dict[str, pd.DataFrame] = {}
        metrics: dict[str, dict[str, Any]] = {}
        bar = tqdm(variants, desc="ablation", unit="variant", disable=not show)
        for v in bar:
            bar.set_postfix_str(v.label)
            vdir = folder / "variants" / v.id
            vcfg = cfg.model_copy(update={"fusion": head_cfgs[v.head]})
            parts = []
            for seed, fold in fold_keys:
                part = vdir / f"seed{seed}-fold{fold}.parquet"
                if part.exists():
                    parts.append(pd.read_parquet(part))
                    skipped += 1
                    continue
                ids = study.fold_ids(seed, fold)
                prep = {m: features(m, seed, fold, ids["train"]) for m in v.modalities}
                with tempfile.TemporaryDirectory(prefix="lungfuse-ablate") as scratch:
                    res = train_fold(vcfg, cohort, prep, mods, head_plugins[v.head], ids,
                                     seed=seed, fold=fold, fold_dir=Path(scratch), progress=False,
                                     time_grid=grid, write=False)
                pred = res.predictions.drop(columns=[c for c in res.predictions.columns
                                                     if c.startswith("present_")])
                pred.insert(0, "variant", v.label)
                atomic.write_parquet(part, pred, index=False)
                parts.append(pred)
                trained += 1
            pred = pd.concat(parts, ignore_index=True)
            results[v.label] = pred
            if (vdir / "metrics.json").exists() and (vdir / "predictions.parquet").exists():
                metrics[v.label] = json.loads((vdir / "metrics.json").read_text(encoding="utf-8"))
            else:
                metrics[v.label] = evaluate_predictions(pred, vcfg, cohort, grid)
                atomic.write_parquet(vdir / "predictions.parquet", pred, index=False)
                atomic.write_json(vdir / "metrics.json", metrics[v.label])
        bar.close()

        primary = PRIMARY[cfg.task.kind]
        for v, b in zip(bvariants, baselines, strict=True):  # same folds, same features
            results[v.label], metrics[v.label] = _baseline_variant(
                b, v, folder, study, features, results[next(x.label for x in variants
                                   if len(x.modalities) == len(names))])
        table = pd.DataFrame([_row(v, metrics[v.label]) for v in variants + bvariants])
        table["baseline"] = [False] * len(variants) + [True] * len(bvariants)
        singles = table[(table["n_modalities"] == 1) & ~table["baseline"]]
        ref = str(singles.sort_values(primary, ascending=False, na_position="last")
                   .iloc[0]["variant"])
        comps = []
        for v in variants + bvariants:
            d = _paired(results[v.label], results[ref], cfg.task.kind, cfg.evaluation.bootstrap,
                        cfg.seed) if v.label != ref else \
                {"difference": 0.0, "ci_low": float("nan"), "ci_high": float("nan"),
                 "p_not_better": float("nan"), "n_boot": 0}
            comps.append({"variant": v.label, "reference": ref, "metric": primary, **d})
        comp = pd.DataFrame(comps)
        table[f"{primary}_delta_vs_ref"] = comp["difference"].to_numpy()
        table[f"{primary}_delta_ci_low"] = comp["ci_low"].to_numpy()
        table[f"{primary}_delta_ci_high"] = comp["ci_high"].to_numpy()
        table[f"{primary}_p_not_better"] = comp["p_not_better"].to_numpy()
        table["reference"] = ref
        table = table.sort_values([primary, "n_modalities"], ascending=[False, True],
                                  na_position="last").reset_index(drop=True)
        atomic.write_parquet(folder / "ablation.parquet", table, index=False)
        atomic.write_parquet(folder / "comparisons.parquet", comp, index=False)
        atomic.write_text(folder / "ablation.md", summary_markdown(table, cfg.task.kind, ref))
        atomic.write_json(folder / "ablation.json", {
            **base_state, "status": "complete", "finished": time.time(),
            "seconds": round(time.time() - started, 2), "reference": ref, "primary": primary,
            "trained_this_call": trained, "resumed_from_disk": skipped,
            "coverage": {m: len(v) for m, v in coverage.items()}, "patients": len(cohort.ids),
            "folds": [list(k) for k in fold_keys]})
        from lungfuse.core.report.figures import interval_bars_figure
        from lungfuse.core.report.html import figure_png

        fig = interval_bars_figure(table["variant"].tolist(), table[primary].to_numpy(np.float64),
                                   table[f"{primary}_ci_low"].to_numpy(np.float64),
                                   table[f"{primary}_ci_high"].to_numpy(np.float64),
                                   metric=primary, title="Ablation (held-out, 95% CI)",
                                   highlight=ref, muted=[v.label for v in bvariants])
        atomic.write_bytes(folder / "ablation.png", figure_png(fig))
        if report:
            from lungfuse.core.report import render_folder

            render_folder(folder)
        return AblationResult(folder, table, ref, trained, skipped)


def summary_markdown(table: pd.DataFrame, task: str, reference: str) -> str:
    """The ablation table as markdown: each metric as ``value [low, high]``, the fold
    mean ± sd of the primary metric, and the paired difference against the reference."""
    import pandas as pd

    from lungfuse.core.metrics import BINARY_METRICS, SURVIVAL_METRICS

    primary = PRIMARY[task]
    ms = [m for m in (BINARY_METRICS if task == "binary" else SURVIVAL_METRICS) if m in table]

    def ci(r: Any, m: str) -> str:
        v, lo, hi = r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"]
        if v != v:
            return "–"
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo else f"{v:.3f}"

    rows = []
    for _, r in table.iterrows():
        row = {"variant": r["variant"]}
        row.update({m: ci(r, m) for m in ms})
        fm, fs = r[f"{primary}_fold_mean"], r[f"{primary}_fold_sd"]
        row[f"{primary} fold mean ± sd"] = "–" if fm != fm else (
            f"{fm:.3f} ± {fs:.3f}" if fs == fs else f"{fm:.3f}")
        d, lo, hi = (r[f"{primary}_delta_vs_ref"], r[f"{primary}_delta_ci_low"],
                     r[f"{primary}_delta_ci_high"])
        row[f"Δ{primary} vs ref"] = "reference" if r["variant"] == reference else (
            f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo == lo else f"{d:+.3f}")
        if task == "survival":  # the headline first: mean ± sd over folds, then pooled
            row = {"variant": row["variant"],
                   f"{primary} fold mean ± sd": row.pop(f"{primary} fold mean ± sd"),
                   f"{primary} pooled": row.pop(primary), **row}
        rows.append(row)
    head = (f"Held-out {task} metrics, pooled over folds, 95% bootstrap CI in brackets. "
            f"Reference (best single modality by {primary}): **{reference}**; Δ is the paired "
            "bootstrap difference on the same patients.")
    if "baseline" in table and table["baseline"].any():
        head += (" Rows marked `(baseline)` are classical models fitted on the same folds "
                 "and features (all ablated modalities).")
    if task == "survival":
        head += (f" The {primary} fold mean ± sd is over every (seed, fold) test fold; the "
                 "pooled figure ranks all held-out risks of the first seed together, though "
                 "they come from separately trained fold models on different scales.")
    head += "\n\n"
    return head + markdown_table(pd.DataFrame(rows))


@click.command("ablate")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--modalities", default=None,
              help="Comma-separated modality names to ablate (default: all configured).")
@click.option("--heads", default=None,
              help="Comma-separated fusion heads (default: the configured one), e.g. gated,concat.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Override evaluation.folds.")
@click.option("--dir", "ablation_dir", type=click.Path(path_type=Path), default=None,
              help="Ablation folder; an existing one with the same settings is resumed.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Parent of a new ablation folder (default: the config's output_dir).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Prepared-feature cache (default: <folder>/features); share it with runs.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def ablate_command(config: Path, modalities: str | None, heads: str | None, folds: int | None,
                   ablation_dir: Path | None, output_dir: Path | None, cache_dir: Path | None,
                   no_progress: bool) -> None:
    """Train every non-empty modality subset × fusion head on identical splits and seeds.

    Features are prepared once per modality and fold and shared by all variants. Writes
    ablation.parquet/.md (metrics with 95% CIs, paired bootstrap against the best single
    modality), ablation.png and report.html. Rerun with --dir FOLDER to resume.
    """
    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)  # noqa: E731
    res = run_ablation(config, modalities=split(modalities), heads=split(heads), folds=folds,
                       ablation_dir=ablation_dir, output_dir=output_dir, cache_dir=cache_dir,
                       progress=False if no_progress else None)
    primary = [c for c in res.table.columns if c in PRIMARY.values()][0]
    click.echo(f"ablation folder: {res.folder} ({res.trained} fold trainings, "
               f"{res.skipped} resumed from disk)")
    for _, r in res.table.iterrows():
        fm, fs = r[f"{primary}_fold_mean"], r[f"{primary}_fold_sd"]
        lead = (f"{primary} {fm:.3f} +/- {fs:.3f} (fold mean +/- sd), pooled "
                if primary == "harrell_c" and fm == fm and fs == fs else f"{primary} ")
        click.echo(f"  {r['variant']:<40} {lead}{r[primary]:.3f} "
                   f"[{r[f'{primary}_ci_low']:.3f}, {r[f'{primary}_ci_high']:.3f}]")
    click.echo(f"reference (best single modality): {res.reference}")
    click.echo(f"report: {res.folder / 'report.html'}")

"""Is each modality of a synthetic cohort informative, and does fusing them help?

Generates a cohort (default: demo settings with 300 patients), derives simple observed
features per modality straight from the written files, and prints cross-validated AUCs
of a logistic regression per modality and for their concatenation, on the patients who
have every modality. Writes a markdown table to bench/results/synth_signal.md.

    .venv/bin/python bench/synth_signal.py [--patients 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

NON_SILENT = {"Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
              "Splice_Site", "In_Frame_Del", "In_Frame_Ins", "Nonstop_Mutation",
              "Translation_Start_Site"}


def imaging_features(root: Path, clin: pd.DataFrame) -> pd.DataFrame:
    """Per patient: log max diameter, #nodules, mean HU and fill ratio of the largest."""
    import SimpleITK as sitk

    ann = pd.read_csv(root / "ct" / "annotations.csv")
    rows = []
    for pid, uid in clin.dropna(subset=["seriesuid"])[["patient_id", "seriesuid"]].itertuples(
            index=False):
        a = ann[ann.seriesuid == uid].reset_index(drop=True)
        if a.empty:
            rows.append((pid, np.log(2.0), 0, -850.0, 1.0))
            continue
        j = int(a.diameter_mm.idxmax())
        img = sitk.ReadImage(str(next((root / "ct").glob(f"subset*/{uid}.mhd"))))
        hu = sitk.GetArrayFromImage(img)
        m = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ct" / "masks" / f"{uid}.mhd")))
        sel = m == j + 1
        vox = float(np.prod(img.GetSpacing()))
        sphere = np.pi / 6 * a.diameter_mm[j] ** 3
        rows.append((pid, np.log(a.diameter_mm[j]), len(a), float(hu[sel].mean()),
                     sel.sum() * vox / sphere))
    return pd.DataFrame(rows, columns=["patient_id", "log_d", "n_nod", "hu", "fill"]
                        ).set_index("patient_id")


def mutation_features(root: Path) -> pd.DataFrame:
    from lungfuse.core.synth.latent import DRIVERS

    seq = (root / "omics" / "sequenced_samples.txt").read_text(encoding="utf-8").split()
    m = pd.read_parquet(root / "omics" / "mutations.parquet")
    m = m[m.Variant_Classification.isin(NON_SILENT) & m.Hugo_Symbol.isin(list(DRIVERS))]
    x = pd.DataFrame(0.0, index=sorted({s[:12] for s in seq}), columns=list(DRIVERS))
    for s, g in m[["Tumor_Sample_Barcode", "Hugo_Symbol"]].itertuples(index=False):
        x.loc[s[:12], g] = 1.0
    return x


def expression_features(root: Path) -> pd.DataFrame:
    from lungfuse.core.synth.omics import MODULES

    cols = ["sample"] + MODULES["proliferation"] + MODULES["immune"]
    e = pd.read_parquet(root / "omics" / "expression.parquet", columns=cols)
    e.index = e.pop("sample").str[:12]
    e = np.log2(e + 1)
    return pd.DataFrame({"prolif": e[MODULES["proliferation"]].mean(axis=1),
                         "immune": e[MODULES["immune"]].mean(axis=1)})


def cv_auc(x: pd.DataFrame, y: pd.Series, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x.values, y.values, cv=cv, method="predict_proba")[:, 1]
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="demo")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from lungfuse.core.synth import generate

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = generate(Path(d) / "c", preset=args.preset, patients=args.patients,
                       seed=args.seed, progress=False)
        gen_s = time.perf_counter() - t0
        root = res.out_dir
        clin = pd.read_parquet(res.clinical)
        truth = pd.read_parquet(res.truth).set_index("patient_id")
        y = clin.set_index("patient_id").malignant
        feats = {
            "imaging": imaging_features(root, clin),
            "mutations": mutation_features(root),
            "expression": expression_features(root),
            "covariates": clin.set_index("patient_id")[["age", "pack_years"]].astype(float),
        }
    common = sorted(set.intersection(*(set(f.index) for f in feats.values())))
    yc = y.loc[common]
    rows = []
    for name, f in feats.items():
        ids = sorted(f.index)
        rows.append((name, len(ids), cv_auc(f.loc[ids], y.loc[ids], args.seed),
                     cv_auc(f.loc[common], yc, args.seed)))
    fused = pd.concat([f.loc[common] for f in feats.values()], axis=1)
    rows.append(("fused (concatenated)", len(common), float("nan"),
                 cv_auc(fused, yc, args.seed)))
    latent = {k: float(roc_auc_score(y.loc[truth.index], truth[k]))
              for k in ("z_img", "z_mut", "z_expr", "z_cov")}

    lines = [f"# Synthetic cohort signal check ({args.preset}, {args.patients} patients, "
             f"seed {args.seed})", "",
             f"Generation took {gen_s:.1f} s. 5-fold CV logistic regression AUC for "
             "malignant; 'complete' = patients with every modality.", "",
             "| features | patients with it | AUC (own patients) | AUC (complete patients) |",
             "|---|---|---|---|"]
    for name, n, a_own, a_common in rows:
        own = "" if np.isnan(a_own) else f"{a_own:.3f}"
        lines.append(f"| {name} | {n} | {own} | {a_common:.3f} |")
    lines += ["", "AUC of each true latent component alone (all patients): "
              + ", ".join(f"{k} {v:.3f}" for k, v in latent.items()), ""]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "synth_signal.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()

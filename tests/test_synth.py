"""The synthetic cohort generator: formats read back, geometry, barcodes, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lungfuse.core.errors import ConfigError, DataError
from lungfuse.core.synth import generate, planned_count

MAF = ["Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification", "HGVSp_Short",
       "t_alt_count", "t_depth", "Entrez_Gene_Id"]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_clinical_columns_and_class_mix(tiny_cohort: Path) -> None:
    t = pq.read_table(tiny_cohort / "clinical.parquet").to_pandas()
    assert list(t.columns) == ["patient_id", "seriesuid", "age", "sex", "pack_years",
                               "family_history", "malignant", "time", "event"]
    assert set(t.family_history) <= {0, 1}
    assert t.patient_id.str.len().eq(12).all() and t.patient_id.is_unique
    assert t.patient_id.str.match(r"^TCGA-[A-Z]{2}-\d{4}$").all()
    assert set(t.malignant) == {0, 1}
    n = len(t)
    assert t.malignant.sum() == planned_count(n, 0.5) and t.malignant.sum() >= 3
    assert (n - t.malignant.sum()) >= 3
    assert (t.time > 0).all() and set(t.event) <= {0, 1}
    assert t.seriesuid.isna().sum() == planned_count(n, 0.1)
    assert t.seriesuid.dropna().str.match(r"^2\.25\.\d+$").all()


def test_ct_read_back_and_annotations_inside_own_label(tiny_cohort: Path) -> None:
    import pandas as pd
    import SimpleITK as sitk

    clin = pq.read_table(tiny_cohort / "clinical.parquet").to_pandas()
    ann = pd.read_csv(tiny_cohort / "ct" / "annotations.csv")
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert len(ann) > 0
    assert set(ann.seriesuid) <= set(clin.seriesuid.dropna())
    spacings = set()
    for uid in clin.seriesuid.dropna():
        found = list((tiny_cohort / "ct").glob(f"subset*/{uid}.mhd"))
        assert len(found) == 1
        assert found[0].with_suffix(".raw").exists()
        img = sitk.ReadImage(str(found[0]))
        mask = sitk.ReadImage(str(tiny_cohort / "ct" / "masks" / f"{uid}.mhd"))
        assert img.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
        assert img.GetSize() == mask.GetSize() and img.GetSize()[:2] == (64, 64)
        assert 24 <= img.GetSize()[2] <= 40
        assert np.allclose(img.GetOrigin(), mask.GetOrigin())
        assert np.allclose(img.GetSpacing(), mask.GetSpacing())
        assert all(abs(o) > 0 for o in img.GetOrigin())
        sp = img.GetSpacing()
        assert 0.6 <= sp[0] <= 0.9 and 1.0 <= sp[2] <= 2.5
        spacings.add(sp)
        hu = sitk.GetArrayFromImage(img)
        assert hu.min() >= -1024 and (hu < -950).mean() > 0.1 and (hu > 300).any()
        m = sitk.GetArrayFromImage(mask)
        rows = ann[ann.seriesuid == uid].reset_index(drop=True)
        assert set(np.unique(m)) == set(range(len(rows) + 1))
        for label, r in enumerate(rows.itertuples(), start=1):
            idx = img.TransformPhysicalPointToIndex((r.coordX, r.coordY, r.coordZ))
            assert m[idx[2], idx[1], idx[0]] == label, (uid, label)
            # the nodule is denser than aerated lung at its centre
            assert hu[idx[2], idx[1], idx[0]] > -750
            assert 3.0 * 0.5 <= r.diameter_mm <= 30.0
    assert len(spacings) > 1


def test_barcodes_map_back_to_patients(tiny_cohort: Path) -> None:
    clin = pq.read_table(tiny_cohort / "clinical.parquet").to_pandas()
    pids = set(clin.patient_id)
    muts = pq.read_table(tiny_cohort / "omics" / "mutations.parquet").to_pandas()
    assert list(muts.columns) == MAF
    seq = (tiny_cohort / "omics" / "sequenced_samples.txt").read_text(encoding="utf-8").split()
    assert seq and len(set(seq)) == len(seq)
    assert {s[:12] for s in seq} <= pids
    assert set(muts.Tumor_Sample_Barcode) <= set(seq)
    assert len(set(seq) - set(muts.Tumor_Sample_Barcode)) >= 1  # sequenced, no calls
    assert all(len(s) == 28 and s[13:16] == "01A" and s[19] == "D" for s in seq)
    expr = pq.read_table(tiny_cohort / "omics" / "expression.parquet")
    assert expr.column_names[0] == "sample"
    samples = expr.column("sample").to_pylist()
    assert all(s[:12] in pids and s[19] == "R" for s in samples)
    genes = expr.column_names[1:]
    assert len(genes) == 200 and {"EGFR", "KRAS", "TP53", "STK11", "KEAP1"} <= set(genes)
    vals = np.column_stack([expr.column(g).to_numpy() for g in genes])
    assert np.isfinite(vals).all() and (vals >= 0).all()
    # genomics missingness: patients without any sample, and RNA without DNA calls
    n = len(pids)
    rna_pat = {s[:12] for s in samples}
    assert n - len(rna_pat) == planned_count(n, 0.3)
    assert rna_pat - {s[:12] for s in seq}
    # the classification vocabulary that downstream filters must handle is all there
    need = {"Silent", "Intron", "3'UTR", "5'UTR", "RNA", "Splice_Site", "Frame_Shift_Del",
            "Frame_Shift_Ins", "In_Frame_Del", "In_Frame_Ins", "Nonsense_Mutation",
            "Missense_Mutation", "Nonstop_Mutation", "Translation_Start_Site"}
    assert need <= set(muts.Variant_Classification)
    assert (muts.Hugo_Symbol == "Unknown").any()
    assert (muts.t_alt_count <= muts.t_depth).all() and (muts.t_alt_count > 0).all()


def test_manifest_and_truth(tiny_cohort: Path) -> None:
    meta = json.loads((tiny_cohort / "synth.json").read_text(encoding="utf-8"))
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and "version" in meta
    assert meta["knobs"]["no_genomics_fraction"] == 0.3
    truth = pq.read_table(tiny_cohort / "truth.parquet").to_pandas()
    clin = pq.read_table(tiny_cohort / "clinical.parquet").to_pandas()
    assert list(truth.patient_id) == list(clin.patient_id)
    assert (truth.malignant.values == clin.malignant.values).all()
    # every drawn nodule of a CT patient is rendered, the largest at its drawn size
    ct = truth[truth.has_ct]
    assert (ct.n_nodules_drawn == ct.n_nodules_rendered).all()
    import pandas as pd

    ann = pd.read_csv(tiny_cohort / "ct" / "annotations.csv")
    biggest = ann.groupby("seriesuid").diameter_mm.max()
    merged = clin.assign(index_d=truth.index_diameter_mm).dropna(subset=["seriesuid"])
    merged = merged[merged.seriesuid.isin(biggest.index)]
    assert np.allclose(biggest[merged.seriesuid].values, merged.index_d.values, atol=0.011)
    # malignant = the highest latent risks
    assert truth.risk[truth.malignant == 1].min() > truth.risk[truth.malignant == 0].max()


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", preset="tiny", seed=3, progress=False, patients=6)
    b = generate(tmp_path / "b", preset="tiny", seed=3, progress=False, patients=6)
    c = generate(tmp_path / "c", preset="tiny", seed=4, progress=False, patients=6)
    da, db, dc = _digest(a.out_dir), _digest(b.out_dir), _digest(c.out_dir)
    assert da == db
    assert any(k.endswith(".raw") for k in da) and "clinical.parquet" in da
    assert da["clinical.parquet"] != dc["clinical.parquet"]
    assert da["omics/expression.parquet"] != dc["omics/expression.parquet"]
    assert not {k for k in da if k.endswith(".raw")} & {k for k in dc if k.endswith(".raw")}
    # switching CT off changes nothing else (a genomics-only cohort is the same cohort)
    d = generate(tmp_path / "d", preset="tiny", seed=3, progress=False, patients=6,
                 with_ct=False)
    dd = _digest(d.out_dir)
    assert dd["omics/expression.parquet"] == da["omics/expression.parquet"]
    assert dd["omics/mutations.parquet"] == da["omics/mutations.parquet"]
    ca = pq.read_table(a.clinical).drop(["seriesuid"])
    assert ca.equals(pq.read_table(d.clinical).drop(["seriesuid"]))


def test_long_layout_and_genomics_only(tmp_path: Path) -> None:
    res = generate(tmp_path / "g", preset="tiny", patients=40, seed=1, long=True,
                   with_ct=False, progress=False)
    assert res.ct_dir is None and not (tmp_path / "g" / "ct").exists()
    t = pq.read_table(res.expression)
    assert t.column_names == ["sample", "gene", "value"]
    n_samples = len(set(t.column("sample").to_pylist()))
    assert t.num_rows == n_samples * 200
    clin = pq.read_table(res.clinical).to_pandas()
    assert clin.seriesuid.isna().all()
    assert clin.malignant.sum() == 20
    assert 40 - n_samples == planned_count(40, 0.3) == 12
    # the long layout holds exactly the values of the wide one
    wide = generate(tmp_path / "w", preset="tiny", patients=40, seed=1, with_ct=False,
                    progress=False)
    w = pq.read_table(wide.expression).to_pandas().set_index("sample")
    lg = t.to_pandas().pivot(index="sample", columns="gene", values="value")
    assert np.array_equal(lg.loc[w.index, w.columns].to_numpy(), w.to_numpy())


def test_class_mix_and_missingness_follow_the_knobs(tmp_path: Path) -> None:
    res = generate(tmp_path / "k", preset="tiny", patients=20, seed=5, progress=False,
                   malignant_fraction=0.25, no_ct_fraction=0.5, no_genomics_fraction=0.4,
                   expression_only_fraction=0.25, zero_calls_fraction=0.5, size_xy=32,
                   slices=(8, 10))
    clin = pq.read_table(res.clinical).to_pandas()
    assert clin.malignant.sum() == 5
    assert clin.seriesuid.isna().sum() == 10 == res.n_series
    rna = {s[:12] for s in pq.read_table(res.expression).column("sample").to_pylist()}
    dna = {s[:12] for s in res.sequenced_samples.read_text(encoding="utf-8").split()}
    called = {s[:12] for s in pq.read_table(res.mutations).column(
        "Tumor_Sample_Barcode").to_pylist()}
    assert len(rna) == 12 and dna < rna and len(rna - dna) == 3
    assert called < dna and len(dna - called) == planned_count(9, 0.5) == 4
    # no-CT patients are drawn among those with genomics: nobody lacks everything
    has_ct = set(clin.patient_id[clin.seriesuid.notna()])
    assert set(clin.patient_id) == has_ct | rna


def test_refuses_non_empty_and_bad_knobs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lungfuse.core.synth.cli import synth

    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = CliRunner().invoke(synth, [str(out), "--preset", "tiny"])
    assert r.exit_code == 2 and "not empty" in r.output
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    from lungfuse.core.cli import main

    with pytest.raises(SystemExit) as exc:  # the `lungfuse` entry point, too
        main(["synth", str(out)])
    assert exc.value.code == 2
    with pytest.raises(DataError):
        generate(out, preset="tiny", progress=False)
    with pytest.raises(ConfigError):
        generate(tmp_path / "x", preset="huge", progress=False)
    with pytest.raises(ConfigError):
        generate(tmp_path / "x", preset="tiny", progress=False, not_a_knob=1)
    assert not (tmp_path / "x").exists()
    # --overwrite refuses a folder that is not synth output: the user's file stays
    r = CliRunner().invoke(synth, [str(out), "--preset", "tiny", "--patients", "4",
                                   "--overwrite"])
    assert r.exit_code == 2 and "not a lungfuse synth output" in r.output
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    # ... and replaces an earlier synth output; no temporary folders are left behind
    (out / "keep.txt").unlink()
    assert CliRunner().invoke(synth, [str(out), "--patients", "4", "--no-ct"]).exit_code == 0
    r = CliRunner().invoke(synth, [str(out), "--preset", "tiny", "--patients", "4",
                                   "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "clinical.parquet").exists() and (out / "ct").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_modalities_each_carry_signal(tmp_path: Path) -> None:
    """Each latent component alone separates the classes, and none does it perfectly."""
    from sklearn.metrics import roc_auc_score

    res = generate(tmp_path / "s", preset="tiny", patients=300, seed=2, with_ct=False,
                   n_genes=60, progress=False)
    t = pq.read_table(res.truth).to_pandas()
    aucs = {k: roc_auc_score(t.malignant, t[k]) for k in ("z_img", "z_mut", "z_expr")}
    assert all(0.62 < a < 0.9 for a in aucs.values()), aucs
    assert roc_auc_score(t.malignant, t.risk) == 1.0  # labels are the top risks


def test_crash_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from lungfuse.core.synth import omics

    def boom(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setattr(omics, "write_expression", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "out", preset="tiny", patients=4, progress=False)
    assert list(tmp_path.iterdir()) == []
    # an existing empty folder is kept as it was
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError):
        generate(tmp_path / "empty", preset="tiny", patients=4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert not any((tmp_path / "empty").iterdir())

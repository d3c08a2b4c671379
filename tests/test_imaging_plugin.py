"""The infnet modality plugin, CT features and the segment/infnet CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from lungfuse.core.contracts import ModalityContext  # noqa: E402
from lungfuse.core.errors import DataError  # noqa: E402
from lungfuse.plugins.imaging_infnet import ctio, synthetic  # noqa: E402
from lungfuse.plugins.imaging_infnet.plugin import InfNetConfig, InfNetModality  # noqa: E402

SMALL = {"train": {"backbone": "test_resnet", "channel": 8, "epochs": 1, "batch_size": 8,
                   "multiscale": [1.0], "lr": 1e-3, "negatives_per_positive": 0.25},
         "slices": {"img_size": 64}, "fast": {"enabled": False}, "embedding_dim": 8}


def test_plugin_module_imports_without_torch_or_simpleitk() -> None:
    code = ("import sys; import lungfuse.plugins.imaging_infnet.plugin as p; "
            "assert p.InfNetModality.name == 'infnet'; "
            "bad = [m for m in ('torch', 'SimpleITK', 'timm', 'lightning') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_conformance() -> None:
    from lungfuse.testing import check_modality_plugin

    check_modality_plugin(InfNetModality)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    uids = [f"1.3.{i}" for i in range(6)]
    synthetic.write_tree(root / "ct", uids, seed=5, size=64, depth=16)
    (root / "ct" / "subset0" / "1.3.5.raw").unlink()  # a scan whose data went missing
    ids = [f"P{i}" for i in range(7)]
    series = uids + [None]  # P6 has no CT
    pd.DataFrame({"patient_id": ids, "seriesuid": series, "age": np.arange(7) + 50.0}) \
        .to_parquet(root / "clinical.parquet")
    return root


def _cohort(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "clinical.parquet").set_index("patient_id")


def _cfg(root: Path, **kw: object) -> InfNetConfig:
    return InfNetConfig.model_validate({"ct_root": root / "ct",
                                        "annotations": root / "ct" / "annotations.csv",
                                        **SMALL, **kw})


def test_features_train_on_train_and_absent_without_ct(cohort_dir: Path, tmp_path: Path) -> None:
    cohort = _cohort(cohort_dir)
    plug = InfNetModality(_cfg(cohort_dir))
    ctx = ModalityContext(workdir=tmp_path, progress=False)
    assert plug.available(cohort, ctx) == {f"P{i}" for i in range(6)}
    plug.prepare(cohort.loc[["P0", "P1", "P2"]], ctx)
    ck = torch.load(tmp_path / "segmenter" / "infnet.pt", weights_only=True)
    assert ck["training_patients"] == ["P0", "P1", "P2"]
    feats = plug.transform(cohort, ctx)
    # P5's data file is missing (reported, skipped), P6 has no series: both absent
    assert sorted(feats.index) == ["P0", "P1", "P2", "P3", "P4"]
    assert feats.index.name == "patient_id"
    ann = ctio.read_annotations(cohort_dir / "ct" / "annotations.csv")
    counts = ann.groupby("seriesuid").size()
    for p in feats.index:
        assert feats.loc[p, "n_nodules"] == counts[f"1.3.{p[1:]}"]
    assert (feats["volume_mm3"] > 0).all() and (feats["long_axis_mm"] >= feats["short_axis_mm"]).all()
    assert len([c for c in feats.columns if c.startswith("emb_")]) == 24  # 3 x channel 8


def test_checkpoint_trained_on_evaluation_patients_is_refused(cohort_dir: Path,
                                                             tmp_path: Path) -> None:
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    cohort = _cohort(cohort_dir)
    net = InfNet("test_resnet", channel=8)
    from lungfuse.plugins.imaging_infnet.config import SliceSettings

    leaky = save_checkpoint(tmp_path / "leaky.pt", net, ["P0", "P1", "P4"], SliceSettings(img_size=64))
    clean = save_checkpoint(tmp_path / "clean.pt", net, ["P0", "P1"], SliceSettings(img_size=64))
    ctx = ModalityContext(workdir=tmp_path, progress=False)
    plug = InfNetModality(_cfg(cohort_dir, checkpoint=leaky))
    plug.prepare(cohort.loc[["P0", "P1", "P2"]], ctx)
    with pytest.raises(DataError, match="P4"):
        plug.transform(cohort, ctx)
    ok = InfNetModality(_cfg(cohort_dir, checkpoint=clean))
    ok.prepare(cohort.loc[["P0", "P1", "P2"]], ctx)
    assert len(ok.transform(cohort.loc[["P3", "P4"]], ctx)) == 2


def test_quantitative_features_of_a_ball() -> None:
    from lungfuse.plugins.imaging_infnet.features import quantitative

    v = ctio.Volume(np.full((40, 60, 60), -800.0, np.float32), np.zeros(3),
                    np.array([0.5, 0.5, 0.5]), np.eye(3))
    zz, yy, xx = np.mgrid[0:40, 0:60, 0:60]
    ball = (xx - 30) ** 2 + (yy - 30) ** 2 + (zz - 20) ** 2 <= 12 ** 2  # 6 mm radius
    v.array[ball] = np.where(xx[ball] < 30, 40.0, -500.0)  # half solid, half ground glass
    box = (slice(0, 40), slice(0, 60), slice(0, 60))
    f = quantitative(v, ball, box)
    assert f["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 6 ** 3, rel=0.05)
    assert f["long_axis_mm"] == pytest.approx(12, rel=0.05)
    assert f["short_axis_mm"] == pytest.approx(12, rel=0.05)
    assert f["solid_fraction"] == pytest.approx(0.5, abs=0.05)
    assert 0.85 < f["sphericity"] <= 1.1
    assert f["margin_irregularity"] < 0.1
    spiky = ball.copy()
    spiky[20, 30, 30:58] = True
    spiky[20, 30:58, 30] = True
    g = quantitative(v, spiky, box)
    assert g["margin_irregularity"] > f["margin_irregularity"]
    assert g["sphericity"] < f["sphericity"]


# --------------------------------------------------------------------------------- CLI
def _lungfuse(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from lungfuse.core.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_segment_train_predict_evaluate_and_import(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    import SimpleITK as sitk
    import yaml

    uids = ["9.1", "9.2", "9.3"]
    synthetic.write_tree(tmp_path / "ct", uids, seed=2, size=64, depth=16)
    base = {"ct_root": "ct", "annotations": "ct/annotations.csv", "masks_dir": "ct/masks",
            "out_dir": "out", "slices": {"img_size": 64}, "fast": {"enabled": False},
            "train": {**SMALL["train"], "val_fraction": 0.0}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**base, "series": uids[:2]}))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(
        {**base, "series": uids[2:], "checkpoint": "out/infnet.pt"}))
    code, out, err = _lungfuse(["segment", "train", str(tmp_path / "train.yaml"),
                                "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "infnet.pt").is_file()
    code, out, err = _lungfuse(["segment", "predict", str(tmp_path / "test.yaml"),
                                "--no-progress"], capsys)
    assert code == 0, err
    m = sitk.ReadImage(str(tmp_path / "out" / "masks" / "9.3.mhd"))
    src = sitk.ReadImage(str(tmp_path / "ct" / "subset0" / "9.3.mhd"))
    assert m.GetSize() == src.GetSize()
    np.testing.assert_allclose(m.GetOrigin(), src.GetOrigin())
    np.testing.assert_allclose(m.GetSpacing(), src.GetSpacing())
    assert (tmp_path / "out" / "overlays" / "9.3.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = _lungfuse(["segment", "evaluate", str(tmp_path / "test.yaml"),
                                "--no-progress"], capsys)
    assert code == 0, err
    assert "mean_dice=" in out and (tmp_path / "out" / "metrics.json").is_file()
    # evaluating on the training scans is refused in one line
    code, out, err = _lungfuse(["segment", "evaluate", str(tmp_path / "train.yaml"),
                                "--checkpoint", str(tmp_path / "out" / "infnet.pt"),
                                "--no-progress"], capsys)
    assert code == 2 and "training set" in err and err.count("\n") == 1
    # an unknown config key is one line, exit 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**base, "colour": "red"}))
    code, out, err = _lungfuse(["segment", "train", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "colour" in err and err.count("\n") == 1
    # a non-Inf-Net file is refused by import
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    code, out, err = _lungfuse(["infnet", "import", str(tmp_path / "other.pth"),
                                str(tmp_path / "imp.pt")], capsys)
    assert code == 2 and "missing" in err and not (tmp_path / "imp.pt").exists()


def test_scoring_config_reads_a_new_patients_own_scan(cohort_dir: Path, tmp_path: Path) -> None:
    """A new patient's scan given by path (with its nodule location) gives the same features
    as the same scan found through ct_root and the annotations."""
    cohort = _cohort(cohort_dir)
    plug = InfNetModality(_cfg(cohort_dir))
    ctx = ModalityContext(workdir=tmp_path, progress=False)
    plug.prepare(cohort.loc[["P0", "P1"]], ctx)
    ann = ctio.read_annotations(cohort_dir / "ct" / "annotations.csv")
    counts = ann.groupby("seriesuid").size()
    uid = next(u for u in ("1.3.2", "1.3.3", "1.3.4") if counts.get(u, 0) == 1)
    pid = f"P{uid.rsplit('.', 1)[1]}"
    row = ann[ann.seriesuid == uid].iloc[0]
    path = ctio.find_volumes(cohort_dir / "ct")[uid]
    entry = {"id": "NEW-1", "ct": path, "nodule": {"x": row.coordX, "y": row.coordY,
                                                   "z": row.coordZ,
                                                   "diameter_mm": row.diameter_mm}}
    assert plug.scoring_config({"id": "NEW-1"}, tmp_path) is None  # no scan: as configured
    cfg = plug.scoring_config(entry, tmp_path / "scratch")
    assert cfg.volumes == {"NEW-1": path} and cfg.candidate_source == "annotations"
    new = InfNetModality(cfg)
    new.load_state_dict(plug.state_dict())
    got = new.transform(pd.DataFrame(index=pd.Index(["NEW-1"], name="patient_id")), ctx)
    want = plug.transform(cohort.loc[[pid]], ctx)
    assert list(got.index) == ["NEW-1"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-5)
    # without a location the whole scan is swept
    swept = plug.scoring_config({"id": "NEW-2", "ct": path}, tmp_path / "scratch")
    assert swept.candidate_source == "sweep" and swept.annotations == plug.config.annotations


def test_folds_sharing_a_segmenter_extract_each_scan_once(cohort_dir: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    from lungfuse.plugins.imaging_infnet import features

    cohort = _cohort(cohort_dir)
    first = InfNetModality(_cfg(cohort_dir))
    ctx = ModalityContext(workdir=tmp_path, progress=False)
    first.prepare(cohort.loc[["P0", "P1"]], ctx)
    want = first.transform(cohort.loc[["P2", "P3"]], ctx)
    calls = []
    orig = features.segment_at
    monkeypatch.setattr(features, "segment_at", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again = InfNetModality(_cfg(cohort_dir))  # another fold, same fitted segmenter
    again.load_state_dict(first.state_dict())
    pd.testing.assert_frame_equal(again.transform(cohort.loc[["P2", "P3"]], ctx), want)
    assert calls == []
    # other weights (another fold's own segmenter): computed afresh
    other = InfNetModality(_cfg(cohort_dir))
    state = first.state_dict()
    sd = {k: v.clone() for k, v in state["model"]["state_dict"].items()}
    k0 = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[k0] += 0.01
    other.load_state_dict({**state, "model": {**state["model"], "state_dict": sd}})
    other.transform(cohort.loc[["P2"]], ctx)
    assert len(calls) >= 1

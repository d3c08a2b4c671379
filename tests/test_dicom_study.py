"""DICOM study folders as they come off the scanner (issue 14, item 4).

A study is built from the real header of pydicom's ``CT_small.dcm`` (a GE HiSpeed CT/i
slice) with new pixels, UIDs, positions and thickness: a one-slice localiser, a thick
(5 mm, 8 slices) and a thin (1 mm, 24 slices) axial reconstruction, 32 x 32 pixels. The
reader must take the thin one and say so, take the thick one when asked by uid, and refuse
folders with nothing to read with one line listing what they hold.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from lungfuse.core.errors import DataError
from lungfuse.plugins.imaging_infnet import ctio

pydicom = pytest.importorskip("pydicom")

STUDY = "2.25.1001"
LOCALISER, THICK, THIN, MR = "2.25.1001.1", "2.25.1001.2", "2.25.1001.3", "2.25.1001.4"
AXIAL = [1, 0, 0, 0, 1, 0]
CORONAL = [1, 0, 0, 0, 0, -1]


def _write_series(folder: Path, uid: str, pixels: np.ndarray, thickness: float, *,
                  number: int, description: str, localiser: bool = False,
                  modality: str = "CT", orientation: list[int] | None = None,
                  origin: tuple[float, float, float] = (-11.2, -11.2, 0.0),
                  spacing: float = 0.7, step: float | None = None) -> Path:
    """One series of ``len(pixels)`` slices written into ``folder`` from CT_small's header:
    slice k holds ``pixels[k]`` (stored values; HU = stored - 1024 by CT_small's rescale)
    at ``origin + k * step`` along z (``step`` defaults to ``-thickness``)."""
    import io

    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    template = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    step = -thickness if step is None else step
    for k, plane in enumerate(pixels):
        ds = pydicom.dcmread(io.BytesIO(template))  # parsing is cheaper than a deepcopy
        ds.set_pixel_data(np.ascontiguousarray(plane, np.int16), "MONOCHROME2", 16)
        ds.PixelSpacing = [spacing, spacing]
        ds.Modality = modality
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localiser else "AXIAL"]
        ds.StudyInstanceUID = STUDY
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = f"{uid}.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.ImageOrientationPatient = orientation or (CORONAL if localiser else AXIAL)
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * step]
        ds.save_as(folder / f"IM{number:02d}{k:04d}.dcm", enforce_file_format=True)
    return folder


def _series(folder: Path, uid: str, n: int, thickness: float, *, number: int,
            offset: float = 0.0, **tags: object) -> Path:
    """``n`` slices of 32 x 32 pixels; slice k stores ``100 * number + k`` everywhere."""
    pixels = 100 * number + np.arange(n, dtype=np.int16)[:, None, None] + np.zeros((1, 32, 32),
                                                                                 np.int16)
    return _write_series(folder, uid, pixels, thickness, number=number,
                         origin=(-11.2, -11.2, offset), **tags)  # type: ignore[arg-type]


def _study(root: Path, nested: bool = False) -> Path:
    """Localiser + thick + thin reconstruction; flat, or one subfolder per series below a
    DICOM/ folder as many scanners write them."""
    def sub(name: str) -> Path:
        return root / "DICOM" / "ST000" / name if nested else root

    _series(sub("SE001"), LOCALISER, 1, 5.0, number=1, description="Topogram",
            localiser=True)
    _series(sub("SE002"), THICK, 8, 5.0, number=2, description="Thorax 5.0 Weichteil \u00e4")
    _series(sub("SE003"), THIN, 24, 1.0, number=3, description="Thorax 1.0 B60f")
    return root


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_the_thin_axial_reconstruction_is_read_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = _study(tmp_path / "study")
    with caplog.at_level(logging.INFO, logger="lungfuse.imaging"):
        vol = ctio.read_volume(study)
    assert vol.array.shape == (24, 32, 32)
    np.testing.assert_allclose(vol.spacing, [0.7, 0.7, 1.0], atol=1e-4)
    # HU through CT_small's own rescale (intercept -1024); slices ordered by position
    assert sorted(np.unique(vol.array).tolist()) == [300 + k - 1024.0 for k in range(24)]
    assert vol.meta["series"] == {"uid": THIN, "description": "Thorax 1.0 B60f", "number": 3,
                                  "modality": "CT", "slices": 24, "thickness_mm": 1.0}
    said = [r.getMessage() for r in caplog.records if THIN in r.getMessage()]
    assert said and "3 DICOM series" in said[0] and "24 slices" in said[0]


def test_an_explicit_series_uid_reads_the_thick_reconstruction(tmp_path: Path) -> None:
    vol = ctio.read_volume(_study(tmp_path / "study"), series_uid=THICK)
    assert vol.array.shape == (8, 32, 32)
    np.testing.assert_allclose(vol.spacing[2], 5.0, atol=1e-4)
    assert vol.meta["series"]["uid"] == THICK
    # the Latin-1 description (ISO_IR 100) comes back as text any report can write
    assert vol.meta["series"]["description"] == "Thorax 5.0 Weichteil \u00e4"
    vol.meta["series"]["description"].encode("utf-8")


def test_a_series_uid_not_in_the_folder_is_refused_with_the_listing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no series 2.25.9") as e:
        ctio.read_volume(_study(tmp_path / "study"), series_uid="2.25.9")
    assert THIN in _one_line(e) and THICK in _one_line(e)


def test_a_folder_holding_only_a_localiser_is_refused_with_what_it_holds(
        tmp_path: Path) -> None:
    folder = _series(tmp_path / "scout", LOCALISER, 1, 5.0, number=1,
                     description="Topogram", localiser=True)
    with pytest.raises(DataError, match="no axial CT series") as e:
        ctio.read_volume(folder)
    line = _one_line(e)
    assert str(folder) in line
    assert f"{LOCALISER} (CT, 1 slice, 5 mm, localiser, 'Topogram')" in line


def test_a_folder_of_one_axial_slice_is_refused(tmp_path: Path) -> None:
    folder = _series(tmp_path / "one", THIN, 1, 1.0, number=3, description="key image")
    with pytest.raises(DataError, match="at least 3 slices") as e:
        ctio.read_volume(folder)
    assert f"{THIN} (CT, 1 slice, 1 mm" in _one_line(e)


def test_a_study_folder_with_no_ct_series_is_refused(tmp_path: Path) -> None:
    folder = _series(tmp_path / "mr", MR, 12, 3.0, number=4, description="T1 axial",
                     modality="MR")
    with pytest.raises(DataError, match="no CT series") as e:
        ctio.read_volume(folder)
    assert f"{MR} (MR, 12 slices, 3 mm" in _one_line(e)
    with pytest.raises(DataError, match="is MR, not CT"):  # not even when asked by uid
        ctio.read_volume(folder, series_uid=MR)


def test_a_coronal_reformat_is_not_taken_for_the_axial_scan(tmp_path: Path) -> None:
    study = _study(tmp_path / "study")
    _series(study, "2.25.1001.5", 40, 0.5, number=5, description="Cor MPR",
            orientation=CORONAL)
    assert ctio.read_volume(study).meta["series"]["uid"] == THIN


def test_equal_thickness_prefers_more_slices_then_the_lower_series_number(
        tmp_path: Path) -> None:
    study = _series(tmp_path / "study", THICK, 8, 2.0, number=7, description="short")
    _series(study, THIN, 12, 2.0, number=8, description="long", offset=100.0)
    found = ctio.find_dicom_series(study)
    assert ctio.choose_series(study, found).uid == THIN
    twin = [f if f.uid != THIN else ctio.DicomSeries(**{**f.__dict__, "slices": 8})
            for f in found]
    assert ctio.choose_series(study, twin).uid == THICK  # series 7 before series 8


def test_a_nested_study_folder_is_searched_recursively(tmp_path: Path) -> None:
    study = _study(tmp_path / "study", nested=True)
    assert not any(study.glob("*.dcm"))
    found = {s.uid: s for s in ctio.find_dicom_series(study)}
    assert set(found) == {LOCALISER, THICK, THIN}
    assert found[LOCALISER].is_localizer and not found[THIN].is_localizer
    vol = ctio.read_volume(study)
    assert vol.array.shape == (24, 32, 32)
    assert vol.meta["series"]["uid"] == THIN


def test_an_unreadable_dcm_anywhere_in_the_study_is_refused(tmp_path: Path) -> None:
    study = _study(tmp_path / "study", nested=True)
    bad = study / "DICOM" / "ST000" / "SE002" / "IM99.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"not a dataset")
    with pytest.raises(DataError, match="cannot be read as DICOM") as e:
        ctio.read_volume(study)
    assert "IM99.dcm" in _one_line(e)


def test_a_series_uid_with_a_volume_file_is_refused(tmp_path: Path) -> None:
    vol = ctio.read_volume(_study(tmp_path / "study"))
    path = ctio.write_volume(tmp_path / "scan.nii.gz", vol)
    with pytest.raises(DataError, match="not a DICOM folder"):
        ctio.read_volume(path, series_uid=THIN)


def test_the_infnet_config_picks_a_series_per_volume(tmp_path: Path) -> None:
    from lungfuse.plugins.imaging_infnet.plugin import InfNetConfig, InfNetModality

    study = _study(tmp_path / "study")
    cfg = InfNetConfig(volumes={"P1": study, "P2": study}, dicom_series={"P1": THICK})
    plugin = InfNetModality(cfg)
    assert plugin._read_volume("P1", study).meta["series"]["uid"] == THICK
    assert plugin._read_volume("P2", study).meta["series"]["uid"] == THIN
    # scoring a patient's own study folder keeps the configured choice for that patient
    own = plugin.scoring_config({"id": "P1", "ct": str(study)}, tmp_path / "work")
    assert own is not None and own.volumes == {"P1": study}
    assert own.dicom_series == {"P1": THICK}


def test_the_infnet_modality_scores_a_study_folder_as_its_thin_series(tmp_path: Path) -> None:
    """A patient's study folder (localiser, thick and thin reconstructions of one scan)
    gives the features of the thin series' own volume file; naming the thick series in
    ``dicom_series`` gives other features (the choice reaches the segmenter, and the
    in-process feature memo keeps the two apart)."""
    torch = pytest.importorskip("torch")
    import pandas as pd

    from lungfuse.core.contracts import ModalityContext
    from lungfuse.plugins.imaging_infnet import synthetic
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.plugin import InfNetConfig, InfNetModality

    ann = synthetic.write_tree(tmp_path / "ct", ["1.9.1"], seed=3, size=64, depth=16,
                               nodules_per_scan=(1, 1), write_masks=False)
    mhd = tmp_path / "ct" / "subset0" / "1.9.1.mhd"
    scan = ctio.read_volume(mhd)
    stored = np.rint(scan.array + 1024).astype(np.int16)
    (sx, _, sz), (ox, oy, oz) = scan.spacing, scan.origin
    study = tmp_path / "study"
    _series(study / "SE001", LOCALISER, 1, 5.0, number=1, description="Topogram",
            localiser=True)
    _write_series(study / "SE002", THICK, (stored[0::2] // 2 + stored[1::2] // 2), 2 * sz,
                  number=2, description="thick", origin=(ox, oy, oz + sz / 2), spacing=sx,
                  step=2 * sz)
    _write_series(study / "SE003", THIN, stored, sz, number=3, description="thin",
                  origin=(ox, oy, oz), spacing=sx, step=sz)
    read = ctio.read_volume(study)
    np.testing.assert_array_equal(read.array, scan.array)
    np.testing.assert_allclose(read.origin, scan.origin, atol=1e-4)

    torch.manual_seed(0)
    net = InfNet(backbone="test_resnet", channel=8)
    state = {"model": {"hparams": net.hparams_dict, "state_dict": net.state_dict(),
                       "slices": SliceSettings(img_size=32).model_dump(),
                       "training_patients": []}, "fit_patients": []}
    base = InfNetConfig(volumes={"1.9.1": mhd}, annotations=ann, series_column=None,
                        slices=SliceSettings(img_size=32), fast={"enabled": False},
                        embedding_dim=8)
    row = pd.read_csv(ann).iloc[0]
    entry = {"id": "NEW-1", "ct": study, "nodule": {"x": row.coordX, "y": row.coordY,
                                                    "z": row.coordZ,
                                                    "diameter_mm": row.diameter_mm}}
    ctx = ModalityContext(workdir=tmp_path / "work", progress=False)

    def features(cfg: InfNetConfig, pid: str) -> np.ndarray:
        plug = InfNetModality(cfg)
        plug.load_state_dict(state)
        return plug.transform(pd.DataFrame(index=pd.Index([pid], name="patient_id")),
                              ctx).to_numpy()

    want = features(base, "1.9.1")
    plug = InfNetModality(base)
    got = features(plug.scoring_config(entry, tmp_path / "s1"), "NEW-1")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    thick = InfNetModality(base.model_copy(update={"dicom_series": {"NEW-1": THICK}}))
    other = features(thick.scoring_config(entry, tmp_path / "s2"), "NEW-1")
    assert other.shape == want.shape and not np.allclose(other, want, atol=1e-3)

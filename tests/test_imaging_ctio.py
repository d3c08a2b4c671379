"""CT reading, geometry, annotation masks and bad input (imaging plugin)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sitk = pytest.importorskip("SimpleITK")

from lungfuse.core.errors import DataError  # noqa: E402
from lungfuse.plugins.imaging_infnet import ctio  # noqa: E402
from lungfuse.plugins.imaging_infnet.ctio import Volume  # noqa: E402


def _vol(shape=(12, 32, 40), spacing=(0.7, 0.8, 2.5), origin=(-50.0, 20.0, -300.0),
         direction=np.eye(3), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 400, size=shape).astype(np.float32)
    return Volume(arr, np.array(origin), np.array(spacing), np.asarray(direction, float))


def _rot(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


@pytest.mark.parametrize("suffix", [".mhd", ".nii.gz", ".nrrd"])
def test_volume_formats_round_trip_with_geometry(tmp_path: Path, suffix: str) -> None:
    v = _vol(direction=_rot(30) if suffix != ".nii.gz" else np.eye(3))
    p = ctio.write_volume(tmp_path / f"scan{suffix}", v, dtype=np.int16)
    r = ctio.read_volume(p)
    assert r.array.shape == v.array.shape and r.array.dtype == np.float32
    np.testing.assert_array_equal(r.array, v.array)
    np.testing.assert_allclose(r.spacing, v.spacing, atol=1e-5)
    np.testing.assert_allclose(r.origin, v.origin, atol=1e-4)
    np.testing.assert_allclose(r.direction, v.direction, atol=1e-5)


def test_dicom_series_folder_gives_hu_through_rescale(tmp_path: Path) -> None:
    hu = np.array([[-1000, -500], [0, 398]], np.int16)
    folder = tmp_path / "series"
    folder.mkdir()
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for z in range(3):
        sl = sitk.GetImageFromArray(np.tile(hu + z * 2, (4, 4)))
        sl.SetSpacing((0.8, 0.8))
        for k, val in [("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                       ("0020|0032", f"-10\\-20\\{z * 2.5}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                       ("0028|1052", "-1024"), ("0028|1053", "2"), ("0020|0013", str(z + 1)),
                       ("0008|0018", f"1.2.3.4.{z}")]:
            sl.SetMetaData(k, val)
        w.SetFileName(str(folder / f"s{z}.dcm"))
        w.Execute(sl)
    one = sitk.ImageFileReader()
    one.SetFileName(str(folder / "s0.dcm"))
    one.ReadImageInformation()
    assert one.GetMetaData("0028|1053").strip() == "2"  # stored values are rescaled
    v = ctio.read_volume(folder)
    assert v.array.shape == (3, 8, 8)
    np.testing.assert_allclose(v.array[:, :2, :2], np.stack([hu + 2 * z for z in range(3)]),
                               atol=1)  # slope 2 quantises to even HU
    np.testing.assert_allclose(v.spacing, [0.8, 0.8, 2.5], atol=1e-4)
    assert ctio.find_volumes(tmp_path) == {"series": folder}


def test_world_index_round_trip_with_rotated_direction() -> None:
    v = _vol(direction=_rot(35))
    img = ctio.to_sitk(v)
    idx = np.array([[3.0, 7.5, 2.0], [0, 0, 0], [39, 31, 11]])
    world = v.index_to_world(idx)
    for i, w in zip(idx, world, strict=True):
        np.testing.assert_allclose(w, img.TransformContinuousIndexToPhysicalPoint(i.tolist()),
                                   atol=1e-6)
    np.testing.assert_allclose(v.world_to_index(world), idx, atol=1e-9)
    # with a rotation, moving along index x moves world x and y
    d = v.index_to_world([1, 0, 0]) - v.index_to_world([0, 0, 0])
    assert abs(d[1]) > 0.1


def test_annotation_mask_radius_is_half_the_diameter_in_mm() -> None:
    v = _vol(shape=(30, 80, 80), spacing=(0.6, 0.6, 1.25), origin=(0.0, 0.0, 0.0))
    c, d = (24.0, 24.0, 18.0), 10.0
    m = ctio.nodule_mask(v, [(*c, d)])
    vol_mm3 = (m == 1).sum() * np.prod(v.spacing)
    assert vol_mm3 == pytest.approx(4 / 3 * np.pi * (d / 2) ** 3, rel=0.1)
    ci = np.round(v.world_to_index(c)).astype(int)
    assert m[ci[2], ci[1], ci[0]] == 1
    # 7 mm from the centre along x: inside a radius-diameter ball, outside the correct one
    off = np.round(v.world_to_index((c[0] + 7.0, c[1], c[2]))).astype(int)
    assert m[off[2], off[1], off[0]] == 0
    # extent along z in slices matches the mm radius on this spacing
    zs = np.nonzero((m == 1).any((1, 2)))[0]
    assert (zs.max() - zs.min() + 1) * 1.25 == pytest.approx(d, abs=2 * 1.25)


def test_labels_follow_row_order_and_hu_refinement_keeps_dense_voxels() -> None:
    v = _vol(shape=(20, 60, 60), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    v.array[:] = -850.0
    zz, yy, xx = np.mgrid[0:20, 0:60, 0:60]
    core = (xx - 20) ** 2 + (yy - 20) ** 2 + (zz - 10) ** 2 <= 9  # radius-3 dense core
    v.array[core] = 40.0
    rows = [(20.0, 20.0, 10.0, 12.0), (45.0, 45.0, 10.0, 6.0)]
    m = ctio.nodule_mask(v, rows)
    assert set(np.unique(m)) == {0, 1, 2}
    assert (m == 1).sum() > core.sum()
    r = ctio.nodule_mask(v, rows, refine_hu=-400)
    assert ((r == 1) == core).all()  # refined to the dense voxels connected to the centre
    assert (r == 2).sum() == (m == 2).sum()  # nothing dense: the ball is kept


def test_ground_truth_mask_file_is_used_where_given(tmp_path: Path) -> None:
    v = _vol(shape=(10, 30, 30), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    ctio.write_volume(tmp_path / "ct" / "u1.mhd", v, dtype=np.int16)
    gt = np.zeros(v.array.shape, np.uint8)
    gt[4:6, 10:14, 10:14] = 1  # a box, not a ball
    ctio.write_volume(tmp_path / "masks" / "u1.mhd", v.like(gt))
    ann = pd.DataFrame({"seriesuid": ["u1"], "coordX": [12.0], "coordY": [12.0],
                        "coordZ": [5.0], "diameter_mm": [6.0]})
    case = ctio.load_case("u1", tmp_path / "ct" / "u1.mhd", ann, tmp_path / "masks")
    assert (case.labels == gt).all()
    case2 = ctio.load_case("u1", tmp_path / "ct" / "u1.mhd", ann, None)
    assert (case2.labels != gt).any()


# ------------------------------------------------------------------------------ bad input
@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    for i in range(3):
        ctio.write_volume(tmp_path / "subset0" / f"s{i}.mhd", _vol(seed=i), dtype=np.int16)
    return tmp_path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_truncated_raw_is_one_clear_line(scans: Path) -> None:
    raw = scans / "subset0" / "s1.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated") as e:
        ctio.read_volume(scans / "subset0" / "s1.mhd")
    assert "s1.raw" in _one_line(e)


def test_header_pointing_at_missing_file(scans: Path) -> None:
    (scans / "subset0" / "s2.raw").unlink()
    with pytest.raises(DataError, match="does not exist") as e:
        ctio.read_volume(scans / "subset0" / "s2.mhd")
    assert "s2.raw" in _one_line(e)


def test_2d_image_given_as_volume(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.zeros((16, 16), np.int16))
    sitk.WriteImage(img, str(tmp_path / "slice.mhd"))
    sitk.WriteImage(img, str(tmp_path / "slice.nrrd"))
    for name in ("slice.mhd", "slice.nrrd"):
        with pytest.raises(DataError, match="2D image") as e:
            ctio.read_volume(tmp_path / name)
        _one_line(e)


def test_centre_outside_the_volume(scans: Path) -> None:
    v = ctio.read_volume(scans / "subset0" / "s0.mhd")
    far = v.index_to_world([200, 5, 5])
    with pytest.raises(DataError, match="outside the volume") as e:
        ctio.nodule_mask(v, [(*far, 6.0)], uid="s0")
    assert "s0" in _one_line(e)


def test_annotation_for_series_without_volume_is_reported_and_dropped(
        scans: Path, caplog: pytest.LogCaptureFixture) -> None:
    ann = pd.DataFrame({"seriesuid": ["s0", "ghost"], "coordX": [0.0, 0.0],
                        "coordY": [0.0, 0.0], "coordZ": [0.0, 0.0], "diameter_mm": [5.0, 5.0]})
    with caplog.at_level(logging.WARNING, logger="lungfuse.imaging"):
        kept = ctio.check_annotations(ann, ctio.find_volumes(scans))
    assert list(kept["seriesuid"]) == ["s0"]
    assert any("ghost" in r.getMessage() and "no CT volume" in r.getMessage()
               for r in caplog.records)


def test_batch_reports_and_skips_the_bad_scan(scans: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    raw = scans / "subset0" / "s1.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    v0 = ctio.read_volume(scans / "subset0" / "s0.mhd")
    centre = v0.index_to_world([20, 16, 6])
    outside = v0.index_to_world([20, 16, 60])
    ann = pd.DataFrame({"seriesuid": ["s0", "s2"], "coordX": [centre[0], outside[0]],
                        "coordY": [centre[1], outside[1]], "coordZ": [centre[2], outside[2]],
                        "diameter_mm": [6.0, 6.0]})
    with caplog.at_level(logging.WARNING, logger="lungfuse.imaging"):
        cases = ctio.load_cases(sorted(ctio.find_volumes(scans).items()), ann)
    assert [c.uid for c in cases] == ["s0"]
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "s1" in text and "truncated" in text
    assert "s2" in text and "outside the volume" in text
    assert cases[0].labels.max() == 1


def test_missing_annotation_columns(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("seriesuid,x,y\n1,2,3\n")
    with pytest.raises(DataError, match="coordX"):
        ctio.read_annotations(p)

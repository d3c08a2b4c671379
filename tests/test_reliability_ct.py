"""CT input is checked, not trusted (issue 11, case 2), and property tests of the CT readers.

Each case writes the malformed input it is about and asserts one clear ``DataError`` that
names the file; where the input must not be followed at all (a data file outside the
header's folder, a huge declared size), SimpleITK is replaced by a tripwire so the test
also proves that nothing was read or allocated. The Hypothesis tests write random malformed
MetaImage, NIfTI and DICOM inputs and assert a correct read or a ``LungfuseError``, never
anything else.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lungfuse.core.errors import ConfigError, DataError, LungfuseError  # noqa: E402
from lungfuse.plugins.imaging_infnet import ctio  # noqa: E402

DTYPES = {"MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_SHORT": np.int16,
          "MET_USHORT": np.uint16, "MET_INT": np.int32, "MET_FLOAT": np.float32,
          "MET_DOUBLE": np.float64}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip()
    return msg


def _header(fields: dict[str, str], data_file: str) -> str:
    return "".join(f"{k} = {v}\n" for k, v in fields.items()) + f"ElementDataFile = {data_file}\n"


def _fields(dims: tuple[int, ...], etype: str = "MET_SHORT", **extra: str) -> dict[str, str]:
    return {"ObjectType": "Image", "NDims": str(len(dims)), "BinaryData": "True",
            "BinaryDataByteOrderMSB": "False", "CompressedData": "False",
            "ElementSpacing": " ".join(["0.7"] * len(dims)),
            "DimSize": " ".join(map(str, dims)), "ElementType": etype, **extra}


def _write_mhd(folder: Path, arr: np.ndarray, etype: str = "MET_SHORT", name: str = "scan",
               data_file: str | None = None, **extra: str) -> Path:
    """``arr`` (z, y, x) written as ``name.mhd`` + ``name.raw`` (or where ``data_file``
    says, relative to the header), little-endian, by hand rather than by SimpleITK."""
    folder.mkdir(parents=True, exist_ok=True)
    data_file = data_file or f"{name}.raw"
    target = folder / data_file if not Path(data_file).is_absolute() else Path(data_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(arr.astype(DTYPES[etype]).tobytes())
    hdr = folder / f"{name}.mhd"
    hdr.write_text(_header(_fields(arr.shape[::-1], etype, **extra), data_file), encoding="utf-8")
    return hdr


def _scan(shape: tuple[int, int, int] = (3, 5, 4), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, size=shape).astype(np.int16)


@pytest.fixture()
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimpleITK readers that fail the test if anything reaches them."""
    def touched(*_a: object, **_k: object) -> None:
        raise AssertionError("SimpleITK was given input that should have been refused")

    for name in ("ImageFileReader", "ReadImage", "ImageSeriesReader"):
        monkeypatch.setattr(sitk, name, touched)


# ------------------------------------------------------------------ data file outside the folder
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_data_file_outside_the_header_folder_is_refused_unread(tmp_path: Path, how: str,
                                                               tripwire: None) -> None:
    arr = _scan()
    secret = tmp_path / "private" / "secret.raw"  # readable voxels: the old code scored them
    secret.parent.mkdir()
    secret.write_bytes(arr.tobytes())
    folder = tmp_path / "shared" / "subset0"
    if how == "symlink":
        folder.mkdir(parents=True)
        (folder / "link.raw").symlink_to(secret)
    value = {"dotdot": "../../private/secret.raw", "absolute": str(secret),
             "symlink": "link.raw"}[how]
    hdr = folder / "scan.mhd"
    folder.mkdir(parents=True, exist_ok=True)
    hdr.write_text(_header(_fields(arr.shape[::-1]), value), encoding="utf-8")
    with pytest.raises(DataError, match="outside the header's folder|absolute path") as e:
        ctio.read_volume(hdr)
    assert str(hdr) in _one_line(e)


def test_data_file_below_the_header_folder_and_inline_data_are_read(tmp_path: Path) -> None:
    arr = _scan(seed=1)
    hdr = _write_mhd(tmp_path, arr, data_file="voxels/scan.raw")
    np.testing.assert_array_equal(ctio.read_volume(hdr).array, arr)
    # LOCAL: the voxels follow the header in the same file (.mha as SimpleITK writes it,
    # and an .mhd written by hand)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "inline.mha"))
    np.testing.assert_array_equal(ctio.read_volume(tmp_path / "inline.mha").array, arr)
    local = tmp_path / "local.mhd"
    local.write_bytes(_header(_fields(arr.shape[::-1]), "LOCAL").encode() + arr.tobytes())
    np.testing.assert_array_equal(ctio.read_volume(local).array, arr)


@pytest.mark.parametrize("value", ["LIST 2D", "slice%03d.raw 1 3 1"])
def test_lists_and_patterns_of_data_files_are_refused(tmp_path: Path, value: str,
                                                      tripwire: None) -> None:
    hdr = tmp_path / "scan.mhd"
    hdr.write_text(_header(_fields((4, 5, 3)), value) + "../../etc/passwd\n", encoding="utf-8")
    with pytest.raises(DataError, match="list or pattern") as e:
        ctio.read_volume(hdr)
    assert str(hdr) in _one_line(e)


def test_nrrd_detached_data_outside_the_folder_is_refused(tmp_path: Path, tripwire: None) -> None:
    (tmp_path / "private.raw").write_bytes(_scan().tobytes())
    hdr = tmp_path / "ct" / "scan.nhdr"
    hdr.parent.mkdir()
    hdr.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 5 3\nendian: little\n"
                   "encoding: raw\ndata file: ../private.raw\n", encoding="utf-8")
    with pytest.raises(DataError, match="outside the header's folder") as e:
        ctio.read_volume(hdr)
    assert str(hdr) in _one_line(e)


# ------------------------------------------------------------------------- declared sizes
def test_compressed_header_declaring_1e12_voxels_is_refused_without_allocating(
        tmp_path: Path, tripwire: None) -> None:
    (tmp_path / "huge.zraw").write_bytes(zlib.compress(b"\0" * 1000))
    hdr = tmp_path / "huge.mhd"
    hdr.write_text(_header(_fields((10**4, 10**4, 10**4), CompressedData="True"), "huge.zraw"),
                   encoding="utf-8")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="above the limit") as e:
        ctio.read_volume(hdr)
    assert time.perf_counter() - t0 < 1.0
    assert str(hdr) in _one_line(e) and "1,000,000,000,000 voxels" in str(e.value)


def test_compressed_size_beyond_what_the_file_can_hold_is_refused(tmp_path: Path,
                                                                   tripwire: None) -> None:
    z = zlib.compress(b"\0" * 1000)
    (tmp_path / "s.zraw").write_bytes(z)
    hdr = tmp_path / "s.mhd"
    # 2**30 voxels are within the limit, but 2 GiB cannot inflate from a few bytes
    hdr.write_text(_header(_fields((1024, 1024, 1024), CompressedData="True"), "s.zraw"),
                   encoding="utf-8")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="cannot inflate"):
        ctio.read_volume(hdr)
    assert time.perf_counter() - t0 < 1.0
    # a CompressedDataSize larger than the file (MetaIO would allocate it first)
    hdr.write_text(_header(_fields((10, 10, 10), CompressedData="True",
                                   CompressedDataSize=str(10**12)), "s.zraw"), encoding="utf-8")
    with pytest.raises(DataError, match="CompressedDataSize") as e:
        ctio.read_volume(hdr)
    _one_line(e)


def test_truncated_compressed_data_is_an_error_not_zeros(tmp_path: Path) -> None:
    arr = _scan((4, 30, 40), seed=2)
    z = zlib.compress(arr.tobytes())
    (tmp_path / "s.zraw").write_bytes(z[: len(z) // 2])  # SimpleITK pads this with zeros
    hdr = tmp_path / "s.mhd"
    hdr.write_text(_header(_fields((40, 30, 4), CompressedData="True"), "s.zraw"),
                   encoding="utf-8")
    with pytest.raises(DataError, match="truncated") as e:
        ctio.read_volume(hdr)
    assert "s.zraw" in _one_line(e)
    (tmp_path / "s.zraw").write_bytes(z)
    np.testing.assert_array_equal(ctio.read_volume(hdr).array, arr)


def test_uchar_header_over_short_data_is_a_type_size_mismatch(tmp_path: Path) -> None:
    arr = _scan()
    hdr = _write_mhd(tmp_path, arr, "MET_SHORT")
    hdr.write_text(hdr.read_text(encoding="utf-8").replace("MET_SHORT", "MET_UCHAR"),
                   encoding="utf-8")
    with pytest.raises(DataError, match="type/size mismatch") as e:
        ctio.read_volume(hdr)
    msg = _one_line(e)
    assert str(hdr) in msg and "2 bytes per voxel" in msg


def test_voxel_limit_applies_to_nifti_and_dicom_headers_before_pixels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(_scan((20, 20, 20))), str(tmp_path / "v.nii.gz"))
    folder = _dicom_series(tmp_path / "series", range(4), size=16)  # 1,024 voxels
    monkeypatch.setenv(ctio.MAX_VOXELS_ENV, "1000")
    for src in (tmp_path / "v.nii.gz", folder):
        with pytest.raises(DataError, match="above the limit of 1,000") as e:
            ctio.read_volume(src)
        assert str(src) in _one_line(e)
    monkeypatch.setenv(ctio.MAX_VOXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=ctio.MAX_VOXELS_ENV):
        ctio.read_volume(folder)


def test_nifti_header_declaring_a_huge_volume_is_refused_quickly(tmp_path: Path) -> None:
    p = tmp_path / "v.nii"
    sitk.WriteImage(sitk.GetImageFromArray(_scan((3, 4, 5))), str(p))
    raw = bytearray(p.read_bytes())
    raw[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()  # dim[1..3]
    p.write_bytes(bytes(raw))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="above the limit") as e:
        ctio.read_volume(p)
    assert time.perf_counter() - t0 < 1.0
    assert str(p) in _one_line(e)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti_is_an_error_not_zeros(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"v{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_scan((4, 30, 40), seed=3)), str(p), False)
    p.write_bytes(p.read_bytes()[:-200])  # SimpleITK reads this with zeros at the end
    with pytest.raises(DataError, match="truncated") as e:
        ctio.read_volume(p)
    assert str(p) in _one_line(e)


# ------------------------------------------------------------------------- voxels and shape
def test_nan_or_infinite_voxels_are_an_error(tmp_path: Path) -> None:
    arr = _scan().astype(np.float32)
    arr[1, 2, 3] = np.nan
    hdr = _write_mhd(tmp_path, arr, "MET_FLOAT")
    with pytest.raises(DataError, match="NaN or infinite") as e:
        ctio.read_volume(hdr)
    msg = _one_line(e)
    assert str(hdr) in msg and "x=3, y=2, z=1" in msg
    arr[1, 2, 3] = 0.0
    arr[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "inf.nii.gz"))
    with pytest.raises(DataError, match="NaN or infinite"):
        ctio.read_volume(tmp_path / "inf.nii.gz")
    big = _scan().astype(np.float64)
    big[0, 0, 0] = 1e300  # finite as float64, infinite as the float32 the models get
    with pytest.raises(DataError, match="NaN or infinite"):
        ctio.read_volume(_write_mhd(tmp_path, big, "MET_DOUBLE", name="big"))


@pytest.mark.parametrize("name", ["slice.mhd", "slice.nii.gz", "slice.nrrd", "four.nii.gz"])
def test_an_image_that_is_not_3d_is_an_error(tmp_path: Path, name: str) -> None:
    shape = (2, 3, 4, 5) if name.startswith("four") else (16, 16)
    img = sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False)
    sitk.WriteImage(img, str(tmp_path / name))
    with pytest.raises(DataError, match="a CT volume must be 3-D") as e:
        ctio.read_volume(tmp_path / name)
    assert str(tmp_path / name) in _one_line(e)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("ElementSpacing", "0.7 0 0.7", "positive spacings"),
    ("TransformMatrix", "0 0 0 0 0 0 0 0 0", "not invertible"),
    ("ElementNumberOfChannels", "3", "3 components per voxel"),
    ("BinaryData", "False", "written as text"),
    ("DimSize", "4 -5 3", "positive sizes"),
    ("BinaryDataByteOrderMSB", "True", "big-endian"),
    ("ElementType", "MET_FLOAT_ARRAY", "one number per voxel"),
    ("Offset", "0 nan 0", "finite number")])
def test_bad_header_fields_are_refused_before_simpleitk(tmp_path: Path, key: str, value: str,
                                                        says: str, tripwire: None) -> None:
    hdr = tmp_path / "scan.mhd"
    (tmp_path / "scan.raw").write_bytes(_scan().tobytes())
    hdr.write_text(_header(_fields((4, 5, 3), **{key: value}), "scan.raw"), encoding="utf-8")
    with pytest.raises(DataError, match=says) as e:
        ctio.read_volume(hdr)
    assert str(hdr) in _one_line(e)


# -------------------------------------------------------------------------------- DICOM
def _dicom_series(folder: Path, zs: object, size: int = 8) -> Path:
    """Slices at z = 2.5 mm x k for k in ``zs``, one series, HU = stored - 1024."""
    folder.mkdir(parents=True, exist_ok=True)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for i, z in enumerate(zs):  # type: ignore[call-overload]
        sl = sitk.GetImageFromArray(np.full((size, size), 1000 + z, np.int16))
        for k, val in [("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                       ("0020|0032", f"0\\0\\{z * 2.5}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                       ("0028|1052", "-1024"), ("0028|1053", "1"), ("0020|0013", str(i + 1)),
                       ("0008|0018", f"1.2.3.4.{z}")]:
            sl.SetMetaData(k, val)
        w.SetFileName(str(folder / f"s{z:03d}.dcm"))
        w.Execute(sl)
    return folder


def test_dicom_folder_with_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    folder = _dicom_series(tmp_path / "series", range(4))
    assert ctio.read_volume(folder).array.shape == (4, 8, 8)
    (folder / "s099.dcm").write_bytes(os.urandom(600))
    with pytest.raises(DataError, match="cannot be read as DICOM") as e:
        ctio.read_volume(folder)
    assert "s099.dcm" in _one_line(e)


@pytest.mark.parametrize("zs", [[0, 1, 3, 4], [0, 1, 2, 2, 3]], ids=["missing", "repeated"])
def test_dicom_slices_not_evenly_spaced_are_an_error(tmp_path: Path, zs: list[int]) -> None:
    folder = _dicom_series(tmp_path / "series", zs)
    if len(set(zs)) < len(zs):  # a second file at an existing position
        w = sitk.ImageFileReader()
        w.SetFileName(str(folder / "s002.dcm"))
        img = w.Execute()
        img.SetMetaData("0008|0018", "1.2.3.4.99")
        wr = sitk.ImageFileWriter()
        wr.KeepOriginalImageUIDOn()
        wr.SetFileName(str(folder / "s002b.dcm"))
        wr.Execute(img)
    with pytest.raises(DataError, match="not evenly spaced") as e:
        ctio.read_volume(folder)
    assert str(folder) in _one_line(e)


def test_dicom_slices_of_different_sizes_are_an_error(tmp_path: Path) -> None:
    folder = _dicom_series(tmp_path / "series", range(3))
    _dicom_series(tmp_path / "other", [3], size=6)
    os.replace(tmp_path / "other" / "s003.dcm", folder / "s003.dcm")
    with pytest.raises(DataError, match="differ in size") as e:
        ctio.read_volume(folder)
    _one_line(e)


# ------------------------------------------------------------------- Hypothesis properties
@contextlib.contextmanager
def _scratch(limit: int = 10**6) -> Iterator[Path]:
    """A fresh folder per example and a small voxel limit, so no example can allocate much."""
    old = os.environ.get(ctio.MAX_VOXELS_ENV)
    os.environ[ctio.MAX_VOXELS_ENV] = str(limit)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
    finally:
        if old is None:
            os.environ.pop(ctio.MAX_VOXELS_ENV, None)
        else:
            os.environ[ctio.MAX_VOXELS_ENV] = old


def _outcome(path: Path) -> ctio.Volume | LungfuseError:
    """The reader's answer; anything but a Volume or a one-line LungfuseError fails."""
    try:
        vol = ctio.read_volume(path)
    except LungfuseError as exc:
        assert "\n" not in str(exc) and str(exc).strip()
        return exc
    assert vol.array.dtype == np.float32 and vol.array.ndim == 3 and vol.array.shape[0] >= 2
    assert np.isfinite(vol.array).all()
    return vol


_ETYPES = st.sampled_from([*DTYPES, "MET_LONG", "MET_RGB", ""])
_DATA_FILES = st.sampled_from(["scan.raw", "sub/scan.raw", "../scan.raw", "/tmp/scan.raw",
                               "missing.raw", "LOCAL", "LIST", "scan%d.raw", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims=st.lists(st.integers(-1, 4), min_size=2, max_size=4), etype=_ETYPES,
       data_file=_DATA_FILES, compressed=st.booleans(), size_delta=st.integers(-3, 3),
       drop=st.sampled_from(["", "NDims", "DimSize", "ElementType", "BinaryData"]),
       extra=st.sampled_from(["", "HeaderSize = -1", "NDims = 3",
                              "ElementNumberOfChannels = 2", "Offset = nan 0 0", "garbage",
                              "CompressedDataSize = 5", "Position = 1 2 3"]),
       seed=st.integers(0, 2**16))
def test_property_structured_mhd_reads_correctly_or_raises(
        dims: list[int], etype: str, data_file: str, compressed: bool, size_delta: int,
        drop: str, extra: str, seed: int) -> None:
    """Headers built from random (often wrong) parts: the reader returns exactly the voxels
    a well-formed header describes, and refuses the rest with a LungfuseError."""
    with _scratch() as tmp:
        ct = tmp / "ct"
        ct.mkdir()
        dtype = DTYPES.get(etype, np.int16)
        n = int(np.prod([max(d, 0) for d in dims]))
        arr = np.random.default_rng(seed).integers(-100, 100, size=n).astype(dtype)
        payload = arr.tobytes()
        payload = payload[:max(len(payload) + size_delta, 0)] if size_delta < 0 else \
            payload + bytes(size_delta)
        if compressed:
            payload = zlib.compress(payload)
        fields = _fields(tuple(dims), etype, CompressedData=str(compressed))
        fields.pop(drop, None)
        text = _header(fields, data_file)
        if extra:
            text = extra + "\n" + text
        hdr = ct / "scan.mhd"
        if data_file == "LOCAL":
            hdr.write_bytes(text.encode() + payload)
        else:
            hdr.write_text(text, encoding="utf-8")
            for name in ("scan.raw", "sub/scan.raw", "scan.raw%d"):
                (ct / name).parent.mkdir(exist_ok=True)
                (ct / name).write_bytes(payload)
            (tmp / "scan.raw").write_bytes(payload)  # what "../scan.raw" would reach
        # the oracle: what a well-formed header reads as, by the MetaImage rules
        from_end = extra == "HeaderSize = -1" and not compressed and size_delta >= 0
        parts_ok = (len(dims) == 3 and min(dims) >= 1 and dims[2] >= 2 and etype in DTYPES
                    and data_file in ("scan.raw", "sub/scan.raw", "LOCAL"))
        drop_ok = drop in ("", "BinaryData") or (drop == "NDims" and extra == "NDims = 3")
        extra_ok = (extra in ("", "Position = 1 2 3") or from_end
                    or (extra == "NDims = 3" and drop == "NDims")
                    or (extra == "CompressedDataSize = 5" and not compressed))
        well_formed = parts_ok and drop_ok and extra_ok and (size_delta == 0 or from_end)
        got = _outcome(hdr)
        if well_formed:
            assert isinstance(got, ctio.Volume), got
            raw = arr.tobytes() + bytes(max(size_delta, 0))
            want = np.frombuffer(raw[len(raw) - arr.nbytes:], dtype)  # HeaderSize -1: the tail
            np.testing.assert_array_equal(got.array, want.reshape(dims[::-1]).astype(np.float32))
        else:
            assert isinstance(got, LungfuseError), f"read a malformed header: {text!r}"


_VALID_MHD = _header(_fields((4, 3, 2)), "scan.raw").encode()


@settings(max_examples=80, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, len(_VALID_MHD)), st.integers(0, 4),
                                st.binary(max_size=6)), max_size=4),
       data=st.binary(max_size=64))
def test_property_byte_fuzzed_mhd_never_escapes_as_a_traceback(
        edits: list[tuple[int, int, bytes]], data: bytes) -> None:
    """Random byte edits of a good header (and random voxel bytes): a sane volume or one
    LungfuseError, never another exception, a hang or a large allocation."""
    text = bytearray(_VALID_MHD)
    for at, cut, new in edits:
        text[at:at + cut] = new
    with _scratch() as tmp:
        (tmp / "scan.raw").write_bytes(data)
        (tmp / "scan.mhd").write_bytes(bytes(text))
        got = _outcome(tmp / "scan.mhd")
        if isinstance(got, ctio.Volume):
            assert got.array.size <= len(data) + len(text)  # voxels from the bytes we wrote


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(2, 4), st.integers(1, 5), st.integers(1, 5)),
       dtype=st.sampled_from([np.int16, np.uint8, np.float32]), packed=st.booleans(),
       cut=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_property_truncated_nifti_reads_correctly_or_raises(
        shape: tuple[int, int, int], dtype: type, packed: bool, cut: float, seed: int) -> None:
    """A NIfTI cut anywhere: the whole file reads exactly, any shorter one is refused."""
    arr = np.random.default_rng(seed).integers(-50, 50, size=shape).astype(dtype)
    with _scratch() as tmp:
        p = tmp / "v.nii"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(p), False)
        raw = p.read_bytes()
        keep = raw[: int(len(raw) * cut)] if cut < 1.0 else raw
        out = tmp / ("v.nii.gz" if packed else "v.nii")
        out.write_bytes(gzip.compress(keep) if packed else keep)
        got = _outcome(out)
        if len(keep) == len(raw):
            assert isinstance(got, ctio.Volume), got
            np.testing.assert_array_equal(got.array, arr.astype(np.float32))
        else:
            assert isinstance(got, LungfuseError)


_HUGE_VOX_OFFSET = (108, 4, np.array([1e30], "<f4").tobytes())


@settings(max_examples=40, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 4), st.binary(max_size=4)),
                      min_size=1, max_size=4), packed=st.booleans())
@example(edits=[_HUGE_VOX_OFFSET], packed=False)
@example(edits=[_HUGE_VOX_OFFSET], packed=True)
def test_property_corrupt_nifti_header_never_escapes_as_a_traceback(
        edits: list[tuple[int, int, bytes]], packed: bool) -> None:
    """Random byte edits in a NIfTI header: a sane volume or one LungfuseError."""
    with _scratch() as tmp:
        p = tmp / "v.nii"
        sitk.WriteImage(sitk.GetImageFromArray(_scan((3, 4, 5)).astype(np.float32)), str(p))
        raw = bytearray(p.read_bytes())
        for at, cut, new in edits:
            raw[at:at + cut] = new
        out = tmp / ("v.nii.gz" if packed else "v.nii")
        out.write_bytes(gzip.compress(bytes(raw)) if packed else bytes(raw))
        _outcome(out)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(junk=st.binary(min_size=0, max_size=400), preamble=st.booleans(), in_series=st.booleans())
def test_property_random_bytes_as_dicom_are_refused(junk: bytes, preamble: bool,
                                                    in_series: bool) -> None:
    """Random bytes named ``.dcm`` (alone, or among good slices): always a LungfuseError."""
    with _scratch() as tmp:
        folder = _dicom_series(tmp / "series", range(3)) if in_series else tmp / "series"
        folder.mkdir(exist_ok=True)
        (folder / "zz.dcm").write_bytes((b"\0" * 128 + b"DICM" if preamble else b"") + junk)
        assert isinstance(_outcome(folder), LungfuseError)

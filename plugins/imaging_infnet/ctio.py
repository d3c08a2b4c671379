"""CT reading and geometry (SimpleITK), and nodule masks from LUNA16 annotations.

Geometry: a voxel with continuous index ``i = (i_x, i_y, i_z)`` lies at world position

    p = o + D · diag(s) · i

(``o`` origin, ``s`` spacing, ``D`` the 3x3 direction cosines, all in x,y,z order, mm),
hence ``i = diag(s)^-1 · D^-1 · (p - o)``. Arrays are held z,y,x as SimpleITK returns them.

Input is checked, not trusted (``read_volume``): a header may only name data files beside
or below its own folder; sizes are checked against the header's declared grid and against
a voxel limit (``MAX_VOXELS``, or ``$LUNGFUSE_CT_MAX_VOXELS``) before anything is read or
allocated; data shorter or longer than declared, DICOM series with unreadable files or
uneven slices, images that are not 3-D, and NaN/inf voxels are one-line ``DataError``s.

DICOM study folders (as they come off the scanner: localiser, thin and thick
reconstructions, contrast phases, in nested folders) are searched recursively for series
(:func:`find_dicom_series`, headers only) and one is read (:func:`choose_series`): an
explicit ``SeriesInstanceUID`` when given; otherwise drop series that are not CT, are
localisers (ImageType LOCALIZER) or have fewer than ``MIN_SERIES_SLICES`` slices, keep the
axial ones (slice normal within ``AXIAL_TOLERANCE_DEG`` of z), and take the thinnest
SliceThickness, then the most slices, then the lowest SeriesNumber. A folder with no CT
series, or none left, is refused with one line listing what it holds; the series read is
logged and kept in ``Volume.meta['series']``. See docs/ct.md.

Nodule masks: a LUNA16 row (centre in world mm, ``diameter_mm``) becomes the set of voxels
whose world position is within ``diameter_mm / 2`` of the centre, an ellipsoid in index
space on the scan's own spacing (radius = diameter/2, not diameter). Optionally refined:
voxels above ``hu_threshold`` connected to the centre, within the sphere grown by a margin.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungfuse.core.errors import ConfigError, DataError

log = logging.getLogger("lungfuse.imaging")

VOLUME_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")
#: bytes per voxel of each MetaImage ElementType (MetaIO's MET_LONG is 32-bit)
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


@dataclass
class Volume:
    """A CT volume in HU with its geometry.

    ``array`` is ``(z, y, x)`` float32; ``origin``, ``spacing`` are x,y,z (mm); ``direction``
    is the 3x3 direction-cosine matrix (columns are the index axes in world space).
    """

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return x, y, z

    def world_to_index(self, world: Sequence[float] | np.ndarray) -> np.ndarray:
        """World mm (x,y,z; or (n,3)) -> continuous voxel index (x,y,z)."""
        p = np.asarray(world, dtype=float)
        rel = p - self.origin
        idx = np.linalg.solve(self.direction, rel.T).T / self.spacing
        return idx

    def index_to_world(self, index: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous voxel index (x,y,z; or (n,3)) -> world mm (x,y,z)."""
        i = np.asarray(index, dtype=float)
        return self.origin + (self.direction @ (i * self.spacing).T).T

    def contains_index(self, index: Sequence[float]) -> bool:
        i = np.asarray(index, dtype=float)
        return bool(np.all(i >= -0.5) and np.all(i <= np.asarray(self.shape_xyz) - 0.5))

    def like(self, array: np.ndarray) -> Volume:
        """Same geometry, other voxels."""
        return Volume(array, self.origin.copy(), self.spacing.copy(), self.direction.copy(),
                      self.path)


# ---------------------------------------------------------------------------------- reading
#: The largest CT accepted, in voxels (2**31 voxels are 8 GiB as float32). A header that
#: declares more is refused before any voxel is read or allocated; the environment
#: variable ``LUNGFUSE_CT_MAX_VOXELS`` sets another limit (see :func:`max_voxels`).
MAX_VOXELS = 2**31
MAX_VOXELS_ENV = "LUNGFUSE_CT_MAX_VOXELS"
_HEADER_MAX_BYTES = 64 * 1024  # a MetaImage/NRRD text header longer than this is refused
_ZLIB_MAX_RATIO = 1032  # deflate never expands one input byte to more than ~1032 bytes
_CHUNK = 1 << 20
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_DIRECTION_MIN_DET = 1e-6
_SLICE_GAP_RTOL, _SLICE_GAP_ATOL = 0.05, 0.01  # DICOM slice gaps: 5% of the median, 0.01 mm


def max_voxels() -> int:
    """The voxel limit in force: ``$LUNGFUSE_CT_MAX_VOXELS`` when set, else ``MAX_VOXELS``.

    Read at each call so that a user (or a test) can lower or raise it without code."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return MAX_VOXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_VOXELS_ENV}={raw!r}: must be a positive whole number of "
                          "voxels; unset it to use the default limit")
    return value


def _dims_text(dims: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in dims)


def _check_voxels(src: Path, dims: Sequence[int]) -> None:
    """Refuse a declared size above the voxel limit (checked before anything is allocated)."""
    n, limit = math.prod(int(d) for d in dims), max_voxels()
    if n > limit:
        raise DataError(f"{src}: {_dims_text(dims)} = {n:,} voxels is above the limit of "
                        f"{limit:,}; the header is corrupt or this is not a CT scan (set "
                        f"{MAX_VOXELS_ENV} to accept larger volumes)")


def _check_geometry(src: Path, dim: int, size: Sequence[int], components: int,
                    spacing: Sequence[float], origin: Sequence[float],
                    direction: Sequence[float]) -> None:
    """What every CT must be, whatever its format: one number per voxel on a 3-D grid of
    bounded size with positive spacing and an invertible direction matrix."""
    if dim != 3:
        raise DataError(f"{src}: a {dim}D image ({_dims_text(size)}); a CT volume must be 3-D; "
                        "give a 3D scan")
    if min(size) < 1:
        raise DataError(f"{src}: image size {_dims_text(size)} has an empty axis; the header "
                        "is corrupt")
    _check_voxels(src, size)
    if components != 1:
        raise DataError(f"{src}: {components} components per voxel; a CT volume has one")
    if size[2] == 1:
        raise DataError(f"{src}: a single slice ({_dims_text(size)}), not a CT volume; give a "
                        "3D scan")
    sp = np.asarray(spacing, float)
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        raise DataError(f"{src}: voxel spacing {tuple(sp.tolist())} must be positive and "
                        "finite; fix the header")
    if not np.all(np.isfinite(np.asarray(origin, float))):
        raise DataError(f"{src}: origin {tuple(origin)} is not finite; fix the header")
    d = np.asarray(direction, float)
    if not (np.all(np.isfinite(d)) and abs(np.linalg.det(d.reshape(3, 3))) > _DIRECTION_MIN_DET):
        raise DataError(f"{src}: direction matrix {tuple(d.tolist())} is not invertible; fix "
                        "the header")


def _check_reader(src: Path, reader: Any) -> None:
    """``_check_geometry`` on what an ``ImageFileReader`` found in a header (no pixels read)."""
    _check_geometry(src, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(),
                    reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _contained_file(header: Path, value: str, key: str) -> tuple[Path, Path]:
    """The data file a header names, as ``(resolved, shown)``, refusing any that is not a
    regular file beside or below the header's folder (after symlinks): a shared header
    must not make lungfuse read, and score, an arbitrary file of the machine."""
    if not value:
        raise DataError(f"{header}: {key} is empty; name the data file beside the header")
    if "\\" in value:
        raise DataError(f"{header}: {key} {value!r} uses backslashes; name the data file "
                        "relative to the header with '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise DataError(f"{header}: {key} {value!r} holds control characters; the header is "
                        "corrupt")
    if value.startswith("/") or (len(value) > 1 and value[1] == ":") or Path(value).is_absolute():
        raise DataError(f"{header}: {key} {value!r} is an absolute path; data files must sit "
                        "beside or below the header, named relative to it (e.g. "
                        f"{Path(value).name!r})")
    shown = header.parent / value
    try:
        base = header.parent.resolve()
        target = shown.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"{header}: {key} {value!r} cannot be resolved ({exc}); name a data "
                        "file beside the header") from None
    if not target.is_relative_to(base):
        lexical = Path(os.path.normpath(shown)).is_relative_to(os.path.normpath(header.parent))
        how = "is a link that leads" if lexical else "leads"
        raise DataError(f"{header}: {key} {value!r} {how} outside the header's folder {base}; "
                        "data files must sit beside or below the header; copy the file there")
    try:
        st = target.stat()
    except FileNotFoundError:
        raise DataError(f"{header}: header points at data file {value!r} which does not exist "
                        f"in {shown.parent}; copy the data file beside the header") from None
    except OSError as exc:
        raise DataError(f"{header}: cannot read data file {value!r} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{header}: data file {value!r} is not a regular file; name the .raw "
                        "beside the header")
    return target, shown


def _check_inflated(header: Path, shown: Path, data: Path, start: int, length: int,
                    expect: int) -> None:
    """Inflate ``length`` bytes of ``data`` from ``start`` without keeping them and check
    that they give exactly ``expect`` bytes: SimpleITK silently pads a short stream with
    zeros. Memory stays at one chunk whatever the stream claims to hold."""
    inflater = zlib.decompressobj(47)  # zlib or gzip wrapper, as MetaIO accepts
    produced = 0
    try:
        with open(data, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0 and not inflater.eof:
                buf = fh.read(min(_CHUNK, left))
                if not buf:
                    break
                left -= len(buf)
                while buf and not inflater.eof:
                    produced += len(inflater.decompress(buf, _CHUNK))
                    if produced > expect:
                        break
                    buf = inflater.unconsumed_tail
                if produced > expect:
                    break
            if produced <= expect:
                produced += len(inflater.flush())
    except zlib.error as exc:
        raise DataError(f"{shown}: compressed voxel data is corrupt ({exc}); re-copy or "
                        "re-export the scan") from None
    except OSError as exc:
        raise DataError(f"{shown}: cannot read the data file ({exc.strerror})") from None
    if produced > expect:
        raise DataError(f"{header}: type/size mismatch: {shown.name} inflates to more than the "
                        f"{expect:,} bytes the header declares; fix DimSize/ElementType")
    if not inflater.eof or produced < expect:
        raise DataError(f"{shown}: truncated compressed data file ({produced:,} of {expect:,} "
                        "bytes); re-copy or re-download the scan")


@dataclass(frozen=True)
class _MetaImage:
    """A MetaImage header after checking: everything SimpleITK is then given, and no more."""

    dims: tuple[int, ...]
    element_type: str
    spacing: tuple[float, ...]
    offset: tuple[float, ...]
    matrix: tuple[float, ...]
    data_file: Path  # resolved; the header itself for LOCAL data
    data_start: int  # first byte of the voxels (or of the compressed stream)
    compressed_size: int | None  # bytes of the compressed stream; None when uncompressed

    def header(self, data_name: str) -> str:
        """A canonical header for SimpleITK, its data file given as ``data_name``."""
        def nums(v: Sequence[float]) -> str:
            return " ".join(repr(float(x)) for x in v)

        lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True",
                 "BinaryDataByteOrderMSB = False",
                 f"CompressedData = {self.compressed_size is not None}"]
        if self.compressed_size is not None:
            lines.append(f"CompressedDataSize = {self.compressed_size}")
        lines += [f"TransformMatrix = {nums(self.matrix)}", f"Offset = {nums(self.offset)}",
                  f"ElementSpacing = {nums(self.spacing)}",
                  f"DimSize = {' '.join(map(str, self.dims))}", "ElementNumberOfChannels = 1",
                  f"ElementType = {self.element_type}"]
        if self.data_start:
            lines.append(f"HeaderSize = {self.data_start}")
        lines.append(f"ElementDataFile = {data_name}")
        return "\n".join(lines) + "\n"


def _metaimage_fields(path: Path) -> tuple[dict[str, str], str, int, int]:
    """``(fields, ElementDataFile value, byte after the header, file size)`` of a MetaImage
    header. Strict where MetaIO is lax: every line before ElementDataFile is ``Key = Value``
    (``=`` or ``:``), no key twice; reading stops at ElementDataFile, as MetaIO's does."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_MAX_BYTES + 1)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the MetaImage header ({exc.strerror})") from None
    fields: dict[str, str] = {}
    pos, lineno = 0, 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0 and len(head) > _HEADER_MAX_BYTES:
            break  # a line cut by the read limit
        stop = len(head) if end < 0 else end
        line = head[pos:stop].decode("latin-1").strip()
        pos, lineno = stop + 1, lineno + 1
        if not line:
            continue
        cuts = [i for i in (line.find("="), line.find(":")) if i >= 0]
        key = line[:min(cuts)].strip() if cuts else ""
        if not _KEY.match(key):
            raise DataError(f"{path}: line {lineno} of the MetaImage header is not 'Key = Value' "
                            f"({line[:40]!r}); give a MetaImage header or another volume file")
        if key in fields:
            raise DataError(f"{path}: the MetaImage header gives {key} twice (line {lineno}); "
                            "keep one")
        value = line[min(cuts):].lstrip("=: \t").strip()
        if key == "ElementDataFile":
            return fields, value, min(pos, len(head)), size
        fields[key] = value
    if len(head) > _HEADER_MAX_BYTES:
        raise DataError(f"{path}: no ElementDataFile line in the first "
                        f"{_HEADER_MAX_BYTES // 1024} KiB; not a MetaImage header")
    raise DataError(f"{path}: MetaImage header has no ElementDataFile line; not a CT header")


def _parse_metaimage(path: Path) -> _MetaImage:
    """Check a ``.mhd``/``.mha`` header and its data before SimpleITK touches them.

    Refused, each with one line: a data file outside the header's folder, lists and
    patterns of files, text or big-endian voxels, anything but one number per voxel on a 3-D grid, more
    voxels than :func:`max_voxels`, and data whose size disagrees with the header
    (uncompressed: exactly ``HeaderSize + voxels x bytes``; compressed: the stream must
    fit the file, could inflate that far, and does inflate to exactly that size)."""
    fields, data_value, header_end, header_size = _metaimage_fields(path)

    def bad(key: str, what: str) -> DataError:
        return DataError(f"{path}: {key} = {fields[key]!r} is not {what}; fix the header")

    def numbers(key: str, n: int, kind: type) -> tuple[Any, ...] | None:
        if key not in fields:
            return None
        try:
            vals = tuple(kind(t) for t in fields[key].split())
        except ValueError:
            vals = ()
        if len(vals) != n or not all(math.isfinite(v) for v in vals):
            raise bad(key, f"{n} finite {'whole ' if kind is int else ''}number(s)")
        return vals

    def flag(key: str) -> bool | None:
        if key not in fields:
            return None
        v = fields[key].lower()
        if v not in ("true", "false", "1", "0"):
            raise bad(key, "True or False")
        return v in ("true", "1")

    def one_of(keys: Sequence[str], n: int) -> tuple[float, ...] | None:
        given = [k for k in keys if k in fields]
        if len(given) > 1:
            raise DataError(f"{path}: the header gives both {given[0]} and {given[1]}, which "
                            "mean the same; keep one")
        return numbers(given[0], n, float) if given else None

    if fields.get("ObjectType", "Image").lower() != "image":
        raise bad("ObjectType", "Image")
    if "NDims" not in fields:
        raise DataError(f"{path}: the MetaImage header has no NDims line; not a CT header")
    (ndims,) = numbers("NDims", 1, int) or (0,)
    if not 1 <= ndims <= 16:
        raise bad("NDims", "a number of dimensions")
    if "DimSize" not in fields:
        raise DataError(f"{path}: the MetaImage header has no DimSize line; not a CT header")
    dims = numbers("DimSize", ndims, int) or ()
    if min(dims) < 1:
        raise bad("DimSize", f"{ndims} positive sizes")
    if ndims != 3:
        raise DataError(f"{path}: a {ndims}D image ({_dims_text(dims)}); a CT volume must be "
                        "3-D; give a 3D scan")
    _check_voxels(path, dims)
    etype = fields.get("ElementType", "")
    if etype not in _MET_BYTES:
        raise DataError(f"{path}: ElementType {etype!r} is not one number per voxel (one of "
                        f"{', '.join(_MET_BYTES)}); fix the header")
    (channels,) = numbers("ElementNumberOfChannels", 1, int) or (1,)
    if channels != 1:
        raise DataError(f"{path}: {channels} components per voxel; a CT volume has one")
    if flag("BinaryData") is False:
        raise DataError(f"{path}: BinaryData = False (voxels written as text) is not read; "
                        "save the scan with binary voxels (.mhd/.raw or .nii.gz)")
    msb_a, msb_b = flag("BinaryDataByteOrderMSB"), flag("ElementByteOrderMSB")
    if None not in (msb_a, msb_b) and msb_a != msb_b:
        raise DataError(f"{path}: BinaryDataByteOrderMSB and ElementByteOrderMSB disagree; "
                        "keep one")
    if (msb_a or msb_b) and _MET_BYTES[etype] > 1:  # SimpleITK 2.5 ignores the flag
        raise DataError(f"{path}: big-endian voxels (ByteOrderMSB = True) are misread by "
                        "SimpleITK; convert the scan to little-endian (e.g. save it as .nii.gz)")
    compressed = bool(flag("CompressedData"))
    (csize,) = numbers("CompressedDataSize", 1, int) or (0,)
    (hsize,) = numbers("HeaderSize", 1, int) or (0,)
    if csize < 0 or hsize < -1:
        raise bad("CompressedDataSize" if csize < 0 else "HeaderSize", "a byte count")
    spacing = numbers("ElementSpacing", 3, float) or numbers("ElementSize", 3, float) or (1.0,) * 3
    if min(spacing) <= 0:
        raise bad("ElementSpacing" if "ElementSpacing" in fields else "ElementSize",
                  "3 positive spacings")
    offset = one_of(("Offset", "Position", "Origin"), 3) or (0.0,) * 3
    matrix = one_of(("TransformMatrix", "Rotation", "Orientation"), 9) or tuple(
        np.eye(3).ravel().tolist())
    if abs(np.linalg.det(np.reshape(matrix, (3, 3)))) <= _DIRECTION_MIN_DET:
        raise DataError(f"{path}: direction matrix {matrix} is not invertible; fix the header")

    if data_value.upper() == "LOCAL":
        data, shown, start = path.resolve(), path, header_end
    elif data_value.startswith("LIST") or "%" in data_value:
        raise DataError(f"{path}: ElementDataFile {data_value!r} names a list or pattern of "
                        "files, which lungfuse does not read; merge the slices into one "
                        ".mhd/.raw or .nii.gz volume")
    else:
        (data, shown), start = _contained_file(path, data_value, "ElementDataFile"), 0
    fsize = header_size if data == path.resolve() else data.stat().st_size
    voxels = math.prod(dims)
    need = voxels * _MET_BYTES[etype]
    described = f"{_dims_text(dims)} {etype}"
    if hsize > 0:
        if hsize < start:
            raise DataError(f"{path}: HeaderSize {hsize} points inside the header; fix it")
        start = hsize
    elif hsize == -1:  # the voxels are the file's last bytes
        if compressed:
            raise DataError(f"{path}: HeaderSize = -1 cannot locate compressed data; remove "
                            "the HeaderSize line")
        start = max(fsize - need, start)
    have = fsize - start
    if not compressed:
        if have < need:
            raise DataError(f"{shown}: truncated data file ({have:,} of {need:,} bytes for "
                            f"{described}); re-copy or re-download the scan")
        if have > need:
            per = f" ({have // voxels} bytes per voxel)" if have % voxels == 0 else ""
            raise DataError(f"{path}: type/size mismatch: {shown.name} holds {have:,} bytes"
                            f"{per} but {described} needs {need:,}; fix ElementType/DimSize "
                            "in the header or re-export the scan")
        return _MetaImage(tuple(dims), etype, tuple(spacing), tuple(offset), tuple(matrix),
                          data, start, None)
    if have <= 0:
        raise DataError(f"{shown}: truncated data file (no compressed voxels after byte "
                        f"{start}); re-copy or re-download the scan")
    if csize and csize != have:
        raise DataError(f"{path}: type/size mismatch: CompressedDataSize {csize:,} but "
                        f"{shown.name} holds {have:,} compressed bytes; re-copy the data file "
                        "or fix the header")
    if need > have * _ZLIB_MAX_RATIO + 1024:
        raise DataError(f"{path}: type/size mismatch: {described} needs {need:,} bytes but "
                        f"{have:,} compressed bytes cannot inflate to that; the header or the "
                        "data file is corrupt")
    _check_inflated(path, shown, data, start, have, need)
    return _MetaImage(tuple(dims), etype, tuple(spacing), tuple(offset), tuple(matrix), data,
                      start, have)


def _read_metaimage(path: Path, sitk: Any) -> Any:
    """Read a checked MetaImage: SimpleITK gets a canonical header written by us, whose data
    file is a link to the very file that was checked, so nothing else can be opened."""
    meta = _parse_metaimage(path)
    with tempfile.TemporaryDirectory(prefix="lungfuse-mhd-") as tmp:
        name = "voxels.dat"
        try:
            (Path(tmp) / name).symlink_to(meta.data_file)
        except OSError:  # no symlinks here: the checked absolute path, where MetaIO can take it
            name = str(meta.data_file)
            if "%" in name or len(name) > 400:
                raise DataError(f"{path}: cannot hand its data file to SimpleITK from this "
                                "folder; move the scan to a shorter path without '%'") from None
        hdr = Path(tmp) / "volume.mhd"
        hdr.write_text(meta.header(name), encoding="utf-8")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(hdr))
        reader.ReadImageInformation()
        _check_reader(path, reader)
        return reader.Execute()


def _nrrd_data_files(path: Path) -> None:
    """A NRRD header's ``data file`` (detached data) must name one file beside or below the
    header, as for MetaImage; lists and patterns are refused."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_MAX_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the NRRD header ({exc.strerror})") from None
    text = head.decode("latin-1")
    for line in text.split("\n")[1:]:
        line = line.rstrip("\r")
        if not line.strip():
            break  # the header ends at the first empty line
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        if key.strip().lower().replace(" ", "") != "datafile":
            continue
        value = value.strip()
        if value.startswith("LIST") or len(value.split()) > 1 or "%" in value:
            raise DataError(f"{path}: data file {value!r} names a list or pattern of files, "
                            "which lungfuse does not read; save the scan as one .nrrd or .nii.gz")
        _contained_file(path, value, "data file")


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float voxels


@dataclass(frozen=True)
class _NiftiLayout:
    """Where a single-file NIfTI keeps its voxels: ``first`` byte, ``nbytes`` of them, the
    grid ``dims`` (x, y, z ...) and, for float voxels, their numpy dtype."""

    first: int
    nbytes: int
    dims: tuple[int, ...]
    floats: np.dtype | None


def _nifti_layout(path: Path, head: bytes) -> _NiftiLayout | None:
    """The voxel layout from a single-file NIfTI-1/2 header, or None for an ANALYZE or
    two-file header (data in ``.img``, left to SimpleITK)."""
    for order in "<>":
        (hdr_size,) = struct.unpack(order + "i", head[:4]) if len(head) >= 4 else (0,)
        if hdr_size == 348 and len(head) >= 348:
            if head[344:348] != b"n+1\0":
                return None
            dims = struct.unpack(order + "8h", head[40:56])
            code, bitpix = struct.unpack(order + "2h", head[70:74])
            (vox,) = struct.unpack(order + "f", head[108:112])
            first = max(int(vox) if math.isfinite(vox) else 0, 352)
            break
        if hdr_size == 540 and len(head) >= 540:
            if head[4:8] != b"n+2\0":
                return None
            code, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            (vox,) = struct.unpack(order + "q", head[168:176])
            first = max(vox, 544)
            break
    else:
        raise DataError(f"{path}: not a NIfTI header; give a .nii/.nii.gz volume")
    n = dims[0]
    if (not 1 <= n <= 7 or min(dims[1:n + 1]) < 1 or bitpix < 8 or bitpix % 8
            or first > 2**40):
        raise DataError(f"{path}: malformed NIfTI header (dim {dims}, bitpix {bitpix}); "
                        "re-export the scan")
    floats = np.dtype(order + _NIFTI_FLOATS[code]) if code in _NIFTI_FLOATS else None
    return _NiftiLayout(first, math.prod(dims[1:n + 1]) * bitpix // 8, tuple(dims[1:n + 1]),
                        floats)


def _check_nifti_data(path: Path) -> None:
    """The voxels a single-file NIfTI declares must all be there and, when float, finite:
    SimpleITK fills a short file with zeros, and turns NaN and inf into 0, without a word.
    Read once, chunk by chunk (a ``.nii.gz`` inflated on the way); an integer ``.nii`` is
    only measured."""
    bad, first_bad = 0, -1
    try:
        with open(path, "rb") as raw:
            packed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh: Any = gzip.GzipFile(fileobj=raw) if packed else raw
            layout = _nifti_layout(path, fh.read(544))
            if layout is None:
                return
            if not packed and layout.floats is None:
                have = os.fstat(raw.fileno()).st_size - layout.first
            else:
                fh.seek(layout.first)
                have, carry = 0, b""
                while have < layout.nbytes:
                    chunk = fh.read(min(_CHUNK, layout.nbytes - have))
                    if not chunk:
                        break
                    have += len(chunk)
                    if layout.floats is not None:
                        buf = carry + chunk
                        usable = len(buf) - len(buf) % layout.floats.itemsize
                        vals = np.frombuffer(buf[:usable], layout.floats)
                        ok = np.isfinite(vals)
                        if not ok.all():
                            if first_bad < 0:
                                done = (have - len(buf)) // layout.floats.itemsize
                                first_bad = done + int(np.argmin(ok))
                            bad += int(ok.size - ok.sum())
                        carry = buf[usable:]
    except (OSError, EOFError, zlib.error, ValueError) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: truncated or corrupt compressed NIfTI ({exc}); re-copy or "
                        "re-export the scan") from None
    if have < layout.nbytes:
        raise DataError(f"{path}: truncated NIfTI ({max(have, 0):,} of {layout.nbytes:,} voxel "
                        "bytes); re-copy or re-download the scan")
    if bad:
        nx, ny = layout.dims[0], layout.dims[1] if len(layout.dims) > 1 else 1
        x, y, z = first_bad % nx, first_bad // nx % ny, first_bad // (nx * ny)
        raise DataError(f"{path}: {bad:,} voxel(s) are NaN or infinite (the first at x={x}, "
                        f"y={y}, z={z}); the scan is corrupt; re-export it")


def _read_file(path: Path, sitk: Any) -> Any:
    """Any other volume file: its header checked (``ReadImageInformation`` reads no pixels)
    before the pixels are read."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    name = path.name.lower()
    if magic == b"NRRD" or name.endswith((".nrrd", ".nhdr")):
        _nrrd_data_files(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    _check_reader(path, reader)
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti_data(path)
    return reader.Execute()


# ------------------------------------------------------------------------ DICOM studies
#: A series with fewer slices is no CT volume (a localiser, a key image): the 2.5D slices
#: the segmenter reads stack three adjacent slices.
MIN_SERIES_SLICES = 3
#: The largest angle (degrees) between a series' slice normal and the patient's z axis for
#: which it still counts as axial: covers gantry tilt (up to ~30 degrees on most
#: scanners), excludes coronal, sagittal and oblique reformats.
AXIAL_TOLERANCE_DEG = 30.0
#: A study folder holding more files than this is refused before any header is read: the
#: folder given is most likely an archive of many studies, not one.
MAX_STUDY_FILES = 100_000
_TAGS = {"modality": "0008|0060", "image_type": "0008|0008", "description": "0008|103e",
         "number": "0020|0011", "thickness": "0018|0050"}


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM study folder, described from one file's header (no pixels).

    ``files`` are in GDCM's slice order; ``normal`` is the unit slice normal (the third
    column of the direction matrix) and ``thickness_mm`` the SliceThickness tag, or the
    distance between the first two slices where the tag is absent."""

    uid: str
    files: tuple[str, ...]
    modality: str
    image_type: tuple[str, ...]
    description: str
    number: int | None
    slices: int
    thickness_mm: float | None
    normal: tuple[float, float, float]
    problem: str = ""  # why its header could not be read; such a series is never chosen

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def tilt_deg(self) -> float:
        """Angle between the slice normal and the patient's z axis (0: axial)."""
        return math.degrees(math.acos(min(1.0, abs(self.normal[2]))))

    @property
    def is_axial(self) -> bool:
        return self.tilt_deg <= AXIAL_TOLERANCE_DEG

    def usable(self) -> bool:
        """Whether the automatic choice may take this series (see :func:`choose_series`)."""
        return (self.modality == "CT" and not self.problem and not self.is_localizer
                and self.slices >= MIN_SERIES_SLICES and self.is_axial)

    def summary(self) -> str:
        """``uid (CT, 24 slices, 1 mm, 'thin')`` plus what rules it out, for one-line
        messages."""
        thick = "thickness ?" if self.thickness_mm is None else f"{self.thickness_mm:g} mm"
        parts = [self.modality or "modality ?", f"{self.slices} slice"
                 + ("" if self.slices == 1 else "s"), thick]
        if self.problem:
            parts.append(f"unreadable: {self.problem}")
        elif self.is_localizer:
            parts.append("localiser")
        elif not self.is_axial:
            parts.append(f"not axial ({self.tilt_deg:.0f} deg)")
        if self.description:
            parts.append(repr(self.description))
        return f"{self.uid} ({', '.join(parts)})"

    def info(self) -> dict[str, Any]:
        """What was read, for ``Volume.meta['series']``, logs and reports."""
        return {"uid": self.uid, "description": self.description, "number": self.number,
                "modality": self.modality, "slices": self.slices,
                "thickness_mm": self.thickness_mm}


def _tag(reader: Any, key: str) -> str:
    """A header value as text ("" where absent). SimpleITK hands over bytes that are not
    UTF-8 (a Latin-1 description, DICOM's ISO_IR 100) as lone surrogates, which no file
    can be written with: those are decoded as Latin-1."""
    try:
        value = reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""
    except (RuntimeError, UnicodeDecodeError):
        return ""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        value = raw.decode("latin-1")
    return value.strip(" \0")


def _header(path: str, sitk: Any) -> Any:
    """An ``ImageFileReader`` holding the header of one DICOM file (no pixels read)."""
    one = sitk.ImageFileReader()
    one.SetFileName(path)
    try:
        one.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot read this DICOM file ({_sitk_error(exc)}); remove or "
                        "re-export it") from None
    return one


def _describe_series(uid: str, files: Sequence[str], sitk: Any) -> DicomSeries:
    """A :class:`DicomSeries` from the header of its first file (and, where SliceThickness
    is absent, the position of its second). A header ITK cannot read (a report or a
    compressed secondary capture beside the images) gives a series marked with the reason,
    so that it is listed, never chosen, and does not make the whole study unreadable."""
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        return DicomSeries(uid=uid, files=tuple(files), modality="", image_type=(),
                           description="", number=None, slices=len(files), thickness_mm=None,
                           normal=(0.0, 0.0, 0.0), problem=_sitk_error(exc)[:80])
    size = first.GetSize()
    depth = int(size[2]) if len(size) > 2 else 1
    d = np.asarray(first.GetDirection(), float)
    normal = d.reshape(3, 3)[:, 2] if d.size == 9 else np.array([0.0, 0.0, 1.0])
    norm = float(np.linalg.norm(normal))
    normal = normal / norm if norm > 0 and np.all(np.isfinite(normal)) else np.zeros(3)
    try:
        thickness: float | None = float(_tag(first, _TAGS["thickness"]).split("\\")[0])
    except ValueError:
        thickness = None
    if thickness is not None and not (math.isfinite(thickness) and thickness > 0):
        thickness = None
    if thickness is None and len(files) > 1:
        second = sitk.ImageFileReader()
        second.SetFileName(files[1])
        try:
            second.ReadImageInformation()
            gap = abs(float((np.asarray(second.GetOrigin(), float)
                             - np.asarray(first.GetOrigin(), float)) @ normal))
        except RuntimeError:  # the slice checks name the file if this series is read
            gap = math.nan
        thickness = round(gap, 4) if math.isfinite(gap) and gap > 0 else None
    try:
        number: int | None = int(_tag(first, _TAGS["number"]))
    except ValueError:
        number = None
    image_type = tuple(t.strip().upper() for t in _tag(first, _TAGS["image_type"]).split("\\")
                       if t.strip())
    return DicomSeries(uid=uid, files=tuple(files),
                       modality=_tag(first, _TAGS["modality"]).upper(), image_type=image_type,
                       description=_tag(first, _TAGS["description"]), number=number,
                       slices=len(files) * depth, thickness_mm=thickness,
                       normal=(float(normal[0]), float(normal[1]), float(normal[2])))


def find_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """Every DICOM series under a study folder, its subfolders included (scanners write
    nested folders; hidden ones are skipped), each described from one header.

    A ``.dcm`` file that belongs to no series is refused (GDCM would skip it, and a slice
    missing from a series misplaces every slice after it), as is a folder of more than
    :data:`MAX_STUDY_FILES` files. A series whose files lie in several folders is gathered
    from all of them."""
    import SimpleITK as sitk

    root = Path(folder)
    dirs: list[Path] = []
    n_files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        n_files += len(filenames)
        if n_files > MAX_STUDY_FILES:
            raise DataError(f"{root}: more than {MAX_STUDY_FILES:,} files below it; give the "
                            "folder of one CT study, not an archive of many")
        if filenames:
            dirs.append(Path(dirpath))
    where: dict[str, list[Path]] = {}
    files: dict[str, list[str]] = {}
    for d in dirs:
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)):
            where.setdefault(sid, []).append(d)
            files.setdefault(sid, []).extend(
                sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid))
    for sid, ds in where.items():
        if len(ds) > 1:  # one series in several folders: let GDCM order all its files
            files[sid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
                str(root), sid, False, True))
    known = {os.path.normpath(f) for fs in files.values() for f in fs}
    bad = sorted(str((d / f).relative_to(root)) for d in dirs for f in os.listdir(d)
                 if f.lower().endswith(".dcm") and not f.startswith(".")  # "._x": macOS
                 and (d / f).is_file() and os.path.normpath(d / f) not in known)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{root}: {len(bad)} file(s) cannot be read as DICOM images "
                        f"({', '.join(bad[:3])}{more}); remove or re-export them")
    return [_describe_series(sid, files[sid], sitk) for sid in sorted(files)]


def _listing(series: Sequence[DicomSeries], limit: int = 6) -> str:
    shown = "; ".join(s.summary() for s in series[:limit])
    more = f"; and {len(series) - limit} more" if len(series) > limit else ""
    return f"{len(series)} series found: {shown}{more}"


def choose_series(folder: Path, series: Sequence[DicomSeries],
                  series_uid: str | None = None) -> DicomSeries:
    """The series of a study to read as the CT volume.

    With ``series_uid``: that series (it must be in the folder and be CT; the reader's
    checks still refuse one of a single slice). Otherwise the rule: keep CT series that are
    not localisers (ImageType LOCALIZER), have at least :data:`MIN_SERIES_SLICES` slices
    and are axial (slice normal within :data:`AXIAL_TOLERANCE_DEG` of z); of those take the
    thinnest slices (SliceThickness), then the most slices, then the lowest SeriesNumber
    (then the lowest uid, so the choice never depends on the file system's order). A
    study with none is one ``DataError`` listing what was found."""
    if not series:
        raise DataError(f"{folder}: folder holds no DICOM series; give a DICOM study or "
                        "series folder, or a volume file")
    if series_uid is not None:
        want = series_uid.strip()
        hit = [s for s in series if s.uid == want]
        if not hit:
            raise DataError(f"{folder}: no series {want} in this folder ({_listing(series)}); "
                            "check the series uid")
        if hit[0].problem:
            raise DataError(f"{folder}: series {want} cannot be read ({hit[0].problem}); "
                            "re-export it or choose another")
        if hit[0].modality != "CT":
            raise DataError(f"{folder}: series {want} is {hit[0].modality or 'of no modality'}"
                            ", not CT; choose a CT series")
        return hit[0]
    if not any(s.modality == "CT" for s in series):
        raise DataError(f"{folder}: no CT series ({_listing(series)}); give the folder of a "
                        "CT study")
    usable = [s for s in series if s.usable()]
    if not usable:
        raise DataError(f"{folder}: no axial CT series of at least {MIN_SERIES_SLICES} slices "
                        f"(localisers excluded) ({_listing(series)}); give the folder of the "
                        "full scan, or name a series in dicom_series")
    inf = float("inf")
    return min(usable, key=lambda s: (inf if s.thickness_mm is None else s.thickness_mm,
                                      -s.slices, inf if s.number is None else s.number, s.uid))


def _read_dicom(folder: Path, sitk: Any,
                series_uid: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A DICOM study or series folder: the series chosen by :func:`choose_series`, refused
    when a ``.dcm`` in the folder is not readable (GDCM would skip it and misplace every
    slice after a gap) or its slices disagree: size, orientation, or positions not evenly
    spaced along the slice normal (a missing or repeated slice)."""
    reader = sitk.ImageSeriesReader()
    found = find_dicom_series(folder)
    chosen = choose_series(folder, found, series_uid)
    if len(found) > 1:
        how = ("the series named" if series_uid is not None else "the thinnest axial CT "
               "series (name another by its SeriesInstanceUID in dicom_series)")
        log.warning("%s: %d DICOM series; reading %s, %s", folder, len(found),
                    chosen.summary(), how)
    else:
        log.info("%s: reading DICOM series %s", folder, chosen.summary())
    files = list(chosen.files)
    heads = []
    for f in files:
        one = _header(f, sitk)
        if one.GetDimension() != 3:
            raise DataError(f"{f}: a {one.GetDimension()}D DICOM image; a CT slice is read as "
                            "3-D; re-export the series")
        heads.append((Path(f).name, one.GetSize(), np.asarray(one.GetOrigin(), float),
                      np.asarray(one.GetDirection(), float)))
    name0, size0, _, dir0 = heads[0]
    for name, size, _, direction in heads[1:]:
        if tuple(size[:2]) != tuple(size0[:2]) or (len(size) > 2 and size[2] != 1):
            raise DataError(f"{folder}: slices differ in size ({name0}: {_dims_text(size0)}, "
                            f"{name}: {_dims_text(size)}); the folder mixes series or holds a "
                            "corrupt file")
        if direction.shape != dir0.shape or not np.allclose(direction, dir0, atol=1e-4):
            raise DataError(f"{folder}: slices differ in orientation ({name0}, {name}); the "
                            "folder mixes series")
    _check_voxels(folder, (*size0[:2], len(files) * (size0[2] if len(size0) > 2 else 1)))
    if len(heads) > 1:
        normal = dir0.reshape(3, 3)[:, 2]
        pos = sorted((float(origin @ normal), name) for name, _, origin, _ in heads)
        gaps = np.diff([p for p, _ in pos])
        median = float(np.median(gaps))
        tol = max(_SLICE_GAP_RTOL * median, _SLICE_GAP_ATOL)
        worst = int(np.argmax(np.abs(gaps - median)))
        if median <= _SLICE_GAP_ATOL or abs(gaps[worst] - median) > tol:
            raise DataError(f"{folder}: slice positions are not evenly spaced ({gaps[worst]:.3g} "
                            f"mm between {pos[worst][1]} and {pos[worst + 1][1]}, "
                            f"{median:.3g} mm elsewhere); a slice is missing or repeated; "
                            "re-export the complete series")
    reader.SetFileNames(files)
    return reader.Execute(), {"series_instance_uid": chosen.uid, "series": chosen.info(),
                              "series_in_folder": len(found)}


def _sitk_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("ITK ERROR", "Reason")) or "ERROR" in ln:
            return ln[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _check_finite(src: Path, arr: np.ndarray) -> None:
    """NaN or infinite voxels are an error: a model given them returns any risk at all."""
    if np.isfinite(arr.min()) and np.isfinite(arr.max()):  # two passes, no temporary
        return
    bad = ~np.isfinite(arr)
    z, y, x = (int(v) for v in np.argwhere(bad)[0])
    raise DataError(f"{src}: {int(bad.sum()):,} voxel(s) are NaN or infinite (the first at "
                    f"x={x}, y={y}, z={z}); the scan is corrupt; re-export it")


def read_volume(path: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read a CT volume in HU: ``.mhd/.raw``, ``.mha``, NIfTI, NRRD, or a DICOM study or
    series folder (HU from the rescale slope/intercept, applied by GDCM).

    A DICOM folder may hold several series, in subfolders too: the one read is
    ``series_uid`` where given, else the one :func:`choose_series`'s rule picks; which it
    was is logged and kept in ``Volume.meta['series']`` (uid, description, slices,
    thickness). ``series_uid`` with a volume file is an error.

    Input is checked, not trusted: headers are checked (data files beside the header, a
    3-D single-component grid of at most :func:`max_voxels` voxels, data of the declared
    size) before any pixel is read, and the voxels read must be finite. Every failure is a
    one-line ``DataError`` naming the file."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such CT file or folder")
    if not (p.is_dir() or p.is_file()):
        raise DataError(f"{p}: not a regular file or folder; give a CT volume file or a DICOM "
                        "series folder")
    if series_uid is not None and not p.is_dir():
        raise DataError(f"{p}: a DICOM series ({series_uid}) was named for it, but it is a "
                        "volume file, not a DICOM folder; drop the series uid")
    meta: dict[str, Any] = {}
    try:
        if p.is_dir():
            img, meta = _read_dicom(p, sitk, series_uid)
        elif p.name.lower().endswith((".mhd", ".mha")):
            img = _read_metaimage(p, sitk)
        else:
            img = _read_file(p, sitk)
        _check_geometry(p, img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel(),
                        img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        raw = sitk.GetArrayFromImage(img)
    except RuntimeError as exc:
        raise DataError(f"{p}: SimpleITK cannot read it ({_sitk_error(exc)})") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if raw.dtype.kind not in "iuf":
        raise DataError(f"{p}: voxels of type {raw.dtype} are not CT intensities")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused
        arr = raw.astype(np.float32, copy=False)
    if raw.dtype.kind == "f":
        _check_finite(p, arr)
    return Volume(arr, np.asarray(img.GetOrigin(), float), np.asarray(img.GetSpacing(), float),
                  np.asarray(img.GetDirection(), float).reshape(3, 3), p, meta)


def to_sitk(vol: Volume, dtype: Any = None):
    import SimpleITK as sitk

    arr = vol.array if dtype is None else vol.array.astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(tuple(float(v) for v in vol.origin))
    img.SetSpacing(tuple(float(v) for v in vol.spacing))
    img.SetDirection(tuple(float(v) for v in vol.direction.ravel()))
    return img


def write_volume(path: str | os.PathLike[str], vol: Volume, dtype: Any = None) -> Path:
    """Write ``vol`` (e.g. a mask) atomically; ``.mhd`` writes header + ``.raw`` together.

    Both files are written into a temporary folder beside the target and moved in, data
    file first, so a reader never sees a header without its data.
    """
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        sitk.WriteImage(to_sitk(vol, dtype), str(tmp), True if path.suffix != ".mhd" else False)
        written = sorted(tmpdir.iterdir(), key=lambda f: f.suffix == path.suffix)
        for f in written:  # data file(s) first, header last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def find_volumes(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Series uid -> volume path under ``root`` (LUNA16 ``subset*/<uid>.mhd``, NIfTI/NRRD
    files named by uid, or DICOM folders named by uid). ``masks`` folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: CT root folder does not exist")
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.lower() != "masks" and not d.startswith("."))
        dcm = [f for f in filenames if f.lower().endswith(".dcm")]
        if dcm:
            out.setdefault(Path(dirpath).name, Path(dirpath))
            continue
        for f in sorted(filenames):
            low = f.lower()
            for suf in VOLUME_SUFFIXES:
                if low.endswith(suf) and not f.startswith("."):
                    out.setdefault(f[: -len(suf)], Path(dirpath) / f)
                    break
    return out


def find_mask(masks_dir: str | os.PathLike[str] | None, uid: str) -> Path | None:
    if masks_dir is None:
        return None
    for suf in VOLUME_SUFFIXES:
        p = Path(masks_dir) / f"{uid}{suf}"
        if p.is_file():
            return p
    return None


# ------------------------------------------------------------------------------ annotations
def read_annotations(path: str | os.PathLike[str]):
    """LUNA16 ``annotations.csv`` (seriesuid, coordX, coordY, coordZ, diameter_mm)."""
    import pandas as pd

    p = Path(path)
    try:
        df = pd.read_csv(p, dtype={"seriesuid": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read annotations CSV ({exc})") from exc
    missing = [c for c in ANNOTATION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(missing)}; expected "
                        f"{', '.join(ANNOTATION_COLUMNS)}")
    return df


def check_annotations(annotations, volumes: dict[str, Path], source: str = "annotations"):
    """Rows whose series has no volume: logged (one line each) and dropped."""
    have = annotations["seriesuid"].isin(set(volumes))
    for uid in sorted(set(annotations.loc[~have, "seriesuid"])):
        log.warning("%s: annotation for series %s which has no CT volume under the CT root; "
                    "skipped", source, uid)
    return annotations[have]


def nodule_centres_index(vol: Volume, nodules: Iterable[Sequence[float]],
                         uid: str = "") -> list[tuple[np.ndarray, float]]:
    """(centre index x,y,z, radius mm) per nodule ``(x, y, z, diameter_mm)``; a centre
    outside the volume raises ``DataError``."""
    out = []
    for x, y, z, d in nodules:
        idx = vol.world_to_index([x, y, z])
        if not vol.contains_index(idx):
            raise DataError(f"{uid or vol.path}: nodule centre ({x:.1f}, {y:.1f}, {z:.1f}) mm "
                            f"maps to voxel {np.round(idx, 1).tolist()}, outside the volume "
                            f"{list(vol.shape_xyz)}; check the annotation's coordinates")
        if not d > 0:
            raise DataError(f"{uid or vol.path}: nodule diameter {d} mm must be positive")
        out.append((idx, float(d) / 2.0))
    return out


def nodule_mask(vol: Volume, nodules: Iterable[Sequence[float]], uid: str = "",
                refine_hu: float | None = None, margin_mm: float = 2.0) -> np.ndarray:
    """Label mask ``(z, y, x)`` uint8/uint16, nodule k (in row order) labelled k.

    Each nodule is the ball ``|p - c| <= diameter/2`` in world mm, evaluated at voxel
    centres (an ellipsoid in index space on anisotropic spacing). With ``refine_hu``, the
    label becomes the voxels ``>= refine_hu`` HU that are 26-connected to the centre within
    the ball grown by ``margin_mm``; if that is empty the ball is kept.
    """
    from scipy import ndimage

    centres = nodule_centres_index(vol, nodules, uid)
    shape = vol.array.shape
    mask = np.zeros(shape, dtype=np.uint8 if len(centres) < 255 else np.uint16)
    for label, (c, r) in enumerate(centres, start=1):
        reach = r + (margin_mm if refine_hu is not None else 0.0)
        half = np.ceil(reach / vol.spacing.min()) + 1
        lo = np.maximum(np.floor(c - half), 0).astype(int)
        hi = np.minimum(np.ceil(c + half) + 1, np.asarray(vol.shape_xyz)).astype(int)
        ix, iy, iz = (np.arange(lo[a], hi[a]) for a in range(3))
        gz, gy, gx = np.meshgrid(iz, iy, ix, indexing="ij")
        idx = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1).astype(float)
        dist = np.linalg.norm(vol.index_to_world(idx) - vol.index_to_world(c), axis=1)
        dist = dist.reshape(gz.shape)
        ball = dist <= r
        if not ball.any():  # a nodule smaller than a voxel: keep its centre voxel
            ball = dist <= dist.min()
        sub = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        region = ball
        if refine_hu is not None:
            cand = (dist <= reach) & (vol.array[sub] >= refine_hu)
            lab, _ = ndimage.label(cand, structure=np.ones((3, 3, 3)))
            seeds = np.unique(lab[ball & cand])
            seeds = seeds[seeds > 0]
            if seeds.size:
                region = np.isin(lab, seeds)
        view = mask[sub]
        view[region & (view == 0)] = label
    return mask


def read_mask(path: Path, vol: Volume) -> np.ndarray:
    """A ground-truth label mask that must share the scan's grid."""
    m = read_volume(path)
    if m.array.shape != vol.array.shape:
        raise DataError(f"{path}: mask shape {m.array.shape[::-1]} differs from the scan's "
                        f"{vol.array.shape[::-1]}; masks must be on the scan's grid")
    if not (np.allclose(m.origin, vol.origin, atol=1e-3) and np.allclose(m.spacing, vol.spacing,
                                                                          atol=1e-4)):
        raise DataError(f"{path}: mask geometry (origin/spacing) differs from its scan")
    return np.rint(m.array).astype(np.int32)


@dataclass
class Case:
    """One scan with its nodules: ``labels`` (z,y,x) int, ``nodules`` rows (x,y,z,d)."""

    uid: str
    volume: Volume
    labels: np.ndarray
    nodules: list[tuple[float, float, float, float]]
    patient_id: str | None = None


def load_case(uid: str, path: Path, annotations=None, masks_dir: Path | None = None,
              refine_hu: float | None = None, patient_id: str | None = None,
              series_uid: str | None = None) -> Case:
    """Read a scan and its nodule labels (mask file where given, else annotation balls);
    ``series_uid`` picks the series of a DICOM study folder (see :func:`read_volume`)."""
    vol = read_volume(path, series_uid)
    rows: list[tuple[float, float, float, float]] = []
    if annotations is not None:
        sel = annotations[annotations["seriesuid"] == uid]
        rows = [tuple(map(float, r)) for r in
                sel[["coordX", "coordY", "coordZ", "diameter_mm"]].itertuples(index=False)]
    mpath = find_mask(masks_dir, uid)
    if mpath is not None:
        labels = read_mask(mpath, vol)
        nodule_centres_index(vol, rows, uid)  # still validate centres
    else:
        labels = nodule_mask(vol, rows, uid, refine_hu=refine_hu).astype(np.int32)
    return Case(uid, vol, labels, rows, patient_id)


def load_cases(items: Iterable[tuple[str, Path]], annotations=None, masks_dir: Path | None = None,
               refine_hu: float | None = None, patients: dict[str, str] | None = None,
               progress: bool = False, series_uids: dict[str, str] | None = None) -> list[Case]:
    """Load many scans; a bad scan is logged with its reason and skipped. ``series_uids``
    maps a scan's uid to the DICOM series to read from its study folder."""
    from .progress import bar

    cases = []
    items = list(items)
    for uid, path in bar(items, desc="reading CT", enabled=progress):
        try:
            cases.append(load_case(uid, path, annotations, masks_dir, refine_hu,
                                   (patients or {}).get(uid), (series_uids or {}).get(uid)))
        except DataError as exc:
            log.warning("skipping scan %s: %s", uid, exc)
    return cases

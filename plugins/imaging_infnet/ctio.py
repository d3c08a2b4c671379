"""CT reading and geometry (SimpleITK), and nodule masks from LUNA16 annotations.

Geometry: a voxel with continuous index ``i = (i_x, i_y, i_z)`` lies at world position

    p = o + D · diag(s) · i

(``o`` origin, ``s`` spacing, ``D`` the 3x3 direction cosines, all in x,y,z order, mm),
hence ``i = diag(s)^-1 · D^-1 · (p - o)``. Arrays are held z,y,x as SimpleITK returns them.

Nodule masks: a LUNA16 row (centre in world mm, ``diameter_mm``) becomes the set of voxels
whose world position is within ``diameter_mm / 2`` of the centre, an ellipsoid in index
space on the scan's own spacing (radius = diameter/2, not diameter). Optionally refined:
voxels above ``hu_threshold`` connected to the centre, within the sphere grown by a margin.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungfuse.core.errors import DataError

log = logging.getLogger("lungfuse.imaging")

VOLUME_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8}
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
def _mhd_header(path: Path) -> dict[str, str]:
    hdr: dict[str, str] = {}
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the MetaImage header ({exc.strerror})") from exc
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            hdr[k.strip()] = v.strip()
    return hdr


def _check_mhd(path: Path) -> None:
    """Clear errors for the failures SimpleITK reports badly: data file missing or short."""
    hdr = _mhd_header(path)
    data = hdr.get("ElementDataFile")
    if data is None:
        raise DataError(f"{path}: MetaImage header has no ElementDataFile line; not a CT header")
    if data.upper() == "LOCAL" or data.upper().startswith("LIST") or "%" in data:
        return
    raw = (path.parent / data) if not Path(data).is_absolute() else Path(data)
    if not raw.is_file():
        raise DataError(f"{path}: header points at data file {data!r} which does not exist "
                        f"in {raw.parent}; copy the .raw beside the .mhd")
    try:
        dims = [int(v) for v in hdr.get("DimSize", "").split()]
    except ValueError:
        raise DataError(f"{path}: bad DimSize {hdr.get('DimSize')!r} in header") from None
    if len(dims) == 2 or hdr.get("NDims") == "2":
        raise DataError(f"{path}: a 2D image ({'x'.join(map(str, dims))}), not a CT volume; "
                        "give a 3D scan")
    comp = hdr.get("CompressedData", "False").lower() == "true"
    nbytes = _MET_BYTES.get(hdr.get("ElementType", ""), 0)
    channels = int(hdr.get("ElementNumberOfChannels", "1") or 1)
    if dims and nbytes and not comp:
        need = int(np.prod(dims)) * nbytes * channels
        have = raw.stat().st_size
        if have < need:
            raise DataError(f"{raw}: truncated data file ({have} of {need} bytes for "
                            f"{'x'.join(map(str, dims))} {hdr.get('ElementType')}); "
                            "re-copy or re-download the scan")


def _sitk_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("ITK ERROR", "Reason")) or "ERROR" in ln:
            return ln[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a CT volume in HU: ``.mhd/.raw``, ``.mha``, NIfTI, NRRD, or a DICOM series
    folder (HU from the rescale slope/intercept, applied by GDCM). Raises ``DataError``."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such CT file or folder")
    meta: dict[str, Any] = {}
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            ids = reader.GetGDCMSeriesIDs(str(p))
            if not ids:
                raise DataError(f"{p}: folder holds no DICOM series; give a series folder or "
                                "a volume file")
            files = reader.GetGDCMSeriesFileNames(str(p), ids[0])
            if len(ids) > 1:
                log.warning("%s: %d DICOM series, reading the first (%s)", p, len(ids), ids[0])
            reader.SetFileNames(files)
            img = reader.Execute()
            meta["series_instance_uid"] = ids[0]
        else:
            if p.suffix.lower() == ".mhd":
                _check_mhd(p)
            img = sitk.ReadImage(str(p))
    except DataError:
        raise
    except RuntimeError as exc:
        raise DataError(f"{p}: SimpleITK cannot read it ({_sitk_error(exc)})") from exc
    if img.GetDimension() != 3 or min(img.GetSize()) < 1:
        raise DataError(f"{p}: a {img.GetDimension()}D image of size {img.GetSize()}, not a CT "
                        "volume; give a 3D scan")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{p}: {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "a CT volume has one")
    if img.GetSize()[2] == 1:
        raise DataError(f"{p}: a single slice ({img.GetSize()}), not a CT volume; give a 3D scan")
    arr = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
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
              refine_hu: float | None = None, patient_id: str | None = None) -> Case:
    """Read a scan and its nodule labels (mask file where given, else annotation balls)."""
    vol = read_volume(path)
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
               progress: bool = False) -> list[Case]:
    """Load many scans; a bad scan is logged with its reason and skipped."""
    from .progress import bar

    cases = []
    items = list(items)
    for uid, path in bar(items, desc="reading CT", enabled=progress):
        try:
            cases.append(load_case(uid, path, annotations, masks_dir, refine_hu,
                                   (patients or {}).get(uid)))
        except DataError as exc:
            log.warning("skipping scan %s: %s", uid, exc)
    return cases

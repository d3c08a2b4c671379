"""Tiny synthetic LUNA16-style CT trees for tests and ``InfNetModality.example``.

Each scan: a body ellipse (~40 HU) with two lungs (~-850 HU), Gaussian noise, and 0..2
spherical nodules (~30 HU) drawn at their annotated diameter; int16 ``.mhd/.raw`` under
``subset0/``, a non-zero origin, in-plane spacing varying per scan. ``annotations.csv``
holds world centres and diameters; ``masks/<uid>.mhd`` the label mask (1..n in row order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tree(root: Path, uids: list[str], seed: int = 0, size: int = 64, depth: int = 20,
               nodules_per_scan: tuple[int, int] = (1, 2), write_masks: bool = True) -> Path:
    """Write scans for ``uids`` under ``root`` and return the annotations CSV path."""
    import pandas as pd

    from .ctio import Volume, nodule_mask, write_volume

    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for i, uid in enumerate(uids):
        sp = np.array([float(rng.uniform(0.6, 0.8)), 0.0, 2.0])
        sp[1] = sp[0]
        origin = np.array([-size * sp[0] / 2, -size * sp[1] / 2 - 10.0, -300.0 + 7.0 * i])
        z, y, x = np.mgrid[0:depth, 0:size, 0:size].astype(np.float32)
        u, v = (x + 0.5) / size * 2 - 1, (y + 0.5) / size * 2 - 1
        hu = np.full((depth, size, size), -1000.0, np.float32)
        hu[(u / 0.95) ** 2 + (v / 0.8) ** 2 < 1] = 40.0
        for cu in (-0.42, 0.42):
            hu[((u - cu) / 0.34) ** 2 + (v / 0.55) ** 2 < 1] = -850.0
        vol = Volume(hu, origin, sp, np.eye(3))
        k = int(rng.integers(nodules_per_scan[0], nodules_per_scan[1] + 1))
        scan_rows = []
        for _ in range(k):
            d = float(rng.uniform(7.0, 12.0))
            cu = float(rng.choice([-0.42, 0.42])) + float(rng.uniform(-0.1, 0.1))
            cv = float(rng.uniform(-0.3, 0.3))
            ix = (cu + 1) / 2 * size - 0.5
            iy = (cv + 1) / 2 * size - 0.5
            iz = float(rng.uniform(5, depth - 6))
            w = vol.index_to_world([ix, iy, iz])
            scan_rows.append((uid, float(w[0]), float(w[1]), float(w[2]), d))
        lab = nodule_mask(vol, [r[1:] for r in scan_rows], uid) if scan_rows else \
            np.zeros(hu.shape, np.uint8)
        hu[lab > 0] = 30.0
        hu += rng.normal(0, 20.0, hu.shape).astype(np.float32)
        vol.array = hu
        write_volume(root / "subset0" / f"{uid}.mhd", vol, dtype=np.int16)
        if write_masks:
            write_volume(root / "masks" / f"{uid}.mhd", vol.like(lab.astype(np.uint8)))
        rows.extend(scan_rows)
    ann = root / "annotations.csv"
    pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]) \
        .to_csv(ann, index=False)
    return ann

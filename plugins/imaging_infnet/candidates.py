"""A LUNA16-style candidates file: where to cut the slices of unlabelled scans.

LUNA16 ships ``candidates_V2.csv`` (``seriesuid, coordX, coordY, coordZ, class``; world
mm), the points that nodule detectors flag: hundreds per scan, most of them vessels and
walls. ``semi.candidates`` names such a file; the unlabelled series' slices are cut at its
points (crops centred on them in crop mode), so that U looks like what a detector hands a
segmenter, and nothing about U comes from annotations or masks. The ``class`` column, a
label, is never used: the reader drops every other column as soon as the file is parsed.

Errors are one line naming the file and the line: a missing column, a row whose series
id is empty or whose coordinates are not finite numbers, a series that is not under the
CT root, a point outside its scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungfuse.core.errors import DataError

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


@dataclass(frozen=True)
class CandidatePoint:
    """One row: series, world point (x, y, z) in mm, and its line in the file (header: 1)."""

    uid: str
    world: tuple[float, float, float]
    line: int


def read_candidates(path: str | Path, known_series: set[str] | None = None
                    ) -> list[CandidatePoint]:
    """Rows of a candidates CSV (``class`` and any other column ignored).

    ``known_series``: the series under the CT root; a row naming another one is an error
    (a typo or the wrong file), not a silent skip."""
    import pandas as pd

    p = Path(path)
    try:  # every column as text (a row with too many fields is an error), then ours only
        df = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise DataError(f"{p}: malformed candidates CSV ({lines[-1].strip()})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(missing)}; a candidates file has "
                        f"{', '.join(COLUMNS)} (world mm) as LUNA16's candidates_V2.csv")
    df = df[list(COLUMNS)]
    uids = df["seriesuid"].str.strip().to_numpy()
    xyz = np.stack([pd.to_numeric(df[c].str.strip(), errors="coerce").to_numpy(float)
                    for c in COLUMNS[1:]], axis=1) if len(df) else np.zeros((0, 3))
    empty = np.flatnonzero(uids == "")
    if len(empty):
        raise DataError(f"{p}, line {empty[0] + 2}: empty seriesuid")
    bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
    if len(bad):
        i = int(bad[0])
        c = next(c for j, c in enumerate(COLUMNS[1:]) if not math.isfinite(xyz[i, j]))
        raise DataError(f"{p}, line {i + 2}: {c} {df[c].iat[i]!r} is not a finite number "
                        "(world mm)")
    if known_series is not None:
        unknown = np.flatnonzero(~np.isin(uids, sorted(known_series)))
        if len(unknown):
            i = int(unknown[0])
            raise DataError(f"{p}, line {i + 2}: series {uids[i]} is not under the CT root; "
                            "give the candidates file of these scans")
    return [CandidatePoint(str(u), (float(a), float(b), float(c)), i + 2)
            for i, (u, (a, b, c)) in enumerate(zip(uids, xyz, strict=True))]


def sample_per_series(points: list[CandidatePoint], n: int | None, seed: int
                      ) -> list[CandidatePoint]:
    """At most ``n`` points per series, a seeded sample in file order (None: all)."""
    if n is None:
        return points
    by: dict[str, list[CandidatePoint]] = {}
    for q in points:
        by.setdefault(q.uid, []).append(q)
    keep: set[int] = set()
    for uid in sorted(by):
        rows = by[uid]
        if len(rows) <= n:
            keep |= {q.line for q in rows}
            continue
        rng = np.random.default_rng([int(seed), len(rows), *uid.encode()[:32]])
        keep |= {rows[j].line for j in rng.choice(len(rows), size=n, replace=False)}
    return [q for q in points if q.line in keep]

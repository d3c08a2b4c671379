"""The ``infnet`` modality: CT nodules → Inf-Net segmentation → quantitative + deep features.

Imports nothing heavy at module level (``lungfuse plugins`` loads this module).

Leakage rules: ``prepare`` trains the segmenter on the training patients' slices only
(when no checkpoint is given); a given checkpoint's stored training patients must not
include any patient that ``transform`` sees outside the fit's training set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lungfuse.core.contracts import (
    ModalityConfig,
    ModalityContext,
    ModalityPlugin,
    ModalitySection,
)
from lungfuse.core.errors import DataError
from lungfuse.schemas import InputPath

from .config import BrockSettings, FastPath, SliceSettings, TrainSettings, fast_from_config

log = logging.getLogger("lungfuse.imaging")


#: Features of scans already processed in this process, keyed by segmenter fingerprint,
#: series, volume file (path, size, mtime) and its nodule rows: K folds that share one
#: segmentation checkpoint extract each scan's features once.
_FEATURES: dict[tuple, dict[str, float]] = {}
_FEATURES_MAX = 50_000


def _memo_key(fp: str, uid: str, path: Path, nodules: Any,
              dicom_series: str | None = None) -> tuple | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    rows = () if nodules is None else tuple(
        tuple(r) for r in nodules.drop(columns="seriesuid").itertuples(index=False))
    return (fp, uid, str(path), dicom_series, st.st_size, st.st_mtime_ns, rows)


def _remember(key: tuple, row: dict[str, float]) -> None:
    if len(_FEATURES) >= _FEATURES_MAX:
        _FEATURES.pop(next(iter(_FEATURES)))
    _FEATURES[key] = dict(row)


def _default_train() -> TrainSettings:
    return TrainSettings(epochs=3, batch_size=8, multiscale=[1.0], val_fraction=0.0)


class InfNetConfig(ModalityConfig):
    """Settings of the Inf-Net CT modality."""

    kind: Literal["infnet"] = "infnet"
    ct_root: InputPath | None = Field(
        default=None, description="CT root: LUNA16 tree (subset*/<uid>.mhd), NIfTI/NRRD files "
        "or DICOM folders named by series uid.")
    volumes: dict[str, InputPath] | None = Field(
        default=None, description="Explicit series uid -> volume (file or DICOM folder), "
        "added to what ct_root holds.")
    dicom_series: dict[str, str] | None = Field(
        default=None, description="Volume id (series uid of the cohort, or the patient id "
        "when scoring with `ct:`) -> SeriesInstanceUID to read from its DICOM study folder; "
        "without it the thinnest axial CT series is read (docs/ct.md).")
    annotations: InputPath | None = Field(default=None, description="LUNA16 annotations.csv.")
    masks_dir: InputPath | None = Field(default=None, description="Ground-truth masks <uid>.mhd "
                                        "(used for training where present).")
    candidates: InputPath | None = Field(default=None, description="Candidates CSV "
                                         "(seriesuid, coordX, coordY, coordZ[, diameter_mm]).")
    candidate_source: Literal["annotations", "candidates", "sweep"] = Field(
        default="annotations", description="Where nodules come from at feature time.")
    series_column: str | None = Field(
        default="seriesuid", description="Cohort column linking CT; where the cohort has no "
        "such column (or null) the patient id is the series uid.")
    checkpoint: InputPath | None = Field(default=None, description="Segmentation checkpoint "
                                         "(lungfuse .pt/.ckpt or the authors' .pth); without "
                                         "it prepare() trains one on the training patients.")
    train: TrainSettings = Field(default_factory=_default_train)
    slices: SliceSettings = Field(default_factory=lambda: SliceSettings(img_size=128))
    fast: FastPath = Field(default_factory=FastPath)
    _fast_from_config = field_validator("fast")(fast_from_config)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    candidate_diameter_mm: float = Field(default=10.0, gt=0,
                                         description="Search size where a candidate has none.")
    hidden_dim: int = Field(default=64, ge=1)
    brock: BrockSettings = Field(
        default_factory=BrockSettings, description="Patient page: the Brock (PanCan) and "
        "Lung-RADS section; clinical-table columns of the inputs the CT cannot give.")

    @model_validator(mode="after")
    def _some_ct(self) -> InfNetConfig:
        if self.ct_root is None and not self.volumes:
            raise ValueError("infnet needs `ct_root` (a CT folder) or `volumes` (uid: file)")
        return self


class InfNetModality(ModalityPlugin):
    """CT nodule features from an Inf-Net segmenter (trained on training patients only)."""

    name = "infnet"
    api_version = 1
    config_model = InfNetConfig
    description = "CT: Inf-Net nodule segmentation, quantitative features + deep embedding"

    def __init__(self, config: InfNetConfig) -> None:
        super().__init__(config)
        self.model_state_: dict[str, Any] | None = None
        self.fit_patients_: list[str] | None = None
        self._predictor = None
        self._fp = None

    # ------------------------------------------------------------------ helpers
    def _series(self, cohort) -> dict[str, str]:
        """patient_id -> series uid (non-null only)."""
        col = self.config.series_column
        if col is not None and col in cohort.columns:
            s = cohort[col]
            return {str(p): str(u) for p, u in s.items() if u is not None and u == u and str(u)}
        return {str(p): str(p) for p in cohort.index}

    def _volumes(self) -> dict[str, Path]:
        from .ctio import find_volumes

        vols = find_volumes(self.config.ct_root) if self.config.ct_root is not None else {}
        vols.update({str(k): Path(v) for k, v in (self.config.volumes or {}).items()})
        return vols

    def _read_volume(self, uid: str, path: Path):
        """The scan of volume ``uid``; from a DICOM study folder, the series configured in
        ``dicom_series`` for it, else the one ctio's rule picks (``meta['series']``)."""
        from .ctio import read_volume

        return read_volume(path, (self.config.dicom_series or {}).get(uid))

    def _annotations(self):
        from .ctio import read_annotations

        return read_annotations(self.config.annotations) if self.config.annotations else None

    # ------------------------------------------------------------------ contract
    def available(self, cohort, ctx: ModalityContext) -> set[str]:
        vols = self._volumes()
        return {p for p, u in self._series(cohort).items() if u in vols}

    def prepare(self, train, ctx: ModalityContext) -> None:
        import torch

        from . import ctio
        from .dataset import build_pool
        from .train import fit, load_checkpoint

        self.fit_patients_ = sorted(str(p) for p in train.index)
        if self.config.checkpoint is not None:
            model, meta = load_checkpoint(self.config.checkpoint)
            self.model_state_ = {"hparams": model.hparams_dict, "state_dict": model.state_dict(),
                                 "slices": meta["slices"].model_dump(),
                                 "training_patients": meta["training_patients"]}
            self._predictor = None
            self._fp = None
            return
        series = self._series(train)
        vols = self._volumes()
        items = [(u, vols[u]) for p, u in sorted(series.items()) if u in vols]
        if not items:
            raise DataError(f"{self.config.ct_root}: no training patient has a CT volume; "
                            "check ct_root and the cohort's series column")
        ann = self._annotations()
        if ann is None and self.config.masks_dir is None:
            raise DataError("infnet: training a segmenter needs `annotations` or `masks_dir`")
        uid2p = {u: p for p, u in series.items()}
        cases = ctio.load_cases(items, ann, self.config.masks_dir, self.config.train.refine_hu,
                                uid2p, progress=ctx.progress,
                                series_uids=self.config.dicom_series)
        ts = self.config.train.model_copy(update={"seed": ctx.seed})
        pool = build_pool(cases, self.config.slices, ts.negatives_per_positive, ctx.seed,
                          ts.max_slices)
        torch.manual_seed(ctx.seed)
        module, ckpt = fit(pool, None, self.config.slices, ts, Path(ctx.workdir) / "segmenter",
                           sorted(series), progress=ctx.progress)
        ctx.log.info("infnet: segmenter trained on %d slices of %d training patients -> %s",
                     len(pool), len(cases), ckpt)
        self.model_state_ = {"hparams": module.model.hparams_dict,
                             "state_dict": {k: v.detach().clone()
                                            for k, v in module.model.state_dict().items()},
                             "slices": self.config.slices.model_dump(),
                             "training_patients": sorted(series)}
        self._predictor = None
        self._fp = None

    def _fingerprint(self) -> str:
        """Hash of what a scan's features depend on besides the scan and its nodules: the
        segmenter's weights and slice settings, and the feature settings."""
        if self._fp is None:
            import hashlib
            import json

            h = hashlib.sha256()
            for k, v in sorted(self.model_state_["state_dict"].items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            h.update(json.dumps({"hparams": self.model_state_["hparams"],
                                 "slices": self.model_state_["slices"],
                                 "cfg": self.config.model_dump(
                                     mode="json", include={"candidate_source", "threshold",
                                                           "candidate_diameter_mm", "fast"})},
                                sort_keys=True, default=str).encode())
            self._fp = h.hexdigest()
        return self._fp

    def _get_predictor(self):
        if self._predictor is None:
            from .infer import Predictor
            from .network import InfNet

            if self.model_state_ is None:
                raise RuntimeError("infnet: transform called before prepare")
            hp = self.model_state_["hparams"]
            model = InfNet.from_hparams(hp, "fitted infnet state")
            model.load_state_dict(self.model_state_["state_dict"])
            self._predictor = Predictor(model, SliceSettings(**self.model_state_["slices"]),
                                        self.config.fast)
        return self._predictor

    def _check_leak(self, patients: set[str]) -> None:
        trained = self.model_state_.get("training_patients") if self.model_state_ else None
        if trained is None:
            log.warning("infnet: the segmentation checkpoint does not record its training "
                        "patients; cannot verify it never saw evaluation patients")
            return
        fit = set(self.fit_patients_ or [])
        leaked = sorted((set(trained) & patients) - fit)
        if leaked:
            raise DataError(
                f"infnet: the segmentation checkpoint was trained on {len(leaked)} patient(s) "
                f"outside this fit's training set (e.g. {leaked[0]}); retrain it on training "
                "patients only or drop the checkpoint")

    def transform(self, patients, ctx: ModalityContext):
        import numpy as np
        import pandas as pd

        from . import ctio
        from . import ranks as rk
        from .features import Nodule, embedding_of, patient_row, segment_at, sweep
        from .progress import bar

        series = self._series(patients)
        # leakage check on patients and on their series uids (checkpoints may store either)
        self._check_leak(set(series) | set(series.values()))
        pred = self._get_predictor()
        vols = self._volumes()
        ann = self._annotations() if self.config.candidate_source == "annotations" else None
        cand = None
        if self.config.candidate_source == "candidates":
            if self.config.candidates is None:
                raise DataError("infnet: candidate_source 'candidates' needs `candidates: FILE`")
            cand = pd.read_csv(self.config.candidates, dtype={"seriesuid": str})
        if self.config.candidate_source == "annotations" and ann is None:
            raise DataError("infnet: candidate_source 'annotations' needs `annotations: FILE`")
        dim = pred.model.embedding_dim
        fp = self._fingerprint()
        rows: dict[str, dict[str, float]] = {}
        # several ranks with a shared folder (LUNGFUSE_CT_SHARE): each does its share of
        # the scans and reads the others' rows from the folder (ranks.py, docs/scaling.md)
        shared = rk.SharedRows.from_env()
        mine = set(rk.share(sorted({u for u in series.values() if u in vols}),
                            shared.ranks)) if shared is not None else set()
        waiting: list[tuple[str, str, tuple]] = []
        for pid, uid in bar(sorted(series.items()), desc="CT features", enabled=ctx.progress):
            if uid not in vols:
                continue
            src = ann if ann is not None else cand
            sel = src[src["seriesuid"] == uid] if src is not None else None
            key = _memo_key(fp, uid, vols[uid], sel, (self.config.dicom_series or {}).get(uid))
            if key is not None and key in _FEATURES:
                rows[pid] = dict(_FEATURES[key])
                continue
            if shared is not None and key is not None:
                rec = shared.get(key)
                if rec is None and uid not in mine:
                    waiting.append((pid, uid, key))  # another rank's scan
                    continue
                if rec is not None:
                    waiting.append((pid, uid, key))  # read below, with the others
                    continue
            try:
                vol = self._read_volume(uid, vols[uid])
                nodules: list[Nodule] = []
                if self.config.candidate_source == "sweep":
                    nodules = sweep(pred, vol, self.config.threshold)
                else:
                    for r in sel.itertuples(index=False):
                        d = float(getattr(r, "diameter_mm", self.config.candidate_diameter_mm))
                        c = ctio.nodule_centres_index(vol, [(r.coordX, r.coordY, r.coordZ,
                                                             d)], uid)[0][0]
                        nd = segment_at(pred, vol, c, d, self.config.threshold)
                        if self.config.candidate_source == "candidates" and \
                                nd.features["seg_fallback"]:
                            continue  # a candidate the network does not see is no nodule
                        nodules.append(nd)
                emb = None
                if nodules:
                    top = max(nodules, key=lambda nd: nd.features["volume_mm3"])
                    emb = embedding_of(pred, vol, top)
                rows[pid] = patient_row(nodules, emb, dim)
                if key is not None:
                    _remember(key, rows[pid])
                    if shared is not None:
                        shared.put(key, {"row": rows[pid]})
            except DataError as exc:
                log.warning("infnet: skipping patient %s (series %s): %s", pid, uid, exc)
                if shared is not None and key is not None:
                    shared.put(key, {"skipped": str(exc)})
        if waiting:
            shared.wait([k for _, _, k in waiting], "infnet CT features")
            for pid, uid, key in waiting:
                rec = shared.get(key) or {"skipped": "unreadable shared record"}
                if "row" in rec:
                    rows[pid] = {k: float(v) for k, v in rec["row"].items()}
                    _remember(key, rows[pid])
                else:
                    log.warning("infnet: skipping patient %s (series %s): %s", pid, uid,
                                rec["skipped"])
        cols = list(patient_row([], None, dim))
        df = pd.DataFrame.from_dict(rows, orient="index", columns=cols).astype("float64")
        df = df.replace([np.inf, -np.inf], 0.0).fillna(0.0)
        df.index.name = "patient_id"
        return df.sort_index()

    def scoring_config(self, patient, workdir: Path) -> InfNetConfig | None:
        """A new patient's own scan: the volume under the patient id, the nodule given (or
        a sweep of the whole scan when no location is known)."""
        ct = patient.get("ct")
        if ct is None:
            return None  # read through ct_root and the cohort's series column, as configured
        pid = str(patient["id"])
        update: dict[str, Any] = {"volumes": {pid: Path(ct)}, "series_column": None,
                                  "candidate_source": "sweep"}
        if patient.get("series"):  # `score --series UID`: that series of the study folder
            update["dicom_series"] = {**(self.config.dicom_series or {}),
                                      pid: str(patient["series"])}
        nod = patient.get("nodule")
        if nod:
            import hashlib

            import pandas as pd

            from lungfuse.core import atomic

            # the id may hold '/', ':' or be long: name the file by a hash of it
            digest = hashlib.sha256(pid.encode("utf-8")).hexdigest()[:16]
            path = Path(workdir) / f"nodule-{digest}.csv"
            with atomic.atomic_path(path) as tmp:
                pd.DataFrame([{"seriesuid": pid, "coordX": nod["x"], "coordY": nod["y"],
                               "coordZ": nod["z"], "diameter_mm": nod["diameter_mm"]}]
                             ).to_csv(tmp, index=False)
            update.update(annotations=path, candidate_source="annotations")
        return self.config.model_copy(update=update)

    def scoring_input(self, patient, workdir: Path) -> dict[str, Any] | None:
        """Which scan was read for a new patient's own ``ct``: the volume file, or the
        series of a DICOM study folder (uid, description, slices, thickness) and whether
        it was named (``series`` / ``dicom_series``) or chosen by ctio's rule. Called on
        the instance built from :meth:`scoring_config`'s config, so the choice is the one
        ``transform`` made (headers only are read again)."""
        ct = patient.get("ct")
        if ct is None:
            return None
        path, pid = Path(ct), str(patient["id"])
        if not path.is_dir():
            return {"text": f"CT: volume file {path.name}", "path": str(path)}
        from .ctio import choose_series, find_dicom_series

        found = find_dicom_series(path)
        want = (self.config.dicom_series or {}).get(pid)
        chosen = choose_series(path, found, want)
        thick = "?" if chosen.thickness_mm is None else f"{chosen.thickness_mm:g}"
        desc = chosen.description.encode("ascii", "backslashreplace").decode("ascii")
        how = ("the series named for this patient" if want is not None else
               "chosen by the rule: axial CT, no localiser, thinnest slices, then most "
               "slices (docs/ct.md)")
        return {"text": f"CT series read: {chosen.uid} ('{desc}', {chosen.slices} slices, "
                        f"{thick} mm), {how}; {len(found)} series in {path.name}",
                "series": chosen.info(), "chosen_by": "given" if want is not None else "rule",
                "series_in_folder": len(found), "path": str(path)}

    # ------------------------------------------------------------------ page hooks
    def patient_section(self, patient, row, workdir: Path) -> ModalitySection | None:
        """The patient page's "Nodule" section: the Inf-Net segmentation (red) on the
        nodule's CT slice, with a ground-truth mask (green) where ``masks_dir`` has one.

        The scan is the one given for the patient (``ct``) or the one the configured
        sources hold for the patient's series (``series_column`` of ``row``); the
        segmentation is centred on the given ``nodule``, else the first annotated nodule
        of the series, else the largest component a sweep finds. None without a fitted
        segmenter or a scan.

        With ``brock.enabled`` (the default) the section brings a second one (``more``):
        the Brock (PanCan) probability and the Lung-RADS v2022 category of that nodule,
        from the inputs measured on the scan (:mod:`.brock_inputs`) and those the clinical
        row holds (``brock:`` columns), each input with its source (:mod:`.brock_page`);
        its ``lead`` and ``lead_missing`` feed the page's first sentence."""
        import pandas as pd

        from .figures import facts_line, nodule_figure, predictor_of

        if not (self.model_state_ or {}).get("state_dict"):
            return None
        pid = str(patient["id"])
        if patient.get("ct") is not None:
            uid, path = pid, Path(patient["ct"])
        else:
            col = self.config.series_column
            value = row.get(col) if col is not None else None
            uid = pid if value is None or pd.isna(value) or not str(value) else str(value)
            path = self._volumes().get(uid)
        if path is None:
            return None
        nod = patient.get("nodule")
        loc = (float(nod["x"]), float(nod["y"]), float(nod["z"]),
               float(nod["diameter_mm"])) if nod else None
        # the series scored (`--series`, else dicom_series, else ctio's rule), not another
        series = ((patient.get("series") if patient.get("ct") is not None else None)
                  or (self.config.dicom_series or {}).get(uid)) if path.is_dir() else None
        drawn = nodule_figure(predictor_of(self.model_state_), path, uid, nodule=loc,
                              annotations=self.config.annotations,
                              masks_dir=self.config.masks_dir,
                              threshold=self.config.threshold, title=pid,
                              count=self.config.brock.enabled, series_uid=series)
        section = ModalitySection("Nodule", paragraphs=[
            f"Inf-Net segmentation (red) on slice {drawn.slice} ({drawn.source}); green: a "
            f"ground-truth mask where one exists. {facts_line(drawn.facts)}"])
        section.add_figure(drawn.figure, f"{pid}: segmented nodule")
        if self.config.brock.enabled:
            from .brock_inputs import measure_brock_inputs
            from .brock_page import brock_section

            ct = measure_brock_inputs(drawn.volume, drawn.nodule, drawn.count, drawn.count_how,
                                      annotated_diameter_mm=drawn.diameter_mm)
            section.more.append(brock_section(ct, row, self.config.brock, pid))
        return section

    def report_section(self, patients, workdir: Path, n: int = 3) -> ModalitySection | None:
        """The run report's "Example segmentations": the first fold's Inf-Net on the scans
        of the first ``n`` held-out patients (a scan that cannot be read is skipped with a
        warning naming the patient). None without a fitted segmenter or any scan drawn."""
        from .figures import nodule_figure, predictor_of

        if not (self.model_state_ or {}).get("state_dict"):
            return None
        series, vols = self._series(patients), self._volumes()
        predictor = None
        section = ModalitySection("Example segmentations", paragraphs=[
            "Inf-Net of the first fold (trained on that fold's training patients or given as "
            "a checkpoint trained elsewhere) on held-out patients' scans."])
        for pid in [str(p) for p in patients.index[:n]]:
            uid = series.get(pid, pid)
            if uid not in vols:
                continue
            try:
                predictor = predictor or predictor_of(self.model_state_)
                drawn = nodule_figure(predictor, vols[uid], uid,
                                      annotations=self.config.annotations,
                                      masks_dir=self.config.masks_dir,
                                      threshold=self.config.threshold,
                                      title=f"{pid} (held out)")
            except Exception as exc:  # noqa: BLE001 - one bad scan must not cost the others
                log.warning("infnet: no segmentation figure for %s: %s", pid, exc)
                continue
            section.add_figure(drawn.figure, f"{pid}: {drawn.source}; red = Inf-Net, "
                                             "green = ground truth")
        return section if section.figures else None

    def build_encoder(self, n_features: int):
        import torch.nn as nn

        h, d = self.config.hidden_dim, self.config.embedding_dim
        enc = nn.Sequential(nn.LayerNorm(n_features), nn.Linear(n_features, h), nn.ReLU(),
                            nn.Dropout(0.1), nn.Linear(h, d))
        enc.embedding_dim = d
        return enc

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model_state_, "fit_patients": self.fit_patients_}

    def load_state_dict(self, state) -> None:
        self.model_state_ = state["model"]
        self.fit_patients_ = state.get("fit_patients")
        self._predictor = None
        self._fp = None

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> InfNetConfig:
        """Tiny CT tree: every patient but each fourth has a 64-px scan named by its id."""
        from .synthetic import write_tree

        root = Path(workdir) / "ct"
        uids = [p for i, p in enumerate(patient_ids) if i % 4 != 3]
        ann = write_tree(root, uids, seed=0, size=64, depth=16)
        return InfNetConfig(
            ct_root=root, annotations=ann, masks_dir=root / "masks",
            train=TrainSettings(backbone="test_resnet", channel=8, epochs=1, batch_size=8,
                                multiscale=[1.0], lr=1e-3, val_fraction=0.0,
                                negatives_per_positive=0.25),
            slices=SliceSettings(img_size=64), fast=FastPath(enabled=False),
            embedding_dim=8, hidden_dim=16)

"""Pydantic settings of the imaging plugin (no torch here: imported when listing plugins):
slices, fast path, the modality config, segmenter training and its semi-supervised
section (``semi:``, read by ``lungfuse segment train`` when ``mode: semi``; see
docs/semi_supervised.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lungfuse.schemas import InputPath, OutputPath


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SemiSettings(BaseModel):
    """Pseudo-label training on unlabelled slices of training patients.

    ``progressive`` (Semi-Inf-Net): each round predicts the next ``k_per_round`` unlabelled
    slices with the current model, adds them with their pseudo masks to the pool for good,
    and fine-tunes. ``confidence``: each round re-labels every unlabelled slice taken so far
    (``round * k_per_round``) with the teacher, keeps a slice when its mean confidence
    ``mean(max(p, 1 - p)) >= tau`` (over all its pixels, or over those with
    ``p > ignore_band[0]`` with ``confidence_over: foreground``), ignores pixels with
    ``ignore_band[0] < p < ignore_band[1]`` in the loss, and replaces the previous round's
    pseudo set. ``fixmatch`` (FixMatch, Sohn et al. 2020, for segmentation as in UniMatch,
    Yang et al. 2023): one on-line phase of ``steps`` optimiser steps, each on a labelled
    batch and an unlabelled batch whose confident pixels (``max(p, 1 - p) >= tau`` on a
    weakly augmented view through the teacher) supervise the student on a strongly
    augmented view (and on dropout-perturbed features, ``feature_dropout``). ``bcp``
    (bidirectional copy-paste, Bai et al. CVPR 2023): the same kind of on-line phase, whose
    inputs are a labelled and an unlabelled slice pasted into each other (a box of
    ``copy_paste_box`` of the side), supervised by the true mask where the labelled slice
    shows and by the teacher's pseudo mask (largest component) where the unlabelled shows.
    All finish with a fine-tune on the labelled slices only (``final_epochs``, 0: none).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: Literal["progressive", "confidence", "fixmatch", "bcp"] = "progressive"
    k_per_round: int = Field(default=5, ge=1, description="Unlabelled slices taken per round.")
    rounds: int | None = Field(default=None, ge=1, description="Number of rounds (default: "
                               "until every unlabelled slice has been taken).")
    epochs_per_round: int = Field(default=10, ge=1)
    lr: float = Field(default=3e-4, gt=0, description="Learning rate of the round fine-tunes.")
    batch_size: int = Field(default=16, ge=1)
    final_epochs: int = Field(default=10, ge=0, description="Closing fine-tune on the "
                              "labelled slices (0: none).")
    final_lr: float = Field(default=1e-4, gt=0)
    hard_labels: bool = Field(default=True, description="Pseudo masks thresholded at 0.5 "
                              "(else the predicted probabilities are the targets).")
    tau: float = Field(default=0.97, gt=0.5, le=1.0,
                       description="confidence: keep slices with mean max(p, 1-p) >= tau; "
                       "fixmatch: a pixel's pseudo label counts when max(p, 1-p) >= tau; "
                       "bcp: not read (every pixel counts, as in BCP).")
    confidence_over: Literal["slice", "foreground"] = Field(
        default="slice", description="confidence: the pixels the slice confidence averages "
        "over. 'slice': all of them (background dominates, and a missed nodule is a "
        "confidently empty mask); 'foreground': those with p > ignore_band[0], so a slice is "
        "kept when its predicted nodule is crisp, and a slice predicted empty is never kept.")
    ignore_band: tuple[float, float] = Field(
        default=(0.2, 0.8), description="confidence: pixels with p strictly inside are "
        "ignored by the loss.")
    ema_decay: float | None = Field(default=None, gt=0, lt=1, description="Teacher = EMA of "
                                    "the student with this decay per step (None: no teacher; "
                                    "fixmatch then labels with the student itself).")
    steps: int = Field(default=1000, ge=1, description="fixmatch, bcp: optimiser steps of "
                       "the on-line phase (each: a labelled and an unlabelled batch).")
    unlabelled_batch_size: int | None = Field(
        default=None, ge=1, description="fixmatch, bcp: unlabelled slices per step "
        "(default: batch_size).")
    lambda_u: float = Field(default=1.0, ge=0, description="fixmatch: weight of the "
                            "unlabelled loss after the ramp-up; bcp: weight of the "
                            "pixels that show the unlabelled slice (BCP's alpha: 0.5).")
    rampup_steps: int = Field(default=200, ge=0, description="fixmatch, bcp: the unlabelled "
                              "weight rises as exp(-5 (1 - t)^2), t = step / rampup_steps.")
    feature_dropout: float = Field(
        default=0.5, ge=0, lt=1, description="fixmatch: UniMatch's feature-perturbation "
        "stream: channel dropout with this rate on the student's backbone features of the "
        "weak view, supervised by the same pseudo labels (0: no such stream).")
    cutmix: float = Field(default=0.5, ge=0, le=1, description="fixmatch: probability "
                          "that a strong view gets a box (image and pseudo label) of "
                          "another unlabelled slice pasted in.")
    unlabelled_loss: Literal["bce", "balanced", "structure"] = Field(
        default="bce", description="fixmatch: the unlabelled loss. 'bce': per-pixel BCE of "
        "the four side outputs over the confident pixels, divided by all pixels (FixMatch / "
        "UniMatch); 'balanced': half the mean BCE over the confident pixels called nodule, "
        "half over those called background (nodules are ~0.2 % of the pixels); 'structure': Inf-Net's weighted BCE + IoU + edge loss with the confident "
        "pixels as weight, whose IoU term pushes an empty pseudo mask's every pixel to 0 "
        "(most unlabelled crops), so the student learns to miss nodules.")
    final_model: Literal["student", "teacher"] = Field(
        default="student", description="fixmatch, bcp: the model the on-line phase hands on: "
        "the student, or the EMA teacher (needs ema_decay; Mean Teacher's choice).")
    copy_paste_box: float = Field(
        default=2 / 3, gt=0, lt=1, description="bcp: side of the pasted box as a share of "
        "the slice's side (BCP's 2/3); its position is drawn per slice.")
    checkpoint_every: int = Field(default=50, ge=1, description="fixmatch, bcp: steps "
                                  "between resumable states (a killed run resumes from the last).")
    candidates: InputPath | None = Field(
        default=None, description="LUNA16-style candidates CSV (seriesuid, coordX, coordY, "
        "coordZ in world mm; a class column is never used): the unlabelled series' slices "
        "are cut at these points (crops centred on them with slices.mode crop) instead of "
        "every slice_stride-th whole slice.")
    candidate_neighbours: int = Field(default=0, ge=0, description="candidates: also this "
                                      "many slices above and below each candidate's slice.")
    labelled_candidates: bool = Field(
        default=True, description="candidates: the labelled training scans' candidate "
        "points are cut as the unlabelled ones (with their true masks) and added to the "
        "labelled slices, so that the model which labels U has seen crops centred on "
        "look-alikes; false: labelled slices are nodule-centred and random crops only.")
    candidates_per_series: int | None = Field(
        default=None, ge=1, description="candidates: at most this many per series (a "
        "seeded sample; LUNA16 has hundreds per scan).")
    labelled_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="Experiments: keep the labels of this fraction "
        "of the training slices (seeded) and treat the rest as unlabelled.")
    unlabelled_series: list[str] = Field(
        default_factory=list, description="Series uids under ct_root whose labels are not "
        "used: their slices form the unlabelled pool.")
    slice_stride: int = Field(default=1, ge=1, description="Unlabelled scans without "
                              "candidates: every n-th slice.")
    test_patients: list[str] = Field(default_factory=list, description="Patients never used "
                                     "(neither labelled nor unlabelled).")
    test_patients_file: InputPath | None = Field(
        default=None, description="Test patients: a run's splits.parquet/.csv (patient_id, "
        "split == 'test') or a text file with one patient id per line.")
    init_checkpoint: InputPath | None = Field(default=None, description="Start from this "
                                              "supervised model instead of training one.")
    state_dir: OutputPath | None = Field(default=None, description="Round states (default: "
                                   "out_dir/semi); a rerun resumes from them.")

    @model_validator(mode="after")
    def _check(self) -> SemiSettings:
        lo, hi = self.ignore_band
        if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
            raise ValueError(f"ignore_band must satisfy 0 <= lo <= 0.5 <= hi <= 1, "
                             f"got {self.ignore_band}")
        return self


class SliceSettings(_Section):
    """How 2.5D slices are cut from a scan (stored in every checkpoint)."""

    img_size: int = Field(default=352, ge=32, description="Slice side in pixels (multiple of 32).")
    mode: Literal["full", "crop"] = Field(
        default="full", description="full: whole slice resized; crop: nodule-centred crop.")
    crop_mm: float = Field(default=64.0, gt=0, description="Side of the crop in mm (mode crop).")
    hu_min: float = -1000.0
    hu_max: float = 400.0
    context: int = Field(default=1, ge=0, description="Slices either side (1: 3 channels).")

    @model_validator(mode="after")
    def _check(self) -> SliceSettings:
        if self.img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {self.img_size}")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must exceed hu_min")
        if self.context != 1:
            raise ValueError("context must be 1 (3 adjacent slices as the 3 input channels)")
        return self


class TrainSettings(_Section):
    """Supervised Inf-Net training (defaults of the reference recipe where it has one)."""

    backbone: str = "res2net50d"
    channel: int = Field(default=32, ge=4)
    pretrained_weights: InputPath | None = None
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=24, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    lr_decay_every: int = Field(default=50, ge=1, description="lr x0.1 every this many epochs.")
    grad_clip: float = Field(default=0.5, gt=0)
    multiscale: list[float] = Field(default_factory=lambda: [0.75, 1.0, 1.25])
    negatives_per_positive: float = Field(default=0.5, ge=0)
    augment: bool = True
    refine_hu: float | None = Field(default=None, description="Refine annotation balls by HU.")
    val_fraction: float = Field(default=0.2, ge=0, lt=1, description="Scans held for validation.")
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)
    max_slices: int | None = Field(default=None, ge=1, description="Cap on the slice pool.")
    precision: Literal["32-true", "bf16-mixed"] = Field(
        default="32-true", description="Lightning precision of segmenter training: "
        "bf16-mixed runs forward and backward under bf16 autocast with float32 weights "
        "(fast on CPUs with AMX and on GPUs; slower than float32 on CPUs without bf16 "
        "matrix units, bench/results/infnet_speed_scale.md).")


class FastPath(_Section):
    """Inference speed switches (used by predict and feature extraction by default)."""

    enabled: bool = True
    compile: bool = True
    freeze: bool = Field(default=True, description="With compile: inductor freezing (weights "
                         "as constants: BatchNorm folded into convolutions, weights "
                         "pre-packed); inference only.")
    bf16: bool = True
    channels_last: bool = Field(default=True, description="channels_last memory layout; "
                                "also used with the fast path off (float32, eager).")
    fold_batchnorm: bool = Field(default=True, description="Eager inference (fast path off, "
                                 "or compile off): run a copy of the network with BatchNorm "
                                 "folded into the convolutions.")
    batch_size: int = Field(default=8, ge=1)
    int8: bool = Field(default=False, description="Opt-in int8 inference (with compile): "
                       "post-training quantisation (torchao PT2E, X86InductorQuantizer: int8 "
                       "convolutions on VNNI/AMX) calibrated on training slices given to the "
                       "predictor; needs the torchao package. Replaces bf16.")
    aot: bool = Field(default=True, description="With compile: build the network once "
                      "into an AOTInductor package (torch.export + AOTInductor, freezing, "
                      "bf16 autocast recorded in the graph) kept in this user's private "
                      "keyed compile cache folder (LUNGFUSE_COMPILE_CACHE), and load it in "
                      "later processes instead of compiling again (first call in seconds, "
                      "not minutes). Never loaded from anywhere else; with the cache off, or "
                      "if export/build fails (one warning), torch.compile as before.")


def fast_from_config(fast: FastPath) -> FastPath:
    """``fast`` as the ``infnet`` modality's config may set it: ``int8`` is refused there,
    because the CT modality has no calibration slices to give the int8 ranges yet;
    ``segment predict`` / ``evaluate`` take it with ``calibration_series``, and Python
    code with ``infer.Predictor(..., calibration=...)`` (docs/scaling.md). Refused at
    validation, so the error comes before any output folder exists."""
    if fast.int8:
        raise ValueError("fast.int8 cannot be set in the infnet modality's config yet (it "
                         "passes no calibration slices); remove it, or use `lungfuse segment "
                         "predict` with fast.int8 and calibration_series (docs/scaling.md)")
    return fast


class BrockSettings(_Section):
    """Where the patient page's Brock (PanCan) section takes the inputs the CT cannot give.

    Each ``*_column`` names a column of the scoring input's clinical table (None: not
    read, so the input is missing). The defaults are the synthetic cohort's column names.
    A column the table lacks, or a blank value, is a missing input and the page says so;
    ``emphysema_column`` is read only to override the CT's measured LAA-950 call (a
    radiologist's read)."""

    enabled: bool = Field(default=True, description="Show the Brock (PanCan) and Lung-RADS "
                          "section on the patient page.")
    age_column: str | None = Field(default="age", description="Column of age in years.")
    sex_column: str | None = Field(default="sex", description="Column of sex (F/M, "
                                   "female/male).")
    family_history_column: str | None = Field(
        default="family_history", description="Column of family history of lung cancer "
        "(yes/no, 1/0).")
    emphysema_column: str | None = Field(
        default=None, description="Column of a radiologist's emphysema call (yes/no), "
        "overriding the CT's LAA-950.")


class SegmentConfig(_Section):
    """`lungfuse segment train|predict|evaluate` config (YAML)."""

    ct_root: InputPath = Field(description="CT root (LUNA16 tree, NIfTI/NRRD files, DICOM folders).")
    annotations: InputPath | None = Field(default=None, description="LUNA16 annotations.csv.")
    masks_dir: InputPath | None = Field(default=None, description="Ground-truth masks by uid.")
    series: list[str] | None = Field(default=None, description="Restrict to these series uids.")
    clinical: InputPath | None = Field(
        default=None, description="Cohort table (patient_id, seriesuid) for patient ids.")
    out_dir: OutputPath = Field(default=Path("segment_out"))
    checkpoint: OutputPath | None = Field(default=None, description="Model for predict/evaluate "
                                          "(relative to the config file).")
    resume: OutputPath | None = Field(default=None, description="Lightning checkpoint to resume.")
    slices: SliceSettings = Field(default_factory=SliceSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    fast: FastPath = Field(default_factory=FastPath)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    overlays: bool = True

    calibration_series: list[str] | None = Field(
        default=None, description="With fast.int8: series uids under ct_root whose slices "
        "calibrate the int8 ranges: training scans, never the ones predicted or evaluated "
        "(a scan in both is refused).")
    calibration_slices: int = Field(default=64, ge=1, le=1024, description="With fast.int8: "
                                    "how many slices, evenly spread over the calibration "
                                    "scans (at most 1024: 1.5 GB of float32 at 352 px).")

    @model_validator(mode="after")
    def _int8_needs_calibration(self) -> SegmentConfig:
        if self.fast.int8:
            if not self.calibration_series:
                raise ValueError("fast.int8 needs calibration_series: the uids of training "
                                 "scans under ct_root whose slices set the int8 ranges")
            both = sorted(set(self.calibration_series) & set(self.series or []))
            if both:
                raise ValueError(f"calibration_series and series share {both[:3]}: int8 is "
                                 f"calibrated on training scans, never on the scans it "
                                 f"predicts; take them out of one list")
        return self

    mode: Literal["supervised", "semi"] = Field(
        default="supervised", description="train: supervised, or semi-supervised (see `semi`).")
    semi: SemiSettings = Field(default_factory=SemiSettings)

"""Settings of semi-supervised Inf-Net training (no torch here: imported with the config).

``lungfuse segment train`` reads them from the ``semi:`` section of a segment config when
``mode: semi``. See docs/semi_supervised.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lungfuse.schemas import InputPath, OutputPath


class SemiSettings(BaseModel):
    """Pseudo-label training on unlabelled slices of training patients.

    ``progressive`` (Semi-Inf-Net): each round predicts the next ``k_per_round`` unlabelled
    slices with the current model, adds them with their pseudo masks to the pool for good,
    and fine-tunes. ``confidence``: each round re-labels every unlabelled slice taken so far
    (``round * k_per_round``) with the teacher, keeps a slice when its mean confidence
    ``mean(max(p, 1 - p)) >= tau`` (over all its pixels, or over those with
    ``p > ignore_band[0]`` with ``confidence_over: foreground``), ignores pixels with
    ``ignore_band[0] < p < ignore_band[1]`` in the loss, and replaces the previous round's
    pseudo set.
    Both finish with a fine-tune on the labelled slices only.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: Literal["progressive", "confidence"] = "progressive"
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
                       description="confidence: keep slices with mean max(p, 1-p) >= tau.")
    confidence_over: Literal["slice", "foreground"] = Field(
        default="slice", description="confidence: the pixels the slice confidence averages "
        "over. 'slice': all of them (background dominates, and a missed nodule is a "
        "confidently empty mask); 'foreground': those with p > ignore_band[0], so a slice is "
        "kept when its predicted nodule is crisp, and a slice predicted empty is never kept.")
    ignore_band: tuple[float, float] = Field(
        default=(0.2, 0.8), description="confidence: pixels with p strictly inside are "
        "ignored by the loss.")
    ema_decay: float | None = Field(default=None, gt=0, lt=1, description="Teacher = EMA of "
                                    "the student with this decay per step (None: no teacher).")
    labelled_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="Experiments: keep the labels of this fraction "
        "of the training slices (seeded) and treat the rest as unlabelled.")
    unlabelled_series: list[str] = Field(
        default_factory=list, description="Series uids under ct_root whose labels are not "
        "used: their slices form the unlabelled pool.")
    slice_stride: int = Field(default=1, ge=1, description="Unlabelled scans: every n-th slice.")
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

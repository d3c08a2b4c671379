"""Training the fusion model with PyTorch Lightning.

:class:`FusionModel` = one encoder per modality (from the modality plugin) + a fusion head
(from the fusion plugin). :class:`FusionTask` is the LightningModule with the task's loss:

* ``binary``: binary cross-entropy on the logit, :math:`-[y\\log\\sigma(z)+(1-y)\\log(1-\\sigma(z))]`.
* ``survival``: the negative Cox partial log-likelihood of the log-risk :math:`\\eta` with
  Efron's handling of tied event times (torchsurv's ``neg_partial_log_likelihood``). For
  distinct event times :math:`t_i` with tie sets :math:`D_i` (size :math:`d_i`) and risk
  sets :math:`R_i`:

  .. math:: \\ell = \\sum_i \\Big[\\sum_{j\\in D_i}\\eta_j - \\sum_{l=0}^{d_i-1}
     \\log\\Big(\\sum_{j\\in R_i} e^{\\eta_j} - \\tfrac{l}{d_i}\\sum_{j\\in D_i} e^{\\eta_j}\\Big)\\Big]

  computed over the patients of a batch (the usual mini-batch approximation), so
  survival uses large batches.

:class:`FoldData` holds a fold's tensors; batches are gathered by index (no per-item
collation), which keeps Lightning's distributed sampler working under DDP.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["FoldData", "FusionDataModule", "FusionModel", "FusionTask", "cox_loss"]


def cox_loss(log_risk: Tensor, event: Tensor, time: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood (Efron ties), mean over events (torchsurv)."""
    from torchsurv.loss.cox import neg_partial_log_likelihood

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ties detected" / "no events in batch" chatter
        if int(event.sum()) == 0:
            return log_risk.sum() * 0.0
        return neg_partial_log_likelihood(log_risk.reshape(-1), event.bool().reshape(-1),
                                          time.reshape(-1).float(), ties_method="efron",
                                          reduction="mean")


class FusionModel(nn.Module):
    """``{modality: features (B, F_m)}`` + presence → encoders → fusion head → (B,)."""

    def __init__(self, encoders: Mapping[str, nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.names = list(encoders)
        self.encoders = nn.ModuleList(encoders[m] for m in self.names)

        self.head = head

    def embed(self, x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: enc(x[m]) for m, enc in zip(self.names, self.encoders, strict=True)}

    def forward(self, x: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.embed(x), present)[:, 0]

    @torch.no_grad()
    def modality_weights(self, x: Mapping[str, Tensor],
                         present: Mapping[str, Tensor]) -> Tensor | None:
        if not hasattr(self.head, "modality_weights"):
            return None
        return self.head.modality_weights(self.embed(x), present)


@dataclass
class FoldData:
    """Tensors of some patients: features and presence per modality, and targets."""

    ids: list[str]
    x: dict[str, Tensor]
    present: dict[str, Tensor]
    y: Tensor  # binary label, or event indicator for survival
    time: Tensor

    @classmethod
    def build(cls, ids: list[str], features: Mapping[str, Any], y: np.ndarray,
              time: np.ndarray | None = None) -> FoldData:
        """``features[m]`` is a DataFrame indexed by patient id (rows for covered patients);
        uncovered patients get zeros and ``present=False``."""
        x, present = {}, {}
        for m, df in features.items():
            sub = df.reindex(ids)
            have = ~sub.isna().all(axis=1).to_numpy()
            x[m] = torch.from_numpy(np.array(sub.fillna(0.0).to_numpy(np.float32), copy=True))
            present[m] = torch.from_numpy(np.array(have, dtype=bool, copy=True))
        t = torch.tensor(np.zeros(len(ids)) if time is None else np.asarray(time, float),
                         dtype=torch.float32)
        return cls(list(ids), x, present, torch.tensor(np.asarray(y, np.float32)), t)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> FoldData:
        """The patients at positions ``idx`` (an inner cross-validation part)."""
        t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return FoldData([self.ids[int(i)] for i in t], {m: v[t] for m, v in self.x.items()},
                        {m: v[t] for m, v in self.present.items()}, self.y[t], self.time[t])

    def batch(self, idx: Tensor) -> dict[str, Any]:
        return {"x": {m: v[idx] for m, v in self.x.items()},
                "present": {m: v[idx] for m, v in self.present.items()},
                "y": self.y[idx], "time": self.time[idx]}


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _Gather:
    def __init__(self, data: FoldData) -> None:
        self.data = data

    def __call__(self, idx: list[int]) -> dict[str, Any]:
        return self.data.batch(torch.as_tensor(idx, dtype=torch.long))


class FusionDataModule(L.LightningDataModule):
    """Train/validation loaders over :class:`FoldData` (validation in one batch by default,
    so the Cox loss sees whole risk sets)."""

    def __init__(self, train: FoldData, val: FoldData, batch_size: int,
                 val_batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.train_data, self.val_data = train, val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or max(1, len(val))
        self.seed = seed

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(_Indices(len(self.train_data)),
                                           batch_size=self.batch_size, shuffle=True,
                                           generator=g, collate_fn=_Gather(self.train_data))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_Indices(len(self.val_data)),
                                           batch_size=self.val_batch_size, shuffle=False,
                                           collate_fn=_Gather(self.val_data))


class FusionTask(L.LightningModule):
    """The LightningModule: loss of the task, AdamW, ``val_loss`` for early stopping."""

    def __init__(self, model: FusionModel, task: str = "binary", lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.lr = lr
        self.weight_decay = weight_decay

    def forward(self, x: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        return self.model(x, present)

    def loss(self, out: Tensor, batch: Mapping[str, Any]) -> Tensor:
        if self.task == "binary":
            return nn.functional.binary_cross_entropy_with_logits(out.float(), batch["y"])
        return cox_loss(out.float(), batch["y"], batch["time"])

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch["x"], batch["present"]), batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["y"]),
                 sync_dist=True)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        loss = self.loss(self(batch["x"], batch["present"]), batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["y"]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@torch.no_grad()
def predict(model: FusionModel, data: FoldData, batch_size: int = 4096) -> tuple[np.ndarray,
                                                                                 np.ndarray | None]:
    """Raw outputs (logit / log-risk) and modality weights (or None) in eval mode."""
    model.eval()
    outs, ws = [], []
    for s in range(0, len(data), batch_size):
        b = data.batch(torch.arange(s, min(s + batch_size, len(data))))
        outs.append(model(b["x"], b["present"]).float().cpu().numpy())
        w = model.modality_weights(b["x"], b["present"])
        if w is not None:
            ws.append(w.float().cpu().numpy())
    out = np.concatenate(outs) if outs else np.zeros(0)
    return out, (np.concatenate(ws) if ws else None)

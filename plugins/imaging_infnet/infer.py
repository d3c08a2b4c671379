"""Inference: batched slice prediction with an optional fast path, whole-volume sweeps.

Fast path (``FastPath``): channels_last memory format, bf16 autocast on CPU and
``torch.compile`` of the network (with inductor freezing), batches of ``batch_size``
slices. Each switch falls back
(logged once) if the platform refuses it. Outputs are float32 probabilities.

With the fast path off (``enabled: false``, or ``compile: false``) inference is eager and
runs on a private copy of the network with every BatchNorm folded into the convolution
before it (``fold_batchnorm``; the eval-mode arithmetic, a few per cent faster), in
channels_last unless ``channels_last: false`` (the same arithmetic in another memory
layout, which oneDNN's convolutions run about 20% faster at batch 1 on a CPU;
``bench/infnet_speed.py``). The caller's model is then left as it was. With compile on,
inductor's freezing does the folding, and channels_last is applied to the model in place.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from .config import FastPath, SliceSettings
from .ctio import Volume
from .dataset import crop_box, standardise, volume_inputs
from .network import BasicConv2d, InfNet

log = logging.getLogger("lungfuse.imaging")


def fold_batchnorm(model: InfNet) -> InfNet:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution that
    feeds it (``torch.nn.utils.fusion``): the backbone through a ``torch.fx`` trace, the
    decoder's conv + BN blocks directly. A backbone that ``torch.fx`` cannot trace keeps its
    BatchNorms (logged). The copy is for inference only."""
    from torch.fx.experimental.optimization import fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    try:
        m.resnet = fuse(m.resnet, inplace=True)
    except Exception as exc:  # noqa: BLE001 - tracing support varies across timm models
        log.info("backbone %s: BatchNorm left unfolded (torch.fx: %s)", m.backbone_name, exc)
    for mod in m.modules():
        if isinstance(mod, BasicConv2d) and isinstance(mod.bn, torch.nn.BatchNorm2d):
            mod.conv = fuse_conv_bn_eval(mod.conv, mod.bn)
            mod.bn = torch.nn.Identity()
    return m


class Predictor:
    """Wraps an :class:`InfNet` for inference (eval mode, no grad)."""

    def __init__(self, model: InfNet, slices: SliceSettings, fast: FastPath | None = None) -> None:
        self.slices = slices
        self.fast = fast or FastPath(enabled=False)
        compiled = self.fast.enabled and self.fast.compile
        self.model = model.eval()
        if self.fast.fold_batchnorm and not compiled:
            self.model = fold_batchnorm(self.model)
        if self.fast.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._net: torch.nn.Module = self.model
        if self.fast.enabled:
            if self.fast.compile:
                try:
                    self._net = torch.compile(self.model, dynamic=False)
                except Exception as exc:  # noqa: BLE001 - platform dependent
                    log.warning("torch.compile unavailable (%s); running eager", exc)

    @property
    def batch_size(self) -> int:
        return self.fast.batch_size if self.fast.enabled else max(1, self.fast.batch_size)

    def _ctx(self):
        if self.fast.enabled and self.fast.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _compile_ctx(self):
        """Inductor settings for the (lazy) compilation on the first call: freezing folds
        BatchNorm into the convolutions and pre-packs weights for inference."""
        if self.fast.enabled and self.fast.compile and self.fast.freeze:
            import torch._inductor.config as inductor_config

            return inductor_config.patch(freezing=True)
        return nullcontext()

    def _prep(self, x01: torch.Tensor) -> torch.Tensor:
        x = standardise(x01.float(), self.model.input_mean, self.model.input_std)
        if self.fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def predict(self, x01: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(n, S, S)`` (map2) for windowed inputs ``(n, 3, S, S)``."""
        out = []
        for i in range(0, x01.shape[0], self.batch_size):
            xb = self._prep(x01[i:i + self.batch_size])
            n = xb.shape[0]
            if self.fast.enabled and self.fast.compile and n < self.batch_size:
                # keep one static shape for the compiled graph
                xb = torch.cat([xb, xb[-1:].expand(self.batch_size - n, -1, -1, -1)])
            with self._ctx(), self._compile_ctx():
                maps = self._net(xb)
            out.append(torch.sigmoid(maps[3][:n, 0].float()))
        if not out:
            return torch.empty(0, *x01.shape[-2:])
        return torch.cat(out)

    @torch.no_grad()
    def embed(self, x01: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mask-weighted pooled features ``(n, 3*channel)`` (float32, eager)."""
        x = self._prep(x01)
        with self._ctx():
            v = self.model.embed(x, mask=mask)
        return v.float()

    def predict_volume(self, vol: Volume, zs: Sequence[int] | None = None) -> np.ndarray:
        """Probability volume ``(z, y, x)`` float32 on the scan's grid (``mode=full``);
        slices not in ``zs`` are 0."""
        s = self.slices
        if s.mode != "full":
            s = s.model_copy(update={"mode": "full"})
        zs, x = volume_inputs(vol, s, zs)
        prob = self.predict(x) if len(zs) else torch.empty(0, s.img_size, s.img_size)
        out = np.zeros(vol.array.shape, dtype=np.float32)
        if len(zs):
            up = F.interpolate(prob[:, None], size=vol.array.shape[1:], mode="bilinear",
                               align_corners=False)[:, 0]
            out[zs] = up.numpy()
        return out

    def predict_region(self, vol: Volume, zs: Sequence[int],
                       centre_xy: Sequence[float] | None = None) -> np.ndarray:
        """Probability volume with slices ``zs`` predicted: whole slices in ``full``
        mode, the ``crop_mm`` square around ``centre_xy`` (pasted back) in ``crop`` mode."""
        s = self.slices
        if s.mode == "full":
            return self.predict_volume(vol, zs)
        zs, x = volume_inputs(vol, s, zs, centre_xy)
        out = np.zeros(vol.array.shape, dtype=np.float32)
        if not zs:
            return out
        prob = self.predict(x)
        x0, y0, w, h = crop_box(vol, s, centre_xy)
        up = F.interpolate(prob[:, None], size=(h, w), mode="bilinear",
                           align_corners=False)[:, 0].numpy()
        ny, nx = vol.array.shape[1:]
        xa, ya = max(0, x0), max(0, y0)
        xb, yb = min(nx, x0 + w), min(ny, y0 + h)
        if xb > xa and yb > ya:
            out[zs, ya:yb, xa:xb] = up[:, ya - y0:yb - y0, xa - x0:xb - x0]
        return out

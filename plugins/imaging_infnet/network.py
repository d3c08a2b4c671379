"""Inf-Net (Fan et al., IEEE TMI 2020) over any timm ``features_only`` backbone.

The layout follows the reference network module for module, so an authors' checkpoint
maps onto it key for key (see :mod:`.reference`):

* backbone stages ``x1..x4`` at strides 4/8/16/32 (``res2net50d``: 256/512/1024/2048 ch);
* receptive-field blocks ``rfb2_1/rfb3_1/rfb4_1`` on ``x2/x3/x4`` (``channel`` wide);
* a partial decoder ``ParDec`` giving the global map ``g5`` at stride 8;
* an edge branch on ``x1`` (``edge_guidance``, 64 ch, and a lateral edge map);
* three reverse-attention branches, coarse to fine::

      a_k   = 1 - sigmoid(crop_k)                       (reverse attention)
      g_k   = crop_k + RA_k([conv1(a_k * x_k), down(edge_guidance)])

  with ``crop_4 = down4(g5)``, ``crop_3 = up2(g4)``, ``crop_2 = up2(g3)``.

``forward`` returns ``(map5, map4, map3, map2, edge)`` as logits at the input resolution;
``map2`` is the segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Reductions of the four stages Inf-Net uses.
STAGE_STRIDES = (4, 8, 16, 32)
#: Parameters of res2net50d's ImageNet classifier (2048 * 1000 + 1000), which the reference
#: checkpoint carries but the segmentation never uses.
RES2NET_CLASSIFIER_PARAMS = 2048 * 1000 + 1000


class BasicConv2d(nn.Module):
    """Conv2d (no bias) + BatchNorm2d. The reference holds a ReLU but never applies it."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class RFB(nn.Module):
    """Receptive-field block: four branches (1x1; 1x1→1xn→nx1→3x3 dilated n, n=3,5,7),
    concatenated, fused by a 3x3 conv, plus a 1x1 residual, then ReLU."""

    def __init__(self, in_ch: int, channel: int) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(in_ch, channel, 1))
        for k, n in ((1, 3), (2, 5), (3, 7)):
            setattr(self, f"branch{k}", nn.Sequential(
                BasicConv2d(in_ch, channel, 1),
                BasicConv2d(channel, channel, (1, n), padding=(0, n // 2)),
                BasicConv2d(channel, channel, (n, 1), padding=(n // 2, 0)),
                BasicConv2d(channel, channel, 3, padding=n, dilation=n),
            ))
        self.conv_cat = BasicConv2d(4 * channel, channel, 3, padding=1)
        self.conv_res = BasicConv2d(in_ch, channel, 1)

    def forward(self, x: Tensor) -> Tensor:
        cat = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)
        return F.relu(self.conv_cat(cat) + self.conv_res(x))


class ParDec(nn.Module):
    """Partial decoder over (x4_rfb, x3_rfb, x2_rfb); output at x2's resolution.

    ``up`` is x2 bilinear with ``align_corners=True`` (as in the reference)::

        x2_1 = cu1(up(a)) * b
        x3_1 = cu2(up(up(a))) * cu3(up(b)) * c
        x2_2 = cc2([x2_1, cu4(up(a))]);  x3_2 = cc3([x3_1, cu5(up(x2_2))])
        out  = conv5(conv4(x3_2))
    """

    def __init__(self, channel: int, n_class: int = 1) -> None:
        super().__init__()
        c = channel
        self.conv_upsample1 = BasicConv2d(c, c, 3, padding=1)
        self.conv_upsample2 = BasicConv2d(c, c, 3, padding=1)
        self.conv_upsample3 = BasicConv2d(c, c, 3, padding=1)
        self.conv_upsample4 = BasicConv2d(c, c, 3, padding=1)
        self.conv_upsample5 = BasicConv2d(2 * c, 2 * c, 3, padding=1)
        self.conv_concat2 = BasicConv2d(2 * c, 2 * c, 3, padding=1)
        self.conv_concat3 = BasicConv2d(3 * c, 3 * c, 3, padding=1)
        self.conv4 = BasicConv2d(3 * c, 3 * c, 3, padding=1)
        self.conv5 = nn.Conv2d(3 * c, n_class, 1)

    @staticmethod
    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        up = self.up
        x2_1 = self.conv_upsample1(up(a)) * b
        x3_1 = self.conv_upsample2(up(up(a))) * self.conv_upsample3(up(b)) * c
        x2_2 = self.conv_concat2(torch.cat([x2_1, self.conv_upsample4(up(a))], 1))
        x3_2 = self.conv_concat3(torch.cat([x3_1, self.conv_upsample5(up(x2_2))], 1))
        return self.conv5(self.conv4(x3_2))


def _scale(x: Tensor, factor: float) -> Tensor:
    """Bilinear resize by a scale factor, ``align_corners=False`` (PyTorch's default)."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def _stage_indices(reductions: Sequence[int], backbone: str) -> tuple[int, ...]:
    idx = []
    for s in STAGE_STRIDES:
        hits = [i for i, r in enumerate(reductions) if r == s]
        if not hits:
            raise ValueError(f"backbone {backbone!r} has no feature stage at stride {s} "
                             f"(strides {list(reductions)}); Inf-Net needs strides 4/8/16/32")
        idx.append(hits[-1])  # the deepest block at that stride
    return tuple(idx)


class InfNet(nn.Module):
    """Inf-Net with a timm backbone.

    Args:
        backbone: timm model name (``features_only`` must be supported).
        channel: width of the RFB/decoder features (reference: 32).
        n_class: output channels of every map (reference: 1).
        pretrained_weights: optional local file with backbone weights (a timm state dict
            of the full model, possibly wrapped in ``{"state_dict": ...}``); no hub access.
    """

    def __init__(self, backbone: str = "res2net50d", channel: int = 32, n_class: int = 1,
                 pretrained_weights: str | Path | None = None, in_chans: int = 3) -> None:
        super().__init__()
        import timm

        self.backbone_name = backbone
        self.channel = channel
        self.n_class = n_class
        probe = timm.create_model(backbone, pretrained=False, features_only=True,
                                  in_chans=in_chans)
        reductions = probe.feature_info.reduction()
        out_indices = _stage_indices(reductions, backbone)
        all_idx = tuple(range(len(reductions)))
        if out_indices == all_idx:
            self.resnet = probe
        else:
            del probe
            # timm's out_indices count over the model's feature stages
            self.resnet = timm.create_model(backbone, pretrained=False, features_only=True,
                                            in_chans=in_chans, out_indices=out_indices)
        chans = self.resnet.feature_info.channels()
        if list(self.resnet.feature_info.reduction()) != list(STAGE_STRIDES):
            raise ValueError(f"backbone {backbone!r}: could not select stages at strides 4..32")
        self.stage_channels = tuple(int(c) for c in chans)
        c1, c2, c3, c4 = self.stage_channels
        cfg = getattr(self.resnet, "pretrained_cfg", None) or {}
        self.input_mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.input_std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

        self.rfb2_1 = RFB(c2, channel)
        self.rfb3_1 = RFB(c3, channel)
        self.rfb4_1 = RFB(c4, channel)
        self.ParDec = ParDec(channel, n_class)

        self.ra4_conv1 = BasicConv2d(c4, 256, 1)
        self.ra4_conv2 = BasicConv2d(256 + 64, 256, 5, padding=2)
        self.ra4_conv3 = BasicConv2d(256, 256, 5, padding=2)
        self.ra4_conv4 = BasicConv2d(256, 256, 5, padding=2)
        self.ra4_conv5 = BasicConv2d(256, n_class, 1)

        self.ra3_conv1 = BasicConv2d(c3, 64, 1)
        self.ra3_conv2 = BasicConv2d(64 + 64, 64, 3, padding=1)
        self.ra3_conv3 = BasicConv2d(64, 64, 3, padding=1)
        self.ra3_conv4 = BasicConv2d(64, n_class, 3, padding=1)

        self.ra2_conv1 = BasicConv2d(c2, 64, 1)
        self.ra2_conv2 = BasicConv2d(64 + 64, 64, 3, padding=1)
        self.ra2_conv3 = BasicConv2d(64, 64, 3, padding=1)
        self.ra2_conv4 = BasicConv2d(64, n_class, 3, padding=1)

        self.edge_conv1 = BasicConv2d(c1, 64, 1)
        self.edge_conv2 = BasicConv2d(64, 64, 3, padding=1)
        self.edge_conv3 = BasicConv2d(64, 64, 3, padding=1)
        self.edge_conv4 = BasicConv2d(64, n_class, 3, padding=1)

        if pretrained_weights is not None:
            self.load_backbone_weights(pretrained_weights)

    # ------------------------------------------------------------------ construction
    @property
    def hparams_dict(self) -> dict[str, Any]:
        """What rebuilds this network: stored in every checkpoint, read by
        :meth:`from_hparams` (the one place a saved Inf-Net is constructed)."""
        return {"backbone": self.backbone_name, "channel": self.channel, "n_class": self.n_class}

    @classmethod
    def from_hparams(cls, hp: Any, where: str = "checkpoint") -> InfNet:
        """The network described by saved hyper-parameters (:attr:`hparams_dict`, or a
        Lightning ``hyper_parameters`` dict); an absent ``n_class`` means 1 (older files)."""
        from lungfuse.core.errors import DataError

        try:
            backbone, channel = hp["backbone"], int(hp["channel"])
            n_class = int(hp.get("n_class", 1) or 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: Inf-Net hyper-parameters unreadable ({exc!r}); expected "
                            "backbone, channel and n_class; re-create the file with lungfuse") from None
        if not isinstance(backbone, str) or channel < 1 or n_class < 1:
            raise DataError(f"{where}: Inf-Net hyper-parameters out of range "
                            f"(backbone {backbone!r}, channel {channel}, n_class {n_class})")
        return cls(backbone, channel=channel, n_class=n_class)

    def load_backbone_weights(self, path: str | Path) -> None:
        """Load backbone weights from a local timm state dict (classifier keys ignored)."""
        from lungfuse.core.errors import DataError
        from lungfuse.core.state_io import load_torch

        path = Path(path)
        sd = load_torch(path, "backbone weights", "give a torch state-dict file")
        if not isinstance(sd, dict):
            raise DataError(f"{path}: backbone weights are a {type(sd).__name__}, not a state "
                            "dict; give a torch state-dict file")
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        own = self.resnet.state_dict()
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        missing = [k for k in own if k not in sd]
        if missing:
            raise DataError(f"{path}: not weights for backbone {self.backbone_name!r} "
                            f"({len(missing)} keys missing, e.g. {missing[0]!r})")
        bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
        if bad:
            raise DataError(f"{path}: shape mismatch for {bad[0]!r} "
                            f"({tuple(sd[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
        self.resnet.load_state_dict({k: sd[k] for k in own}, strict=True)

    @classmethod
    def from_reference_checkpoint(cls, path: str | Path, **kwargs: Any) -> InfNet:
        """Build a res2net50d Inf-Net from an authors' Inf-Net/Semi-Inf-Net ``.pth``."""
        from .reference import load_reference_checkpoint

        return load_reference_checkpoint(path, **kwargs)

    def num_parameters(self, include_reference_classifier: bool = False) -> int:
        """Parameter count; optionally plus res2net's unused ImageNet classifier, so it
        compares with the reference's 33,121,721 (which carries ``resnet.fc``)."""
        n = sum(p.numel() for p in self.parameters())
        if include_reference_classifier:
            n += self.stage_channels[3] * 1000 + 1000
        return n

    # ------------------------------------------------------------------ forward
    def features(self, x: Tensor) -> list[Tensor]:
        """Backbone stages ``[x1, x2, x3, x4]`` (strides 4, 8, 16, 32)."""
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"Inf-Net input must be a multiple of 32 pixels, got {h}x{w}")
        return list(self.resnet(x))

    def _decode(self, feats: list[Tensor]) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        x1, x2, x3, x4 = feats
        x2r, x3r, x4r = self.rfb2_1(x2), self.rfb3_1(x3), self.rfb4_1(x4)
        g5 = self.ParDec(x4r, x3r, x2r)

        e = self.edge_conv2(self.edge_conv1(x1))
        edge_guidance = self.edge_conv3(e)
        edge = _scale(self.edge_conv4(edge_guidance), 4)

        map5 = _scale(g5, 8)

        crop4 = _scale(g5, 0.25)
        a = (1 - torch.sigmoid(crop4)).expand(-1, x4.shape[1], -1, -1) * x4
        y = torch.cat([self.ra4_conv1(a), _scale(edge_guidance, 1 / 8)], 1)
        y = F.relu(self.ra4_conv2(y))
        y = F.relu(self.ra4_conv3(y))
        y = F.relu(self.ra4_conv4(y))
        g4 = self.ra4_conv5(y) + crop4
        map4 = _scale(g4, 32)

        crop3 = _scale(g4, 2)
        a = (1 - torch.sigmoid(crop3)).expand(-1, x3.shape[1], -1, -1) * x3
        y = torch.cat([self.ra3_conv1(a), _scale(edge_guidance, 1 / 4)], 1)
        y = F.relu(self.ra3_conv2(y))
        y = F.relu(self.ra3_conv3(y))
        g3 = self.ra3_conv4(y) + crop3
        map3 = _scale(g3, 16)

        crop2 = _scale(g3, 2)
        a = (1 - torch.sigmoid(crop2)).expand(-1, x2.shape[1], -1, -1) * x2
        y = torch.cat([self.ra2_conv1(a), _scale(edge_guidance, 1 / 2)], 1)
        y = F.relu(self.ra2_conv2(y))
        y = F.relu(self.ra2_conv3(y))
        g2 = self.ra2_conv4(y) + crop2
        map2 = _scale(g2, 8)
        return (map5, map4, map3, map2, edge), {"x2r": x2r, "x3r": x3r, "x4r": x4r, "x4": x4}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        maps, _ = self._decode(self.features(x))
        return maps  # type: ignore[return-value]

    def embed(self, x: Tensor, mask: Tensor | None = None, source: str = "rfb",
              return_maps: bool = False) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        """Per-slice feature vectors by mask-weighted average pooling of deep features.

        ``v_c = sum_p w_p f_{c,p} / (sum_p w_p + eps)``, with ``w`` the given mask (or
        ``sigmoid(map2)``) resized to each feature map. ``source="rfb"`` pools the three
        RFB outputs (``3 * channel`` values); ``"backbone"`` pools ``x4`` (e.g. 2048).
        """
        maps, inter = self._decode(self.features(x))
        w = torch.sigmoid(maps[3][:, :1]) if mask is None else mask.float().reshape(
            x.shape[0], 1, *mask.shape[-2:])
        names = ("x2r", "x3r", "x4r") if source == "rfb" else ("x4",)
        if source not in ("rfb", "backbone"):
            raise ValueError(f"embed source must be 'rfb' or 'backbone', got {source!r}")
        parts = []
        for n in names:
            f = inter[n].float()
            wk = F.interpolate(w, size=f.shape[-2:], mode="area")
            parts.append((f * wk).sum((2, 3)) / (wk.sum((2, 3)) + 1e-6))
        v = torch.cat(parts, 1)
        return (v, maps) if return_maps else v

    @property
    def embedding_dim(self) -> int:
        return 3 * self.channel


def build_infnet(backbone: str = "res2net50d", channel: int = 32, n_class: int = 1,
                 pretrained_weights: str | Path | None = None) -> InfNet:
    """Factory used by training and the CLI (``pretrained=False`` always)."""
    return InfNet(backbone=backbone, channel=channel, n_class=n_class,
                  pretrained_weights=pretrained_weights)

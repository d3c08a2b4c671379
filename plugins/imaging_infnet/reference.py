"""Import of the authors' Inf-Net / Semi-Inf-Net checkpoints.

The reference state dict (``../shared/reference/infnet_res2net50_state_dict.tsv``, 946
keys) names the backbone ``resnet.*`` (a full Res2Net-50 v1b 26w×4s, i.e. timm's
``res2net50d`` with identical key names) and the head modules ``rfb*_1``, ``ParDec``,
``ra*_conv*``, ``edge_conv*``. :class:`~.network.InfNet` keeps those names (its backbone
attribute is ``resnet``), so the mapping is exact: every reference key except the unused
classifier ``resnet.fc.{weight,bias}`` lands on the key of the same name, and every key
of the lungfuse model is filled. Anything else (a missing key, an unexpected key, a shape
mismatch) is refused with one line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungfuse.core.errors import DataError

#: Reference keys that have no counterpart (res2net's ImageNet classifier).
DROPPED_KEYS = ("resnet.fc.weight", "resnet.fc.bias")
#: Wrappers seen around published state dicts (DataParallel prefix, Lightning-style dicts).
_PREFIXES = ("module.",)


def map_reference_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Reference state dict -> lungfuse InfNet state dict (drops ``resnet.fc.*`` only)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        key = k
        for p in _PREFIXES:
            key = key.removeprefix(p)
        if key in DROPPED_KEYS:
            continue
        out[key] = v
    return out


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        for k in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(k), Mapping):
                return obj[k]
        return obj
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise DataError(f"{path}: not a state dict (got {type(obj).__name__}); give the authors' "
                    "Inf-Net .pth file")


def load_reference_checkpoint(path: str | Path, **kwargs: Any):
    """Build ``InfNet(backbone="res2net50d", channel=32)`` from a reference ``.pth``.

    The load is strict: the mapped key set must equal the model's key set exactly and
    every shape must agree. The result is in eval mode.
    """
    from lungfuse.core.state_io import load_torch

    from .network import InfNet

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file; give the path of the Inf-Net .pth")
    # weights only: a downloaded .pth holding arbitrary objects is refused with one line
    raw = load_torch(path, "Inf-Net checkpoint", "give the authors' Inf-Net .pth (a state dict)")
    state = map_reference_keys(_unwrap(raw, path))
    channel = kwargs.pop("channel", None)
    if channel is None:
        w = state.get("rfb2_1.conv_cat.conv.weight")
        channel = int(w.shape[0]) if w is not None else 32
    model = InfNet(backbone="res2net50d", channel=channel, **kwargs)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = (f"{len(missing)} key(s) missing, e.g. {missing[0]!r}" if missing
                else f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise DataError(f"{path}: not an Inf-Net (Res2Net-50) state dict: {what}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise DataError(f"{path}: shape of {k!r} is {tuple(state[k].shape)}, expected "
                            f"{tuple(v.shape)}; is this an Inf-Net with channel={channel}?")
    model.load_state_dict(state, strict=True)
    return model.eval()


def import_checkpoint(src: str | Path, out: str | Path, fast: bool = False) -> Path:
    """Convert an authors' checkpoint into a lungfuse segmentation checkpoint at ``out``.

    The lungfuse checkpoint records that it came from outside (``training_patients`` is
    ``None``: unknown), so leakage checks cannot vouch for it.
    """
    from .train import save_checkpoint

    model = load_reference_checkpoint(src)
    return save_checkpoint(out, model, training_patients=None,
                           extra={"imported_from": str(Path(src).resolve())})

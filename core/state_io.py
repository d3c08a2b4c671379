"""Fitted state and checkpoints on disk in forms that cannot run code when loaded.

Run folders, feature caches and checkpoints are shared and downloaded; a pickle in any
of them would run whatever its author wrote the moment lungfuse opened it. So:

* **Fitted modality state** (what :meth:`ModalityPlugin.state_dict` returns) is written by
  :func:`save_state` as a file pair: ``<name>.json`` holds the structure (format, version,
  one entry per modality) and ``<name>.safetensors`` the numeric arrays and tensors. The
  JSON is written last and records the size and SHA-256 of the array file, so a pair
  from two different writes is refused. :func:`load_state` checks the format and version,
  the hash, and that every array it reads has the dtype and shape the JSON says, and
  nothing else; anything unexpected is refused with one line (:class:`StateFormatError`).
* **Torch checkpoints** are read by :func:`load_torch` with ``weights_only=True``; a file
  that needs more than tensors and plain containers (a pickle of arbitrary objects) is
  refused with one line naming it instead of the ``UnpicklingError`` torch raises.

Accepted values in a state (and how they come back):

========================================  ============================================
``dict`` / other mappings                 ``dict`` (order kept; keys str, int, float,
                                          bool, None or tuples of those)
``list`` / ``tuple``                      ``list`` / ``tuple``
``str``, ``int``, ``float``, ``bool``,    the same (NaN and ±inf included)
``None``
numpy arrays (bool, int, uint, float)     the same dtype and shape (little-endian)
numpy string arrays (``<U``)              the same (stored in the JSON)
numpy scalars (``np.float64(1.5)`` …)     the same numpy scalar type
torch tensors (any dense dtype numpy      a CPU tensor of the same dtype and shape
has, and bfloat16)                        (detached; ``nn.Parameter`` → tensor)
========================================  ============================================

Anything else (sets, paths, pandas objects, object arrays, arbitrary classes) is refused
on save with a :class:`~lungfuse.core.errors.PluginError` naming the modality and key.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungfuse.core import atomic
from lungfuse.core.errors import DataError, PluginError

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "StateFormatError",
    "arrays_path",
    "check_state",
    "first_line",
    "legacy_state_error",
    "load_state",
    "load_torch",
    "save_state",
]

#: ``format`` field of every state JSON written by :func:`save_state`.
STATE_FORMAT = "lungfuse-state"
#: Version of that layout; a reader refuses any other.
STATE_VERSION = 1
#: Deepest nesting of containers accepted on save and load.
MAX_DEPTH = 64

# numpy dtypes stored in the safetensors file (always little-endian)
_NUMERIC = {"|b1", "|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8"}
# torch dtypes accepted, by name; bfloat16 has no numpy twin and is stored as int16 bits
_TORCH_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32",
                 "float64", "bfloat16", "uint16", "uint32", "uint64")
_TAGS = ("$array", "$strings", "$scalar", "$tensor", "$tuple", "$dict", "$float")


class StateFormatError(DataError):
    """A state file is missing, foreign, corrupt, or of a format this lungfuse cannot read."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (cut to ``limit``), for one-line errors."""
    text = str(exc).strip()
    line = text.splitlines()[0][:limit] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def legacy_state_error(fold_dir: str | Path, config: str | Path) -> DataError:
    """The one line for a run folder of an older lungfuse (``modality_state.pkl``, which
    is never unpickled): what it is, why it is not loaded, and how to re-create it."""
    return DataError(f"{fold_dir}: written by an older lungfuse that stored the fitted state "
                     "with pickle (modality_state.pkl), which can run code when loaded, so it "
                     f"is not loaded; re-create the run with `lungfuse run {config}`")


def arrays_path(path: str | Path) -> Path:
    """The array file that belongs with the state JSON ``path`` (same stem, .safetensors)."""
    return Path(path).with_suffix(".safetensors")


# ----------------------------------------------------------------------------- encode
def _key_text(keys: list[Any]) -> str:
    return "".join(f"[{k!r}]" for k in keys) or "(the state itself)"


class _Encoder:
    """Walks a state, building its JSON tree and collecting arrays (or only checking)."""

    def __init__(self, check_only: bool = False) -> None:
        self.check_only = check_only
        self.arrays: dict[str, Any] = {}
        self.modality = ""

    def fail(self, keys: list[Any], what: str) -> PluginError:
        return PluginError(
            f"modality '{self.modality}': state_dict() value at {_key_text(keys)} is {what}, "
            "which lungfuse cannot store safely; return only dicts, lists, tuples, str, int, "
            "float, bool, None, numpy arrays/scalars and torch tensors (see "
            "ModalityPlugin.state_dict)")

    def _add_array(self, arr: Any) -> str:
        import numpy as np

        key = str(len(self.arrays))
        if not self.check_only:
            self.arrays[key] = np.ascontiguousarray(arr)
        else:
            self.arrays[key] = None
        return key

    def encode(self, x: Any, keys: list[Any]) -> Any:
        if len(keys) > MAX_DEPTH:
            raise self.fail(keys, f"nested deeper than {MAX_DEPTH} levels")
        t = type(x)
        if x is None or t in (bool, int, str):
            return x
        if t is float:
            return x if math.isfinite(x) else {"$float": repr(x)}
        np = sys.modules.get("numpy")
        if np is not None and isinstance(x, np.ndarray):
            return self._ndarray(x, keys)
        if np is not None and isinstance(x, np.generic):
            return self._np_scalar(x, keys)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            return self._tensor(x, keys, torch)
        if t is list:
            return [self.encode(v, [*keys, i]) for i, v in enumerate(x)]
        if t is tuple:
            return {"$tuple": [self.encode(v, [*keys, i]) for i, v in enumerate(x)]}
        if isinstance(x, Mapping):
            return self._mapping(x, keys)
        raise self.fail(keys, f"a {t.__module__}.{t.__qualname__}")

    def _mapping(self, x: Mapping[Any, Any], keys: list[Any]) -> Any:
        plain = all(type(k) is str and not k.startswith("$") for k in x)
        if plain:
            return {k: self.encode(v, [*keys, k]) for k, v in x.items()}
        pairs = []
        for k, v in x.items():
            if not _valid_key(k):
                raise self.fail([*keys, k], f"a dict key of type {type(k).__name__}")
            pairs.append([self.encode(k, [*keys, k]), self.encode(v, [*keys, k])])
        return {"$dict": pairs}

    def _ndarray(self, x: Any, keys: list[Any]) -> Any:
        dt = x.dtype.newbyteorder("<")  # no-op for one-byte and little-endian dtypes
        if dt.kind == "U":
            return {"$strings": {"dtype": dt.str, "shape": list(x.shape),
                                 "values": x.reshape(-1).tolist()}}
        if dt.str not in _NUMERIC:
            raise self.fail(keys, f"a numpy array of dtype {x.dtype}")
        # stored flat: the JSON keeps the shape (safetensors has no 0-d arrays)
        arr = x if self.check_only else x.astype(dt, copy=False).reshape(-1)
        return {"$array": {"key": self._add_array(arr), "dtype": dt.str,
                           "shape": list(x.shape)}}

    def _np_scalar(self, x: Any, keys: list[Any]) -> Any:
        kind = x.dtype.kind
        if kind not in "biufU":
            raise self.fail(keys, f"a numpy scalar of dtype {x.dtype}")
        value = x.item()
        if kind == "f":
            value = value if math.isfinite(value) else {"$float": repr(value)}
        return {"$scalar": {"dtype": x.dtype.newbyteorder("<").str, "value": value}}

    def _tensor(self, x: Any, keys: list[Any], torch: Any) -> Any:
        name = str(x.dtype).removeprefix("torch.")
        if name not in _TORCH_DTYPES or x.layout != torch.strided or x.is_quantized:
            raise self.fail(keys, f"a torch tensor of dtype {x.dtype} / layout {x.layout}")
        if self.check_only:
            return {"$tensor": {"key": self._add_array(None), "dtype": name,
                                "shape": list(x.shape)}}
        t = x.detach().cpu().contiguous()
        if name == "bfloat16":
            t = t.view(torch.int16)
        arr = t.numpy()
        enc = self._ndarray(arr, keys)["$array"]
        return {"$tensor": {**enc, "dtype": name, "stored": enc["dtype"]}}


def _raise(exc: Exception) -> Any:
    raise exc


def _valid_key(k: Any) -> bool:
    if k is None or type(k) in (str, int, float, bool):
        return True
    return type(k) is tuple and all(_valid_key(v) for v in k)


def _encode_all(states: Mapping[str, Any], check_only: bool) -> tuple[dict[str, Any],
                                                                       dict[str, Any]]:
    enc = _Encoder(check_only)
    tree: dict[str, Any] = {}
    for name, state in states.items():
        if type(name) is not str:
            raise PluginError(f"state of modality {name!r}: modality names must be str")
        enc.modality = name
        tree[name] = enc.encode(state, [])
    return tree, enc.arrays


def check_state(states: Mapping[str, Any]) -> None:
    """Raise :class:`PluginError` (naming the modality and key) if :func:`save_state`
    would refuse ``{modality: state}``; cheap (no arrays are copied)."""
    _encode_all(states, check_only=True)


def save_state(path: str | Path, states: Mapping[str, Any]) -> Path:
    """Write ``{modality name: state_dict()}`` to ``path`` (JSON) and, when the states
    hold arrays or tensors, :func:`arrays_path` (safetensors). Both writes are atomic and
    the JSON comes last, recording the array file's size and SHA-256. An unsupported
    value raises :class:`PluginError` before anything is written."""
    from safetensors.numpy import save as st_save

    path = Path(path)
    tree, arrays = _encode_all(states, check_only=False)
    doc: dict[str, Any] = {"format": STATE_FORMAT, "version": STATE_VERSION,
                           "arrays": None, "modalities": tree}
    if arrays:
        blob = st_save(arrays, metadata={"format": STATE_FORMAT,
                                         "version": str(STATE_VERSION)})
        apath = arrays_path(path)
        atomic.write_bytes(apath, blob)
        doc["arrays"] = {"file": apath.name, "bytes": len(blob),
                         "sha256": hashlib.sha256(blob).hexdigest(), "count": len(arrays)}
    atomic.write_text(path, json.dumps(doc, ensure_ascii=False, allow_nan=False) + "\n")
    return path


# ----------------------------------------------------------------------------- decode
class _Bad(Exception):
    """Internal: why a state document is refused (turned into StateFormatError)."""


def _shape(v: Any) -> tuple[int, ...]:
    if type(v) is not list or len(v) > 32 or not all(type(d) is int and 0 <= d < 2**40
                                                     for d in v):
        raise _Bad(f"bad array shape {str(v)[:40]}")
    return tuple(v)


def _payload(node: Mapping[str, Any], tag: str, fields: set[str]) -> Mapping[str, Any]:
    p = node[tag]
    if not isinstance(p, dict) or not set(p) <= fields:
        raise _Bad(f"malformed {tag} entry")
    return p


class _Decoder:
    def __init__(self, arrays: Mapping[str, Any]) -> None:
        self.arrays = arrays
        self.used: set[str] = set()

    def take(self, p: Mapping[str, Any], dtype: str, shape: tuple[int, ...]) -> Any:
        key = p.get("key")
        if type(key) is not str or key not in self.arrays or key in self.used:
            raise _Bad(f"array {str(key)[:20]!r} missing from the array file or used twice")
        self.used.add(key)
        arr = self.arrays[key]
        if arr.dtype.str != dtype or tuple(arr.shape) != (math.prod(shape),):
            raise _Bad(f"array {key} is {arr.dtype.str}{list(arr.shape)} in the array file "
                       f"but {dtype}{list(shape)} in the JSON")
        return arr.reshape(shape)

    def decode(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
        if x is None or type(x) in (bool, int, float, str):
            return x
        if type(x) is list:
            return [self.decode(v, depth + 1) for v in x]
        if type(x) is not dict:
            raise _Bad(f"unexpected JSON value {type(x).__name__}")
        tags = [k for k in x if k.startswith("$")]
        if not tags:
            return {k: self.decode(v, depth + 1) for k, v in x.items()}
        if len(x) != 1 or tags[0] not in _TAGS:
            raise _Bad(f"unknown entry {tags[0][:20]!r}")
        return getattr(self, "_" + tags[0][1:])(x, depth)

    def _float(self, x: Mapping[str, Any], depth: int) -> float:
        if x["$float"] not in ("nan", "inf", "-inf"):
            raise _Bad("bad $float value")
        return float(x["$float"])

    def _tuple(self, x: Mapping[str, Any], depth: int) -> tuple[Any, ...]:
        if type(x["$tuple"]) is not list:
            raise _Bad("malformed $tuple entry")
        return tuple(self.decode(v, depth + 1) for v in x["$tuple"])

    def _dict(self, x: Mapping[str, Any], depth: int) -> dict[Any, Any]:
        pairs = x["$dict"]
        if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
            raise _Bad("malformed $dict entry")
        out = {}
        for k, v in pairs:
            key = self.decode(k, depth + 1)
            if not _valid_key(key):
                raise _Bad("bad dict key")
            out[key] = self.decode(v, depth + 1)
        return out

    def _array(self, x: Mapping[str, Any], depth: int) -> Any:
        p = _payload(x, "$array", {"key", "dtype", "shape"})
        if p.get("dtype") not in _NUMERIC:
            raise _Bad(f"array dtype {str(p.get('dtype'))[:20]!r} not accepted")
        return self.take(p, p["dtype"], _shape(p.get("shape"))).copy()

    def _strings(self, x: Mapping[str, Any], depth: int) -> Any:
        import numpy as np

        p = _payload(x, "$strings", {"dtype", "shape", "values"})
        dtype, values, shape = p.get("dtype"), p.get("values"), _shape(p.get("shape"))
        if (type(dtype) is not str or not dtype.startswith("<U") or not dtype[2:].isdigit()
                or int(dtype[2:]) > 2**20):
            raise _Bad("bad string-array dtype")
        if (type(values) is not list or not all(type(v) is str for v in values)
                or len(values) != math.prod(shape)):
            raise _Bad("string-array values do not match its shape")
        return np.array(values, dtype=dtype).reshape(shape)

    def _scalar(self, x: Mapping[str, Any], depth: int) -> Any:
        import numpy as np

        p = _payload(x, "$scalar", {"dtype", "value"})
        dtype, value = p.get("dtype"), p.get("value")
        if isinstance(value, dict):
            value = self._float(value, depth) if set(value) == {"$float"} else _raise(
                _Bad("bad scalar value"))
        ok_str = type(dtype) is str and dtype.startswith("<U") and dtype[2:].isdigit()
        if not (dtype in _NUMERIC or ok_str) or type(value) not in (bool, int, float, str):
            raise _Bad("bad numpy scalar entry")
        try:
            return np.dtype(dtype).type(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Bad(f"numpy scalar does not fit its dtype ({exc})") from None

    def _tensor(self, x: Mapping[str, Any], depth: int) -> Any:
        import torch

        p = _payload(x, "$tensor", {"key", "dtype", "shape", "stored"})
        name, stored = p.get("dtype"), p.get("stored")
        if name not in _TORCH_DTYPES or stored not in _NUMERIC:
            raise _Bad(f"tensor dtype {str(name)[:20]!r} not accepted")
        arr = self.take(p, stored, _shape(p.get("shape")))
        t = torch.from_numpy(arr.copy())
        if name == "bfloat16":
            if stored != "<i2":
                raise _Bad("bfloat16 tensor not stored as int16")
            t = t.view(torch.bfloat16)
        if str(t.dtype).removeprefix("torch.") != name:
            raise _Bad(f"tensor stored as {stored} cannot be {name}")
        return t


def load_state(path: str | Path, remedy: str = "") -> dict[str, Any]:
    """Read what :func:`save_state` wrote: ``{modality name: state}``.

    Nothing is unpickled. The JSON must be this format and version; the array file, when
    there is one, must have the recorded size and SHA-256 and hold exactly the arrays the
    JSON refers to, each with the recorded dtype and shape. Anything else raises
    :class:`StateFormatError` with one line naming the file; ``remedy`` (what the user
    should do) ends the line.
    """
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""

    def bad(what: str, where: Path = path) -> StateFormatError:
        return StateFormatError(f"{where}: {what}{tail}")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad("fitted-state file missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"cannot read the fitted state ({type(exc).__name__}); it is not a "
                  "lungfuse state file") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise bad("not a lungfuse state file (not valid JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise bad(f"not a lungfuse state file (format is not {STATE_FORMAT!r})")
    if doc.get("version") != STATE_VERSION:
        raise bad(f"lungfuse state version {str(doc.get('version'))[:20]} is not the "
                  f"version {STATE_VERSION} this lungfuse reads")
    if not isinstance(doc.get("modalities"), dict):
        raise bad("lungfuse state without a 'modalities' mapping")
    arrays: dict[str, Any] = {}
    meta = doc.get("arrays")
    if meta is not None:
        apath = arrays_path(path)
        if not isinstance(meta, dict) or meta.get("file") != apath.name or not isinstance(
                meta.get("bytes"), int) or not isinstance(meta.get("sha256"), str):
            raise bad("malformed 'arrays' entry")
        try:
            size = apath.stat().st_size
        except OSError:
            raise bad(f"its array file {apath.name} is missing") from None
        if size != meta["bytes"]:
            raise bad(f"{size} bytes, expected {meta['bytes']}; the state and its array "
                      "file do not belong together", apath)
        blob = apath.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            raise bad("SHA-256 differs from the one its state JSON records; the two files "
                      "do not belong together", apath)
        from safetensors.numpy import load as st_load

        try:
            arrays = st_load(blob)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise bad(f"not a readable safetensors file ({type(exc).__name__})", apath) from None
        if len(arrays) != meta.get("count"):
            raise bad(f"holds {len(arrays)} arrays, its state JSON says {meta.get('count')}",
                      apath)
    dec = _Decoder(arrays)
    try:
        out = {str(k): dec.decode(v) for k, v in doc["modalities"].items()}
    except _Bad as exc:
        raise bad(f"malformed lungfuse state: {exc}") from None
    if dec.used != set(arrays):
        raise bad("malformed lungfuse state: the array file holds arrays the JSON does not "
                  "refer to")
    return out


# ----------------------------------------------------------------------------- torch
def load_torch(path: str | Path, what: str = "checkpoint", remedy: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors.

    A file that needs anything beyond tensors and plain containers to load (a pickle that
    could run code when loaded, or objects of other programs) raises :class:`DataError`
    saying so and naming the file; so do missing, truncated and non-torch files.
    ``what`` names the file's role in the message, ``remedy`` ends it.
    """
    import pickle

    import torch

    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found{tail}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"{path}: {what} refused: it holds Python objects other than tensors "
                        "and plain data, which could run code when loaded; lungfuse loads "
                        f"weights only{tail or '; use a file of tensors (a state dict)'}") \
            from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise DataError(f"{path}: cannot read as a torch {what} ({first_line(exc)}){tail}") \
            from None

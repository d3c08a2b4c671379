"""tqdm progress bars that honour ``progress=False`` and ``LUNGFUSE_NO_PROGRESS=1``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def enabled(progress: bool = True) -> bool:
    return bool(progress) and os.environ.get("LUNGFUSE_NO_PROGRESS", "") not in ("1", "true")


def bar(it: Iterable[T], desc: str = "", enabled: bool = True, **kw: Any) -> Iterable[T]:
    if not globals()["enabled"](enabled):
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, **kw)

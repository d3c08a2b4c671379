"""Build throw-away distributions with entry points, to test discovery failure modes."""

from __future__ import annotations

import textwrap
from pathlib import Path

GOOD_MODULE = '''
from typing import Literal
from lungfuse.core.contracts import FusionConfig, FusionPlugin


class Cfg(FusionConfig):
    kind: Literal["{name}"] = "{name}"


class Plugin(FusionPlugin):
    name = "{name}"
    api_version = {api}
    config_model = Cfg

    def build(self, embedding_dims, out_dim=1):
        raise NotImplementedError
'''


def make_dist(root: Path, dist: str, version: str, group: str, eps: dict[str, str],
              modules: dict[str, str]) -> Path:
    """Write ``<root>/<dist>-<version>.dist-info`` and modules; put ``root`` on sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    return root


def good_fusion_module(name: str, api: int = 1) -> str:
    return GOOD_MODULE.format(name=name, api=api)

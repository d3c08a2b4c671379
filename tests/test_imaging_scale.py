"""Scale of the CT stage (issue 15): scans split over ranks, the compile cache key, the
precision switches. Tiny backbones (timm ``test_resnet``), 64-px synthetic scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lungfuse.plugins.imaging_infnet import ranks, synthetic

UIDS = [f"s{i}" for i in range(5)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "ct"
    synthetic.write_tree(root, UIDS, seed=5, size=64, depth=12)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    torch.manual_seed(0)
    model = InfNet("test_resnet", channel=8)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", model, [],
                           SliceSettings(img_size=64))


def _config(path: Path, tree: Path, ck: Path, out: Path, threshold: float) -> Path:
    path.write_text(json.dumps({"ct_root": str(tree), "checkpoint": str(ck),
                                "out_dir": str(out), "overlays": False,
                                "threshold": threshold,
                                "fast": {"enabled": False}}), encoding="utf-8")
    return path


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_share_gives_every_scan_to_exactly_one_rank(world: int) -> None:
    items = [f"u{i:02d}" for i in range(11)]
    shuffled = list(np.random.default_rng(world).permutation(items))
    parts = [ranks.share(shuffled, ranks.Ranks(r, world)) for r in range(world)]
    flat = [u for p in parts for u in p]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # the same split whatever order a rank listed the scans in
    assert parts == [ranks.share(items, ranks.Ranks(r, world)) for r in range(world)]


def test_ranks_come_from_torchrun_or_slurm_and_bad_ones_are_refused() -> None:
    from lungfuse.core.errors import ConfigError

    assert ranks.current({}) == ranks.Ranks(0, 1)
    assert ranks.current({"RANK": "1", "WORLD_SIZE": "4"}) == ranks.Ranks(1, 4)
    assert ranks.current({"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}) == ranks.Ranks(2, 3)
    with pytest.raises(ConfigError, match="must lie in"):
        ranks.current({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="integers"):
        ranks.current({"RANK": "x", "WORLD_SIZE": "2"})


def test_segment_predict_on_two_processes_equals_one(tree: Path, checkpoint: Path,
                                                      tmp_path: Path) -> None:
    from lungfuse.core.cli import cli
    from lungfuse.plugins.imaging_infnet import ctio
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    # a threshold inside the untrained net's output range, so masks are not all one value
    model, meta = load_checkpoint(checkpoint)
    vol = ctio.read_volume(ctio.find_volumes(tree)["s0"])
    prob = Predictor(model, meta["slices"]).predict_volume(vol)
    thr = float(np.median(prob))
    assert 0 < thr < 1
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        cfg = _config(tmp_path / f"p{n}.yaml", tree, checkpoint, out, thr)
        r = CliRunner().invoke(cli, ["segment", "predict", str(cfg), "--processes", str(n),
                                      "--no-progress"])
        assert r.exit_code == 0, r.output
        outs[n] = out
    one = json.loads((outs[1] / "predict.json").read_text(encoding="utf-8"))
    two = json.loads((outs[2] / "predict.json").read_text(encoding="utf-8"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["written"] == two["written"] == UIDS
    by_rank = two["by_rank"]
    assert sorted(by_rank) == ["0", "1"] and all(by_rank.values())
    assert sorted(by_rank["0"] + by_rank["1"]) == UIDS  # each scan once, by one rank
    some_mask = False
    for u in UIDS:
        a = ctio.read_volume(outs[1] / "masks" / f"{u}.mhd").array
        b = ctio.read_volume(outs[2] / "masks" / f"{u}.mhd").array
        assert np.array_equal(a, b), u
        some_mask |= bool(0 < a.mean() < 1)
    assert some_mask

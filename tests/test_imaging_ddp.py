"""Segmenter training under DDP (issue 15): the slices sharded over ranks, the launcher's
layout read into Lightning, one checkpoint from 2 CPU processes that ``segment predict``
loads, a failing rank failing the command, and 1 process unchanged. Tiny backbone (timm
``test_resnet``), 64-px synthetic scans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from lungfuse.plugins.imaging_infnet import synthetic
from lungfuse.plugins.imaging_infnet.ranks import Ranks

UIDS = [f"d{i}" for i in range(4)]
TRAIN = {"backbone": "test_resnet", "channel": 8, "epochs": 1, "batch_size": 4, "lr": 1e-3,
         "multiscale": [1.0], "val_fraction": 0.0, "max_slices": 8}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "ct"
    synthetic.write_tree(root, UIDS, seed=4, size=64, depth=12)
    return root


def _config(folder: Path, tree: Path, series: list[str], **more: object) -> Path:
    cfg = {"ct_root": str(tree), "annotations": str(tree / "annotations.csv"),
           "masks_dir": str(tree / "masks"), "series": series, "out_dir": str(folder / "out"),
           "overlays": False, "slices": {"img_size": 64}, "fast": {"enabled": False},
           "train": TRAIN, **more}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "segment.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _lungfuse(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from lungfuse.core.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def _inject(tmp_path: Path, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``code`` at start-up in the rank processes (a ``sitecustomize`` on their path)."""
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(code, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]))


def _pool(n: int):
    from lungfuse.plugins.imaging_infnet.dataset import SliceItem, SlicePool

    return SlicePool(SliceItem(torch.zeros(3, 8, 8).half(), torch.zeros(8, 8).half(), z=i)
                     for i in range(n))


def _shards(n: int, world: int, epoch: int, seed: int = 0) -> list[list[int]]:
    from lungfuse.plugins.imaging_infnet.dataset import SliceDataset
    from lungfuse.plugins.imaging_infnet.train import SliceDataModule

    out = []
    for r in range(world):
        dm = SliceDataModule(_pool(n), None, (0, 0, 0), (1, 1, 1), batch_size=2, seed=seed,
                             ranks=Ranks(r, world))
        out.append(list(dm.shard_sampler(SliceDataset(dm.train_pool, dm.mean, dm.std), epoch)))
    return out


@pytest.mark.parametrize("n,world", [(12, 2), (12, 3), (11, 2)])
def test_each_epoch_shards_the_slices_disjointly_over_the_ranks(n: int, world: int) -> None:
    for epoch in (0, 1):
        shards = _shards(n, world, epoch)
        flat = [i for s in shards for i in s]
        assert len(flat) == len(set(flat))  # no slice on two ranks
        assert len({len(s) for s in shards}) == 1  # equal steps on every rank
        if n % world == 0:
            assert sorted(flat) == list(range(n))  # every slice exactly once
        else:  # the few left over (n % world) are dropped for this epoch only
            assert len(flat) == n - n % world
    # reproducible with the seed, reshuffled each epoch and with another seed
    assert _shards(n, world, 1) == _shards(n, world, 1)
    assert _shards(n, world, 0) != _shards(n, world, 1)
    assert _shards(n, world, 0) != _shards(n, world, 0, seed=1)


def test_the_rank_loader_draws_from_its_shard() -> None:
    from lungfuse.plugins.imaging_infnet.train import SliceDataModule

    seen = []
    for r in (0, 1):
        dm = SliceDataModule(_pool(8), None, (0, 0, 0), (1, 1, 1), batch_size=2,
                             augment=False, ranks=Ranks(r, 2))
        dl = dm.train_dataloader()
        assert dl.batch_size == 2 and len(dl) == 2  # batch_size is per rank
        seen.append([int(i) for i in dl.sampler])
    assert sorted(seen[0] + seen[1]) == list(range(8))
    assert seen == _shards(8, 2, 0)
    # one process: the loader it always had (a shuffling sampler over every slice)
    one = SliceDataModule(_pool(8), None, (0, 0, 0), (1, 1, 1), batch_size=2).train_dataloader()
    assert isinstance(one.sampler, torch.utils.data.RandomSampler)


def test_lightning_takes_the_layout_from_torchrun_and_slurm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from lungfuse.core.errors import DataError
    from lungfuse.plugins.imaging_infnet.train import ACCELERATOR_ENV, ddp_placement

    assert ddp_placement(1) == {"accelerator": "cpu", "devices": 1}
    two_nodes = ddp_placement(8, {"LOCAL_WORLD_SIZE": "4"})
    assert (two_nodes["devices"], two_nodes["num_nodes"]) == (4, 2)
    assert two_nodes["strategy"] == "ddp" and two_nodes["accelerator"] == "auto"
    assert ddp_placement(6, {"SLURM_NNODES": "3"})["devices"] == 2
    assert ddp_placement(2, {ACCELERATOR_ENV: "cpu"})["accelerator"] == "cpu"
    with pytest.raises(DataError, match="per node"):
        ddp_placement(6, {"LOCAL_WORLD_SIZE": "4"})
    kw = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False}
    assert isinstance(L.Trainer(**ddp_placement(1), **kw).strategy, SingleDeviceStrategy)
    # a Trainer built as rank 3 sets Lightning's process-wide rank (rank_zero_only.rank),
    # which would silence the loggers and rank-0 writes of every later test: restore it
    from lightning_utilities.core.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))

    for k in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(k)
    torchrun = {"TORCHELASTIC_RUN_ID": "t1", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29400", ACCELERATOR_ENV: "cpu"}
    for k, v in torchrun.items():
        monkeypatch.setenv(k, v)
    t = L.Trainer(**ddp_placement(4), **kw)  # Lightning's own check: devices*nodes == world
    assert isinstance(t.strategy, DDPStrategy)
    assert isinstance(t.strategy.cluster_environment, TorchElasticEnvironment)
    assert (t.world_size, t.global_rank, t.num_nodes) == (4, 3, 2)
    for k in torchrun:
        monkeypatch.delenv(k)
    slurm = {"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
             "SLURM_JOB_NAME": "lungfuse", "SLURM_JOB_ID": "7", "SLURM_NODELIST": "n[1-2]",
             ACCELERATOR_ENV: "cpu"}
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    s = L.Trainer(**ddp_placement(4), **kw)
    assert isinstance(s.strategy.cluster_environment, SLURMEnvironment)
    assert (s.world_size, s.global_rank, s.num_nodes) == (4, 2, 2)


def test_one_process_trains_exactly_as_the_single_device_path(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`segment train --processes 1` = fit() without ranks (the one-device Trainer that
    segmenter training always used, and that the CT modality calls): same weights."""
    from lungfuse.plugins.imaging_infnet import train
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    calls = []
    real_fit = train.fit

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", recording)
    cfg = _config(tmp_path / "one", tree, UIDS[:2])
    code, out, err = _lungfuse(["segment", "train", str(cfg), "--processes", "1",
                                "--no-progress"], capsys)
    assert code == 0, err
    (args, kwargs), = calls
    assert kwargs["ranks"] is None
    status = json.loads((tmp_path / "one" / "out" / "train.json").read_text(encoding="utf-8"))
    assert status["status"] == "complete" and status["world_size"] == 1
    pool, vpool, slices, settings, _, ids = args
    module, _ = real_fit(pool, vpool, slices, settings, tmp_path / "direct", ids,
                         progress=False)
    assert module.trainer.world_size == 1 and module.trainer.strategy.root_device.type == "cpu"
    a, _ = load_checkpoint(tmp_path / "one" / "out" / "infnet.pt")
    b, _ = load_checkpoint(tmp_path / "direct" / "infnet.pt")
    init = train.InfNet("test_resnet", channel=8).state_dict()
    moved = False
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        moved |= v.is_floating_point() and not torch.equal(v, init[k])
    assert moved  # it trained


def test_two_processes_train_one_checkpoint_that_predict_loads(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    # each rank leaves its sampler's indices and its final weights behind
    dump = tmp_path / "dump"
    _inject(tmp_path, "import os\n"
            "import torch\n"
            "from lungfuse.plugins.imaging_infnet import train\n"
            "def _end(self):\n"
            "    idx = [int(i) for i in self.trainer.train_dataloader.sampler]\n"
            f"    torch.save({{'idx': idx, 'sd': self.model.state_dict()}}, {str(dump)!r}"
            " + os.environ['RANK'])\n"
            "train.InfNetModule.on_train_end = _end\n", monkeypatch)
    cfg = _config(tmp_path, tree, UIDS[:3], train={**TRAIN, "batch_size": 2})
    code, out, err = _lungfuse(["segment", "train", str(cfg), "--processes", "2",
                                "--no-progress"], capsys)
    assert code == 0, err
    out_dir = tmp_path / "out"
    status = json.loads((out_dir / "train.json").read_text(encoding="utf-8"))
    assert status["status"] == "complete" and status["world_size"] == 2
    model, meta = load_checkpoint(out_dir / "infnet.pt")
    assert meta["extra"]["world_size"] == 2 and meta["extra"]["epochs"] == 1
    assert sorted(meta["training_patients"]) == UIDS[:3]
    assert sorted(p.name for p in (out_dir / "lightning").iterdir()) == ["last.ckpt"]
    ranks = [torch.load(f"{dump}{r}", weights_only=True) for r in (0, 1)]
    assert sorted(ranks[0]["idx"] + ranks[1]["idx"]) == list(range(8))  # each slice once
    assert len(ranks[0]["idx"]) == 4
    params = {k for k, _ in model.named_parameters()}
    for k, v in model.state_dict().items():  # the checkpoint is rank 0's model
        assert torch.equal(ranks[0]["sd"][k], v), k
        if k in params:  # gradients all-reduced: every rank holds the same weights
            assert torch.equal(ranks[1]["sd"][k], v), k
    load_checkpoint(out_dir / "lightning" / "last.ckpt")  # loads like a 1-process one
    pred = _config(tmp_path / "pred", tree, UIDS[3:], checkpoint=str(out_dir / "infnet.pt"))
    code, out, err = _lungfuse(["segment", "predict", str(pred), "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "pred" / "out" / "masks" / f"{UIDS[3]}.mhd").is_file()


def test_a_failing_rank_fails_the_command_and_the_run_says_so(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # rank 1 fails in its first training step
    _inject(tmp_path, "import os\n"
            "if os.environ.get('RANK') == '1':\n"
            "    from lungfuse.plugins.imaging_infnet import train\n"
            "    def _boom(self, batch, batch_idx):\n"
            "        raise RuntimeError('injected failure on rank 1')\n"
            "    train.InfNetModule.training_step = _boom\n", monkeypatch)
    cfg = _config(tmp_path, tree, UIDS[:3])
    code, out, err = _lungfuse(["segment", "train", str(cfg), "--processes", "2",
                                "--no-progress"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: rank 1 of 2 exited with code")
    status = json.loads((tmp_path / "out" / "train.json").read_text(encoding="utf-8"))
    assert status["status"] == "failed" and "rank 1 of 2" in status["reason"]
    assert not (tmp_path / "out" / "infnet.pt").exists()


def test_semi_supervised_training_refuses_several_processes(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = _config(tmp_path, tree, UIDS[:2], mode="semi")
    code, out, err = _lungfuse(["segment", "train", str(cfg), "--processes", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "one process" in err
    assert not (tmp_path / "out").exists()

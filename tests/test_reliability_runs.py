"""Runs that end honestly (issue 11, cases 3-6 and the run report): bad input leaves no
run folder, a failed / interrupted / killed run says so in run.json, the next run names
it, ``--resume`` finishes it with the metrics of an uninterrupted run, Ctrl-C exits 130
with one line, relative folders work, run folders are never written over, the feature
cache follows the inputs' content, and a finished run holds report.html."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import click
import numpy as np
import pandas as pd
import pytest

from lungfuse.core.contracts import ModalityConfig, ModalityPlugin
from lungfuse.core.errors import ConfigError, DataError
from lungfuse.schemas import InputPath

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# ------------------------------------------------------------------ a tiny modality + data
class WideConfig(ModalityConfig):
    kind: Literal["wide"] = "wide"
    path: InputPath
    embedding_dim: int = 4


class WideModality(ModalityPlugin):
    """Reads a wide Parquet (index patient_id) and centres it on the training mean."""

    name = "wide"
    config_model = WideConfig

    def __init__(self, config: WideConfig) -> None:
        super().__init__(config)
        self.mean_: list[float] = []

    def _read(self) -> pd.DataFrame:
        return pd.read_parquet(self.config.path)

    def available(self, cohort, ctx):
        return set(self._read().index) & set(cohort.index)

    def prepare(self, train, ctx):
        df = self._read()
        self.mean_ = df[df.index.isin(train.index)].mean().tolist()

    def transform(self, patients, ctx):
        df = self._read()
        out = (df[df.index.isin(patients.index)] - self.mean_).astype("float32")
        out.index.name = "patient_id"
        return out

    def build_encoder(self, n_features):
        import torch.nn as nn

        enc = nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, 4))
        enc.embedding_dim = 4
        return enc

    def state_dict(self):
        return {"mean": self.mean_}

    def load_state_dict(self, state):
        self.mean_ = list(state["mean"])


def write_wide(path: Path, ids: list[str], y: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(ids), 3))
    x[:, 0] += 2.0 * y
    pd.DataFrame(x, index=pd.Index(ids, name="patient_id"), columns=["a", "b", "c"]) \
        .to_parquet(path)


def make_data(root: Path, n: int = 40) -> Path:
    """clinical.parquet, wide.parquet and the cnv example table (installed plugin)."""
    from lungfuse_cnv import CopyNumberModality

    root.mkdir(parents=True, exist_ok=True)
    ids = [f"TCGA-RL-{i:04d}" for i in range(n)]
    y = np.tile([0, 1], n // 2)
    pd.DataFrame({"patient_id": ids, "malignant": y}).to_parquet(root / "clinical.parquet")
    write_wide(root / "wide.parquet", ids, y)
    CopyNumberModality.example(root, ids)
    return root


def config(root: Path, out: Path | None = None, folds: int = 2, epochs: int = 2,
           patience: int = 2) -> dict:
    return {
        "name": "rl", "seed": 0,
        "cohort": {"clinical": str(root / "clinical.parquet")},
        "task": {"kind": "binary"},
        "modalities": [{"kind": "wide", "path": str(root / "wide.parquet")}],
        "fusion": {"kind": "gated", "hidden_dim": 8},
        "training": {"max_epochs": epochs, "batch_size": 16, "patience": patience,
                     "selection": "holdout"},  # the checkpoint tests need holdout's best.ckpt
        "evaluation": {"folds": folds, "bootstrap": 20},
        "output_dir": str(out or root / "runs"),
    }


def run(cfg, **kw):
    from lungfuse.core.run import run_experiment

    kw.setdefault("progress", False)
    return run_experiment(cfg, plugins=[WideModality], **kw)


def run_json(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text(encoding="utf-8"))


def files_of(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("reliable"))


def interrupt_in_second_fold(run_fn, cfg) -> Path:
    """``run_fn(cfg)`` with a Ctrl-C raised as its second fold starts; returns the one run
    folder it left in ``cfg['output_dir']``."""
    import lungfuse.core.folds as folds

    real, calls = folds.train_fold, {"n": 0}

    def ctrl_c_in_second_fold(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(folds, "train_fold", ctrl_c_in_second_fold)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_fn(cfg)
    finally:
        mp.undo()
    (folder,) = [p for p in Path(cfg["output_dir"]).iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def story(data):
    """Run A is interrupted (Ctrl-C) in its second fold; run B, into the same output
    folder, runs uninterrupted and is told about A; then A is resumed."""
    out = data / "story"
    cfg = config(data, out)
    a_dir = interrupt_in_second_fold(run, cfg)
    a_interrupted = run_json(a_dir)
    notes: list[str] = []
    b = run(cfg, notify=notes.append)
    resumed = run(cfg, resume=a_dir)
    return {"cfg": cfg, "out": out, "a_dir": a_dir, "a_interrupted": a_interrupted,
            "b": b, "notes": notes, "resumed": resumed}


# ------------------------------------------------------------------ case 3: honest ends
@pytest.mark.parametrize("breakage", ["one class", "no coverage", "trainer"])
def test_bad_input_leaves_no_run_folder(data, tmp_path, breakage) -> None:
    cfg = config(data, tmp_path / "runs")
    if breakage == "one class":
        pd.read_parquet(data / "clinical.parquet").assign(malignant=1) \
            .to_parquet(tmp_path / "clin.parquet")
        cfg["cohort"]["clinical"] = str(tmp_path / "clin.parquet")
        err, match = DataError, "both classes"
    elif breakage == "no coverage":
        pd.DataFrame({"a": [1.0]}, index=pd.Index(["X1"], name="patient_id")) \
            .to_parquet(tmp_path / "other.parquet")
        cfg["modalities"] = [{"kind": "wide", "path": str(tmp_path / "other.parquet")}]
        err, match = DataError, "covers none"
    else:
        cfg["trainer"] = {"strategy": "no-such-strategy"}
        err, match = ConfigError, "trainer settings rejected by Lightning"
    with pytest.raises(err, match=match) as exc:
        run(cfg)
    assert "\n" not in str(exc.value)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "no run folder for bad input"


def test_failure_mid_run_is_recorded_as_failed(data, tmp_path, monkeypatch) -> None:
    import lungfuse.core.folds as folds

    real, calls = folds.train_fold, {"n": 0}

    def broken_second_fold(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise DataError("wide.parquet: column 'a' went missing; regenerate it")
        return real(*a, **k)

    monkeypatch.setattr(folds, "train_fold", broken_second_fold)
    with pytest.raises(DataError):
        run(config(data, tmp_path / "runs", epochs=1))
    (folder,) = list((tmp_path / "runs").iterdir())
    status = run_json(folder)
    assert status["status"] == "failed"
    assert status["reason"] == "wide.parquet: column 'a' went missing; regenerate it"
    assert [(f["seed"], f["fold"]) for f in status["folds"]] == [(0, 0)]
    assert not list(folder.rglob("*.tmp"))


def test_ctrl_c_is_recorded_as_interrupted(story) -> None:
    status = story["a_interrupted"]
    assert status["status"] == "interrupted" and "Ctrl-C" in status["reason"]
    assert status["pid"] == os.getpid() and status["host"]
    assert [(f["seed"], f["fold"]) for f in status["folds"]] == [(0, 0)]


def test_next_run_names_the_unfinished_one(story) -> None:
    a = story["a_dir"]
    assert len(story["notes"]) == 1
    note = story["notes"][0]
    assert "\n" not in note and str(a) in note and "interrupted" in note
    assert f"--resume {a}" in note
    assert story["b"].run_dir != a


def test_resume_reproduces_the_uninterrupted_metrics(story) -> None:
    res, b = story["resumed"], story["b"]
    assert res.run_dir == story["a_dir"] and res.resumed == 1
    status = run_json(res.run_dir)
    assert status["status"] == "complete" and "reason" not in status
    assert [(f["seed"], f["fold"]) for f in status["folds"]] == [(0, 0), (0, 1)]
    assert len(status["resumed"]) == 1
    got = json.loads((res.run_dir / "metrics.json").read_text(encoding="utf-8"))
    want = json.loads((b.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert got == want
    pd.testing.assert_frame_equal(
        pd.read_parquet(res.run_dir / "predictions.parquet"),
        pd.read_parquet(b.run_dir / "predictions.parquet"))


def test_a_run_writes_its_report_also_when_resumed(story) -> None:
    for folder in (story["b"].run_dir, story["resumed"].run_dir):
        html = (folder / "report.html").read_text(encoding="utf-8")
        assert "Held-out performance" in html and folder.name in html


def test_resume_refuses_another_config_a_finished_and_a_live_run(story, tmp_path) -> None:
    import socket

    paused = tmp_path / "paused"
    paused.mkdir()
    for f in ("config.yaml", "splits.parquet"):
        (paused / f).write_bytes((story["b"].run_dir / f).read_bytes())

    def status(**kw) -> None:
        (paused / "run.json").write_text(json.dumps({"folds": [], **kw}), encoding="utf-8")

    status(status="interrupted", reason="Ctrl-C")
    other = {**story["cfg"], "training": {**story["cfg"]["training"], "max_epochs": 9}}
    with pytest.raises(ConfigError, match=r"differs from the run's config at "
                                          r"`training\.max_epochs` \(9 here, 2 in the run\)"):
        run(other, resume=paused)
    status(status="running", pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time())
    with pytest.raises(ConfigError, match="still going"):
        run(story["cfg"], resume=paused)
    with pytest.raises(ConfigError, match="already complete"):
        run(story["cfg"], resume=story["b"].run_dir)
    with pytest.raises(ConfigError, match="not a run folder"):
        run(story["cfg"], resume=tmp_path / "nowhere")
    assert sorted(p.name for p in paused.iterdir()) == ["config.yaml", "run.json",
                                                        "splits.parquet"]


def test_lightning_ctrl_c_stays_a_keyboard_interrupt() -> None:
    """Lightning's fit answers Ctrl-C with sys.exit(1) and ignores SIGINT from then on;
    quiet_lightning gives back the KeyboardInterrupt and the SIGINT handler."""
    import lightning as L
    import torch

    from lungfuse.core.folds import quiet_lightning

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            raise KeyboardInterrupt  # what a Ctrl-C during training does

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2)

    before = signal.getsignal(signal.SIGINT)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    with pytest.raises(KeyboardInterrupt), quiet_lightning():
        trainer.fit(Tiny())
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("how", ["plain", "lightning"])
def test_cli_ctrl_c_prints_one_line_and_exits_130(how, capsys) -> None:
    from lungfuse.core import cli as cli_mod

    @click.command("boom-ctrl-c")
    def boom() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            if how == "lightning":
                sys.exit(1)  # Lightning's answer to Ctrl-C inside fit
            raise

    cli_mod.cli.add_command(boom)
    try:
        with pytest.raises(SystemExit) as exc:
            cli_mod.main(["boom-ctrl-c"])
    finally:
        cli_mod.cli.commands.pop("boom-ctrl-c", None)
    assert exc.value.code == 130
    assert capsys.readouterr().err.split() == ["interrupted"]


# ------------------------------------------------------------------ case 4: relative folders
@pytest.mark.parametrize("where", ["output_dir", "run_dir"])
def test_relative_output_and_run_dir(data, tmp_path, monkeypatch, where) -> None:
    monkeypatch.chdir(tmp_path)
    res = run(config(data, epochs=1), **{where: Path("rel") / "x"})
    assert res.run_dir.is_absolute() and res.run_dir.is_relative_to(tmp_path / "rel" / "x")
    for k in (0, 1):
        meta = json.loads((res.run_dir / f"models/seed0-fold{k}/meta.json")
                          .read_text(encoding="utf-8"))
        assert meta["checkpoint"] == "checkpoints/best.ckpt"
    assert run_json(res.run_dir)["status"] == "complete"


# ------------------------------------------------------------------ case 5: never overwritten
def test_run_dir_variable_never_overwrites_a_run(story, monkeypatch) -> None:
    first = story["b"].run_dir
    before = files_of(first)
    monkeypatch.setenv("LUNGFUSE_RUN_DIR", str(first))
    with pytest.raises(ConfigError, match="already holds a run .* never written over"):
        run(story["cfg"])
    assert files_of(first) == before


def test_run_dir_refuses_a_non_empty_data_folder(data, tmp_path) -> None:
    target = tmp_path / "mydata"
    target.mkdir()
    (target / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is not empty \(it holds notes\.txt\)"):
        run(config(data), run_dir=target)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(config(data, epochs=1), run_dir=empty).run_dir == empty


# ------------------------------------------------------------------ case 11: files as folders
def test_output_or_cache_dir_that_is_a_file(data, tmp_path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file", encoding="utf-8")
    with pytest.raises(DataError, match="output folder .* is a file, not a folder") as exc:
        run(config(data), output_dir=blocker / "runs")
    assert "\n" not in str(exc.value) and str(blocker) in str(exc.value)
    with pytest.raises(DataError, match="cache folder .* is a file, not a folder"):
        run(config(data, tmp_path / "runs"), cache_dir=blocker)
    assert not (tmp_path / "runs").exists()


def test_atomic_write_under_a_file_is_one_line(tmp_path) -> None:
    from lungfuse.core import atomic

    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"f is a file, not a folder") as exc:
        atomic.write_json(tmp_path / "f" / "sub" / "a.json", {})
    assert "\n" not in str(exc.value)


def test_cli_output_dir_that_is_a_file(data, tmp_path, capsys) -> None:
    import yaml

    from lungfuse.core.cli import main

    cfg = config(data)
    cfg["modalities"] = [{"kind": "cnv", "path": str(data / "cnv.parquet"), "top_n": 6}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "file")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output folder") and "is a file" in err[0]


# ------------------------------------------------------------------ case 6: the cache key
def test_feature_cache_follows_an_input_changed_in_place(data, tmp_path) -> None:
    from lungfuse.core.cohort import load_cohort
    from lungfuse.core.features import prepare_fold_features
    from lungfuse.core.study import load_experiment

    wide = tmp_path / "wide.parquet"
    wide.write_bytes((data / "wide.parquet").read_bytes())
    cfg = config(data)
    cfg["modalities"] = [{"kind": "wide", "path": str(wide)}]
    exp, _ = load_experiment(cfg, plugins=[WideModality])
    cohort = load_cohort(exp.cohort, exp.task)
    mcfg, train = exp.modalities[0], cohort.ids[:30]

    def prep():
        return prepare_fold_features("wide", WideModality, mcfg, cohort, train,
                                     workdir=tmp_path / "w", cache_dir=tmp_path / "cache")

    first = prep()
    assert prep().from_cache
    y = pd.read_parquet(data / "clinical.parquet")["malignant"].to_numpy()
    write_wide(wide, list(cohort.ids), y, seed=7)  # same path, same shape, new values
    again = prep()
    assert not again.from_cache and again.key != first.key
    fresh = pd.read_parquet(wide)
    expect = (fresh.loc[train].mean() - fresh.loc[again.features.index[:1]].iloc[0]).abs()
    assert np.allclose((-again.features.iloc[0]).abs().to_numpy(), expect.to_numpy(), atol=1e-5)


def test_cache_key_covers_folders_files_and_the_cohort_table(tmp_path) -> None:
    from lungfuse.core.features import feature_cache_key

    root = tmp_path / "ct"
    root.mkdir()
    (root / "a.mhd").write_text("one", encoding="utf-8")
    cfg = {"kind": "x", "root": str(root)}
    table = pd.DataFrame({"malignant": [0, 1]}, index=["p1", "p2"])
    key = lambda t=table: feature_cache_key(cfg, 0, 0, ["p1"], ["p1", "p2"], cohort_table=t)  # noqa: E731
    k0 = key()
    assert key() == k0, "unchanged inputs keep their key (the cache still hits)"
    (root / "b.mhd").write_text("two", encoding="utf-8")
    k1 = key()
    assert k1 != k0
    (root / "a.mhd").write_text("ONE, longer", encoding="utf-8")
    assert key() != k1
    assert key(table.assign(malignant=[1, 0])) != key()


# ------------------------------------------------------------------ real signals, real CLI
def _lungfuse() -> list[str]:
    exe = Path(sys.executable).with_name("lungfuse")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lungfuse.core.cli"]


def _env() -> dict[str, str]:
    env = {**os.environ, "LUNGFUSE_NO_PROGRESS": "1"}
    env.pop("LUNGFUSE_RUN_DIR", None)
    return env


def _cnv_config(data: Path, tmp_path: Path, **kw) -> Path:
    """A config of the installed cnv plugin only (the subprocess cannot see WideModality)."""
    import yaml

    cfg = config(data, tmp_path / "runs", **kw)
    cfg["modalities"] = [{"kind": "cnv", "path": str(data / "cnv.parquet"), "top_n": 6,
                          "embedding_dim": 4, "hidden_dim": 8}]
    path = tmp_path / "cnv.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _sigint_ignored(pid: int) -> str:
    """Whether process ``pid`` ignores SIGINT, from its /proc status (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("SigIgn:"):
                return str(bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1))))
    except OSError:
        pass
    return "unknown"


def _start_and_wait_for(cmd: list[str], glob: str, root: Path) -> subprocess.Popen:
    """Start ``cmd`` and return once a file matching ``glob`` exists under ``root``."""
    # the child starts with SIGINT at its default, as from a shell: an ignored SIGINT is
    # inherited across exec, and Python then installs no KeyboardInterrupt handler, so a
    # disposition left behind in this test process would make the Ctrl-C tests hang
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(root.glob(glob)):
        time.sleep(0.05)
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"`lungfuse run` ended (rc {proc.returncode}) before it could be "
                    f"stopped:\n{err[-3000:]}")
    assert list(root.glob(glob)), f"no {glob} within 240 s"
    return proc


@pytest.mark.slow
def test_sigkilled_run_is_marked_named_and_resumes_to_the_same_metrics(data, tmp_path) -> None:
    """The kill test: SIGKILL `lungfuse run` once its first fold's model exists; the folder
    stays recognisably unfinished, the next run into the same output folder names it, and
    `--resume` ends it with the metrics of an uninterrupted run."""
    from lungfuse.core.run import run_experiment

    path = _cnv_config(data, tmp_path, folds=3, epochs=4)
    runs = tmp_path / "runs"
    proc = _start_and_wait_for([*_lungfuse(), "run", str(path), "--no-progress"],
                               "*/models/seed0-fold0/model.pt", runs)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (killed,) = [p for p in runs.iterdir() if p.is_dir()]
    status = run_json(killed)
    assert status["status"] == "running" and status["pid"] == proc.pid
    assert not (killed / "metrics.json").exists() and not (killed / "report.html").exists()

    notes: list[str] = []
    reference = run_experiment(path, notify=notes.append, progress=False)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert f"run folder {killed} did not finish (killed" in notes[0]
    assert f"`lungfuse run {path} --resume {killed}`" in notes[0]

    out = subprocess.run([*_lungfuse(), "run", str(path), "--resume", str(killed),
                          "--no-progress"], capture_output=True, text=True, encoding="utf-8",
                         errors="replace", env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run folder: {killed} (resumed: " in out.stdout
    status = run_json(killed)
    assert status["status"] == "complete" and len(status["folds"]) == 3
    got = json.loads((killed / "metrics.json").read_text(encoding="utf-8"))
    want = json.loads((reference.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert got == want
    assert (killed / "report.html").is_file()


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_with_one_line(data, tmp_path) -> None:
    path = _cnv_config(data, tmp_path, folds=2, epochs=5000, patience=5000)
    proc = _start_and_wait_for([*_lungfuse(), "run", str(path), "--no-progress"],
                               "*/models/seed0-fold0/checkpoints/best.ckpt", tmp_path / "runs")
    proc.send_signal(signal.SIGINT)  # inside Lightning's fit: 5000 epochs, no early stop
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        ignored = _sigint_ignored(proc.pid)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no exit 120 s after SIGINT (child ignores SIGINT: {ignored}; this "
                    f"process's handler: {signal.getsignal(signal.SIGINT)}):\n{err[-2000:]}")
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == "interrupted" and "Traceback" not in err
    (folder,) = list((tmp_path / "runs").iterdir())
    status = run_json(folder)
    assert status["status"] == "interrupted" and "Ctrl-C" in status["reason"]


def test_unfinished_reason_tells_live_from_dead_runs(tmp_path) -> None:
    import socket

    from lungfuse.core.rundir import STALE_SECONDS, proc_stat, unfinished_reason

    me, here, now = os.getpid(), socket.gethostname(), time.time()
    stat = proc_stat(me)

    def reason(**run) -> str | None:
        (tmp_path / "run.json").write_text(json.dumps(run), encoding="utf-8")
        return unfinished_reason(tmp_path)

    assert reason(status="complete") is None
    assert reason(status="running", pid=me, host=here, heartbeat=now) is None
    assert reason(status="running", host="elsewhere", pid=1, heartbeat=now) is None
    stale = now - STALE_SECONDS - 1
    assert "killed" in reason(status="running", pid=me, host=here, heartbeat=stale)
    assert "killed" in reason(status="running", host="elsewhere", pid=1, heartbeat=stale)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    assert f"process {gone} on {here} is gone" in reason(status="running", pid=int(gone),
                                                          host=here, heartbeat=now)
    if stat is not None:  # Linux: a reused pid (other start time) is not the run's process
        assert "killed" in reason(status="running", pid=me, host=here, heartbeat=now,
                                  pid_start=str(int(stat[1]) + 1))
    assert reason(status="failed", reason="boom") == "failed: boom"


def test_hashing_stops_at_the_budget_but_keys_stay_stable(tmp_path, monkeypatch) -> None:
    import lungfuse.core.features as features

    monkeypatch.setattr(features, "HASH_BUDGET", 15)
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("0123456789", encoding="utf-8")
    b.write_text("abcdefghij", encoding="utf-8")
    cfg = {"kind": "x", "files": [str(b), str(a)]}
    budget = [features.HASH_BUDGET]
    fps = [features.input_fingerprint(p, budget) for p in features.input_paths(cfg)]
    assert "sha256" in fps[0] and "mtime_ns" in fps[1], "a.tsv hashed, b.tsv over budget"
    k = features.feature_cache_key(cfg, 0, 0, [])
    assert features.feature_cache_key(cfg, 0, 0, []) == k
    b.write_text("ABCDEFGHIJ", encoding="utf-8")  # same size: the mtime still tells
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))
    assert features.feature_cache_key(cfg, 0, 0, []) != k

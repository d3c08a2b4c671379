"""Semi-supervised Inf-Net: progressive rounds, leakage rules, resume, confidence filter, CLI.

Tiny on purpose: ``test_resnet`` backbone, 64-px slices, 6 synthetic scans, 1 epoch a fit.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from lungfuse.core.errors import ConfigError, DataError  # noqa: E402
from lungfuse.plugins.imaging_infnet import ctio, synthetic  # noqa: E402
from lungfuse.plugins.imaging_infnet import semi as semi_mod  # noqa: E402
from lungfuse.plugins.imaging_infnet.config import (  # noqa: E402
    SemiSettings,  # noqa: E402
    SliceSettings,
    TrainSettings,
)
from lungfuse.plugins.imaging_infnet.dataset import (  # noqa: E402
    SliceDataset,
    SliceItem,
    SlicePool,
    build_pool,
)
from lungfuse.plugins.imaging_infnet.losses import infnet_loss  # noqa: E402
from lungfuse.plugins.imaging_infnet.network import InfNet  # noqa: E402
from lungfuse.plugins.imaging_infnet.semi import (  # noqa: E402
    Candidate,
    EMATeacher,
    SemiTrainer,
    candidates_from_cases,
    check_no_test_patients,
)
from lungfuse.plugins.imaging_infnet.train import fit, load_checkpoint  # noqa: E402

SLICES = SliceSettings(img_size=64)
TRAIN = TrainSettings(backbone="test_resnet", channel=8, epochs=1, batch_size=8, lr=1e-3,
                      multiscale=[1.0], val_fraction=0.0)
SEMI = SemiSettings(method="progressive", k_per_round=3, epochs_per_round=1, final_epochs=1,
                    batch_size=8)
N_SCANS = 6
# scans 0-1 labelled, 2-3 unlabelled (10 of their every-other slices), 4 a test patient,
# 5 validation


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("semi_ct")
    synthetic.write_tree(root, [f"u{i}" for i in range(N_SCANS)], seed=5, size=64, depth=12)
    return root


@pytest.fixture(scope="module")
def cases(tree: Path) -> list[ctio.Case]:
    vols = ctio.find_volumes(tree)
    ann = ctio.read_annotations(tree / "annotations.csv")
    return ctio.load_cases(sorted(vols.items()), ann, tree / "masks",
                           patients={f"u{i}": f"P{i}" for i in range(N_SCANS)})


def keys(pool: list[SliceItem]) -> list[str]:
    return [f"{it.source}:{it.uid}:{it.z}" for it in pool]


class FitRecorder:
    """Wraps a fit function: records the pool of every call, can crash at call ``fail_at``."""

    def __init__(self, fail_at: int | None = None, inner: Any = fit) -> None:
        self.pools: list[list[str]] = []
        self.fail_at, self.inner = fail_at, inner

    def __call__(self, pool: SlicePool, *args: Any, **kw: Any) -> Any:
        self.pools.append(keys(pool))
        if self.fail_at is not None and len(self.pools) == self.fail_at:
            raise RuntimeError("simulated crash during training")
        return self.inner(pool, *args, **kw)


def unlabelled(cases: list[ctio.Case]) -> list[Candidate]:
    return candidates_from_cases(cases[2:4], SLICES, stride=2)[:10]


def make_trainer(cases: list[ctio.Case], state_dir: Path, **kw: Any) -> SemiTrainer:
    labelled = kw.pop("labelled", None) or build_pool(cases[:2], SLICES, 0.5, seed=0)
    cands = kw.pop("candidates", None) or unlabelled(cases)
    val = build_pool(cases[5:], SLICES, 0.5, seed=0)
    return SemiTrainer(labelled, cands, val, SLICES, kw.pop("train", TRAIN),
                       kw.pop("semi", SEMI), state_dir, ["P0", "P1", "P5"],
                       test_patients=kw.pop("test_patients", {"P4"}), progress=False, **kw)


@pytest.fixture(scope="module")
def reference(cases: list[ctio.Case], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[SemiTrainer, FitRecorder]:
    """One uninterrupted progressive run (real training)."""
    rec = FitRecorder()
    tr = make_trainer(cases, tmp_path_factory.mktemp("semi_ref") / "state", fit_fn=rec)
    tr.run()
    return tr, rec


# ----------------------------------------------------------------------------- progressive
def test_progressive_rounds_add_k_slices_in_seeded_order(
        cases: list[ctio.Case], reference: tuple[SemiTrainer, FitRecorder]) -> None:
    tr, rec = reference
    k = SEMI.k_per_round
    cand_keys = {c.key for c in unlabelled(cases)}
    assert len(cand_keys) == 10 and sorted(tr.order) == sorted(cand_keys)
    assert tr.n_rounds == 4
    assert [h.added for h in tr.history] == [0, 3, 3, 3, 1]  # the last round takes the rest
    lab = keys(tr.labelled)
    # fits: round 0 on L, round r on L + the first r*K of the order, final on L alone
    assert len(rec.pools) == tr.n_rounds + 2
    assert rec.pools[0] == lab and rec.pools[-1] == lab
    for r in range(1, tr.n_rounds + 1):
        pool = rec.pools[r]
        assert pool[:len(lab)] == lab
        assert pool[len(lab):] == [f"pseudo:{q}" for q in tr.order[:min(r * k, len(tr.order))]]
        assert tr.history[r].pool_size == len(pool)
    assert keys(tr.pool) == rec.pools[tr.n_rounds]
    assert [it.meta["round"] for it in tr.pool if it.source == "pseudo"] == \
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    # pseudo masks are hard 0/1 labels; the round file holds exactly that round's slices
    masks = torch.stack([it.mask for it in tr.pool if it.source == "pseudo"]).float()
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    r2 = torch.load(tr.state_dir / "round_002.pt", weights_only=True)
    assert r2["keys"] == tr.order[3:6]
    # only the last round's model is kept
    assert sorted(p.name for p in tr.state_dir.glob("model_*.pt")) == ["model_004.pt"]
    # the order is seeded: same seed same order, another seed another order
    same = make_trainer(cases, tr.state_dir.parent / "other")
    other = make_trainer(cases, tr.state_dir.parent / "other",
                         train=TRAIN.model_copy(update={"seed": 1}))
    assert same.order == tr.order and other.order != tr.order


# ----------------------------------------------------------------------------- leakage
def test_candidates_of_test_patients_are_refused(cases: list[ctio.Case], tmp_path: Path) -> None:
    with_test = candidates_from_cases(cases[2:5], SLICES, stride=3)  # scan 4 is P4's
    assert "P4" in {c.patient for c in with_test}
    check_no_test_patients(with_test, {"P9"})  # nobody to refuse
    with pytest.raises(DataError, match=r"test patient.*P4.*training patients only"):
        check_no_test_patients(with_test, {"P4"})
    with pytest.raises(DataError, match="P4"):
        make_trainer(cases, tmp_path / "s1", candidates=with_test)
    with pytest.raises(DataError, match="labelled pool: test patient P0"):
        make_trainer(cases, tmp_path / "s2", test_patients={"P0"})
    # checked again before every round (a test set that grows after the pool was built)
    net = InfNet("test_resnet", channel=8)
    fake = FitRecorder(inner=lambda *a, **k: (SimpleNamespace(model=net), None))
    tr = make_trainer(cases, tmp_path / "s3", fit_fn=fake,
                      on_round=lambda r: tr.test_patients.add("P2") if r == 1 else None)
    with pytest.raises(DataError, match="round 1: .*P2"):
        tr.run()
    assert len(fake.pools) == 1  # only round 0 trained
    assert not (tmp_path / "s3" / "round_001.pt").exists()


# ----------------------------------------------------------------------------- resume
def test_resume_continues_the_interrupted_round(
        cases: list[ctio.Case], reference: tuple[SemiTrainer, FitRecorder],
        tmp_path: Path) -> None:
    ref, ref_rec = reference
    state = tmp_path / "state"
    crash = FitRecorder(fail_at=4)  # fits: rounds 0, 1, 2, then dies inside round 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(cases, state, fit_fn=crash).run()
    assert (state / "round_002.pt").exists() and not (state / "round_003.pt").exists()
    stamps = [(state / f"round_{r:03d}.pt").stat().st_mtime_ns for r in range(3)]

    rec, seen = FitRecorder(), []
    tr = make_trainer(cases, state, fit_fn=rec, on_round=seen.append)
    model = tr.run()
    assert seen == [3, 4, 5]  # rounds 3 and 4, then the final fine-tune (n_rounds + 1)
    assert len(rec.pools) == 3  # rounds 0-2 not trained again
    assert rec.pools[0] == ref_rec.pools[3]  # L + the pseudo slices of rounds 1-3
    assert [(state / f"round_{r:03d}.pt").stat().st_mtime_ns for r in range(3)] == stamps
    assert [h.round for h in tr.history] == [0, 1, 2, 3, 4]
    assert [h.added for h in tr.history] == [h.added for h in ref.history]
    assert keys(tr.pool) == keys(ref.pool)

    # a finished state: nothing is trained, the final model is read back
    again = FitRecorder()
    m2 = make_trainer(cases, state, fit_fn=again).run()
    assert again.pools == []
    for k, v in m2.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k

    # a state written by another configuration or other data is refused
    with pytest.raises(ConfigError, match="different semi-supervised configuration"):
        make_trainer(cases, state, semi=SEMI.model_copy(update={"k_per_round": 2})).run()
    with pytest.raises(ConfigError, match="different"):
        make_trainer(cases, state, labelled=build_pool(cases[:1], SLICES, 0.5, seed=0)).run()


# ----------------------------------------------------------------------------- confidence
def _candidate(i: int, prob: torch.Tensor) -> Candidate:
    """A candidate whose image carries the probability map the fake labeller returns."""
    return Candidate(f"c{i}", f"Q{i}", 0, prob.expand(3, -1, -1).half())


def _run_on_maps(monkeypatch: pytest.MonkeyPatch, maps: dict[str, torch.Tensor],
                 settings: SemiSettings, tmp_path: Path) -> tuple[SemiTrainer, FitRecorder]:
    """Semi rounds where the labeller "predicts" each candidate's given probability map
    (candidate ``c{i}`` carries ``maps[f"c{i}"]`` as its image) and training is recorded."""
    s = next(iter(maps.values())).shape[-1]
    cands = [_candidate(i, maps[f"c{i}"]) for i in range(len(maps))]
    labelled = SlicePool([SliceItem(torch.rand(3, s, s).half(), torch.zeros(s, s).half(),
                                    uid="lab", patient_id="L", z=0)])
    monkeypatch.setattr(semi_mod, "predict_probs", lambda model, x, **kw: x[:, 0].float())
    net = InfNet("test_resnet", channel=8)
    rec = FitRecorder(inner=lambda *a, **k: (SimpleNamespace(model=net), None))
    tr = SemiTrainer(labelled, cands, None, SliceSettings(img_size=s), TRAIN, settings,
                     tmp_path / "state", ["L"], progress=False, fit_fn=rec)
    tr.run()
    return tr, rec


def test_confidence_drops_unsure_slices_and_ignores_the_band(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = 32
    confident = torch.full((s, s), 0.02)
    confident[4:12, 4:12] = 0.99
    confident[20:24, 20:24] = 0.5  # uncertain pixels, inside the ignore band
    negative = torch.full((s, s), 0.05)
    negative[0, :8] = 0.3  # in the band
    maps = {"c0": confident, "c1": torch.full((s, s), 0.6), "c2": negative,
            "c3": torch.full((s, s), 0.93), "c4": torch.full((s, s), 0.89)}
    conf = {k: float(torch.maximum(p, 1 - p).mean()) for k, p in maps.items()}
    tau = 0.9
    kept = {k for k, c in conf.items() if c >= tau}
    assert kept == {"c0", "c2", "c3"}  # the design: two below tau
    settings = SemiSettings(method="confidence", tau=tau, ignore_band=(0.2, 0.8),
                            k_per_round=3, rounds=2, epochs_per_round=1, final_epochs=0)
    tr, rec = _run_on_maps(monkeypatch, maps, settings, tmp_path)
    # round 1 re-labels order[:3], round 2 order[:5]; each replaces the previous pseudo set
    for r, n in ((1, 3), (2, 5)):
        exp = [q for q in tr.order[:n] if q.split(":")[0] in kept]
        assert rec.pools[r] == ["labelled:lab:0"] + [f"pseudo:{q}" for q in exp]
        assert tr.history[r].kept == tr.history[r].added == len(exp)
    pseudo = {it.uid: it for it in tr.pool if it.source == "pseudo"}
    assert set(pseudo) == kept
    for uid, it in pseudo.items():
        p = maps[uid].half().float()  # the labeller saw the float16 image
        band = (p > 0.2) & (p < 0.8)
        assert torch.equal(it.weight.float(), (~band).float()), uid
        assert torch.equal(it.mask.float(), (p >= 0.5).float()), uid
    assert int((pseudo["c0"].weight == 0).sum()) == 16 and int((pseudo["c2"].weight == 0)
                                                                .sum()) == 8
    # the loss does not see ignored pixels: changing the logits there changes nothing
    item = SliceDataset([pseudo["c0"]], (0, 0, 0), (1, 1, 1))[0]
    batch = {k: v[None] for k, v in item.items()}
    logits = torch.randn(1, 1, s, s)
    moved = logits.clone()
    moved[..., 20:24, 20:24] += 30.0
    a, _ = infnet_loss((logits,) * 5, batch["mask"], batch["edge"], batch["valid"])
    b, _ = infnet_loss((moved,) * 5, batch["mask"], batch["edge"], batch["valid"])
    torch.testing.assert_close(a, b)
    c, _ = infnet_loss((moved,) * 5, batch["mask"], batch["edge"])
    assert abs(float(c - a)) > 1e-3


def test_foreground_confidence_keeps_crisp_nodules_not_empty_slices(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``confidence_over: foreground`` scores a slice by its predicted nodule only: a crisp
    nodule is kept; an empty prediction (what a missed nodule looks like) and a blurry one,
    both of which the whole-slice mean keeps, are not."""
    s = 32
    crisp = torch.full((s, s), 0.02)
    crisp[4:12, 4:12] = 0.99
    empty = torch.full((s, s), 0.05)
    blurry = torch.full((s, s), 0.02)
    blurry[4:12, 4:12] = 0.6
    haloed = crisp.clone()
    haloed[12:20, 4:12] = 0.3  # as many unsure pixels around the nodule as inside it
    maps = {"c0": crisp, "c1": empty, "c2": blurry, "c3": haloed}
    probs = torch.stack(list(maps.values()))
    whole = semi_mod.slice_confidence(probs, "slice")
    fg = semi_mod.slice_confidence(probs, "foreground", 0.2)
    assert bool((whole >= 0.9).all())  # the whole-slice mean keeps every one of them
    torch.testing.assert_close(fg[[0, 2, 3]], torch.tensor([0.99, 0.6, (0.99 + 0.7) / 2]))
    assert bool(torch.isnan(fg[1]))
    with pytest.raises(ValueError, match="foreground"):
        semi_mod.slice_confidence(probs, "pixels")

    settings = SemiSettings(method="confidence", tau=0.9, confidence_over="foreground",
                            k_per_round=4, rounds=1, epochs_per_round=1, final_epochs=0)
    tr, _ = _run_on_maps(monkeypatch, maps, settings, tmp_path)
    assert {it.uid for it in tr.pool if it.source == "pseudo"} == {"c0"}
    assert tr.history[1].kept == 1


def test_ema_teacher_update() -> None:
    torch.manual_seed(0)
    student, teacher = InfNet("test_resnet", channel=8), InfNet("test_resnet", channel=8)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    EMATeacher(teacher, 0.9).on_train_batch_end(None, SimpleNamespace(model=student), None,
                                                 None, 0)
    s_sd = student.state_dict()
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * s_sd[name])
    for name, b in teacher.named_buffers():
        assert torch.equal(b, s_sd[name]), name


# ----------------------------------------------------------------------------- CLI
def _config(tmp_path: Path, tree: Path, **semi: Any) -> Path:
    import yaml

    cfg = {
        "ct_root": str(tree), "annotations": str(tree / "annotations.csv"),
        "masks_dir": str(tree / "masks"), "out_dir": str(tmp_path / "out"),
        "slices": {"img_size": 64},
        "train": {"backbone": "test_resnet", "channel": 8, "epochs": 1, "batch_size": 8,
                  "lr": 1e-3, "multiscale": [1.0], "val_fraction": 0.25, "seed": 0},
        "fast": {"enabled": False},
        "mode": "semi",
        "semi": {"method": "progressive", "ema_decay": 0.9, "k_per_round": 6,
                 "rounds": 2, "epochs_per_round": 1, "final_epochs": 1, "batch_size": 8,
                 "slice_stride": 3, "labelled_fraction": 0.5, **semi},
    }
    path = tmp_path / "segment.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_segment_train_semi_from_yaml(tree: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from lungfuse.core.cli import main

    splits = tmp_path / "splits.csv"  # a run's splits file: only split == test counts
    splits.write_text("patient_id,split\nu5,test\nu0,train\n", encoding="utf-8")
    cfg = _config(tmp_path, tree, unlabelled_series=["u3"], test_patients_file=str(splits))
    with pytest.raises(SystemExit) as exc:
        main(["segment", "train", str(cfg), "--no-progress"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert "semi-supervised (progressive): 2 round(s)" in capsys.readouterr().out
    model, meta = load_checkpoint(tmp_path / "out" / "infnet.pt")
    assert isinstance(model, InfNet)
    # every non-test patient trained it (labelled, unlabelled, validation); u5 never
    assert meta["training_patients"] == ["u0", "u1", "u2", "u3", "u4"]
    extra = meta["extra"]
    assert extra["mode"] == "semi" and extra["method"] == "progressive"
    assert [h["round"] for h in extra["history"]] == [0, 1, 2]
    pseudo_uids = set()
    for r in (1, 2):
        obj = torch.load(tmp_path / "out" / "semi" / f"round_{r:03d}.pt", weights_only=True)
        pseudo_uids |= {q.split(":")[0] for q in obj["keys"]}
    assert pseudo_uids and "u5" not in pseudo_uids

    # an unlabelled series of a test patient is refused before any training
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = _config(bad, tree, unlabelled_series=["u5"], test_patients=["u5"])
    with pytest.raises(SystemExit) as exc:
        main(["segment", "train", str(cfg), "--no-progress"])
    assert exc.value.code == 2
    assert "belongs to a test patient" in capsys.readouterr().err
    assert not (bad / "out" / "semi").exists()


# ----------------------------------------------------------------------------- fixmatch
FIX = SemiSettings(method="fixmatch", steps=2, batch_size=2, unlabelled_batch_size=2,
                   rampup_steps=0, tau=0.51, ema_decay=0.9, final_epochs=0, checkpoint_every=2)


class Untouchable:
    """Stands where a mask of U would be: reading it in any way fails the test."""

    def _fail(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("a mask of an unlabelled slice was read")

    __getattr__ = __getitem__ = __array__ = __bool__ = __len__ = __iter__ = _fail


def _init_net(seed: int = 0) -> InfNet:
    torch.manual_seed(seed)
    return InfNet("test_resnet", channel=8)


def _fixmatch(cases: list[ctio.Case], state: Path, semi: SemiSettings = FIX) -> SemiTrainer:
    """A fixmatch trainer on L = scans 0-1 and U = the usual unlabelled slices, whose
    hidden masks cannot be read (no validation pool: nothing to predict but U)."""
    cands = [Candidate(c.uid, c.patient_id, c.z, c.image, hidden_mask=Untouchable())  # type: ignore
             for c in unlabelled(cases)]
    return SemiTrainer(build_pool(cases[:2], SLICES, 0.5, seed=0), cands, None, SLICES, TRAIN,
                       semi, state, ["P0", "P1"], test_patients={"P4"}, progress=False)


def test_fixmatch_step_trains_on_confident_pseudo_labels_of_strong_views(
        cases: list[ctio.Case], tmp_path: Path) -> None:
    """One on-line step changes the student, moves the EMA teacher toward it, and the
    unlabelled term changes what the student learns (λ_u = 0 gives another model)."""
    init = _init_net()
    one = FIX.model_copy(update={"steps": 1})
    tr = _fixmatch(cases, tmp_path / "a", one)
    model = tr.run(init=init)
    rec = tr.history[1]
    assert rec.steps == 1 and rec.added == len(tr.candidates) and 0 < rec.online["confident"] <= 1
    before, after = init.state_dict(), model.state_dict()
    moved = [k for k in before if before[k].is_floating_point()
             and not torch.equal(before[k], after[k])]
    assert any(k.startswith("resnet.") for k in moved) and any(k.startswith("ra2_") for k in moved)
    obj = torch.load(tr.state_dir / "model_001.pt", weights_only=True)
    name = "ra2_conv4.conv.weight"
    torch.testing.assert_close(obj["teacher"][name],
                               0.9 * before[name] + 0.1 * obj["student"][name])
    assert not (tr.state_dir / "online.pt").exists()  # the phase's state is folded in

    supervised_only = _fixmatch(cases, tmp_path / "b", one.model_copy(update={"lambda_u": 0.0}))
    other = supervised_only.run(init=init).state_dict()
    assert not torch.equal(other[name], after[name])


def test_bcp_step_trains_on_pasted_slices_and_its_pseudo_masks_count(
        cases: list[ctio.Case], tmp_path: Path) -> None:
    """One bcp step changes the student and moves the EMA teacher toward it; the weight
    of the unlabelled pixels (lambda_u) changes what it learns, and the box size too."""
    init = _init_net()
    one = FIX.model_copy(update={"steps": 1, "method": "bcp", "lambda_u": 0.5})
    tr = _fixmatch(cases, tmp_path / "a", one)
    model = tr.run(init=init)
    rec = tr.history[1]
    assert rec.steps == 1 and 0 <= rec.online["positive"] <= 1
    before, after = init.state_dict(), model.state_dict()
    name = "ra2_conv4.conv.weight"
    assert not torch.equal(before[name], after[name])
    obj = torch.load(tr.state_dir / "model_001.pt", weights_only=True)
    torch.testing.assert_close(obj["teacher"][name],
                               0.9 * before[name] + 0.1 * obj["student"][name])
    for update in ({"lambda_u": 0.0}, {"copy_paste_box": 0.25}):
        other = _fixmatch(cases, tmp_path / str(update), one.model_copy(update=update))
        assert not torch.equal(other.run(init=init).state_dict()[name], after[name]), update
    # bcp's own setting is part of its fingerprint, and not of fixmatch's
    fp = _fixmatch(cases, tmp_path / "fp", one).fingerprint()
    assert fp != _fixmatch(cases, tmp_path / "fp",
                           one.model_copy(update={"copy_paste_box": 0.5})).fingerprint()
    assert _fixmatch(cases, tmp_path / "f1", FIX).fingerprint() == _fixmatch(
        cases, tmp_path / "f1", FIX.model_copy(update={"copy_paste_box": 0.5})).fingerprint()


def test_copy_paste_puts_each_slice_where_its_box_says() -> None:
    """Even mixed slices show the labelled slice inside the box, odd ones outside it;
    targets and labelled weights follow the same pixels; the pseudo mask keeps its
    largest component only."""
    from lungfuse.plugins.imaging_infnet.copypaste import (
        copy_paste,
        largest_component,
        paste_boxes,
    )

    n, s = 4, 30
    boxes = paste_boxes(n, s, 2 / 3, torch.Generator().manual_seed(1))
    assert [int(b.sum()) for b in boxes] == [400] * n  # 20 x 20 squares
    assert len({tuple(b.nonzero()[0].tolist()) for b in boxes}) > 1  # positions drawn
    # labelled slice j is all (j + 1) / 10, its mask all 1, its weight (j + 1) / 4;
    # unlabelled slice i all 0.9, its pseudo mask 0
    xl = torch.tensor([0.1, 0.2]).view(2, 1, 1, 1).expand(2, 3, s, s).clone()
    yl = torch.ones(2, s, s)
    vl = torch.tensor([0.25, 0.5]).view(2, 1, 1).expand(2, s, s).clone()
    u = torch.full((n, 3, s, s), 0.9)
    yu = torch.zeros(n, s, s)
    x, y, v, region = copy_paste(xl, yl, vl, u, yu, boxes)
    for i in range(n):
        j = i % 2  # the labelled slice paired with unlabelled slice i
        lab = boxes[i] > 0 if i % 2 == 0 else boxes[i] == 0
        assert bool((region[i][lab] == 1).all()) and bool((region[i][~lab] == 0).all())
        assert torch.allclose(x[i][:, lab], torch.tensor(0.1 * (j + 1)))
        assert bool((x[i][:, ~lab] == 0.9).all())
        assert bool((y[i][lab] == 1).all()) and bool((y[i][~lab] == 0).all())
        assert bool((v[i][lab] == 0.25 * (j + 1)).all()) and bool((v[i][~lab] == 0).all())

    m = torch.zeros(2, 8, 8)
    m[0, 0:2, 0:2] = 1  # 4 px
    m[0, 4:7, 4:7] = 1  # 9 px: kept
    m[0, 7, 0] = 1
    lc = largest_component(m)
    assert int(lc[0].sum()) == 9 and bool(lc[0, 4:7, 4:7].all())
    assert not bool(lc[1].any())  # empty stays empty
    diag = torch.zeros(1, 8, 8)
    diag[0, 0:3, 0:2] = 1  # 6 px
    for k in range(4):  # 4 px touching only at corners: one 8-connected component
        diag[0, 3 + k, 3 + k] = 1
    diag[0, 2, 2] = 1  # joins the two, diagonally: 11 px in all
    assert int(largest_component(diag).sum()) == 11


def test_bcp_scores_labelled_pixels_with_their_weights_and_the_rest_as_unlabelled(
        cases: list[ctio.Case], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three loss terms of a bcp step: the plain labelled batch, then the mixed
    slices twice, once weighted on the pixels that show a labelled slice (the box of
    even slices, outside it for odd ones) and once on the others."""
    from lungfuse.plugins.imaging_infnet import copypaste

    seen: list[Any] = []
    real = copypaste.infnet_loss

    def spy(maps: Any, mask: Any, edge: Any, valid: Any = None) -> Any:
        seen.append(None if valid is None else valid.detach().clone())
        return real(maps, mask, edge, valid)

    monkeypatch.setattr(copypaste, "infnet_loss", spy)
    box = 0.5
    one = FIX.model_copy(update={"steps": 1, "method": "bcp", "copy_paste_box": box,
                                 "unlabelled_batch_size": 4})
    _fixmatch(cases, tmp_path / "a", one).run(init=_init_net())
    assert len(seen) == 3
    _, lab, unl = seen
    side = round(box * lab.shape[-1])
    torch.testing.assert_close(lab + unl, torch.ones_like(lab))  # labelled weights are 1
    for i in range(lab.shape[0]):
        inside = side * side
        assert int(lab[i].sum()) == (inside if i % 2 == 0 else lab[i].numel() - inside)


def test_pseudo_labels_confidence_and_cutmix_stay_aligned() -> None:
    from lungfuse.plugins.imaging_infnet.fixmatch import (
        apply_cutmix,
        cutmix_boxes,
        pseudo_targets,
        rampup,
        strong_view,
        weak_view,
    )

    prob = torch.tensor([[[0.99, 0.7], [0.3, 0.01]]])
    y, m = pseudo_targets(prob, 0.95)
    assert y.tolist() == [[[1.0, 1.0], [0.0, 0.0]]] and m.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    assert rampup(0, 10) == pytest.approx(math.exp(-5)) and rampup(10, 10) == rampup(99, 10) == 1.0

    n, s = 4, 32
    gen = torch.Generator().manual_seed(3)
    img = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, s, s) / 10
    target = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, s, s).clone()
    valid = (torch.arange(n) % 2).float().view(n, 1, 1).expand(n, s, s).clone()
    boxes, partner = cutmix_boxes(n, s, 1.0, gen)
    assert bool((partner != torch.arange(n)).all()) and bool((boxes.flatten(1).sum(1) > 0).all())
    mi, mt, mv = apply_cutmix(img, target, valid, boxes, partner)
    for i in range(n):
        inside = boxes[i] > 0
        j = int(partner[i])
        assert bool((mt[i][inside] == j).all()) and bool((mt[i][~inside] == i).all())
        assert bool((mv[i][inside] == j % 2).all()) and bool((mv[i][~inside] == i % 2).all())
        torch.testing.assert_close(mi[i, 0] * 10, mt[i])  # image and label from one slice
    none, _ = cutmix_boxes(n, s, 0.0, gen)
    assert not bool(none.any())
    # the strong view moves no pixel: a bright square stays where the weak view put it
    sq = torch.zeros(1, 3, s, s)
    sq[..., 8:16, 20:28] = 1.0
    st = strong_view(sq, torch.Generator().manual_seed(0))
    assert float(st[..., 8:16, 20:28].mean()) > float(st.mean()) + 0.3
    assert weak_view(sq, torch.Generator().manual_seed(0)).shape == sq.shape


def _online_loss(semi: SemiSettings, maps: tuple[Any, ...], target: Any, valid: Any) -> Any:
    from lungfuse.plugins.imaging_infnet.fixmatch import OnlineTrainer

    tr = OnlineTrainer([object()], [object()], TRAIN, semi, Path("unused.pt"), "fp")
    return tr._unlabelled_loss(maps, target, valid)


def test_unlabelled_loss_of_an_empty_pseudo_mask_does_not_push_every_pixel_to_zero() -> None:
    """Most unlabelled crops get an empty pseudo mask (nodules are tiny). The default
    unlabelled loss (masked BCE over all pixels, FixMatch/UniMatch) of a map the teacher
    already calls background with p = 0.05 is small and its gradient per pixel is BCE's;
    Inf-Net's structure loss (the former form) is dominated by its IoU term, near 1 per
    map however low p already is. Unsure pixels add nothing to the default loss."""
    s, n = 32, 2
    z = torch.full((n, 1, s, s), math.log(0.05 / 0.95), requires_grad=True)
    maps = (z, z, z, z, torch.zeros(n, 1, s, s))
    empty, everywhere = torch.zeros(n, s, s), torch.ones(n, s, s)
    assert FIX.unlabelled_loss == "bce"
    bce = _online_loss(FIX, maps, empty, everywhere)
    assert float(bce.detach()) == pytest.approx(4 * -math.log(0.95), rel=1e-4)  # 4 maps
    (g,) = torch.autograd.grad(bce, z)
    assert float(g.abs().max()) == pytest.approx(4 * 0.05 / (n * s * s), rel=1e-3)
    structure = _online_loss(FIX.model_copy(update={"unlabelled_loss": "structure"}), maps,
                             empty, everywhere)
    assert float(structure) > 3.0 > 10 * float(bce)  # the IoU terms: about 1 per map
    # unsure pixels (valid 0) are left out, and the sum still divides by every pixel
    half = everywhere.clone()
    half[:, :, : s // 2] = 0
    z2 = z.detach().clone()
    z2[..., : s // 2] = 5.0  # confidently wrong there, but unsure: no loss
    maps2 = (z2, z2, z2, z2, maps[4])
    assert float(_online_loss(FIX, maps2, empty, half)) == pytest.approx(float(bce) / 2,
                                                                         rel=1e-4)


def test_balanced_unlabelled_loss_gives_the_few_pseudo_nodule_pixels_half_the_weight() -> None:
    """With 4 of 2048 confident pixels called nodule and the student unsure (p = 0.5)
    everywhere, 'bce' puts 4/2048 of its gradient on the nodule pixels; 'balanced' puts
    half of it there, the other half on the background. An empty pseudo mask leaves the
    background half only (no push of its pixels to 0 beyond BCE's), and unsure pixels add
    nothing."""
    s, n = 32, 2
    z = torch.zeros(n, 1, s, s, requires_grad=True)
    maps = (z, z, z, z, torch.zeros(n, 1, s, s))
    target, everywhere = torch.zeros(n, s, s), torch.ones(n, s, s)
    target[0, 10:12, 10:12] = 1.0
    fg = target[:, None] > 0
    bal = FIX.model_copy(update={"unlabelled_loss": "balanced"})
    shares = {}
    for semi in (FIX, bal):
        (g,) = torch.autograd.grad(_online_loss(semi, maps, target, everywhere), z)
        shares[semi.unlabelled_loss] = float(g[fg].abs().sum() / g.abs().sum())
    assert shares["bce"] == pytest.approx(4 / (n * s * s), rel=1e-4)
    assert shares["balanced"] == pytest.approx(0.5, rel=1e-4)
    loss = _online_loss(bal, maps, target, everywhere)
    assert float(loss) == pytest.approx(4 * math.log(2), rel=1e-4)  # 4 maps, BCE(0.5) each
    empty = _online_loss(bal, maps, torch.zeros(n, s, s), everywhere)
    assert float(empty) == pytest.approx(4 * 0.5 * math.log(2), rel=1e-4)
    unsure = everywhere.clone()
    unsure[0, 10:12, 10:12] = 0.0  # the nodule pixels not confident: background only
    assert float(_online_loss(bal, maps, target, unsure)) == pytest.approx(float(empty),
                                                                           rel=1e-4)


def test_fixmatch_can_hand_on_the_ema_teacher(cases: list[ctio.Case], tmp_path: Path) -> None:
    """final_model teacher: the phase's model is the EMA teacher (the student by default)."""
    one = FIX.model_copy(update={"steps": 1})
    init = _init_net()
    tr = _fixmatch(cases, tmp_path / "t", one.model_copy(update={"final_model": "teacher"}))
    model = tr.run(init=init)
    obj = torch.load(tr.state_dir / "model_001.pt", weights_only=True)
    name = "ra2_conv4.conv.weight"
    plain = _fixmatch(cases, tmp_path / "s", one).run(init=init)
    ref = plain.state_dict()[name]
    torch.testing.assert_close(model.state_dict()[name], 0.9 * init.state_dict()[name] + 0.1 * ref)
    torch.testing.assert_close(obj["student"][name], model.state_dict()[name])
    assert not torch.equal(model.state_dict()[name], ref)


@pytest.mark.parametrize("method", ["fixmatch", "bcp"])
def test_online_phase_never_reads_the_masks_of_unlabelled_scans(
        cases: list[ctio.Case], tree: Path, tmp_path: Path, method: str) -> None:
    """U cut at candidate points from scans whose label arrays cannot be read, with
    hidden masks that cannot be read either: the on-line phase still trains."""
    from lungfuse.plugins.imaging_infnet.candidates import read_candidates

    blind = [ctio.Case(c.uid, c.volume, Untouchable(), [], c.patient_id)  # type: ignore
             for c in cases[2:4]]
    csv = _candidates_csv(tmp_path / "c.csv", tree, ["u2", "u3"])
    pts = read_candidates(csv, {c.uid for c in cases})
    crop = SliceSettings(img_size=64, mode="crop", crop_mm=32)
    cands = semi_mod.candidates_at_points(blind, pts, crop, neighbours=1)
    assert cands and all("@" in c.key for c in cands)
    cands = [Candidate(c.uid, c.patient_id, c.z, c.image, Untouchable(), c.centre)  # type: ignore
             for c in cands]
    labelled = build_pool(cases[:2], crop, 0.5, seed=0)
    semi = FIX.model_copy(update={"method": method})
    tr = SemiTrainer(labelled, cands, None, crop, TRAIN, semi, tmp_path / "state",
                     ["P0", "P1"], test_patients={"P4"}, progress=False)
    tr.run(init=_init_net())
    assert tr.history[-1].steps == FIX.steps


@pytest.mark.parametrize("method", ["fixmatch", "bcp"])
def test_online_phase_resumes_where_it_stopped(cases: list[ctio.Case], tmp_path: Path,
                                               method: str) -> None:
    """Killed inside the on-line phase, the rerun starts from the last saved step and ends
    with the same model as a run that was never interrupted."""
    semi = FIX.model_copy(update={"steps": 4, "checkpoint_every": 2, "method": method})
    init = _init_net()
    ref = _fixmatch(cases, tmp_path / "ref", semi).run(init=init)

    state = tmp_path / "state"
    tr = _fixmatch(cases, state, semi)

    def crash(t: int) -> None:
        if t == 3:
            raise RuntimeError("simulated kill")

    tr.on_step = crash
    with pytest.raises(RuntimeError, match="simulated kill"):
        tr.run(init=init)
    saved = torch.load(state / "online.pt", weights_only=True)
    assert saved["step"] == 2 and not (state / "round_001.pt").exists()
    # a state of other fixmatch settings is refused, not continued
    with pytest.raises(ConfigError, match="different semi-supervised configuration"):
        _fixmatch(cases, state, semi.model_copy(update={"lambda_u": 0.5})).run(init=init)

    seen: list[int] = []
    again = _fixmatch(cases, state, semi)
    again.on_step = seen.append
    model = again.run(init=_init_net(seed=1))  # round 0 comes from the state, not init
    assert seen == [2, 3]
    assert again.history[1].steps == 4
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


# ----------------------------------------------------------------------------- candidates
def _candidates_csv(path: Path, tree: Path, uids: list[str], extra: str = "") -> Path:
    """Candidates of ``uids``: each annotated nodule plus a point in a lung, with a class
    column that is not a label at all (the reader must not need it)."""
    import pandas as pd

    ann = pd.read_csv(tree / "annotations.csv", dtype={"seriesuid": str})
    lines = ["seriesuid,coordX,coordY,coordZ,class"]
    for uid in uids:
        rows = ann[ann.seriesuid == uid]
        for r in rows.itertuples():
            lines.append(f"{uid},{r.coordX},{r.coordY},{r.coordZ},?")
        r = rows.iloc[0]
        lines.append(f"{uid},{r.coordX + 3.0},{r.coordY - 2.0},{r.coordZ + 2.0},unknown")
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_candidates_file_cuts_crops_at_its_points(cases: list[ctio.Case], tree: Path,
                                                  tmp_path: Path) -> None:
    from lungfuse.plugins.imaging_infnet.candidates import read_candidates, sample_per_series
    from lungfuse.plugins.imaging_infnet.dataset import cut_slice

    csv = _candidates_csv(tmp_path / "c.csv", tree, ["u2", "u3"])
    pts = read_candidates(csv, {c.uid for c in cases})
    assert [q.line for q in pts] == list(range(2, 2 + len(pts)))
    crop = SliceSettings(img_size=64, mode="crop", crop_mm=32)
    # u2 is unlabelled; u3's points are ignored when u3 is not among the unlabelled scans
    cands = semi_mod.candidates_at_points(cases[2:3], pts, crop)
    u2 = [q for q in pts if q.uid == "u2"]
    assert len(cands) == len(u2)
    vol = cases[2].volume
    for q, c in zip(u2, cands, strict=True):
        x, y, z = vol.world_to_index(q.world)
        assert c.z == round(z) and c.centre == pytest.approx((x, y))
        want, _ = cut_slice(vol, c.z, crop, None, (x, y))
        assert torch.equal(c.image, want.half())
    # whole slices in full mode: one per distinct slice; neighbours add slices around it
    full = semi_mod.candidates_at_points(cases[2:3], pts, SLICES)
    assert {c.key for c in full} == {f"u2:{round(vol.world_to_index(q.world)[2])}" for q in u2}
    wide = semi_mod.candidates_at_points(cases[2:3], pts[:1], crop, neighbours=2)
    assert [c.z for c in wide] == [cands[0].z + d for d in (-2, -1, 0, 1, 2)]
    assert len(sample_per_series(pts, 1, seed=0)) == 2  # one of each series
    assert sample_per_series(pts, 1, 0) == sample_per_series(pts, 1, 0)


def test_labelled_scans_candidates_are_cut_as_u_with_their_masks(
        cases: list[ctio.Case], tree: Path, tmp_path: Path) -> None:
    """semi.labelled_candidates: a labelled scan's candidate crops are the crops U would
    get at the same points, paired with the scan's true mask; other scans' points add
    nothing."""
    from lungfuse.plugins.imaging_infnet.candidates import read_candidates
    from lungfuse.plugins.imaging_infnet.dataset import cut_slice

    csv = _candidates_csv(tmp_path / "c.csv", tree, ["u0", "u2"])
    pts = read_candidates(csv, {c.uid for c in cases})
    crop = SliceSettings(img_size=64, mode="crop", crop_mm=32)
    items = semi_mod.labelled_at_points(cases[:1], pts, crop, neighbours=1)
    as_u = semi_mod.candidates_at_points(cases[:1], pts, crop, neighbours=1)
    assert [(it.uid, it.z) for it in items] == [(c.uid, c.z) for c in as_u]
    assert {it.uid for it in items} == {"u0"} and {it.source for it in items} == {"candidate"}
    for it, c in zip(items, as_u, strict=True):
        assert torch.equal(it.image, c.image)
        _, y = cut_slice(cases[0].volume, it.z, crop, cases[0].labels, c.centre)
        assert torch.equal(it.mask, (y > 0).half())
    assert any(bool(it.mask.any()) for it in items)  # the nodule points' crops hold it


@pytest.mark.parametrize(("extra", "edit", "message"), [
    ("u2,1.0,abc,3.0,0\n", None, r"c\.csv, line \d+: coordY 'abc' is not a finite number"),
    ("u2,1.0,2.0,,0\n", None, r"line \d+: coordZ '' is not a finite number"),
    (",1.0,2.0,3.0,0\n", None, r"line \d+: empty seriesuid"),
    ("u9,1.0,2.0,3.0,0\n", None, r"line \d+: series u9 is not under the CT root"),
    ("u2,1.0,2.0,3.0,0,7,8\n", None, r"malformed candidates CSV"),
    ("", lambda t: t.replace("coordX", "x"), r"missing column\(s\) coordX"),
    ("u2,1.0,2.0,9999.0,0\n", None, r"line \d+: point .* lies outside series u2"),
])
def test_candidates_file_errors_are_one_line(cases: list[ctio.Case], tree: Path,
                                             tmp_path: Path, extra: str, edit: Any,
                                             message: str) -> None:
    from lungfuse.plugins.imaging_infnet.candidates import read_candidates

    csv = _candidates_csv(tmp_path / "c.csv", tree, ["u2"], extra)
    if edit is not None:
        csv.write_text(edit(csv.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(DataError, match=message) as exc:
        pts = read_candidates(csv, {c.uid for c in cases})
        semi_mod.candidates_at_points(cases[2:3], pts, SLICES, source=str(csv))
    assert "\n" not in str(exc.value)


def test_segment_train_fixmatch_on_candidates(tree: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from lungfuse.core.cli import main

    csv = _candidates_csv(tmp_path / "cand.csv", tree, [f"u{i}" for i in range(N_SCANS)])
    n_labelled = {}
    calls: list[list[str]] = []
    made: list[int] = []
    labelled_at = semi_mod.labelled_at_points

    def spy(scans: Any, *a: Any, **k: Any) -> Any:
        calls.append([c.uid for c in scans])
        out = labelled_at(scans, *a, **k)
        made.append(len(out))
        return out

    for with_cands in (True, False):
        calls.clear()
        monkeypatch.setattr(semi_mod, "labelled_at_points", spy)
        run = tmp_path / f"lc_{with_cands}"
        run.mkdir()
        path = _config(run, tree, method="fixmatch", unlabelled_series=["u3"],
                       candidates=str(csv), steps=2, batch_size=4, ema_decay=0.9,
                       final_epochs=0, labelled_fraction=None, test_patients=["u4"],
                       labelled_candidates=with_cands)
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        cfg["slices"] = {"img_size": 64, "mode": "crop", "crop_mm": 32}
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        with pytest.raises(SystemExit) as exc:
            main(["segment", "train", str(path), "--no-progress"])
        monkeypatch.undo()
        assert exc.value.code == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        n_u3 = sum(1 for ln in csv.read_text(encoding="utf-8").splitlines()
                   if ln.startswith("u3,"))
        assert "semi-supervised (fixmatch): 1 round(s)" in out and f"+ {n_u3} unlabelled" in out
        _, meta = load_checkpoint(run / "out" / "infnet.pt")
        assert meta["extra"]["method"] == "fixmatch"
        assert meta["extra"]["history"][1]["steps"] == 2
        n_labelled[with_cands] = meta["extra"]["n_labelled"]
        if with_cands:
            # only the labelled training scans: not U's (u3), the test patient's (u4) nor
            # the validation scan (one of the four others, val_fraction 0.25)
            assert len(calls) == 1 and len(calls[0]) == 3
            assert not {"u3", "u4"} & set(calls[0])
            added = made[0]
        else:
            assert calls == []
    assert added > 0 and n_labelled[True] == n_labelled[False] + added

    # a bad row stops the command with one line before anything is trained
    bad = tmp_path / "bad"
    bad.mkdir()
    csv.write_text(csv.read_text(encoding="utf-8") + "u3,1.0,oops,2.0,0\n", encoding="utf-8")
    path = _config(bad, tree, method="fixmatch", unlabelled_series=["u3"], candidates=str(csv))
    with pytest.raises(SystemExit) as exc:
        main(["segment", "train", str(path), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "coordY 'oops' is not a finite number" in err and len(err.splitlines()) == 1
    assert not (bad / "out").exists()


def test_segment_train_bcp_from_a_config(tree: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """method: bcp with its box setting runs through `segment train` and is recorded in
    the checkpoint; a box outside (0, 1) is one line, exit 2, nothing written."""
    import yaml

    from lungfuse.core.cli import main

    csv = _candidates_csv(tmp_path / "cand.csv", tree, [f"u{i}" for i in range(N_SCANS)])
    run = tmp_path / "bcp"
    run.mkdir()
    path = _config(run, tree, method="bcp", unlabelled_series=["u3"], candidates=str(csv),
                   steps=2, batch_size=4, ema_decay=0.9, final_epochs=0, lambda_u=0.5,
                   copy_paste_box=0.5, labelled_fraction=None, test_patients=["u4"])
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["slices"] = {"img_size": 64, "mode": "crop", "crop_mm": 32}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["segment", "train", str(path), "--no-progress"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert "semi-supervised (bcp): 1 round(s)" in capsys.readouterr().out
    _, meta = load_checkpoint(run / "out" / "infnet.pt")
    assert meta["extra"]["method"] == "bcp" and meta["extra"]["history"][1]["steps"] == 2

    bad = tmp_path / "bad"
    bad.mkdir()
    cfg["semi"]["copy_paste_box"] = 1.5
    cfg["out_dir"] = str(bad / "out")
    path = bad / "seg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["segment", "train", str(path), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "copy_paste_box" in err and len(err.splitlines()) == 1
    assert not (bad / "out").exists()


def test_synth_writes_luna16_candidates(tiny_cohort: Path) -> None:
    """True nodules (class 1) inside their own label, false candidates (class 0) in the
    lungs away from every nodule, more false than true, LUNA16's columns."""
    import pandas as pd
    import SimpleITK as sitk

    cand = pd.read_csv(tiny_cohort / "ct" / "candidates.csv", dtype={"seriesuid": str})
    ann = pd.read_csv(tiny_cohort / "ct" / "annotations.csv", dtype={"seriesuid": str})
    assert list(cand.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert set(cand["class"]) == {0, 1} and (cand["class"] == 1).sum() == len(ann)
    assert (cand["class"] == 0).sum() >= 3 * len(ann)
    for uid, rows in cand.groupby("seriesuid"):
        img = sitk.ReadImage(str(next((tiny_cohort / "ct").glob(f"subset*/{uid}.mhd"))))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_cohort / "ct" / "masks" /
                                                         f"{uid}.mhd")))
        hu = sitk.GetArrayFromImage(img)
        hits = []
        for r in rows.itertuples():
            i = img.TransformPhysicalPointToIndex((r.coordX, r.coordY, r.coordZ))
            label = int(mask[i[2], i[1], i[0]])
            if r[5] == 1:
                hits.append(label)
            else:
                assert label == 0 and hu[i[2], i[1], i[0]] > -1000, (uid, r)
        assert sorted(hits) == list(range(1, (ann.seriesuid == uid).sum() + 1)), uid


# ----------------------------------------------------------------------------- the v2 bench
def _bench_v2() -> Any:
    import importlib
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("semi_supervised_v2")


def test_bench_merge_adds_methods_run_later_on_the_same_seeds() -> None:
    """A method run later from the same supervised models (--reuse) joins its seed's
    table; a supervised-on-L model that scores differently in the two runs stops it."""
    v2 = _bench_v2()

    def run(seed: int, methods: dict[str, float], top: dict[str, float] | None = None
            ) -> dict[str, Any]:
        return {"info": {"seed": seed}, "methods": {k: {"dice": v} for k, v in
                                                    (top or {}).items()},
                "budgets": {"0.05": {"info": {}, "methods": {k: {"dice": v} for k, v in
                                                             methods.items()}}}}

    first = [run(0, {"sup_L": 0.2, "fixmatch": 0.25}, {"sup_all": 0.4})]
    later = [run(0, {"sup_L": 0.2, "bcp": 0.21, "fixmatch": 0.9}), run(1, {"sup_L": 0.3})]
    merged = v2.merge_results([first, later])
    assert [r["info"]["seed"] for r in merged] == [0, 1]
    m0 = merged[0]["budgets"]["0.05"]["methods"]
    assert {k: v["dice"] for k, v in m0.items()} == {"sup_L": 0.2, "fixmatch": 0.25, "bcp": 0.21}
    assert merged[0]["methods"]["sup_all"]["dice"] == 0.4
    assert "bcp" not in first[0]["budgets"]["0.05"]["methods"]  # inputs left as they were
    with pytest.raises(SystemExit, match="did not start from the same model"):
        v2.merge_results([first, [run(0, {"sup_L": 0.3, "bcp": 0.3})]])


def test_bench_slice_budget_labels_a_sample_with_a_nodule() -> None:
    """--budget-unit slices: a seeded share of the pool, at least one nodule slice even
    when the draw has none; a labelled candidate crop has the key of U's crop there."""
    from lungfuse.plugins.imaging_infnet.dataset import SliceItem

    v2 = _bench_v2()
    img = torch.zeros(3, 8, 8)
    pool = [SliceItem(img, torch.zeros(8, 8), uid=f"s{i}", z=i, source="random")
            for i in range(99)]
    pool.append(SliceItem(img, torch.ones(8, 8), uid="s99", z=99, source="labelled"))
    lab = v2.labelled_slices(pool, 0.05, seed=0)
    assert len(lab) == 5 and any(bool(it.mask.any()) for it in lab)
    assert [it.z for it in lab] == [it.z for it in v2.labelled_slices(pool, 0.05, seed=0)]
    assert [it.z for it in lab] != [it.z for it in v2.labelled_slices(pool, 0.05, seed=1)]
    cand = SliceItem(img, torch.zeros(8, 8), uid="u", z=3, source="candidate",
                     meta={"centre": (10.4, 20.6)})
    assert v2.crop_key(cand) == Candidate("u", None, 3, img, centre=(10.4, 20.6)).key

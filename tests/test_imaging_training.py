"""Slices, loss, metrics, Lightning training and checkpoints (imaging plugin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from lungfuse.plugins.imaging_infnet import ctio, synthetic  # noqa: E402
from lungfuse.plugins.imaging_infnet.config import SliceSettings, TrainSettings  # noqa: E402
from lungfuse.plugins.imaging_infnet.dataset import (  # noqa: E402
    SliceDataset,
    build_pool,
    cut_slice,
    edge_of,
    window,
)
from lungfuse.plugins.imaging_infnet.losses import (  # noqa: E402
    boundary_weight,
    infnet_loss,
    structure_loss,
)
from lungfuse.plugins.imaging_infnet.metrics import (  # noqa: E402
    nodule_dice_3d,
    segmentation_metrics,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct")
    synthetic.write_tree(root, [f"u{i}" for i in range(4)], seed=3, size=64, depth=16)
    return root


@pytest.fixture(scope="module")
def cases(tree: Path) -> list[ctio.Case]:
    vols = ctio.find_volumes(tree)
    ann = ctio.read_annotations(tree / "annotations.csv")
    return ctio.load_cases(sorted(vols.items()), ann, tree / "masks",
                           patients={f"u{i}": f"P{i}" for i in range(4)})


# ----------------------------------------------------------------------------- slices
def test_slice_is_three_adjacent_windowed_slices(cases: list[ctio.Case]) -> None:
    v = cases[0].volume
    s = SliceSettings(img_size=64)
    x, _ = cut_slice(v, 5, s)
    assert tuple(x.shape) == (3, 64, 64)
    for c, z in enumerate((4, 5, 6)):
        torch.testing.assert_close(x[c], window(v.array[z], s))
    x0, _ = cut_slice(v, 0, s)
    torch.testing.assert_close(x0[0], x0[1])  # clamped at the first slice
    assert float(window(np.array([-2000.0, -1000.0, 400.0, 900.0]), s).sum()) == 2.0


def test_crop_covers_the_requested_millimetres(cases: list[ctio.Case]) -> None:
    c = cases[0]
    s = SliceSettings(img_size=32, mode="crop", crop_mm=20.0)
    lab = np.zeros_like(c.labels)
    z = 8
    ci = (30.0, 30.0)
    # mark a square of 10 mm side centred on ci: it must fill half the crop's side
    half = 5.0 / c.volume.spacing[0]
    lab[z, int(round(30 - half)):int(round(30 + half)), int(round(30 - half)):int(round(30 + half))] = 1
    _, m = cut_slice(c.volume, z, s, lab, ci)
    side = float(m.sum()) ** 0.5
    assert side == pytest.approx(16, abs=2)


def test_pool_has_positives_sampled_negatives_and_edges(cases: list[ctio.Case]) -> None:
    s = SliceSettings(img_size=64)
    pool = build_pool(cases[:2], s, negatives_per_positive=0.5, seed=0)
    pos = [it for it in pool if it.source == "labelled"]
    neg = [it for it in pool if it.source == "negative"]
    n_pos = sum(int((c.labels > 0).reshape(c.labels.shape[0], -1).any(1).sum()) for c in cases[:2])
    assert len(pos) == n_pos and all(it.mask.sum() > 0 for it in pos)
    assert 0 < len(neg) <= n_pos and all(it.mask.sum() == 0 for it in neg)
    assert pool.patient_ids == {"P0", "P1"}
    ds = SliceDataset(pool, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=True)
    item = ds[0]
    assert set(item) == {"image", "mask", "edge", "valid"}
    assert item["edge"].sum() > 0 and item["edge"].sum() < item["mask"].numel()
    # edges sit on the mask boundary
    m = (item["mask"] > 0.5).float()
    inner = -F.max_pool2d(-m, 3, 1, 1)
    assert float((item["edge"] * inner * (1 - m)).sum()) == 0
    ds.train = False
    torch.testing.assert_close(ds[0]["image"], (pool[0].image.float() - 0.5) / 0.25)


def test_pseudo_labelled_slices_extend_the_pool_with_weights(cases: list[ctio.Case]) -> None:
    pool = build_pool(cases[:1], SliceSettings(img_size=64), 0.0)
    n = len(pool)
    w = torch.ones(2, 64, 64)
    w[:, :10] = 0
    pool.add_pseudo(torch.rand(2, 3, 64, 64), (torch.rand(2, 64, 64) > 0.7).float(), w,
                    round=1)
    assert len(pool) == n + 2 and pool[-1].source == "pseudo" and pool[-1].meta["round"] == 1
    item = SliceDataset(pool, (0, 0, 0), (1, 1, 1))[n]
    assert float(item["valid"][0, :10].sum()) == 0


# ----------------------------------------------------------------------------- loss
def test_weighted_bce_actually_applies_the_weight() -> None:
    torch.manual_seed(0)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:40, 20:40] = 1
    logits = torch.randn(2, 1, 64, 64)
    w = boundary_weight(mask)
    assert float(w.max()) > 3 and float(w.min()) == 1.0
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = ((w * bce).sum((2, 3)) / w.sum((2, 3))).mean()
    p = torch.sigmoid(logits)
    inter = (p * mask * w).sum((2, 3))
    wiou = (1 - (inter + 1) / (((p + mask) * w).sum((2, 3)) - inter + 1)).mean()
    got = structure_loss(logits, mask)
    torch.testing.assert_close(got, wbce + wiou)
    # the published code's average (weight dropped) gives a different value
    assert abs(float(got - (bce.mean() + wiou))) > 1e-3
    # ignored pixels do not count
    valid = torch.ones_like(mask)
    valid[:, :, :, 32:] = 0
    changed = logits.clone()
    changed[:, :, :, 32:] = 50.0
    torch.testing.assert_close(structure_loss(logits, mask, valid),
                               structure_loss(changed, mask, valid))


def test_deep_supervision_sums_four_maps_and_edge() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    edge = edge_of(mask)
    maps = tuple(torch.randn(1, 1, 32, 32) for _ in range(5))
    total, parts = infnet_loss(maps, mask, edge)
    assert set(parts) == {"map5", "map4", "map3", "map2", "edge"}
    torch.testing.assert_close(total, sum(parts.values()))
    torch.testing.assert_close(parts["edge"], F.binary_cross_entropy_with_logits(maps[4], edge))


# ----------------------------------------------------------------------------- metrics
def test_metrics_match_hand_counts_and_torchmetrics() -> None:
    from torchmetrics.functional.segmentation import dice_score

    y = torch.zeros(2, 1, 10, 10)
    y[0, 0, :5, :4] = 1  # 20 positives
    p = torch.zeros(2, 1, 10, 10)
    p[0, 0, :5, :2] = 0.9  # 10 TP
    p[0, 0, 5:7, :5] = 0.8  # 10 FP
    m = segmentation_metrics(p, y)
    assert float(m["dice"][0]) == pytest.approx(2 * 10 / (2 * 10 + 10 + 10))
    assert float(m["sensitivity"][0]) == pytest.approx(0.5)
    assert float(m["specificity"][0]) == pytest.approx(70 / 80)
    assert float(m["mae"][0]) == pytest.approx(float((p[0] - y[0]).abs().mean()))
    assert float(m["dice"][1]) == 1.0  # empty prediction of an empty mask
    tm = dice_score((p[:1] >= 0.5).long(), y[:1].long(), num_classes=1, include_background=True,
                    input_format="index" if False else "one-hot")
    assert float(tm.mean()) == pytest.approx(float(m["dice"][0]), abs=1e-6)
    # mean Dice over 256 thresholds: 0.9 and 0.8 survive thresholds up to 229 and 204
    levels = np.arange(256)
    exp = np.where(levels <= 204, 0.5, np.where(levels <= 230, 2 * 10 / 30, 0.0))
    exp[0] = 2 * 20 / (2 * 20 + 80)  # at threshold 0 everything is predicted
    assert float(m["mean_dice"][0]) == pytest.approx(exp.mean(), abs=1e-4)


def test_nodule_dice_3d_scores_each_nodule_against_touching_components() -> None:
    lab = np.zeros((6, 20, 20), np.int32)
    lab[1:4, 2:6, 2:6] = 1
    lab[1:4, 12:16, 12:16] = 2
    pred = np.zeros_like(lab, bool)
    pred[1:4, 2:6, 2:6] = True  # perfect on nodule 1
    pred[2:3, 12:14, 12:14] = True  # partial on nodule 2
    out = nodule_dice_3d(pred, lab)
    assert out[1] == pytest.approx(1.0)
    assert out[2] == pytest.approx(2 * 4 / (4 + 48))


# ----------------------------------------------------------------------------- training
def test_train_checkpoint_resume_and_patients(cases: list[ctio.Case], tmp_path: Path) -> None:
    from lungfuse.plugins.imaging_infnet.train import fit, load_checkpoint, save_checkpoint

    s = SliceSettings(img_size=64)
    pool = build_pool(cases[:3], s, 0.5, seed=0)
    val = build_pool(cases[3:], s, 0.5, seed=0)
    ts = TrainSettings(backbone="test_resnet", channel=8, epochs=1, batch_size=8, lr=1e-3,
                       multiscale=[0.5, 1.0])
    before = None
    module, path = fit(pool, val, s, ts, tmp_path, ["P0", "P1", "P2"], progress=False)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    model, meta = load_checkpoint(path)
    assert meta["training_patients"] == ["P0", "P1", "P2"]
    assert meta["slices"].img_size == 64
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    last = tmp_path / "lightning" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["training_patients"] == ["P0", "P1", "P2"]
    m2, meta2 = load_checkpoint(last)  # the Lightning checkpoint loads as a model too
    assert meta2["training_patients"] == ["P0", "P1", "P2"]
    # resume with another seed and the same epoch budget: nothing left to train, so the
    # weights are the checkpoint's (a fresh start with seed 1 would differ)
    same = ts.model_copy(update={"seed": 1})
    module2, _ = fit(pool, val, s, same, tmp_path / "r1", ["P0", "P1", "P2"], resume=last,
                     progress=False)
    assert module2.training_patients == ["P0", "P1", "P2"]
    for k, v in module2.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # resume to two epochs: one more epoch is trained and the weights move
    module3, _ = fit(pool, val, s, same.model_copy(update={"epochs": 2}), tmp_path / "r2",
                     ["P0", "P1", "P2"], resume=last, progress=False)
    assert module3.trainer.current_epoch == 2
    assert any(not torch.equal(v, before[k]) for k, v in module3.model.state_dict().items()
               if v.is_floating_point())
    # a plain checkpoint with unknown patients (e.g. imported) records None
    p = save_checkpoint(tmp_path / "x.pt", model, None)
    assert load_checkpoint(p)[1]["training_patients"] is None

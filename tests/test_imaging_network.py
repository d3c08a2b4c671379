"""Inf-Net network and reference-checkpoint import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from lungfuse.core.errors import DataError  # noqa: E402
from lungfuse.plugins.imaging_infnet.network import InfNet  # noqa: E402

TSV = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / \
    "infnet_res2net50_state_dict.tsv"


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    if not TSV.is_file():
        pytest.skip(f"reference key list not found at {TSV} (shared/ must sit beside the clone)")
    out = {}
    for line in TSV.read_text(encoding="utf-8").splitlines():
        if line.strip():
            k, s = line.split("\t")[:2]
            out[k] = tuple(ast.literal_eval(s))
    return out


@pytest.fixture(scope="module")
def tiny() -> InfNet:
    torch.manual_seed(0)
    return InfNet("test_resnet", channel=8).eval()


def test_five_maps_at_input_resolution_and_embedding(tiny: InfNet) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = tiny(x)
        emb = tiny.embed(x)
        emb_mask = tiny.embed(x, mask=torch.zeros(2, 64, 64).index_fill_(1, torch.arange(20), 1))
    assert len(maps) == 5
    assert all(tuple(m.shape) == (2, 1, 64, 64) for m in maps)
    assert tuple(emb.shape) == (2, tiny.embedding_dim) == (2, 24)
    assert torch.isfinite(emb).all()
    assert not torch.allclose(emb, emb_mask)  # the mask weights the pooling
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny(torch.randn(1, 3, 48, 48))


def test_stage_channels_come_from_feature_info() -> None:
    net = InfNet("test_convnext", channel=8)
    assert net.stage_channels == tuple(net.resnet.feature_info.channels())
    assert net.edge_conv1.conv.in_channels == net.stage_channels[0]
    assert net.ra4_conv1.conv.in_channels == net.stage_channels[3]
    with pytest.raises(ValueError, match="stride"):
        InfNet("test_vit", channel=8)


def test_reference_checkpoint_loads_strictly_and_gives_the_same_maps(tmp_path: Path) -> None:
    shapes = _reference_shapes()
    assert len(shapes) == 946
    n_params = sum(int(torch.tensor(s).prod()) if s else 1 for k, s in shapes.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == 33_121_721

    torch.manual_seed(1)
    src = InfNet("res2net50d").eval()
    assert src.num_parameters(include_reference_classifier=True) == n_params
    own = src.state_dict()
    ref = {}
    for k, shape in shapes.items():
        if k.startswith("resnet.fc."):
            ref[k] = torch.randn(shape)
        else:
            assert tuple(own[k].shape) == shape, k
            # perturb BN statistics so that a silent non-load would show
            v = own[k].clone()
            if v.is_floating_point():
                v = v + 0.01 * torch.randn_like(v)
            ref[k] = v
    assert set(ref) == set(shapes)
    src.load_state_dict({k: v for k, v in ref.items() if not k.startswith("resnet.fc.")})
    path = tmp_path / "Inf-Net-100.pth"
    torch.save(ref, path)

    loaded = InfNet.from_reference_checkpoint(path)
    got = loaded.state_dict()
    assert set(got) == set(shapes) - {"resnet.fc.weight", "resnet.fc.bias"}
    for k, v in got.items():
        assert torch.equal(v, ref[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = src(x), loaded(x)
    for m1, m2 in zip(a, b, strict=True):
        torch.testing.assert_close(m1, m2, rtol=1e-5, atol=1e-5)

    # strict: a missing or renamed key is refused with the key's name
    bad = dict(ref)
    bad.pop("ra2_conv4.bn.running_var")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="ra2_conv4.bn.running_var"):
        InfNet.from_reference_checkpoint(tmp_path / "bad.pth")
    bad = dict(ref)
    bad["edge_conv5.conv.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "extra.pth")
    with pytest.raises(DataError, match="unexpected"):
        InfNet.from_reference_checkpoint(tmp_path / "extra.pth")
    # DataParallel-prefixed keys load too
    torch.save({f"module.{k}": v for k, v in ref.items()}, tmp_path / "dp.pth")
    assert torch.equal(InfNet.from_reference_checkpoint(tmp_path / "dp.pth")
                       .state_dict()["ra4_conv5.conv.weight"], ref["ra4_conv5.conv.weight"])


@pytest.mark.slow
def test_fast_path_matches_float32_and_keeps_a_static_batch() -> None:
    """compile (with freezing) + bf16 + channels_last gives the float32 probabilities to
    bf16 precision; a short last batch is padded, not recompiled, and trimmed."""
    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.infer import Predictor

    torch.manual_seed(1)
    net = InfNet("test_resnet", channel=8).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    s = SliceSettings(img_size=64)
    x = torch.rand(5, 3, 64, 64)
    want = Predictor(net, s, FastPath(enabled=False)).predict(x)
    # torch.compile's path (the AOT package has its own tests, tests/test_imaging_aot.py)
    fast = Predictor(InfNet("test_resnet", channel=8).eval(), s,
                     FastPath(batch_size=4, aot=False))
    fast.model.load_state_dict(net.state_dict())
    got = fast.predict(x)
    assert got.shape == want.shape == (5, 64, 64) and got.dtype == torch.float32
    assert float((got - want).abs().max()) < 0.05
    assert float(((got > 0.5) != (want > 0.5)).float().mean()) < 0.01


def test_float32_path_folds_batchnorm_on_a_copy_in_channels_last() -> None:
    """With the fast path off, inference runs a private copy of the network with every
    BatchNorm folded into its convolution, in channels_last: the probabilities and
    embeddings of the plain network, and the caller's model left as it was."""
    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.dataset import standardise
    from lungfuse.plugins.imaging_infnet.infer import Predictor

    torch.manual_seed(2)
    net = InfNet("test_resnet", channel=8).eval()
    for m in net.modules():  # non-trivial statistics, so a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s = SliceSettings(img_size=64)
    x = torch.rand(3, 3, 64, 64)
    xs = standardise(x, net.input_mean, net.input_std)
    with torch.no_grad():
        want = torch.sigmoid(net(xs)[3][:, 0])
        want_emb = net.embed(xs)
    p = Predictor(net, s, FastPath(enabled=False))
    assert p.model is not net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in p.model.modules())
    conv = next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d)
                and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(p.predict(x), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p.embed(x), want_emb, atol=1e-5, rtol=1e-4)
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(v.is_contiguous() for v in after.values())

    plain = Predictor(net, s, FastPath(enabled=False, fold_batchnorm=False, channels_last=False))
    assert plain.model is net
    torch.testing.assert_close(plain.predict(x), want)

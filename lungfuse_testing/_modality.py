"""The modality-plugin checks: one function per rule of :class:`ModalityPlugin`.

Every check takes a :class:`ModalityCase` (or a plugin class, for which a case with the
plugin's ``example()`` data is made). The case writes the example data and fits the
plugin once, lazily, and the checks share that fit: a plugin is prepared at most three
times for the whole list (the shared fit, the reproducibility fit, the leakage fit).
Checks never change the shared fit; those that need another fit make their own.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lungfuse.core.contracts import ModalityConfig, ModalityContext, ModalityPlugin

from ._base import Check, check_config_model, check_declaration, fail, skip

#: Cohort columns a modality never sees outside ``prepare``.
OUTCOME_COLUMNS = ("malignant", "time", "event")

#: Values compared after a fit or a state round trip agree to this absolute tolerance.
ATOL = 1e-5

#: A config for ``(data folder, patient ids)``: writes the data and returns the config.
ConfigFactory = Callable[[Path, list[str]], "ModalityConfig | Mapping[str, Any]"]


def example_cohort(n: int = 16, seed: int = 0):
    """A small cohort table (TCGA-style patient ids, binary and survival outcomes)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    ids = [f"TCGA-LF-{i:04d}" for i in range(n)]
    df = pd.DataFrame({
        "patient_id": ids,
        "malignant": np.tile([0, 1], n // 2 + 1)[:n],
        "time": rng.uniform(1, 60, n).round(1),
        "event": rng.integers(0, 2, n),
        "age": rng.integers(45, 85, n),
    }).set_index("patient_id")
    return df


class ModalityCase:
    """A modality plugin with the data it is checked on, fitted lazily and once.

    ``config``: a config (or mapping) reading existing data; or a callable
    ``(folder, patient_ids) -> config`` that writes data for those patients; or None for
    the plugin's ``example()``. Only with a callable (or None) can
    :func:`check_prepare_uses_training_rows_only` write the extra patients it needs.
    ``cohort``: the cohort table (default :func:`example_cohort`). ``workdir``: where data
    and fits go (default: a temporary folder, removed by :meth:`close` or at exit).
    """

    base = ModalityPlugin

    def __init__(self, plugin: type[ModalityPlugin],
                 config: ModalityConfig | Mapping[str, Any] | ConfigFactory | None = None,
                 cohort: Any = None, workdir: str | Path | None = None) -> None:
        self.plugin = plugin
        self._config_arg = config
        self._cohort_arg = cohort
        self._workdir = Path(workdir) if workdir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._memo: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._memo.clear()
            self._errors.clear()

    def __enter__(self) -> ModalityCase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` the first time; its value (or its exception) every time after, so
        a plugin whose fit fails is not fitted again by every later check."""
        if key in self._errors:
            raise self._errors[key]
        if key not in self._memo:
            try:
                self._memo[key] = make()
            except Exception as exc:
                self._errors[key] = exc
                raise
        return self._memo[key]

    # -- data --------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lungfuse-check-")
            self._workdir = Path(self._tmp.name)
        return self._workdir

    @property
    def cohort(self) -> Any:
        return self._once("cohort", lambda: example_cohort() if self._cohort_arg is None
                          else self._cohort_arg)

    @property
    def ids(self) -> list[str]:
        return [str(p) for p in self.cohort.index]

    @property
    def train_ids(self) -> list[str]:
        return self.ids[::2]

    @property
    def features_only(self) -> Any:
        """The cohort without outcome columns, as ``available`` and ``transform`` see it."""
        c = self.cohort
        return c.drop(columns=[col for col in OUTCOME_COLUMNS if col in c.columns])

    @property
    def can_write_data(self) -> bool:
        return self._config_arg is None or callable(self._config_arg)

    def write_config(self, folder: str, ids: list[str]) -> ModalityConfig:
        """Write data for ``ids`` under ``root/folder`` and return the config reading it
        (only when the case was given no fixed config)."""
        path = self.root / folder
        path.mkdir(parents=True, exist_ok=True)
        make = self._config_arg if callable(self._config_arg) else self.plugin.example
        return self._validated(make(path, list(ids)))

    def _validated(self, config: Any) -> ModalityConfig:
        if isinstance(config, Mapping):
            config = self.plugin.config_model.model_validate(dict(config))
        return config

    @property
    def config(self) -> ModalityConfig:
        def make() -> ModalityConfig:
            if self.can_write_data:
                return self.write_config("data", self.ids)
            return self._validated(self._config_arg)

        return self._once("config", make)

    def context(self, folder: str = "work") -> ModalityContext:
        ctx = ModalityContext(workdir=self.root / folder, seed=0, progress=False)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        return ctx

    # -- the shared fit ----------------------------------------------------------------
    def fit(self, config: ModalityConfig, folder: str) -> ModalityPlugin:
        """A new instance prepared on the training patients' cohort rows (outcomes in)."""
        inst = self.plugin(config)
        inst.prepare(self.cohort.loc[self.train_ids], self.context(folder))
        return inst

    @property
    def prepared(self) -> ModalityPlugin:
        """The plugin fitted on the training half of the cohort (shared, do not refit)."""
        return self._once("prepared", lambda: self.fit(self.config, "work"))

    @property
    def features(self) -> Any:
        """``prepared.transform`` of the whole cohort (shared, do not modify)."""
        return self._once("features", lambda: self.prepared.transform(
            self.features_only, self.context("work")))


def _takes_case(func: Callable[[ModalityCase], None]) -> Callable[[Any], None]:
    """Let a check be called with a plugin class too (on its example data)."""

    @functools.wraps(func)
    def check(case: ModalityCase | type[ModalityPlugin]) -> None:
        if isinstance(case, ModalityCase):
            return func(case)
        with ModalityCase(case) as made:
            return func(made)

    return check


def _same_features(a: Any, b: Any) -> bool:
    """Same columns (in order), same patients, values equal to :data:`ATOL`."""
    import numpy as np

    if not a.columns.equals(b.columns) or set(a.index) != set(b.index):
        return False
    return bool(np.allclose(a.sort_index().to_numpy(dtype="float64"),
                            b.sort_index().to_numpy(dtype="float64"), atol=ATOL))


# -- the checks, in the order they run -------------------------------------------------------
@_takes_case
def check_example_data(case: ModalityCase) -> None:
    """The config the checks use is one of the plugin's configs for this plugin, and it
    survives ``model_dump(mode="json")`` → ``model_validate`` unchanged: run folders keep
    configs as YAML and ``lungfuse score`` reads them back."""
    plugin, cfg = case.plugin, case.config
    if not isinstance(cfg, plugin.config_model):
        raise fail(plugin, f"example() must return a {plugin.config_model.__name__}, got "
                   f"{type(cfg).__name__}")
    if cfg.kind != plugin.name:
        raise fail(plugin, f"the example config has kind {cfg.kind!r}, expected {plugin.name!r}")
    again = plugin.config_model.model_validate(cfg.model_dump(mode="json"))
    if again != cfg:
        raise fail(plugin, "the config changes on model_dump(mode='json') -> model_validate; "
                   "a run folder's stored config would read back differently")


@_takes_case
def check_available(case: ModalityCase) -> None:
    """``available`` (given cohort rows without outcomes) returns a set of cohort patient
    ids, and the example data cover some of them."""
    plugin = case.plugin
    avail = plugin(case.config).available(case.features_only, case.context())
    if not isinstance(avail, set | frozenset):
        raise fail(plugin, f"available() must return a set, got {type(avail).__name__}")
    if not avail <= set(case.ids):
        raise fail(plugin, "available() returned patients not in the cohort")
    if not avail:
        raise fail(plugin, "available() covers no patient of the example cohort")


@_takes_case
def check_transform_features(case: ModalityCase) -> None:
    """``transform`` after ``prepare`` returns a non-empty float DataFrame indexed by
    ``patient_id``: no duplicates, finite values, only patients ``available`` covers
    (a patient without data is absent, not a row of zeros)."""
    import numpy as np
    import pandas as pd

    plugin, feats = case.plugin, case.features
    avail = plugin(case.config).available(case.features_only, case.context())
    if not isinstance(feats, pd.DataFrame):
        raise fail(plugin, f"transform() must return a DataFrame, got {type(feats).__name__}")
    if feats.index.name != "patient_id":
        raise fail(plugin, "transform() must index its result by 'patient_id'")
    if feats.index.has_duplicates:
        raise fail(plugin, "transform() returned a patient twice")
    if feats.columns.has_duplicates:
        raise fail(plugin, "transform() returned a feature column twice")
    if not set(feats.index) <= set(avail):
        raise fail(plugin, "transform() returned rows for patients available() does not cover "
                   "(absent patients must be absent, not zero rows)")
    if feats.shape[1] == 0 or len(feats) == 0:
        raise fail(plugin, "transform() returned an empty table")
    if not all(np.issubdtype(t, np.floating) for t in feats.dtypes):
        raise fail(plugin, "transform() must return float columns only")
    if not np.isfinite(feats.to_numpy(dtype="float64")).all():
        raise fail(plugin, "transform() returned NaN or infinite values")


@_takes_case
def check_transform_columns_stable(case: ModalityCase) -> None:
    """Every ``transform`` call returns the same columns in the same order (the encoder
    was built for them), whichever patients it is given, and only patients it was
    given."""
    plugin, feats, ctx = case.plugin, case.features, case.context()
    inst = case.prepared
    for part in (case.features_only, case.features_only.iloc[: max(2, len(case.ids) // 3)],
                 case.features_only.iloc[::-1]):
        out = inst.transform(part, ctx)
        if not out.columns.equals(feats.columns):
            raise fail(plugin, f"transform() of {len(part)} patients returned columns "
                       f"{list(out.columns)[:5]}..., another call {list(feats.columns)[:5]}...: "
                       "the columns must be the same every call")
        if not set(out.index) <= set(part.index.astype(str)):
            raise fail(plugin, "transform(patients) returned patients it was not given")


@_takes_case
def check_transform_per_patient(case: ModalityCase) -> None:
    """A patient's features do not depend on which other patients are transformed with
    it (scoring transforms one patient at a time)."""
    import numpy as np

    plugin, feats, ctx = case.plugin, case.features, case.context()
    sub = case.features_only.iloc[: max(2, len(case.ids) // 3)]
    part = case.prepared.transform(sub, ctx)
    common = part.index.intersection(feats.index)
    if len(common) and not np.allclose(part.loc[common].to_numpy(dtype="float64"),
                                       feats.loc[common].to_numpy(dtype="float64"), atol=ATOL):
        raise fail(plugin, "a patient's features depend on which other patients are transformed")


@_takes_case
def check_prepare_reproducible(case: ModalityCase) -> None:
    """``prepare`` on the same training patients with the same seed, in a fresh work
    folder, gives the same features (runs and their resumes must agree)."""
    plugin = case.plugin
    again = case.fit(case.config, "work-again")
    if not _same_features(case.features, again.transform(case.features_only,
                                                          case.context("work-again"))):
        raise fail(plugin, "prepare() on the same training patients is not reproducible "
                   "(seed everything random from ctx.seed)")


@_takes_case
def check_prepare_uses_training_rows_only(case: ModalityCase) -> None:
    """No leakage: the fit uses the training patients' data only.

    The data are written again with extra patients appended (patients that are in the
    data but not in the cohort, as held-out patients are during a fold's fit). Fitted
    on the same training rows, the plugin must give the same features: a plugin that
    fits on every patient of its input file (normalisation statistics, gene choice, a
    network) instead of the rows of ``train`` gives different ones. Needs the data
    written by ``example()`` (or a config callable) for a longer list of patients, with
    the first patients' data unchanged.
    """
    plugin = case.plugin
    if not case.can_write_data:
        raise skip("the case was given a fixed config; pass a callable "
                   "(folder, patient_ids) -> config, or none for example(), to check leakage")
    taken = set(case.ids)
    extra = [p for p in (f"TCGA-XT-{k:04d}" for k in range(len(taken) + 8)) if p not in taken][:8]
    config = case.write_config("data-extra", case.ids + extra)
    inst = case.fit(config, "work-extra")
    if not _same_features(case.features, inst.transform(case.features_only,
                                                         case.context("work-extra"))):
        raise fail(plugin, "prepare() on the same training patients gives other features when "
                   "its input also holds patients outside the training rows: fit on the "
                   "patients of `train` only (or example() data change when patients are "
                   "appended)")


@_takes_case
def check_state_round_trip(case: ModalityCase) -> None:
    """``state_dict()`` is storable as a run folder stores it (JSON + safetensors through
    :mod:`lungfuse.core.state_io`, never pickled), and a new instance given it back by
    ``load_state_dict`` transforms exactly as the fitted one: what ``lungfuse score``
    does with a finished run."""
    from lungfuse.core.errors import LungfuseError
    from lungfuse.core.state_io import load_state, save_state

    plugin, inst = case.plugin, case.prepared
    name = inst.modality_name
    path = case.root / "state" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_state(path, {name: inst.state_dict()})
        state = load_state(path)[name]
    except LungfuseError as exc:
        raise fail(plugin, f"state_dict() cannot be stored in a run folder: {exc}") from None
    restored = plugin(case.config)
    restored.load_state_dict(state)
    if not _same_features(case.features, restored.transform(case.features_only,
                                                            case.context("work-restored"))):
        raise fail(plugin, "transform() after load_state_dict(state_dict()) differs")


@_takes_case
def check_encoder_output(case: ModalityCase) -> None:
    """``build_encoder(n_features)`` is a ``torch.nn.Module`` with an integer
    ``embedding_dim``, mapping ``(batch, n_features)`` to ``(batch, embedding_dim)``,
    a batch of one in eval mode included, with finite values."""
    import torch

    plugin = case.plugin
    n_features = case.features.shape[1]
    enc = case.prepared.build_encoder(n_features)
    if not isinstance(enc, torch.nn.Module):
        raise fail(plugin, "build_encoder() must return a torch.nn.Module")
    dim = getattr(enc, "embedding_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise fail(plugin, "the encoder must expose an integer `embedding_dim`")
    torch.manual_seed(0)
    x = torch.randn(4, n_features)
    enc.train()
    out = enc(x)
    if tuple(out.shape) != (4, dim):
        raise fail(plugin, f"encoder output shape {tuple(out.shape)}, expected (4, {dim})")
    enc.eval()
    with torch.no_grad():
        one = enc(x[:1])
    if tuple(one.shape) != (1, dim) or not torch.isfinite(one).all():
        raise fail(plugin, "encoder fails on a batch of one in eval mode")


@_takes_case
def check_encoder_trains(case: ModalityCase) -> None:
    """A loss on the encoder's output sends gradients to its parameters."""
    import torch

    plugin = case.plugin
    n_features = case.features.shape[1]
    enc = case.prepared.build_encoder(n_features)
    torch.manual_seed(0)
    enc.train()
    enc(torch.randn(4, n_features)).pow(2).mean().backward()
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters()):
        raise fail(plugin, "no gradient reaches the encoder's parameters")


MODALITY_CHECKS: tuple[Callable[[Any], None], ...] = (
    check_declaration,
    check_config_model,
    check_example_data,
    check_available,
    check_transform_features,
    check_transform_columns_stable,
    check_transform_per_patient,
    check_prepare_reproducible,
    check_prepare_uses_training_rows_only,
    check_state_round_trip,
    check_encoder_output,
    check_encoder_trains,
)


def modality_checks(
    plugin: type[ModalityPlugin],
    config: ModalityConfig | Mapping[str, Any] | ConfigFactory | None = None,
    cohort: Any = None,
    workdir: str | Path | None = None,
) -> Iterator[Check]:
    """Yield every modality check bound to one shared :class:`ModalityCase`, in order.

    Each yielded :class:`Check` runs with no arguments and has a ``name``. The case's
    temporary folder (when no ``workdir`` is given) lives until the interpreter exits.
    """
    case = ModalityCase(plugin, config=config, cohort=cohort, workdir=workdir)
    for func in MODALITY_CHECKS:
        yield Check(getattr(func, "__wrapped__", func), case)

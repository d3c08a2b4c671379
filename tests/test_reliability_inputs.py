"""Issue 11, cases 10 and 11: broken plugins and malformed inputs give one clear line.

Case 10: a plugin that raises SystemExit on import, claims another plugin's ``kind`` or
shares a built-in's name is reported and the other plugins keep working. Case 11: ids
with stray whitespace, text outcomes, empty tables, duplicate columns, folders given as
files, impossible fold advice, damaged Parquet files and ``synth --overwrite`` on a
user's folder. Last, Hypothesis property tests write random malformed cohort, mutation
and expression tables and check that the readers either read them correctly or raise a
:class:`LungfuseError`, never another exception.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plugin_fixtures import good_fusion_module, make_dist

from lungfuse.core.cohort import load_cohort, validate_cohort
from lungfuse.core.config import experiment_model_from, validate_config
from lungfuse.core.contracts import ModalityContext
from lungfuse.core.errors import ConfigError, DataError, LungfuseError, PluginError
from lungfuse.core.registry import (
    FUSION_GROUP,
    MODALITY_GROUP,
    PluginWarning,
    Registry,
    default_registry,
)
from lungfuse.plugins.genomics.plugin import (
    ExpressionConfig,
    ExpressionModality,
    MutationsConfig,
    MutationsModality,
)
from lungfuse.schemas import CohortConfig, TaskConfig

P = [f"TCGA-LF-{i:04d}" for i in range(4)]


def ctx(tmp_path: Path) -> ModalityContext:
    return ModalityContext(workdir=tmp_path / "work", progress=False,
                           log=logging.getLogger("lungfuse"))


def cohort_frame(ids: list[str] = P) -> pd.DataFrame:
    return pd.DataFrame({"age": np.arange(len(ids), dtype=float)},
                        index=pd.Index(ids, name="patient_id"))


def one_line(exc: pytest.ExceptionInfo[Any], *parts: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


# ============================================================================ case 10
@pytest.fixture
def extra_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A site folder on sys.path for throw-away distributions; the process-wide registry
    is re-read before and after, so no other test sees them."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    default_registry(refresh=True)
    yield root
    for mod in [m for m in sys.modules if m.startswith("lfx_")]:
        del sys.modules[mod]
    monkeypatch.undo()
    default_registry(refresh=True)


def _config(fusion: str) -> dict[str, Any]:
    return {"cohort": {"clinical": "clinical.parquet"},
            "modalities": [{"kind": "mutations", "path": "maf.parquet"}],
            "fusion": {"kind": fusion}}


def test_plugin_exiting_on_import_is_reported_and_plugins_lists_the_rest(
        extra_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lungfuse.core.cli import main

    make_dist(extra_path, "exit-dist", "0.1", FUSION_GROUP,
              {"lfx_exit": "lfx_exit:Plugin", "lfx_fine": "lfx_fine:Plugin"},
              {"lfx_exit": "import sys\nsys.exit(3)\n",
               "lfx_fine": good_fusion_module("lfx_fine")})
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"lfx_exit.*exit-dist 0\.1.*SystemExit"):
        loaded = reg.fusions()
    assert "lfx_fine" in loaded and "concat" in loaded and "lfx_exit" not in loaded
    with pytest.raises(PluginError, match=r"'lfx_exit'.*SystemExit: 3"):
        reg.get(FUSION_GROUP, "lfx_exit")
    try:  # the command completes: the plugin's sys.exit(3) does not end it
        main(["plugins"])
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert "lfx_fine" in out and "mutations" in out
    assert "lfx_exit" in out and "import failed: SystemExit: 3" in out


def test_plugin_command_exiting_on_import_does_not_end_help(
        extra_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A `lungfuse.commands` entry point whose module calls sys.exit on import is listed as
    unavailable; `lungfuse --help` and the other commands still work."""
    from lungfuse.core.cli import main
    from lungfuse.core.registry import COMMAND_GROUP

    make_dist(extra_path, "cmd-exit-dist", "0.1", COMMAND_GROUP,
              {"lfxcmd": "lfx_cmd_exit:cmd"}, {"lfx_cmd_exit": "import sys\nsys.exit(4)\n"})
    default_registry(refresh=True)
    for argv in (["--help"], ["lfxcmd", "--help"]):
        try:
            main(argv)
            code: Any = 0
        except SystemExit as exc:
            code = exc.code
        assert code in (0, None), (argv, code)
    out = capsys.readouterr().out
    assert "lfxcmd" in out and "unavailable" in out and "SystemExit" in out
    with pytest.raises(SystemExit) as info:
        main(["lfxcmd"])
    assert info.value.code == 2
    assert "failed to load: SystemExit: 4" in capsys.readouterr().err


def test_plugin_claiming_another_kind_is_skipped_and_configs_still_validate(
        extra_path: Path) -> None:
    greedy = good_fusion_module("lfx_greedy").replace(
        'kind: Literal["lfx_greedy"]', 'kind: Literal["lfx_greedy", "concat"]')
    make_dist(extra_path, "greedy-dist", "1.0", FUSION_GROUP,
              {"lfx_greedy": "lfx_greedy:Plugin"}, {"lfx_greedy": greedy})
    reg = Registry()
    experiment_model_from(reg)  # used to raise TypeError: 'concat' mapped to two choices
    cfg = validate_config(_config("concat"), registry=reg, check_paths=False)
    assert cfg.fusion.kind == "concat"
    entry = next(e for e in reg.entries(FUSION_GROUP) if e.name == "lfx_greedy")
    assert entry.status == "error" and "Literal['lfx_greedy'] (one value)" in entry.reason
    with pytest.raises(ConfigError) as info:
        validate_config(_config("lfx_greedy"), registry=reg, check_paths=False)
    one_line(info, "greedy-dist 1.0", "one value")


def test_config_union_failure_skips_only_the_culprit() -> None:
    """A plugin that slipped past the registry's checks with a colliding kind is left out
    of the config union (and marked broken) instead of breaking every config."""
    from typing import Literal

    from lungfuse.core.contracts import FusionConfig

    class Greedy(FusionConfig):
        kind: Literal["lfx_sly", "concat"] = "lfx_sly"

    reg = Registry()
    reg.fusions(warn=False)
    concat = next(e for e in reg.entries(FUSION_GROUP) if e.name == "concat")
    sly = type(concat)("lfx_sly", FUSION_GROUP, "x:Y", "sly-dist", "0.1", status="ok",
                       obj=SimpleNamespace(config_model=Greedy))
    reg._entries[FUSION_GROUP].append(sly)
    with pytest.warns(PluginWarning, match="lfx_sly.*sly-dist"):
        model = experiment_model_from(reg)
    assert sly.status == "error" and "also accepts 'concat'" in sly.reason
    assert next(e for e in reg.entries(FUSION_GROUP) if e.name == "concat").status == "ok"
    cfg = model.model_validate(_config("concat"), context={"check_paths": False})
    assert cfg.fusion.kind == "concat"


def test_broken_third_party_plugin_does_not_hide_the_builtin(extra_path: Path) -> None:
    make_dist(extra_path, "shadow-dist", "0.2", MODALITY_GROUP,
              {"mutations": "lfx_shadow:Plugin"},
              {"lfx_shadow": "raise ImportError('needs libshadow')\n"})
    reg = Registry()
    assert reg.get(MODALITY_GROUP, "mutations") is MutationsModality
    with pytest.warns(PluginWarning, match="shadow-dist.*needs libshadow"):
        mods = reg.modalities()
    assert mods["mutations"] is MutationsModality and "expression" in mods
    same = {e.distribution: e for e in reg.entries(MODALITY_GROUP) if e.name == "mutations"}
    assert same["shadow-dist"].status == "error"
    assert same["lungfuse"].status == "ok" and "shadow-dist 0.2" in same["lungfuse"].reason
    validate_config(_config("concat"), registry=reg, check_paths=False)


def test_two_working_plugins_with_one_name_fail_only_where_used(extra_path: Path) -> None:
    for sub, dist in (("a", "twin-one"), ("b", "twin-two")):
        make_dist(extra_path / sub, dist, "1.0", FUSION_GROUP,
                  {"lfx_twin": f"lfx_twin_{sub}:Plugin"},
                  {f"lfx_twin_{sub}": good_fusion_module("lfx_twin")})
        sys.path.insert(0, str(extra_path / sub))
    reg = Registry()
    fus = reg.fusions(warn=False)
    assert "lfx_twin" not in fus and "concat" in fus
    assert validate_config(_config("concat"), registry=reg, check_paths=False)
    with pytest.raises(ConfigError) as info:
        validate_config(_config("lfx_twin"), registry=reg, check_paths=False)
    one_line(info, "twin-one 1.0", "twin-two 1.0", "uninstall one")
    assert [e.status for e in reg.entries(FUSION_GROUP) if e.name == "lfx_twin"] == \
        ["conflict", "conflict"]


# ============================================================================ case 11: ids
def test_maf_barcodes_with_surrounding_spaces_keep_their_calls(tmp_path: Path) -> None:
    maf = tmp_path / "maf.parquet"
    pd.DataFrame({"Tumor_Sample_Barcode": [" " + P[0] + "-01A", P[1] + "-01A  ", P[1] + "-01A"],
                  "Hugo_Symbol": ["KRAS", "TP53", "KRAS"],
                  "Variant_Classification": ["Missense_Mutation"] * 3}).to_parquet(maf)
    m = MutationsModality(MutationsConfig(path=maf, panel=["KRAS", "TP53"], tmb=True))
    c = ctx(tmp_path)
    assert m.available(cohort_frame(), c) == {P[0], P[1]}
    m.prepare(cohort_frame(P[:2]), c)
    x = m.transform(cohort_frame(), c)
    assert x.loc[P[0], "KRAS"] == 1 and x.loc[P[0], "TP53"] == 0
    assert x.loc[P[1], "KRAS"] == 1 and x.loc[P[1], "TP53"] == 1
    assert x.loc[P[1], "TMB"] > x.loc[P[0], "TMB"]  # both spellings of P1's barcode count


def test_expression_and_sample_map_ids_with_spaces_match(tmp_path: Path) -> None:
    expr = tmp_path / "expr.parquet"
    pd.DataFrame({"sample": [" s0", "s1 "], "G1": [1.0, 3.0], "G2": [2.0, 2.0]}).to_parquet(expr)
    smap = tmp_path / "map.parquet"
    pd.DataFrame({"sample_id": ["s0 ", " s1"],
                  "patient_id": [" " + P[0], P[1] + "\t"]}).to_parquet(smap)
    m = ExpressionModality(ExpressionConfig(path=expr, sample_map=smap, panel=["G1", "G2"],
                                            log2=False, zscore=False))
    c = ctx(tmp_path)
    assert m.available(cohort_frame(), c) == {P[0], P[1]}
    m.prepare(cohort_frame(P[:2]), c)
    x = m.transform(cohort_frame(), c)
    assert x.loc[P[1], "G1"] == 3.0 and x.loc[P[0], "G2"] == 2.0


def test_clinical_ids_are_stripped_and_blank_ids_refused() -> None:
    df = pd.DataFrame({"patient_id": [" P1", "P2 ", "P3"], "malignant": [0, 1, 1]})
    assert validate_cohort(df, "patient_id", TaskConfig()).ids == ["P1", "P2", "P3"]
    with pytest.raises(DataError) as info:
        validate_cohort(df.assign(patient_id=["P1", " P1", "P3"]), "patient_id", TaskConfig())
    one_line(info, "'P1' appears more than once")
    with pytest.raises(DataError) as info:
        validate_cohort(df.assign(patient_id=["P1", "  ", "P3"]), "patient_id", TaskConfig())
    one_line(info, "blank 'patient_id'")


def test_covers_none_names_example_ids_and_case_difference(tmp_path: Path) -> None:
    from lungfuse.core.study import check_coverage

    expr = tmp_path / "expr.parquet"
    pd.DataFrame({"sample": [p.lower() for p in P], "G1": [1.0] * 4}).to_parquet(expr)
    cfg = ExpressionConfig(path=expr, barcode_rule="identity", panel=["G1"])
    cohort = validate_cohort(pd.DataFrame({"patient_id": P, "malignant": [0, 1, 0, 1]}),
                             "patient_id", TaskConfig(), source="clinical.parquet")
    with pytest.raises(DataError) as info:
        check_coverage({"expression": (ExpressionModality, cfg)}, cohort, tmp_path)
    one_line(info, "covers none of the 4 patients", f"'{P[0]}'", f"'{P[0].lower()}'",
             "differ only by letter case")


def test_wildtype_without_any_matching_barcode_is_refused(tmp_path: Path) -> None:
    maf = tmp_path / "maf.parquet"
    pd.DataFrame({"Tumor_Sample_Barcode": ["XX-" + p for p in P],
                  "Hugo_Symbol": ["KRAS"] * 4,
                  "Variant_Classification": ["Missense_Mutation"] * 4}).to_parquet(maf)
    m = MutationsModality(MutationsConfig(path=maf, panel=["KRAS"], untested="wildtype"))
    with pytest.raises(DataError) as info:  # not: every patient silently wild-type
        m.prepare(cohort_frame(), ctx(tmp_path))
    one_line(info, "none of the 4 sample(s)", "wild-type", f"'{P[0]}'")


# ====================================================================== case 11: tables
def test_text_outcome_and_empty_clinical_table_are_one_line(tmp_path: Path) -> None:
    df = pd.DataFrame({"patient_id": ["P1", "P2"], "malignant": ["yes", "no"]})
    with pytest.raises(DataError) as info:
        validate_cohort(df, "patient_id", TaskConfig(), source="c.parquet")
    one_line(info, "c.parquet", "'malignant'", "'yes'", "recode")
    path = tmp_path / "empty.parquet"
    df.iloc[:0].to_parquet(path)
    with pytest.raises(DataError) as info:
        load_cohort(CohortConfig.model_construct(clinical=path, patient_id="patient_id"),
                    TaskConfig())
    one_line(info, "empty.parquet", "no rows")
    with pytest.raises(DataError) as info:
        validate_cohort(df.iloc[:0], "patient_id", TaskConfig(kind="survival"))
    one_line(info, "no rows")


def test_duplicate_columns_are_one_line(tmp_path: Path) -> None:
    expr = tmp_path / "expr.parquet"
    pq.write_table(pa.Table.from_arrays(
        [pa.array(["s0", "s1"]), pa.array([1.0, 2.0]), pa.array([3.0, 4.0])],
        names=["sample", "G1", "G1"]), expr)
    m = ExpressionModality(ExpressionConfig(path=expr, barcode_rule="identity", panel=["G1"]))
    with pytest.raises(DataError) as info:
        m.prepare(cohort_frame(["s0", "s1"]), ctx(tmp_path))
    one_line(info, "expr.parquet", "'G1' appears more than once")
    maf = tmp_path / "maf.parquet"
    pq.write_table(pa.Table.from_arrays(
        [pa.array(["a"]), pa.array(["KRAS"]), pa.array(["TP53"]),
         pa.array(["Missense_Mutation"])],
        names=["Tumor_Sample_Barcode", "Hugo_Symbol", "Hugo_Symbol", "Variant_Classification"]),
        maf)
    with pytest.raises(DataError) as info:
        MutationsModality(MutationsConfig(path=maf)).available(cohort_frame(), ctx(tmp_path))
    one_line(info, "maf.parquet", "'Hugo_Symbol' appears 2 times")
    clin = tmp_path / "clin.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["P1"]), pa.array([1]), pa.array([0])],
                                        names=["patient_id", "malignant", "malignant"]), clin)
    with pytest.raises(DataError) as info:
        load_cohort(CohortConfig.model_construct(clinical=clin, patient_id="patient_id"),
                    TaskConfig())
    one_line(info, "clin.parquet", "'malignant' appears more than once")


def test_validate_refuses_a_folder_where_a_file_is_expected(tmp_path: Path) -> None:
    (tmp_path / "maf.parquet").write_bytes(b"x")
    (tmp_path / "clinical").mkdir()
    data = _config("concat") | {"cohort": {"clinical": "clinical"}}
    with pytest.raises(ConfigError) as info:
        validate_config(data, base_dir=tmp_path)
    one_line(info, "cohort.clinical", "expected a file, found a folder")
    (tmp_path / "clinical.parquet").write_bytes(b"x")
    (tmp_path / "omics").mkdir()
    data = _config("concat") | {"modalities": [{"kind": "mutations", "path": "omics"}]}
    with pytest.raises(ConfigError) as info:
        validate_config(data, base_dir=tmp_path)
    one_line(info, "modalities[0].path", "expected a file, found a folder")


def test_fold_advice_names_what_is_allowed() -> None:
    from lungfuse.core.splits import make_splits

    ids = [f"p{i}" for i in range(12)]
    with pytest.raises(DataError) as info:  # one patient of class 1: used to say "<= 1"
        make_splits(ids[:5], np.array([0, 0, 0, 0, 1]), folds=5)
    msg = one_line(info, "class 1 has only 1 patient(s)", "at least 3 per class")
    assert "<= 1" not in msg
    with pytest.raises(DataError) as info:  # 4 of class 1: at most 4 folds
        make_splits(ids, np.array([0] * 8 + [1] * 4), folds=5)
    one_line(info, "use evaluation.folds between 2 and 4")
    with pytest.raises(DataError) as info:  # 3 of class 1: 2 folds leave 1 to train on ...
        make_splits(ids[:11], np.array([0] * 8 + [1] * 3), folds=2)
    msg = one_line(info, "use evaluation.folds: 3")  # ... more folds, not fewer, help
    assert "fewer folds" not in msg
    make_splits(ids[:11], np.array([0] * 8 + [1] * 3), folds=3)  # the advice works


def test_damaged_parquet_advice_matches_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pd.DataFrame({"patient_id": [f"P{i}" for i in range(50)],
                  "malignant": [i % 2 for i in range(50)]}).to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    csv = tmp_path / "csv.parquet"
    csv.write_text("patient_id,malignant\nP1,0\n", encoding="utf-8")

    def clinical(path: Path) -> str:
        with pytest.raises(DataError) as info:
            load_cohort(CohortConfig.model_construct(clinical=path, patient_id="patient_id"),
                        TaskConfig())
        return one_line(info, path.name)

    def maf(path: Path) -> str:
        with pytest.raises(DataError) as info:
            MutationsModality(MutationsConfig(path=path)).available(cohort_frame(), ctx(tmp_path))
        return one_line(info, path.name)

    for read in (clinical, maf):
        msg = read(cut)
        assert "not a readable Parquet file" in msg and "truncated" in msg
        assert "read_csv" not in msg
        assert "read_csv" in read(csv)


def test_synth_overwrite_replaces_only_synth_output(tmp_path: Path) -> None:
    from lungfuse.core.synth import SYNTH_MARKER, generate

    out = tmp_path / "data"
    res = generate(out, preset="tiny", patients=4, with_ct=False, progress=False)
    assert (out / SYNTH_MARKER).is_file()
    (out / "my_notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError) as info:
        generate(out, preset="tiny", patients=4, with_ct=False, progress=False, overwrite=True)
    one_line(info, "my_notes.txt", "move them out")
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "keep me"
    (out / "my_notes.txt").unlink()
    (out / SYNTH_MARKER).unlink()  # a look-alike without the marker is someone's folder
    with pytest.raises(DataError) as info:
        generate(out, preset="tiny", patients=4, with_ct=False, progress=False, overwrite=True)
    one_line(info, "not a lungfuse synth output")
    assert res.clinical.exists()


# ====================================================== property tests of the table readers
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: 100 fixed examples per property in CI; LUNGFUSE_PROPERTY_EXAMPLES=N runs N random ones
_DEEP = os.environ.get("LUNGFUSE_PROPERTY_EXAMPLES")
PROPERTY = settings(max_examples=int(_DEEP or 100), deadline=None, derandomize=not _DEEP,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
N_ROWS = st.integers(min_value=0, max_value=8)
TEXT = st.sampled_from(["", " ", "P1", " P1", "P1 ", "p1", "P2", "TCGA-LF-0000-01A",
                        "TCGA-LF-0001", "yes", "no", "0", "1", "KRAS", "TP53", "Unknown",
                        "Missense_Mutation", "Silent", "G1", "é", "\t"])
FLOATS = st.sampled_from([0.0, 1.0, -1.0, 2.5, 7.0, float("nan"), float("inf")])


def _pool(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


#: Per column name: (values of a well-formed column, mostly; its Arrow type).
VALID: dict[str, tuple[st.SearchStrategy[Any], pa.DataType]] = {
    "patient_id": (_pool(["P1", " P1", "P2", "P3 ", "p3", "P4", "P5", "P6", "P7", "P8"]),
                   pa.string()),
    "malignant": (_pool([0, 1, 0, 1, 0, 1, 0, 1, None]), pa.int64()),
    "time": (_pool([0.5, 1.0, 2.0, 7.0, 30.0, 365.0, 12.0, -1.0, 0.0, float("nan"), None]),
             pa.float64()),
    "event": (_pool([0, 1, 0, 1, 0, 1, 0, 1, None]), pa.int64()),
    "age": (FLOATS, pa.float64()),
    "Tumor_Sample_Barcode": (_pool(["P1", " P1", "P2 ", "TCGA-LF-0000-01A", "yes", "zz", "",
                                    None]), pa.string()),
    "Hugo_Symbol": (_pool(["KRAS", "TP53", "Unknown", "EGFR", None]), pa.string()),
    "Variant_Classification": (_pool(["Missense_Mutation", "Silent", "Nonsense_Mutation",
                                      None]), pa.string()),
    "HGVSp_Short": (_pool(["p.G12C", "p.G12D", "G12", "p.R1*", "", None]), pa.string()),
    "t_alt_count": (_pool([0, 3, 10, -1, None]), pa.int64()),
    "t_depth": (_pool([0, 10, 100, None]), pa.int64()),
    "sample": (_pool(["P1", " P1", "P2", "G1", "yes", "", "x1", "x2", "x3", None]), pa.string()),
    "gene": (_pool(["G1", "G2", "G3", " G1", None]), pa.string()),
    "value": (FLOATS | st.none(), pa.float64()),
    "G1": (FLOATS | st.none(), pa.float64()),
    "G2": (FLOATS, pa.float32()),
    " P1": (FLOATS, pa.float64()),
    "P1": (FLOATS | st.none(), pa.float64()),
    "P2": (FLOATS, pa.float32()),
    "yes": (FLOATS, pa.float64()),
}


@st.composite
def columns(draw: st.DrawFn, n: int) -> pa.Array:
    """One column of ``n`` values of a random type, nulls and odd values included."""
    kind = draw(st.sampled_from(["text", "int", "float", "bool", "null", "binary", "list",
                                 "dict"]))
    if kind == "text" or kind == "dict":
        arr = pa.array(draw(st.lists(st.none() | TEXT, min_size=n, max_size=n)), pa.string())
        return arr.dictionary_encode() if kind == "dict" else arr
    if kind == "int":
        return pa.array(draw(st.lists(st.none() | st.integers(-3, 3), min_size=n, max_size=n)),
                        pa.int64())
    if kind == "float":
        return pa.array(draw(st.lists(st.none() | FLOATS, min_size=n, max_size=n)), pa.float64())
    if kind == "bool":
        return pa.array(draw(st.lists(st.none() | st.booleans(), min_size=n, max_size=n)))
    if kind == "binary":
        return pa.array(draw(st.lists(st.binary(max_size=4), min_size=n, max_size=n)))
    if kind == "list":
        return pa.array([[1, 2]] * n, pa.list_(pa.int64()))
    return pa.nulls(n)


@st.composite
def tables(draw: st.DrawFn, names: list[str]) -> pa.Table:
    """A well-formed table of ``names`` (values from VALID, some odd), then 0-3 of: a
    column dropped, repeated, of another type, dictionary-encoded, or an unrelated one
    added."""
    n = draw(N_ROWS)
    cols: list[tuple[str, pa.Array]] = []
    for name in names:
        values, typ = VALID[name]
        unique = name in ("patient_id", "sample") and draw(st.booleans())  # mostly readable
        vals = draw(st.lists(values, min_size=n, max_size=n, unique=unique))
        cols.append((name, pa.array(vals, typ)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "repeat", "retype", "dictionary", "add"]))
        i = draw(st.integers(0, max(len(cols) - 1, 0)))
        if op == "add" or not cols:
            cols.append((draw(st.sampled_from(["extra", *names])), draw(columns(n))))
        elif op == "drop":
            del cols[i]
        elif op == "repeat":
            cols.append(cols[i])
        elif op == "retype":
            cols[i] = (cols[i][0], draw(columns(n)))
        elif pa.types.is_string(cols[i][1].type):
            cols[i] = (cols[i][0], cols[i][1].dictionary_encode())
    if not cols:
        return pa.table({"unrelated": pa.array([1] * n, pa.int64())})
    return pa.Table.from_arrays([c for _, c in cols], names=[nm for nm, _ in cols])


DAMAGE = st.sampled_from(["none"] * 5 + ["truncate", "bytes", "csv", "empty"])


def write(path: Path, table: pa.Table, damage: str, data: st.DataObject) -> None:
    """Write ``table`` as Parquet, then damage the file as drawn."""
    pq.write_table(table, path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")])
    elif damage == "bytes":
        path.write_bytes(data.draw(st.binary(min_size=1, max_size=64), label="bytes"))
    elif damage == "csv":
        path.write_text("a,b\n1,2\n", encoding="utf-8")
    elif damage == "empty":
        path.write_bytes(b"")


def expect_result_or_lungfuse_error(fn: Any) -> Any:
    """Call ``fn``: its result, or None for a LungfuseError of one line; any other
    exception fails the property."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except LungfuseError as exc:
        assert "\n" not in str(exc), str(exc)
        return None


@PROPERTY
@given(data=st.data(), survival=st.booleans(), damage=DAMAGE)
def test_property_cohort_reader(tmp_path: Path, data: st.DataObject, survival: bool,
                                damage: str) -> None:
    table = data.draw(tables(["patient_id", "malignant", "time", "event", "age"]), label="table")
    path = tmp_path / "clinical.parquet"
    write(path, table, damage, data)
    task = TaskConfig(kind="survival" if survival else "binary")
    cfg = CohortConfig.model_construct(clinical=path, patient_id="patient_id")
    cohort = expect_result_or_lungfuse_error(lambda: load_cohort(cfg, task))
    if cohort is not None:  # a correct read: unique stripped ids, valid outcomes
        ids = cohort.ids
        assert len(ids) == len(set(ids)) > 0
        assert all(i == i.strip() and i for i in ids)
        strata = cohort.strata
        assert set(np.unique(strata)) <= {0, 1}
        if survival:
            assert (cohort.table[task.time] > 0).all()


@PROPERTY
@given(data=st.data(), damage=DAMAGE, wildtype=st.booleans())
def test_property_mutation_reader(tmp_path: Path, data: st.DataObject, damage: str,
                                  wildtype: bool) -> None:
    names = ["Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification", "HGVSp_Short",
             "t_alt_count", "t_depth"]
    table = data.draw(tables(names), label="table")
    path = tmp_path / "maf.parquet"
    write(path, table, damage, data)
    cfg = MutationsConfig(path=path, barcode_rule="identity", panel=["KRAS", "TP53"],
                          hotspots=["KRAS G12"], vaf_weighting=data.draw(st.booleans()),
                          untested="wildtype" if wildtype else "missing")
    ids = ["P1", "P2", "TCGA-LF-0000-01A", "yes"]
    m = MutationsModality(cfg)
    c = ctx(tmp_path)

    def run() -> pd.DataFrame | None:
        have = m.available(cohort_frame(ids), c)
        assert have <= set(ids)
        if not have:
            return None
        m.prepare(cohort_frame(sorted(have)), c)
        return m.transform(cohort_frame(ids), c)

    x = expect_result_or_lungfuse_error(run)
    if x is not None:
        assert set(x.index) <= set(ids) and x.index.is_unique
        assert np.isfinite(x.to_numpy()).all()
        genes = x[["KRAS", "TP53"]].to_numpy()
        assert ((genes >= 0) & (genes <= 1)).all()


@PROPERTY
@given(data=st.data(), damage=DAMAGE, layout=st.sampled_from(["auto", "wide", "long"]))
def test_property_expression_reader(tmp_path: Path, data: st.DataObject, damage: str,
                                    layout: str) -> None:
    wide = layout == "wide" or (layout == "auto" and data.draw(st.booleans()))
    transposed = layout == "wide" and data.draw(st.booleans())
    names = (["gene", "P1", " P1", "P2", "yes"] if transposed else
             ["sample", "G1", "G2", " P1"] if wide else ["sample", "gene", "value"])
    table = data.draw(tables(names), label="table")
    path = tmp_path / "expr.parquet"
    write(path, table, damage, data)
    cfg = ExpressionConfig(path=path, barcode_rule="identity", layout=layout,
                           orientation="genes_x_samples" if transposed else "samples_x_genes",
                           selection=data.draw(st.sampled_from(["panel", "top_variance"])),
                           panel=["G1", "G2"], top_n=2, log2=data.draw(st.booleans()))
    ids = ["P1", "P2", "G1", "yes"]
    m = ExpressionModality(cfg)
    c = ctx(tmp_path)

    def run() -> pd.DataFrame | None:
        have = m.available(cohort_frame(ids), c)
        assert have <= set(ids)
        if not have:
            return None
        m.prepare(cohort_frame(sorted(have)), c)
        return m.transform(cohort_frame(ids), c)

    x = expect_result_or_lungfuse_error(run)
    if x is not None:
        assert set(x.index) <= set(ids) and x.index.is_unique
        assert np.isfinite(x.to_numpy()).all()

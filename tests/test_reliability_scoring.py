"""Issue 11, cases 7-9: ``lungfuse score`` does not hide what it could not use.

7. Data given for a patient (their own CT) that cannot be used makes that patient an
   error (reported, no risk, a page saying what failed); the others are still scored and
   the command's exit status says something failed.
8. A fold model missing from the run folder, or a damaged file of it, is one line naming
   the file, never a risk from the remaining models or a traceback.
9. Page names are distinct and bounded whatever the patient ids.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline import FakeModality
from test_scoring import _fake_ids, _score, _spec, trained  # noqa: F401 - fixture

from lungfuse.core.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class OwnFileFake(FakeModality):
    """The run's ``fake`` modality, reading a patient's own file (the scoring input's
    ``ct``) the way the imaging plugin reads a scan: an unreadable file raises
    ``DataError``; a file without the patient's row is skipped with a logged warning."""

    def scoring_config(self, patient, workdir):
        ct = patient.get("ct")
        return None if ct is None else self.config.model_copy(update={"path": Path(ct)})

    def _read(self) -> pd.DataFrame:
        try:
            return pd.read_parquet(self.config.path)
        except Exception as exc:  # noqa: BLE001 - the test's stand-in for a CT reader
            raise DataError(f"{self.config.path}: truncated, cannot read it") from exc

    def transform(self, patients, ctx):
        out = super().transform(patients, ctx)
        for pid in sorted(set(patients.index) - set(out.index)):
            if self.config.path.name.startswith("own-"):
                logging.getLogger("lungfuse.fake").warning(
                    "fake: skipping patient %s: %s: 2D image, not a volume", pid,
                    self.config.path)
        return out


def _own_files(tmp: Path, ok_pid: str) -> tuple[Path, Path]:
    """A truncated file, and a readable one holding another patient only."""
    bad = tmp / "bad.parquet"
    bad.write_bytes(b"PAR1\x00\x01 truncated")
    other = tmp / "own-2d.parquet"
    pd.DataFrame({"a": [1.0], "b": [0.0], "c": [0.0]},
                 index=pd.Index([ok_pid], name="patient_id")).to_parquet(other)
    return bad, other


def test_case7_unusable_given_data_is_an_error_for_that_patient_only(
        trained, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811 - fixture
    from lungfuse.core import scoring
    from lungfuse.core.cli import main

    root, run_dir = trained
    with_fake, without = _fake_ids(root)
    ok, absent = with_fake[0], without[0]
    bad, other = _own_files(tmp_path, ok)
    spec = {"patients": [{"id": ok}, {"id": "NEW-BAD", "ct": str(bad)},
                         {"id": "NEW-2D", "ct": str(other)}, {"id": absent}],
            "clinical": str(root / "clinical.parquet")}
    res = scoring.score_patients(run_dir, spec, tmp_path / "o", plugins=[OwnFileFake],
                                 progress=False)
    by_id = {s["patient_id"]: s for s in res.patients}
    assert [s["patient_id"] for s in res.failed] == ["NEW-BAD", "NEW-2D"]
    assert "truncated, cannot read it" in by_id["NEW-BAD"]["failed"]["fake"]
    assert "2D image, not a volume" in by_id["NEW-2D"]["error"]
    # the others are scored as before; an absent modality is still just missing
    assert by_id[ok]["status"] == "ok" and 0.0 <= by_id[ok]["risk"] <= 1.0
    assert by_id[absent]["status"] == "ok" and by_id[absent]["missing"] == ["fake"]
    assert "no data" in by_id[absent]["missing_reasons"]["fake"]
    flat = pd.read_parquet(res.folder / "scores.parquet").set_index("patient_id")
    assert flat.loc["NEW-BAD", "status"] == "error" and pd.isna(flat.loc["NEW-BAD", "risk"])
    assert "truncated" in flat.loc["NEW-BAD", "error"] and flat.loc[ok, "status"] == "ok"
    info = json.loads((res.folder / "scores.json").read_text(encoding="utf-8"))
    assert info["failed"] == ["NEW-BAD", "NEW-2D"]
    assert info["patients"][1]["risk"] is None  # no risk is made up for a failed patient
    by_model = pd.read_parquet(res.folder / "scores_by_model.parquet")
    assert not by_model["patient_id"].isin(["NEW-BAD", "NEW-2D"]).any()
    for pid, reason in (("NEW-BAD", "truncated"), ("NEW-2D", "2D image")):
        page = (res.folder / by_id[pid]["page"]).read_text(encoding="utf-8")
        assert "could not be used" in page and reason in page
        assert "no data" not in page and "nothing is known" not in page
    index = (res.folder / "report.html").read_text(encoding="utf-8")
    row = index[index.index("NEW-BAD"):].split("</tr>")[0]
    assert "not scored" in row and "truncated" in row and "none" not in row

    # the CLI: a line per failed patient on stderr, the others on stdout, exit status 1
    monkeypatch.setattr(scoring, "score_patients",
                        functools.partial(scoring.score_patients, plugins=[OwnFileFake]))
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(SystemExit) as ex:
        main(["score", str(run_dir), "--input", str(path), "--out", str(tmp_path / "cli"),
              "--no-progress", "--no-report"])
    text = capsys.readouterr()
    assert ex.value.code == 1
    assert text.err.count("not scored:") == 2 and "NEW-BAD: not scored: fake: " in text.err
    assert "error: 2 of 4 patient(s) not scored" in text.err and "Traceback" not in text.err
    assert text.out.startswith(f"{ok}: risk ") and "NEW-BAD" not in text.out
    # a batch where every patient failed does not exit 0 either
    with pytest.raises(SystemExit) as ex:
        main(["score", str(run_dir), "--patient", "NEW-BAD", "--ct", str(bad), "--out",
              str(tmp_path / "cli1"), "--no-progress"])
    text = capsys.readouterr()
    assert ex.value.code == 1 and "error: 1 of 1 patient(s) not scored" in text.err
    assert (tmp_path / "cli1" / "scores.json").is_file()


def _delete_fold(fdir: Path) -> None:
    shutil.rmtree(fdir)


def _truncate_weights(fdir: Path) -> None:
    data = (fdir / "model.pt").read_bytes()
    (fdir / "model.pt").write_bytes(data[: len(data) // 2])


def _drop_state(fdir: Path) -> None:
    """Every file of the fold but the weights and meta.json (whatever the state format)."""
    for f in fdir.iterdir():
        if f.name not in ("model.pt", "meta.json") and f.is_file():
            f.unlink()


@pytest.mark.parametrize("damage, match", [
    (lambda run, fdir: (fdir / "model.pt").unlink(),
     r"seed0-fold1[/\\]model\.pt: missing; the run folder is incomplete"),
    (lambda run, fdir: _delete_fold(fdir), r"models[/\\]seed0-fold1: missing"),
    (lambda run, fdir: _truncate_weights(fdir), r"seed0-fold1[/\\]model\.pt: damaged"),
    (lambda run, fdir: (fdir / "model.pt").write_bytes(b""), r"model\.pt: damaged"),
    (lambda run, fdir: (fdir / "meta.json").write_text("{", encoding="utf-8"),
     r"seed0-fold1[/\\]meta\.json: damaged"),
    (lambda run, fdir: _drop_state(fdir), r"seed0-fold1"),
    (lambda run, fdir: (run / "config.yaml").unlink(), r"config\.yaml: missing"),
    (lambda run, fdir: (run / "config.yaml").write_text("a: [", encoding="utf-8"),
     r"config\.yaml: cannot read the run's config"),
], ids=["weights-deleted", "fold-deleted", "weights-truncated", "weights-emptied",
        "meta-corrupt", "state-deleted", "config-deleted", "config-corrupt"])
def test_case8_missing_or_damaged_fold_model_is_one_line_naming_it(
        trained, tmp_path, damage, match) -> None:  # noqa: F811 - fixture
    root, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    spec = _spec(root, _fake_ids(root)[0][:1], tmp_path)
    damage(run, run / "models" / "seed0-fold1")
    with pytest.raises(DataError, match=match) as exc:
        _score(run, spec, tmp_path / "out")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_case9_page_names_are_distinct_and_bounded(trained, tmp_path) -> None:  # noqa: F811
    from lungfuse.core.report.patient import page_names as _page_names

    _, run_dir = trained
    long_id = "L/" + "x" * 298
    ids = ["P/1", "P_1", "P:1", long_id]
    res = _score(run_dir, {"patients": [{"id": i} for i in ids]}, tmp_path / "o")
    pages = [s["page"] for s in res.patients]
    assert len(set(pages)) == len(ids)
    assert pages[1] == "patients/P_1.html"  # a plain id keeps its readable name
    index = (res.folder / "report.html").read_text(encoding="utf-8")
    for pid, page in zip(ids, pages, strict=True):
        assert len(Path(page).name) <= 80
        text = (res.folder / page).read_text(encoding="utf-8")
        assert f"patient {html.escape(pid)}" in text  # the page is this patient's own
        assert f"href='{page}'" in index
    # ids equal but for case get distinct names (case-insensitive file systems)
    names = _page_names(["Ab", "aB", "CON", ".hidden"])
    assert len({n.casefold() for n in names.values()}) == 4
    assert names["CON"] != "CON.html" and not names[".hidden"].startswith(".")


def test_case8_file_errors_of_loading_become_one_line_bugs_do_not(tmp_path, monkeypatch) -> None:
    """What escapes ``load_fold_model``: a file problem becomes one line naming the file; a
    programming error is not dressed up as a user error."""
    from lungfuse.core import folds
    from lungfuse.core.scoring import _load_fold

    state = tmp_path / "models" / "seed0-fold0" / "state.bin"

    def unreadable(*a, **k):
        raise PermissionError(13, "Permission denied", str(state))

    monkeypatch.setattr(folds, "load_fold_model", unreadable)
    with pytest.raises(DataError, match=r"state\.bin: cannot load fold model seed0-fold0 "
                                        r"\(PermissionError: Permission denied\)") as exc:
        _load_fold(tmp_path, 0, 0, None, None)
    assert "\n" not in str(exc.value)

    def bug(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(folds, "load_fold_model", bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _load_fold(tmp_path, 0, 0, None, None)

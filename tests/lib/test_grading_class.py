"""python -m course_lib.grading --class: a folder of learners graded into one table.

The command-line test grades a mixed class (solved, stub, hung and crashing at import,
one that edits the course, one folder that is no submission) on exercise 0.1, from a
copy of the course in tmp_path, since one of them edits the course it is graded from:
~30 s on 2 busy cores. The others are quick and grade nothing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _hostile import submission

from course_lib import grading, grading_class
from course_lib.grading_class import Status, find_learners

ROOT = Path(grading.__file__).resolve().parents[1]
MODULES = ["ch00_warmup", "ch01_lifecycle"]


def _course(tmp_path: Path) -> Path:
    copy = tmp_path / "course"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("course_lib", "tests/exercises", "exercises", "solutions"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    for file in ("pyproject.toml", "tests/conftest.py", "tests/_redis_server.py",
                 "tests/_redis_cluster.py"):
        shutil.copy(ROOT / file, copy / file)
    return copy


def _class(tmp_path: Path) -> Path:
    folder = tmp_path / "class"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "solutions", folder / "solved", ignore=ignore)  # the package itself
    shutil.copytree(ROOT / "exercises", folder / "stub" / "exercises", ignore=ignore)
    hung = submission(folder, "solved", who="hung") / "ch00_warmup.py"
    hung.write_text(hung.read_text() + "\nwhile True:\n    pass\n")
    submission(folder, "os_exit_at_import", who="crash")
    submission(folder, "edit_the_course", who="tamper")
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("not a submission")
    (folder / "eve.zip").write_bytes(b"PK")
    return folder


def test_a_mixed_class_is_graded_each_folder_on_its_own(tmp_path):
    course, submissions, out = _course(tmp_path), _class(tmp_path), tmp_path / "out"
    test_file = course / "tests" / "exercises" / "test_ch00_warmup.py"
    before = test_file.read_text()
    env = {**os.environ, "PYTHONPATH": str(course), "HOSTILE_COURSE": str(course)}
    cmd = [sys.executable, "-m", "course_lib.grading", "--class", str(submissions),
           "--exercise", "0.1", "--jobs", "2", "--out", str(out), "--json"]  # fmt: skip
    done = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert test_file.read_text() != before, "the tamperer edited the course it was graded from"

    graded = json.loads(done.stdout)
    assert graded == json.loads((out / "grades.json").read_text())
    rows = {row["learner"]: row for row in graded["learners"]}
    assert list(rows) == ["crash", "hung", "notes", "solved", "stub", "tamper"]
    assert graded["skipped"] == ["eve.zip"]
    cells = {name: row["cells"].get("0.1") for name, row in rows.items()}
    assert cells == {"crash": "0/7", "hung": "0/7", "notes": None, "solved": "solved",
                     "stub": "0/7", "tamper": "0/7"}  # fmt: skip
    assert rows["solved"]["package"] == str(submissions / "solved")
    assert rows["stub"]["package"] == str(submissions / "stub" / "exercises")
    assert "not implemented yet (0.1)" in rows["stub"]["note"]
    assert "hung/exercises/ch00_warmup.py took too long to import" in rows["hung"]["note"]
    assert "crash/exercises/ch00_warmup.py could not be imported" in rows["crash"]["note"]
    assert rows["notes"]["status"] == "not graded"
    assert "neither an exercises/ folder nor" in rows["notes"]["reason"]
    # Tampering is the tamperer's only; the others were graded with what the course was.
    assert rows["tamper"]["status"] == "tampering detected"
    assert rows["tamper"]["tampering"] == [
        "the course's tests/exercises/test_ch00_warmup.py changed"
    ], rows["tamper"]
    for name in ("crash", "hung", "solved", "stub"):
        assert rows[name]["status"] == "graded" and not rows[name]["tampering"], rows[name]
        assert rows[name]["seconds"] > 0

    table = list(csv.DictReader((out / "grades.csv").open(encoding="utf-8")))
    assert [(r["learner"], r["status"], r["0.1"]) for r in table] == [
        ("crash", "graded", "0/7"),
        ("hung", "graded", "0/7"),
        ("notes", "not graded", "error"),
        ("solved", "graded", "solved"),
        ("stub", "graded", "0/7"),
        ("tamper", "tampering detected", "0/7"),
    ]
    assert all(float(r["seconds"]) > 0 for r in table if r["status"] != "not graded")

    page = (out / "grades.html").read_text(encoding="utf-8")
    for name in rows:
        assert page.count(f"<tr><td>{name}</td>") == 1, name
    assert page.count("<details>") == len(rows)
    assert not re.search(r"https?:|<script|<link|src=|url\(", page), "self-contained"

    progress = [line for line in done.stderr.splitlines() if re.search(r"\[\d/5\]", line)]
    assert len(progress) == 5, done.stderr
    assert all(re.search(r"\d+\.\d s \(", line) for line in progress), progress
    assert "skipped eve.zip" in done.stderr and "not grading notes" in done.stderr


def test_a_learners_folder_holds_exercises_or_is_the_package(tmp_path):
    (tmp_path / "alice" / "exercises").mkdir(parents=True)
    (tmp_path / "alice" / "ch00_warmup.py").write_text("")  # exercises/ wins
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "ch01_lifecycle.py").write_text("")
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "__init__.py").write_text("")
    (tmp_path / "dan" / "course-main" / "exercises").mkdir(parents=True)
    (tmp_path / "dan" / "course-main" / "exercises" / "ch00_warmup.py").write_text("")
    (tmp_path / "erin").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "grades").mkdir()
    (tmp_path / "list.txt").write_text("")
    learners, skipped = find_learners(tmp_path, MODULES, out=tmp_path / "grades")
    found = {x.name: (x.package, x.status, x.reason) for x in learners}
    assert list(found) == ["alice", "bob", "carol", "dan", "erin"]
    assert found["alice"][0] == tmp_path / "alice" / "exercises"
    assert found["bob"][0] == tmp_path / "bob" and found["carol"][0] == tmp_path / "carol"
    for name in ("dan", "erin"):
        package, status, reason = found[name]
        assert package is None and status is Status.NOT_A_SUBMISSION
        assert reason.startswith("neither an exercises/ folder nor the course's modules")
    assert found["dan"][2].endswith("found course-main/exercises/: move it up a level")
    assert skipped == ["list.txt"]


def test_the_table_goes_beside_the_submissions_not_inside(tmp_path):
    assert grading_class.default_out(tmp_path / "class") == tmp_path / "class-grades"


def test_learner_names_cannot_inject_a_spreadsheet_formula_or_html(tmp_path):
    learner = grading_class.Learner("=cmd|'/c calc'!A1<i>", tmp_path, reason="-x")
    learner.status = Status.NOT_A_SUBMISSION
    report = grading_class.ClassReport(tmp_path, (), [learner], jobs=1)
    row = next(csv.DictReader(report.csv().splitlines()))
    assert row["learner"].startswith("'=") and row["note"] == "'-x"
    assert "<i>" not in report.html() and "&lt;i&gt;" in report.html()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--class", "{tmp}/nowhere"], "no such folder"),
        (["--class", "{tmp}"], "no folder in it"),
        (["--class", "{tmp}", "--jobs", "0"], "--jobs 0"),
        (["--class", "{tmp}", "--exercise", "9.9"], "unknown exercise '9.9'"),
        (["--class", "{tmp}", "--target", "solutions"], "leave --target out"),
        (["--jobs", "2"], "--out and --jobs go with --class"),
    ],
)
def test_usage_errors_exit_2_before_grading_anything(tmp_path, capsys, argv, said):
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        code = grading.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2
    assert said in capsys.readouterr().err


def _fake_report(tampering: tuple[str, ...] = ()) -> grading.GradeReport:
    exercise = grading.Exercise("0.1", "ch00_warmup")
    check = grading.Check("0.1", "works", True)
    return grading.GradeReport("x", (exercise,), (check,), tampering)


def test_a_grader_that_raises_for_one_folder_is_that_rows_error_only(tmp_path, monkeypatch):
    def grade(target, exercise_ids, **kwargs):
        if target.label.startswith("bob"):
            raise grading.GradingError("the grading run failed (pytest exit code 4):\nmore")
        return _fake_report()

    monkeypatch.setattr(grading, "grade", grade)
    for name in ("alice", "bob", "carol"):
        (tmp_path / name / "exercises").mkdir(parents=True)
    learners, _ = find_learners(tmp_path, MODULES)
    snapshot = grading_class.CourseSnapshot(tmp_path, {}, {})
    finished = []
    grading_class.grade_class(
        learners, ["0.1"], jobs=2, timeout_s=5, snapshot=snapshot,
        on_done=lambda learner, n, total: finished.append((learner.name, total)),
    )  # fmt: skip
    assert sorted(finished) == [("alice", 3), ("bob", 3), ("carol", 3)]
    status = {x.name: (x.status, x.cell("0.1")) for x in learners}
    assert status == {"alice": (Status.GRADED, "solved"), "bob": (Status.FAILED, "error"),
                      "carol": (Status.GRADED, "solved")}  # fmt: skip
    assert learners[1].reason == "GradingError: the grading run failed (pytest exit code 4):"


def _suspect(tmp_path: Path, name: str) -> grading_class.Learner:
    learner = grading_class.Learner(name, tmp_path / name, package=tmp_path / name)
    learner.report, learner.status = _fake_report(), Status.GRADED
    learner.course_changes = ["tests/exercises/test_ch00_warmup.py changed"]
    return learner


@pytest.mark.parametrize("repeats", [True, False])
def test_a_change_to_the_course_seen_by_two_runs_is_blamed_on_the_one_that_repeats_it(
    tmp_path, monkeypatch, repeats
):
    # Both were being graded when the course changed: each is graded again, alone.
    def grade_one(learner, *args):
        learner.course_changes = [] if learner.name == "alice" or not repeats else ["again"]

    monkeypatch.setattr(grading_class, "_grade_one", grade_one)
    alice, mallory = _suspect(tmp_path, "alice"), _suspect(tmp_path, "mallory")
    said = []
    grading_class._blame_course_changes([alice, mallory], ["0.1"], 5, None, None,
                                        grading_class.threading.Event(), said.append)  # fmt: skip
    assert said == ["the course's tests/exercises/test_ch00_warmup.py changed while alice, "
                    "mallory were graded: each again, alone, to tell which"]  # fmt: skip
    change = "the course's tests/exercises/test_ch00_warmup.py changed"
    if repeats:
        assert mallory.report.tampering == (change,) and mallory.status is Status.TAMPERED
        assert alice.report.tampering == () and alice.status is Status.GRADED
    else:  # neither did it again: both are named, and each row says it may be the other
        assert mallory.report.tampering == (f"{change} (while alice was graded too: one of "
                                            "them did it)",)  # fmt: skip
        assert alice.status is Status.TAMPERED is mallory.status


def test_an_interrupted_class_stops_the_runs_under_way_at_once(tmp_path):
    folder = submission(tmp_path, "solved", who="hung")
    module = folder / "ch00_warmup.py"
    module.write_text(module.read_text() + "\nwhile True:\n    pass\n")
    learners, _ = find_learners(tmp_path, MODULES)
    stop = grading_class.threading.Event()
    timer = grading_class.threading.Timer(1.0, stop.set)
    timer.start()
    try:
        grading_class.grade_class(learners, ["0.1"], jobs=1, timeout_s=60, stop=stop,
                                  snapshot=grading_class.CourseSnapshot.take(ROOT))  # fmt: skip
    finally:
        timer.cancel()
        timer.join()
    (learner,) = learners
    # Not "took too long to import", as a run left to its end (5 s) would say.
    assert learner.status is Status.INTERRUPTED and learner.cell("0.1") == "not run"
    assert learner.report is None and learner.reason == "grading was interrupted"

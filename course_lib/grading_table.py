"""The table of a graded class: one row per learner, as CSV, a self-contained HTML page, JSON.

    report = ClassReport(Path("submissions"), exercises, learners, jobs=2)
    report.csv()    # learner,status,solved,checks,seconds,0.1,...,note
    report.html()   # a row per learner, a collapsible row of its checks below it

A cell says ``solved``, checks passed of total (``3/5``), ``not run`` or ``error`` (the
folder could not be graded). Folder names and messages are the learners' text: escaped
in the page, and kept from starting a formula in a spreadsheet. The page fetches
nothing: its style is inline and it has no script.
"""

from __future__ import annotations

__all__ = ["ERROR", "NOT_RUN", "SOLVED", "ClassReport", "Learner", "Status"]

import csv
import dataclasses
import datetime
import enum
import html
import io
from pathlib import Path

from course_lib.grading import Exercise, GradeReport, Outcome


class Status(enum.Enum):
    """What became of one learner's folder."""

    GRADED = "graded"
    TAMPERED = "tampering detected"  # graded, but the run changed what it must not have
    NOT_A_SUBMISSION = "not graded"  # neither an exercises/ folder nor the package itself
    FAILED = "grading failed"  # the grader itself raised: a bug, or the machine
    INTERRUPTED = "interrupted"  # Ctrl-C before its run finished


# What a cell of the table says about one exercise of one learner.
SOLVED, NOT_RUN, ERROR = "solved", "not run", "error"


@dataclasses.dataclass
class Learner:
    """One row of the table: ``Learner("alice", Path("submissions/alice"))``, then graded."""

    name: str
    folder: Path
    package: Path | None = None  # the graded package: folder/exercises, or folder itself
    reason: str = ""  # why not graded, or what the grader raised
    status: Status = Status.INTERRUPTED
    report: GradeReport | None = None
    seconds: float = 0.0
    # When its run began and ended (time.time()), and the course's files then.
    window: tuple[float, float] = (0.0, 0.0)
    course_changes: list[str] = dataclasses.field(default_factory=list)

    def cell(self, exercise_id: str) -> str:
        """``solved``, ``3/5`` (checks passed of counted), ``not run`` or ``error``."""
        if self.status in (Status.NOT_A_SUBMISSION, Status.FAILED):
            return ERROR
        if self.report is None:
            return NOT_RUN
        counted = [
            c for c in self.report.checks_of(exercise_id) if c.outcome is not Outcome.SKIPPED
        ]
        if not counted or all(c.outcome is Outcome.NOT_RUN for c in counted):
            return NOT_RUN
        if self.report.solved(exercise_id):
            return SOLVED
        return f"{sum(c.passed for c in counted)}/{len(counted)}"

    @property
    def tampering(self) -> tuple[str, ...]:
        return self.report.tampering if self.report is not None else ()

    def note(self) -> str:
        """One line: why it was not graded, what it tampered with, or what failed whole."""
        if self.status is Status.TAMPERED:
            return "tampering detected: " + "; ".join(self.tampering)
        if self.report is None:
            return self.reason
        # A message every check of an exercise shares says what is wrong with it
        # ("…/ch03_scheduling.py took too long to import"): once, with its exercises.
        shared: dict[str, list[str]] = {}
        for exercise in self.report.exercises:
            checks = [c for c in self.report.checks_of(exercise.id) if not c.passed]
            messages = {c.message for c in checks}
            if checks and len(messages) == 1 and not self.report.solved(exercise.id):
                shared.setdefault(messages.pop() or "failed", []).append(exercise.id)
        return "; ".join(f"{message} ({', '.join(ids)})" for message, ids in shared.items())

    def to_json(self) -> dict:
        report = self.report
        return {
            "learner": self.name,
            "folder": str(self.folder),
            "package": str(self.package) if self.package else None,
            "status": self.status.value,
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
            "solved": sum(self.cell(e.id) == SOLVED for e in report.exercises) if report else 0,
            "passed": report.passed if report else 0,
            "total": report.total if report else 0,
            "tampering": list(self.tampering),
            "note": self.note(),
            "cells": {e.id: self.cell(e.id) for e in report.exercises} if report else {},
            "report": report.to_json() if report else None,
        }


@dataclasses.dataclass
class ClassReport:
    """Every learner of a class, graded: ``.csv()``, ``.html()``, ``.to_json()``."""

    submissions: Path
    exercises: tuple[Exercise, ...]
    learners: list[Learner]
    jobs: int
    seconds: float = 0.0
    skipped: list[str] = dataclasses.field(default_factory=list)  # files, not folders
    interrupted: bool = False
    started: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds")
    )

    def row(self, learner: Learner) -> dict[str, str]:
        report = learner.report
        solved = sum(learner.cell(e.id) == SOLVED for e in self.exercises)
        return {
            "learner": learner.name,
            "status": learner.status.value,
            "solved": f"{solved}/{len(self.exercises)}" if report else "",
            "checks": f"{report.passed}/{report.total}" if report else "",
            "seconds": f"{learner.seconds:.1f}" if learner.package else "",
            **{e.id: learner.cell(e.id) for e in self.exercises},
            "note": learner.note(),
        }

    def csv(self) -> str:
        out = io.StringIO()
        columns = [
            "learner",
            "status",
            "solved",
            "checks",
            "seconds",
            *(e.id for e in self.exercises),
            "note",
        ]
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        for learner in self.learners:
            row = self.row(learner)
            # A folder name or a message is the learner's text: a spreadsheet must not
            # run "=HYPERLINK(...)" from it.
            for key in ("learner", "note"):
                if row[key][:1] in ("=", "+", "-", "@", "\t", "\r"):
                    row[key] = "'" + row[key]
            writer.writerow(row)
        return out.getvalue()

    def to_json(self) -> dict:
        return {
            "submissions": str(self.submissions),
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "jobs": self.jobs,
            "interrupted": self.interrupted,
            "exercises": [
                {"id": e.id, "title": e.title, "module": e.module} for e in self.exercises
            ],
            "learners": [learner.to_json() for learner in self.learners],
            "skipped": self.skipped,
        }

    def html(self) -> str:
        return _html(self)


# --- the page ----------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1f2328}
table{border-collapse:collapse}th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left}
th{background:#f6f8fa;position:sticky;top:0}td.c{text-align:center;white-space:nowrap}
.solved{background:#dafbe1}.part{background:#fff8c5}.zero{background:#ffebe9}
.notrun{color:#6e7781}.error{background:#cf222e;color:#fff}
tr.more td{border-top:none;padding:0 7px 3px 24px}summary{cursor:pointer;color:#57606a}
.checks td{border:none;padding:1px 6px}.pass{color:#1a7f37}.fail{color:#cf222e}
.bad{color:#cf222e;font-weight:bold}
"""


def _cell_class(cell: str) -> str:
    if cell == SOLVED:
        return "solved"
    if cell == NOT_RUN:
        return "notrun"
    if cell == ERROR:
        return "error"
    return "zero" if cell.startswith("0/") else "part"


def _html(report: ClassReport) -> str:
    e = html.escape
    ids = [x.id for x in report.exercises]
    head = "".join(f'<th title="{e(x.title)}">{e(x.id)}</th>' for x in report.exercises)
    rows = []
    for learner in report.learners:
        row = report.row(learner)
        status = e(row["status"])
        if learner.status is not Status.GRADED:
            status = f'<span class="bad">{status}</span>'
        seconds = f"{row['seconds']} s" if row["seconds"] else ""
        cells = "".join(f'<td class="c {_cell_class(row[i])}">{e(row[i])}</td>' for i in ids)
        rows.append(
            f"<tr><td>{e(learner.name)}</td><td>{status}</td><td class=c>{e(row['solved'])}</td>"
            f"<td class=c>{e(row['checks'])}</td><td class=c>{e(seconds)}</td>{cells}</tr>"
        )
        rows.append(f'<tr class="more"><td colspan="{5 + len(ids)}">{_details(learner)}</td></tr>')
    meta = (
        f"{len(report.learners)} folders, exercises {', '.join(ids)}; graded {report.started} "
        f"with {report.jobs} jobs in {report.seconds:.0f} s"
    )
    if report.interrupted:
        meta += "; INTERRUPTED: the folders not graded yet say so"
    if report.skipped:
        meta += f"; skipped (not folders): {', '.join(report.skipped)}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Grades: {e(report.submissions.name)}</title><style>{_CSS}</style></head>"
        f"<body><h1>Grades: {e(str(report.submissions))}</h1><p>{e(meta)}</p>"
        "<p>A cell: <b>solved</b>, checks passed of total, <b>not run</b>, or <b>error</b> "
        "(the folder could not be graded). Click a learner's line below the row for every "
        "check.</p>"
        f"<table><thead><tr><th>learner</th><th>status</th><th>solved</th><th>checks</th>"
        f"<th>time</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</body></html>\n"
    )


def _details(learner: Learner) -> str:
    e = html.escape
    note = learner.note()
    summary = f"{learner.name}: {note}" if note else f"{learner.name}: every check"
    body = []
    if learner.report is not None:
        for exercise in learner.report.exercises:
            title = f" · {exercise.title}" if exercise.title else ""
            body.append(
                f'<tr><th colspan="3">{e(exercise.id + title)}: '
                f"{e(learner.cell(exercise.id))}</th></tr>"
            )
            for c in learner.report.checks_of(exercise.id):
                mark = "–" if c.outcome is Outcome.SKIPPED else ("✓" if c.passed else "✗")
                body.append(
                    f'<tr><td class="{"pass" if c.passed else "fail"}">{mark}</td>'
                    f"<td>{e(c.description)}</td><td>{e(c.message)}</td></tr>"
                )
    else:
        body.append(f"<tr><td>{e(learner.reason)}</td></tr>")
    return (
        f"<details><summary>{e(summary)}</summary>"
        f'<table class="checks">{"".join(body)}</table></details>'
    )

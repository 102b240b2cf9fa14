"""docs/WORKSHOP.md stays true to the course: its times, its sums, what it names.

The agenda's times come from README's chapter table; when a chapter's time changes
there (chapter 4's may), the first test fails and says which plan to redo.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENDA = ROOT / "docs" / "WORKSHOP.md"
SLOT = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
EXERCISE_ID = re.compile(r"\b(\d)\.(\d+)\b")


def _load_build_site():
    spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
    module = sys.modules.setdefault("build_site", importlib.util.module_from_spec(spec))
    if not hasattr(module, "chapter_table"):
        spec.loader.exec_module(module)
    return module


def _minutes(text: str) -> int:
    """'1 h 50 min', '75 min', '1 h 50', 'none' -> minutes."""
    text = text.strip()
    if text == "none":
        return 0
    found = re.fullmatch(r"(?:(\d+) h)?\s*(?:(\d+)(?: min)?)?", text)
    assert found and text, f"not a duration: {text!r}"
    return int(found[1] or 0) * 60 + int(found[2] or 0)


def _readme_times() -> dict[int, tuple[int, int]]:
    """Chapter number -> (core, going deeper) minutes, for the chapters with a notebook."""
    times = {}
    for chapter in _load_build_site().chapter_table((ROOT / "README.md").read_text()):
        if chapter.notebook:
            found = re.fullmatch(r"(.+?)(?: \(\+(.+) optional\))?", chapter.time)
            times[int(chapter.number)] = (_minutes(found[1]), _minutes(found[2] or "none"))
    return times


def _tables() -> list[tuple[str, list[list[str]]]]:
    """(the heading above it, its rows as cells, header first) for each table."""
    tables, heading, rows = [], "", []
    for line in [*AGENDA.read_text().splitlines(), ""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(\s*-+\s*\|)+", line):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if rows:
            tables.append((heading, rows))
            rows = []
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
    return tables


def _plans() -> dict[str, list[list[str]]]:
    return {heading: rows[1:] for heading, rows in _tables() if rows[0][:2] == ["time", "min"]}


def _chapter_rows(rows: list[list[str]], kind: str) -> dict[int, int]:
    """Chapter number -> minutes, summed over the plan's "Chapter N <kind>" rows."""
    found: dict[int, int] = {}
    for row in rows:
        if match := re.match(rf"Chapter (\d) {kind}\b", row[2]):
            found[int(match[1])] = found.get(int(match[1]), 0) + int(row[1])
    return found


def test_the_chapter_times_are_the_readme_s():
    _, rows = next(t for t in _tables() if t[1][0][0] == "chapter")
    agenda = {int(r[0]): (_minutes(r[1]), _minutes(r[2])) for r in rows[1:]}
    readme = _readme_times()
    assert agenda.keys() == readme.keys(), "the agenda's chapters are not README's"
    for number, times in readme.items():
        assert agenda[number] == times, (
            f"README now gives chapter {number} {times[0]} min (+{times[1]} optional); "
            f"docs/WORKSHOP.md says {agenda[number]}: redo its plans"
        )


def test_there_is_a_one_day_and_a_two_day_plan_and_the_two_days_cover_every_chapter():
    plans = _plans()
    assert [h for h in plans if h.startswith("One day")], list(plans)
    days = [rows for heading, rows in plans.items() if heading.startswith("Day ")]
    assert len(days) == 2, list(plans)
    covered = {n for rows in days for n in _chapter_rows(rows, "core")}
    assert covered == set(_readme_times())


@pytest.mark.parametrize("heading", list(_plans()))
def test_a_plan_runs_without_gaps_and_its_minutes_add_up(heading: str):
    rows = _plans()[heading]
    previous_end = None
    for time, minutes, *_ in rows:
        slot = SLOT.match(time)
        assert slot, f"{heading}: {time!r} is not HH:MM-HH:MM"
        start = int(slot[1]) * 60 + int(slot[2])
        end = int(slot[3]) * 60 + int(slot[4])
        assert end - start == int(minutes), f"{heading}: {time} is not {minutes} min"
        assert previous_end in (None, start), f"{heading}: a gap or an overlap before {time}"
        previous_end = end


@pytest.mark.parametrize("heading", list(_plans()))
def test_a_plan_gives_a_chapter_its_core_time_and_no_more_optional_than_it_has(heading: str):
    rows, readme = _plans()[heading], _readme_times()
    for number, minutes in _chapter_rows(rows, "core").items():
        assert minutes >= readme[number][0], f"{heading}: chapter {number} core in {minutes} min"
    for number, minutes in _chapter_rows(rows, "going deeper").items():
        assert minutes <= readme[number][1], f"{heading}: chapter {number}: {minutes} min optional"


def _exercise_ids() -> set[str]:
    found = set()
    for module in (ROOT / "exercises").glob("ch*.py"):
        found |= set(re.findall(r"\bExercise (\d+\.\d+)\b", module.read_text()))
    return found


def test_every_exercise_the_agenda_names_exists_and_sits_in_its_chapter_s_block():
    exists = _exercise_ids()
    assert {"0.1", "5.3"} <= exists  # the pattern reads the stubs
    for heading, rows in _plans().items():
        for row in rows:
            for chapter, number in EXERCISE_ID.findall(row[3]):
                assert f"{chapter}.{number}" in exists, f"{heading}: no exercise {chapter}.{number}"
                assert row[2].startswith(f"Chapter {chapter} "), (
                    f"{heading}: exercise {chapter}.{number} in the block {row[2]!r}"
                )
    prose = AGENDA.read_text()
    for named in re.findall(r"\b(?:exercises?|exercise) (\d\.\d+)", prose):
        assert named in exists, f"docs/WORKSHOP.md names exercise {named}, which does not exist"


def test_every_link_file_and_make_target_the_agenda_names_exists():
    text = AGENDA.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", target):
            assert (AGENDA.parent / target).resolve().is_file(), f"broken link {target}"
    for named in re.findall(r"`(?:%load )?([\w./-]+/[\w.-]+\.(?:ipynb|py|md|yml|toml))`", text):
        if "chNN" not in named:  # the pattern, not a file
            path = ROOT / named.removeprefix("../")
            assert path.is_file(), f"docs/WORKSHOP.md names {named}, which does not exist"
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"`make (\w[\w-]*)", text):
        assert target in targets, f"docs/WORKSHOP.md names `make {target}`, not in the Makefile"

"""What a grading run is graded with, copied fresh and read-only for each submission.

Student code runs as the teacher, with the teacher's files: it could patch the
grading plugin, edit the course's tests or delete a model answer, and the next
submission would be graded with what it left. So each run gets its own copy of the
grading tests and the course library, made read-only, and runs from there; after
the run, the copy and the course itself are compared with what was copied.

    snapshot = CourseSnapshot.take(root)          # once (a class: once for all)
    with tempfile.TemporaryDirectory() as tmp:
        course = snapshot.materialize(Path(tmp))  # tests/exercises, course_lib, ...
        ...                                       # run pytest from `course`
        snapshot.changes(course)                  # ["tests/exercises/test_x.py changed"]
    snapshot.changes()                            # what the run did to the course itself

Read-only stops careless code, not a determined one (it can chmod the files back):
what was changed is detected and reported, and README says how to grade untrusted
folders in a container.
"""

from __future__ import annotations

__all__ = ["CourseSnapshot"]

import dataclasses
import hashlib
import os
import shutil
import stat
from pathlib import Path

# What a run is graded with: (folder or file, relative to the course root, whole tree?).
# tests/*.py are the conftest and its plugins, not the other test suites under tests/.
_GRADED_WITH = (
    ("course_lib", True),
    ("tests/exercises", True),
    ("tests", False),
    ("pyproject.toml", False),
)
# What a run must leave alone but does not use: checked after the run, not copied.
_LEFT_ALONE = ("solutions", "exercises")
_SKIP_DIRS = {"__pycache__", ".pytest_cache"}


@dataclasses.dataclass(frozen=True)
class CourseSnapshot:
    """The bytes of the files a grading run uses (and must not change), read once.

        snapshot = CourseSnapshot.take(Path("."))
        sorted(snapshot.copied)[:1]  # ['course_lib/__init__.py']
    """

    root: Path
    copied: dict[str, bytes]  # relative path -> content, materialized for each run
    watched: dict[Path, str]  # original file -> sha256 of what must not change (copied too)

    @classmethod
    def take(cls, root: Path, *, lib: Path | None = None, tests: Path | None = None,
             skip: Path | None = None) -> CourseSnapshot:  # fmt: skip
        """Read the course at ``root``; ``lib``, ``tests``: the course_lib and grading
        tests to use instead of root's; ``skip``: a folder not to watch (the target)."""
        root = Path(root).resolve()
        lib = Path(lib or root / "course_lib").resolve()
        tests = Path(tests or root / "tests" / "exercises").resolve()
        sources = {"course_lib": lib, "tests/exercises": tests, "tests": tests.parent,
                   "pyproject.toml": root / "pyproject.toml"}  # fmt: skip
        copied: dict[str, bytes] = {}
        watched: dict[Path, str] = {}
        for name, whole in _GRADED_WITH:
            for rel, path in _files(sources[name], whole, py_only=name == "tests"):
                copied[f"{name}/{rel}" if rel else name] = data = path.read_bytes()
                watched[path] = _digest(data)
        skip = Path(skip).resolve() if skip else None
        for name in _LEFT_ALONE:
            folder = root / name
            if skip is not None and folder.resolve() == skip:
                continue
            for _rel, path in _files(folder, True):
                watched[path] = _digest(path.read_bytes())
        return cls(root, copied, watched)

    def materialize(self, where: Path) -> Path:
        """Write the copied files under ``where``, read-only; returns ``where``."""
        folders = set()
        for rel, data in self.copied.items():
            path = where / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o444)
            folders.update(p for p in path.parents if p.is_relative_to(where) and p != where)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            folder.chmod(0o555)
        return where

    def changes(self, where: Path | None = None) -> list[str]:
        """What differs from the snapshot: "tests/exercises/test_x.py changed".

        ``where``: a materialized copy (nothing may be added to it either); None: the
        course's own files the snapshot was read from.
        """
        if where is None:
            expected = {_shown(path, self.root): (path, d) for path, d in self.watched.items()}
        else:
            expected = {rel: (where / rel, _digest(data)) for rel, data in self.copied.items()}
        found: list[str] = []
        for shown, (path, digest) in expected.items():
            try:
                now = _digest(path.read_bytes())
            except OSError:
                found.append(f"{shown} deleted")
                continue
            if now != digest:
                found.append(f"{shown} changed")
        if where is not None:
            for folder in ("course_lib", "tests/exercises"):
                for rel, _ in _files(where / folder, True):
                    if f"{folder}/{rel}" not in expected:
                        found.append(f"{folder}/{rel} added")
        return found


def remove(where: Path) -> None:
    """Delete a materialized copy, read-only as it is."""

    for folder, dirs, _files_here in os.walk(where):
        os.chmod(folder, stat.S_IRWXU)
        for d in dirs:
            try:
                os.chmod(os.path.join(folder, d), stat.S_IRWXU)
            except OSError:
                pass
    shutil.rmtree(where, ignore_errors=True)


def _files(base: Path, whole: bool, *, py_only: bool = False):
    if base.is_file():
        yield "", base
        return
    if not base.is_dir():
        return
    paths = base.rglob("*") if whole else base.glob("*")
    for path in sorted(paths):
        if not path.is_file() or _SKIP_DIRS.intersection(path.relative_to(base).parts):
            continue
        if path.suffix == ".pyc" or (py_only and path.suffix != ".py"):
            continue
        yield path.relative_to(base).as_posix(), path


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Careless and hostile submissions, for the grader's tests (and a class of them).

Each case is a copy of the model answers (solutions/) with one thing done to it: a
line appended to a module, a module removed. ``submission(tmp_path, "exit_at_import")``
returns the folder, named ``exercises`` as a learner hands it in.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# case -> (module, code appended at its end); None: the module is removed.
CASES: dict[str, tuple[str, str | None]] = {
    "solved": ("ch00_warmup", ""),
    "missing_module": ("ch04_distributed", None),
    "sys_exit_at_import": ("ch00_warmup", "import sys\nsys.exit(0)\n"),
    "base_exception_at_import": ("ch00_warmup", "raise BaseException('bye')\n"),
    "keyboard_interrupt_at_import": ("ch00_warmup", "raise KeyboardInterrupt\n"),
    "os_exit_at_import": ("ch00_warmup", "import os\nos._exit(0)\n"),
    # Counts its imports in $HOSTILE_IMPORTS (a file), then spins.
    "hang_at_import": (
        "ch03_scheduling",
        """
        import os as _os
        if _os.environ.get("HOSTILE_IMPORTS"):
            with open(_os.environ["HOSTILE_IMPORTS"], "a") as _f:
                _f.write("imported\\n")
        while True:
            pass
        """,
    ),
    # Spins and swallows every exception, the grader's timeout too.
    "stuck_at_import": (
        "ch03_scheduling",
        """
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
        """,
    ),
    # Trust (issue 13): code that changes what it, or the next submission, is graded
    # with. Appended to a stub (exercises/), so that a forged pass shows.
    "patch_recorder": (
        "ch00_warmup",
        """
        import os as _os, sys as _sys
        _plugin = _sys.modules["course_lib._grading_plugin"].__file__
        _os.chmod(_plugin, 0o644)
        with open(_plugin, "a") as _f:
            _f.write(
                "\\n_Recorder._update = lambda self, row, item, call, report: "
                "row.update(outcome='passed', message='')\\n"
            )
        """,
    ),
    "atexit_forges_rows": (
        "ch00_warmup",
        """
        import atexit as _atexit, json as _json, os as _os, sys as _sys
        _argv = _sys.argv
        _path = _argv[_argv.index("--grading-json") + 1] if "--grading-json" in _argv else None
        _fds = [int(a.split("=", 1)[1]) for a in _argv if a.startswith("--grading-fd=")]
        _dup = _os.dup(_fds[0]) if _fds else None

        def _forge():
            if _path:
                with open(_path) as f:
                    data = _json.load(f)
                for row in data["tests"]:
                    row.update(outcome="passed", message="")
                data["current"] = None
                with open(_path, "w") as f:
                    _json.dump(data, f)
            if _dup is not None:
                forged = {"tests": [], "collection_errors": [], "current": None, "final": True}
                _os.write(_dup, (_json.dumps(forged) + "\\n").encode())

        _atexit.register(_forge)
        """,
    ),
    "edit_tests_delete_solution": (
        "ch00_warmup",
        """
        import os as _os, sys as _sys
        from pathlib import Path as _Path
        _tests = _Path(_sys.modules["_support"].__file__).with_name("test_ch00_warmup.py")
        _os.chmod(_tests, 0o644)
        _tests.write_text(
            'import pytest\\nMODULE = "ch00_warmup"\\npytestmark = pytest.mark.exercise("0.1")\\n'
            + "".join(f"def test_{i}():\\n    pass\\n" for i in range(7))
        )
        _course = _Path(_sys.modules["course_lib"].__file__).parents[1]
        (_course / "solutions" / "ch00_warmup.py").unlink(missing_ok=True)
        """,
    ),
    # Knows where the course is ($HOSTILE_COURSE) and edits its tests there.
    "edit_the_course": (
        "ch00_warmup",
        """
        import os as _os
        from pathlib import Path as _Path
        _tests = _Path(_os.environ["HOSTILE_COURSE"]) / "tests/exercises/test_ch00_warmup.py"
        _tests.write_text(_tests.read_text().replace("assert ", "assert True or "))
        """,
    ),
}
STUB_CASES = {"patch_recorder", "atexit_forges_rows", "edit_tests_delete_solution",
              "edit_the_course"}  # fmt: skip


def submission(tmp_path: Path, case: str, who: str | None = None) -> Path:
    """A copy of solutions/ (of the stubs for STUB_CASES) with ``case`` done to it:
    ``<tmp_path>/<who>/exercises``."""
    module, code = CASES[case]
    folder = tmp_path / (who or case) / "exercises"
    source = ROOT / ("exercises" if case in STUB_CASES else "solutions")
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / f"{module}.py"
    if code is None:
        path.unlink()
    elif code:
        path.write_text(path.read_text() + "\n" + textwrap.dedent(code))
    return folder

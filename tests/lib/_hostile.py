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
}


def submission(tmp_path: Path, case: str, who: str | None = None) -> Path:
    """A copy of solutions/ with ``case`` done to it: ``<tmp_path>/<who>/exercises``."""
    module, code = CASES[case]
    folder = tmp_path / (who or case) / "exercises"
    shutil.copytree(ROOT / "solutions", folder, ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / f"{module}.py"
    if code is None:
        path.unlink()
    elif code:
        path.write_text(path.read_text() + "\n" + textwrap.dedent(code))
    return folder

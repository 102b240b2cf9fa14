"""The pytest side of ``course_lib.grading``: record each grading test as a human row.

``course_lib.grading`` runs pytest in a subprocess with ``-p course_lib._grading_plugin``;
this plugin keeps only the tests of the requested exercises and writes, after every
test, a JSON file of rows the learner can read: the check's description (the first
line of the test's docstring), its outcome, and a one-line message shaped by
:func:`human_message` (never a traceback, never the test's source).

    python -m pytest tests/exercises -p course_lib._grading_plugin \\
        --target exercises --exercise 0.1 --grading-json /tmp/rows.json

The grader reads the rows from a pipe (``--grading-fd``) rather than a file: a file's
path is in ``sys.argv``, where the code under test could find it and rewrite it at
exit. Each message is one line of JSON, the whole state; the last says ``"final"``.

Each graded module is imported once, before the first of its checks and under that
check's time bound, whatever it does at import (``sys.exit()``, ``os._exit()``, a loop
that never ends): the checks of a module that does not import fail at once with why,
and the other modules are graded as usual.
"""

from __future__ import annotations

__all__ = [
    "NOT_IMPLEMENTED",
    "TOO_LONG",
    "UNEXPECTED",
    "human_message",
    "hung_message",
    "import_hung_message",
    "import_message",
]

import gc
import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

from course_lib.grading import NOT_IMPLEMENTED, TOO_LONG, UNEXPECTED, hung_message

_MAX_MESSAGE = 160
# pytest-timeout's signal method fails the test with this text (PYTEST_FAILURE_MESSAGE,
# "Timeout (>5.0s) from pytest-timeout.").
_PYTEST_TIMEOUT_TEXT = "from pytest-timeout"
_PYTEST_TIMEOUT_BOUND = re.compile(r"Timeout \(>([0-9.]+)s\)")
# pytest-timeout raises its exception once, wherever the main thread is. In an event
# loop that may be a task the check started, which keeps it as its result, and the
# check goes on hanging. Raised again at this interval until it reaches the check.
_TIMEOUT_REPEAT_S = 0.5
# looptime raises these (subclasses of TimeoutError) when virtual time runs out or the
# loop sits idle: the code under test waits for something that never comes.
_LOOPTIME_TIMEOUTS = {"IdleTimeoutError", "LoopTimeoutError"}


# --- message shaping: pure functions, unit-tested in tests/lib/test_grading.py ----------


def human_message(exc: BaseException, *, raised_by_learner: bool = False) -> str:
    """One line that tells a learner what went wrong, without a traceback.

    ``raised_by_learner``: the exception left the learner's own code (the graded
    package), so even an AssertionError is reported as an exception it raised.
    """
    bound = _real_time_bound(exc)
    if bound is not None:
        return hung_message(bound)
    if _is_timeout(exc):
        return TOO_LONG
    if _is_not_implemented(exc):
        return NOT_IMPLEMENTED
    if isinstance(exc, AssertionError) and not raised_by_learner:
        return _assertion_message(exc)
    if isinstance(exc, pytest.fail.Exception):
        text = _first_line(exc.msg or "") or UNEXPECTED
        # pytest.raises() failing: "DID NOT RAISE ValueError" reads as shouting.
        if text.startswith("DID NOT RAISE"):
            text = "did not raise" + text.removeprefix("DID NOT RAISE")
        return _shorten(text)
    if isinstance(exc, pytest.skip.Exception):
        return _shorten(f"skipped: {_first_line(exc.msg or '')}")
    return _shorten(f"raised {_exception_summary(exc)}")


def import_hung_message(path: str, bound_s: float) -> str:
    """The rows of a module whose import was stopped after ``bound_s`` seconds."""
    return _shorten(
        f"{path} took too long to import: stopped after {bound_s:g} s. Does it run a loop "
        "or wait for something when imported?"
    )


def import_message(
    exc: BaseException, path: str, *, module: str = "", line: int | None = None
) -> str:
    """Why ``path``, the learner's module ``module``, could not be imported, in one line."""
    if isinstance(exc, SyntaxError):
        return _shorten(f"{path} has a syntax error on line {exc.lineno}: {exc.msg}")
    # Missing is the module itself or its package; a missing library it imports is not.
    if (
        isinstance(exc, ModuleNotFoundError)
        and exc.name
        and f"{module}.".startswith(f"{exc.name}.")
    ):
        return _shorten(f"{path} was not found")
    where = f" (line {line})" if line else ""
    return _shorten(f"{path} could not be imported{where}: it raised {_exception_summary(exc)}")


def _assertion_message(exc: AssertionError) -> str:
    # pytest's assertion rewriting turns `assert x == y, "msg"` into "msg\nassert x == y
    # ..." and a bare `assert x == y` into "assert x == y\n + where ...": the learner
    # wants the test author's words, not the introspection.
    text = _first_line(str(exc))
    if not text or text.startswith("assert ") or text == "assert":
        return UNEXPECTED
    return _shorten(text)


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _chain(exc: BaseException):
    # The exception itself, then what it was raised from or during, a few levels deep.
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_not_implemented(exc: BaseException) -> bool:
    return any(isinstance(leaf, NotImplementedError) for e in _chain(exc) for leaf in _leaves(e))


def _is_timeout(exc: BaseException) -> bool:
    for leaf in _leaves(exc):
        if type(leaf).__name__ in _LOOPTIME_TIMEOUTS:
            return True
        if isinstance(leaf, pytest.fail.Exception) and _PYTEST_TIMEOUT_TEXT in (leaf.msg or ""):
            return True
    return False


def _real_time_bound(exc: BaseException) -> float | None:
    """The bound in seconds when pytest-timeout stopped the check, else None."""
    for leaf in _leaves(exc):
        text = (leaf.msg or "") if isinstance(leaf, pytest.fail.Exception) else ""
        if _PYTEST_TIMEOUT_TEXT in text:
            found = _PYTEST_TIMEOUT_BOUND.search(text)
            return float(found[1]) if found else 0.0
    return None


def _exception_summary(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        more = f" and {len(leaves) - 1} more" if len(leaves) > 1 else ""
        inner = _exception_summary(leaves[0]) if leaves else "nothing"
        return f"{type(exc).__name__} of {inner}{more}"
    text = _first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


# --- pinning a submitted folder as the target package -----------------------------------


class _OnlyFrom:
    """A meta path finder: the submodules of ``name`` come from its own folder, or not at all.

    The editable install's finder maps ``exercises`` to the course's checkout by name:
    without this, a module missing from a submitted folder is imported from there, and
    the teacher's copy is graded instead.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith(f"{self.name}."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return spec


def _pin_package(name: str, folder: Path) -> None:
    """Import the package ``name`` from ``folder``, whatever else sys.path holds.

    A teacher grades ``submissions/alice/exercises``: its name is ``exercises``, like
    the repository's own package, which the current directory (``python -m`` puts it
    first on sys.path) and the editable install would find first. Putting the module
    in sys.modules ourselves makes ``import exercises.ch00_warmup`` look in ``folder``
    only, since submodules are searched in the parent package's ``__path__``.
    """
    if name in sys.modules:
        raise pytest.UsageError(
            f"cannot grade the folder {folder}: its name {name!r} is already used by "
            f"the module {sys.modules[name]!r}; rename the folder"
        )
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(folder)]
        )
    else:  # a folder of loose modules works too, as a namespace package of one folder
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.meta_path.insert(0, _OnlyFrom(name))
    if spec.loader is not None:
        spec.loader.exec_module(module)


# --- the plugin -----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grading", "course_lib.grading")
    group.addoption(
        "--exercise",
        action="append",
        default=[],
        metavar="ID",
        help="run only the grading tests of exercise ID (repeatable)",
    )
    group.addoption(
        "--grading-json",
        default=None,
        metavar="FILE",
        help="write one row per grading test to FILE (rewritten after each test)",
    )
    group.addoption(
        "--grading-after-hang-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="once a check of an exercise hung (pytest-timeout stopped it), stop that "
        "exercise's later checks after S seconds instead (0: the usual timeout)",
    )
    group.addoption(
        "--grading-package-dir",
        default=None,
        metavar="DIR",
        help="import the --target package from DIR (a submitted copy of exercises/)",
    )
    group.addoption(
        "--grading-fd",
        type=int,
        default=None,
        metavar="FD",
        help="write the rows to file descriptor FD, one JSON line per change (the grader's pipe)",
    )
    group.addoption(
        "--grading-skip-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="leave out the grading tests of MODULE (the grader has their rows already)",
    )
    group.addoption(
        "--grading-label",
        default=None,
        metavar="PATH",
        help="the graded folder as the learner knows it, for messages (PATH/ch00_warmup.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers it too; this keeps a stand-alone tests dir strict-clean.
    config.addinivalue_line("markers", "exercise(id): the exercise a grading test belongs to")
    folder = config.getoption("--grading-package-dir")
    if folder:
        _pin_package(config.getoption("--target"), Path(folder).resolve())
    if (
        config.getoption("--exercise")
        or config.getoption("--grading-json")
        or config.getoption("--grading-fd") is not None
    ):
        recorder = _Recorder(config)
        config.pluginmanager.register(recorder, "course-grading-recorder")
        config.pluginmanager.register(_ImportFirst(recorder), "course-grading-import-first")


class _ImportFirst:
    """The recorder's plain (not wrapper) pytest_runtest_protocol: one name, one per plugin."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem) -> bool | None:
        # Inside every wrapper, pytest-timeout's too: the import has the check's bound.
        return self.recorder.import_first(item)


class _Recorder:
    """Keep the requested exercises' tests and write their rows as JSON.

    The file also says which check runs now (``current``, with the bound pytest-timeout
    stops it at), so that the grader can tell the learner while it runs. Once a check of
    an exercise has hung, that exercise's later checks get the shorter
    ``--grading-after-hang-timeout``: code that hangs in one check tends to hang in
    the next ones too, and each would otherwise be waited in full.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.wanted = set(config.getoption("--exercise"))
        self.path = config.getoption("--grading-json")
        self.fd: int | None = config.getoption("--grading-fd")
        self.pid = os.getpid()  # a fork of this process (the code under test's) never writes
        self.skip_modules = set(config.getoption("--grading-skip-module"))
        self.label = config.getoption("--grading-label")
        self.imported: dict[str, str | None] = {}  # module -> why it does not import, or None
        self.target = config.getoption("--target")
        self.after_hang_s = config.getoption("--grading-after-hang-timeout")
        self.rows: dict[str, dict[str, Any]] = {}
        self.collection_errors: list[dict[str, str]] = []
        self.hung: set[str | None] = set()  # exercises with a check that hung
        self.current: dict[str, Any] | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list) -> None:
        kept, dropped = [], []
        for item in items:
            mark = item.get_closest_marker("exercise")
            exercise = str(mark.args[0]) if mark and mark.args else None
            module = getattr(getattr(item, "module", None), "MODULE", None)
            if (self.wanted and exercise not in self.wanted) or module in self.skip_modules:
                dropped.append(item)
                continue
            kept.append(item)
            self.rows[item.nodeid] = {
                "test": item.nodeid,
                "exercise": exercise,
                "module": module,
                "description": _description(item),
                "outcome": None,
                "message": "",
            }
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
        self._write()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            last = _first_line("\n".join(reversed(report.longreprtext.splitlines())))
            self.collection_errors.append(
                {"test": report.nodeid, "message": _shorten(last.removeprefix("E").strip())}
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if (
            call.excinfo is not None
            and _can_alarm()
            and _real_time_bound(call.excinfo.value) is not None
        ):
            # The timeout reached the check: no more alarms for its cleanup to take.
            signal.setitimer(signal.ITIMER_REAL, 0)
        row = self.rows.get(item.nodeid)
        if row is not None:
            self._update(row, item, call, report)
        if call.excinfo is not None:
            _release_locals(call.excinfo.value)
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem):
        # First of all wrappers: pytest-timeout's reads the timeout marker after this.
        row = self.rows.get(item.nodeid)
        if row is not None:
            if (
                row["exercise"] in self.hung
                and self.after_hang_s > 0
                and item.get_closest_marker("timeout") is None
            ):
                item.add_marker(pytest.mark.timeout(self.after_hang_s))
            self.current = {
                "test": item.nodeid,
                "exercise": row["exercise"],
                "description": row["description"],
                "bound": 0.0,  # none known yet; pytest_timeout_set_timer tells
            }
            self._write()
        return (yield)

    def import_first(self, item: pytest.Item) -> bool | None:
        """Import the check's module once, and skip the check if it does not import."""
        row = self.rows.get(item.nodeid)
        module = getattr(getattr(item, "module", None), "MODULE", None)
        if row is None or not isinstance(module, str):
            return None
        if module not in self.imported:
            self.imported[module] = self._import_once(module)
        failure = self.imported[module]
        if failure is None:
            return None
        # Not run: pytest's own protocol would import the module again, per check.
        row["outcome"], row["message"] = "failed", failure
        self.current = None
        self._write()
        return True

    def _import_once(self, module: str) -> str | None:
        """Import the graded ``module``: None, or why it does not import, in one line."""
        qualified = f"{self.target}.{module}"
        if qualified in sys.modules:
            return None
        path = self._display(module)
        if self.current is not None:
            self.current["importing"] = {"module": module, "path": path}
            self._write()
        try:
            importlib.import_module(qualified)
        except BaseException as exc:  # sys.exit(), KeyboardInterrupt: they are the module's
            if _can_alarm():
                signal.setitimer(signal.ITIMER_REAL, 0)
            bound = _real_time_bound(exc)
            if bound is not None:
                return import_hung_message(path, bound)
            folder = self._target_folder()
            return import_message(exc, path, module=qualified, line=_last_line_in(exc, folder))
        finally:
            if self.current is not None:
                self.current.pop("importing", None)
                self._write()  # a check that hangs from now on is not the import's
        return None

    def _display(self, module: str) -> str:
        if self.label:
            return f"{self.label}/{module}.py"
        return _display_path(self._target_folder(), module, self.target)

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings) -> bool | None:
        bound = float(settings.timeout or 0)
        if self.current is not None and self.current["test"] == item.nodeid:
            self.current["bound"] = bound
            self.current["teardown_s"] = self._teardown_bound(bound) if _can_alarm() else 0.0
            self._write()
        if settings.method != "signal" or not _can_alarm():
            return None  # pytest-timeout's own implementation sets the timer
        # pytest-timeout's signal method, with the alarm repeated (_TIMEOUT_REPEAT_S).
        _arm(bound)
        item.cancel_timeout = _disarm  # what pytest-timeout's pytest_timeout_cancel_timer calls
        return True

    def _teardown_bound(self, bound: float) -> float:
        return min(bound, self.after_hang_s) if self.after_hang_s > 0 else bound

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem):
        # pytest-timeout stops its timer as soon as a check fails (before pytest's
        # post-mortem hook), so the cleanup after a failure has no bound: a task that
        # ignores cancellation hangs the fixtures' teardown (pytest-asyncio's loop
        # waits for every task) for good. The cleanup gets a bound of its own.
        current = self.current
        bound = current.get("teardown_s", 0.0) if current and current["test"] == item.nodeid else 0
        if bound:
            _arm(bound)
        try:
            return (yield)
        except BaseException as exc:
            if bound and _real_time_bound(exc) is not None:
                # Cut short: the tasks it left are freed now, so that asyncio's "Task
                # was destroyed but it is pending" lands here, not on the next check.
                gc.collect()
            raise
        finally:
            if bound:
                _disarm()

    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:
        self.current = None
        self._write()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._write(final=True)
        if self.fd is not None and os.getpid() == self.pid:
            # Closed: an atexit handler of the code under test cannot send rows after it.
            os.close(self.fd)
            self.fd = None

    def _update(self, row: dict, item: pytest.Item, call: pytest.CallInfo, report) -> None:
        if report.failed and call.excinfo and _real_time_bound(call.excinfo.value) is not None:
            self.hung.add(row["exercise"])  # its cleanup too: the code hangs
        if row["outcome"] in ("failed", "error", "skipped"):
            return  # the first thing that went wrong is the one to tell
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            row["outcome"] = "skipped"
            row["message"] = _shorten(str(reason).removeprefix("Skipped: "))
        elif report.failed:
            row["outcome"] = "failed" if report.when == "call" else "error"
            row["message"] = self._message(item, call.excinfo) if call.excinfo else UNEXPECTED
            hung_after = _real_time_bound(call.excinfo.value) if call.excinfo else None
            if hung_after is not None:
                row["hung_s"] = hung_after
        elif report.when == "call":
            row["outcome"] = "passed"

    def _message(self, item: pytest.Item, excinfo: pytest.ExceptionInfo) -> str:
        exc = excinfo.value
        folder = self._target_folder()
        module_name = getattr(item.module, "MODULE", None)
        qualified = f"{self.target}.{module_name}"
        # A failed import leaves no entry in sys.modules: that is how we tell "your module
        # does not import" from "your function raised ImportError when called".
        if module_name and qualified not in sys.modules and _during_import(exc):
            path = self._display(module_name)
            return import_message(exc, path, module=qualified, line=_last_line_in(exc, folder))
        return human_message(exc, raised_by_learner=_raised_in(exc, folder))

    def _target_folder(self) -> Path | None:
        package = sys.modules.get(self.target)
        paths = list(getattr(package, "__path__", []) or [])
        return Path(paths[0]).resolve() if paths else None

    def _write(self, *, final: bool = False) -> None:
        if os.getpid() != self.pid:
            return  # a fork of the run, carrying on in the code under test
        data = {
            "target": self.target,
            "tests": list(self.rows.values()),
            "collection_errors": self.collection_errors,
            "current": self.current,
            "final": final,
        }
        if self.fd is not None:
            line = (json.dumps(data) + "\n").encode()
            while line:
                line = line[os.write(self.fd, line) :]
        if not self.path:
            return
        # Written whole and renamed into place: when the grader kills a hung run, the
        # file it reads is the last complete one, never half a JSON document.
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _arm(seconds: float) -> None:
    """Fail the running check after ``seconds``, and again every _TIMEOUT_REPEAT_S."""
    # Same text as pytest-timeout's own, which is how the rows recognise a hang.
    message = f"Timeout (>{seconds:g}s) {_PYTEST_TIMEOUT_TEXT}."

    def handler(signum, frame):
        __tracebackhide__ = True
        pytest.fail(message)

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds, _TIMEOUT_REPEAT_S)


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _description(item: pytest.Item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    text = _first_line(doc or "") or item.name.removeprefix("test_").replace("_", " ")
    callspec = getattr(item, "callspec", None)
    return f"{text} [{callspec.id}]" if callspec is not None else text


def _during_import(exc: BaseException) -> bool:
    if isinstance(exc, (ImportError, SyntaxError)):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        tb = tb.tb_next
    return False


def _release_locals(exc: BaseException) -> None:
    """Drop the locals of the finished frames in ``exc``'s tracebacks.

    A failed test's frames still hold what it made, e.g. coroutines a stub never
    awaited; pytest keeps them alive (sys.last_traceback), and when they are freed at
    last their "never awaited" warnings fail whichever test runs then: a learner's
    passing check would show as failed. Freed now, they land on this test.
    """
    for each in _chain(exc):
        for leaf in {id(e): e for e in (each, *_leaves(each))}.values():
            tb = leaf.__traceback__
            while tb is not None:
                try:
                    tb.tb_frame.clear()
                except RuntimeError:  # still running: pytest's own frames
                    pass
                else:
                    # 3.11 and 3.12's clear() keeps the f_locals dict pytest's report
                    # filled in; 3.13's f_locals is a live proxy (PEP 667), already empty.
                    frame_locals = tb.tb_frame.f_locals
                    if isinstance(frame_locals, dict):
                        frame_locals.clear()
                tb = tb.tb_next


def _inside(filename: str, folder: Path | None) -> bool:
    return folder is not None and Path(filename).resolve().is_relative_to(folder)


def _raised_in(exc: BaseException, folder: Path | None) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and _inside(frames[-1].filename, folder)


def _last_line_in(exc: BaseException, folder: Path | None) -> int | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _inside(f.filename, folder)]
    if not frames and isinstance(exc, SyntaxError):
        return exc.lineno
    return frames[-1].lineno if frames else None


def _display_path(folder: Path | None, module: str, target: str) -> str:
    if folder is None:
        return f"{target.replace('.', '/')}/{module}.py"
    path = folder / f"{module}.py"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

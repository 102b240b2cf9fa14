"""Chapter 0's claims about the kernel's interrupt button, kept true by running its probe.

Each test starts a real IPython kernel (jupyter_client), presses "interrupt" on a cell
that never ends and reads how the cell ended. Nothing here bounds how fast the kernel
answers: the probe only waits, and the outcomes are what is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = [sys.executable, "-m", "course_lib.examples.interrupt_demo"]


def _run(*args: str) -> list[dict]:
    done = subprocess.run([*PROBE, *args], capture_output=True, text=True, timeout=110, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_interrupt_cancels_an_idle_await_once_a_tab_wakes_the_loop():
    records = {r["cell"]: r for r in _run("cells", "--silent-s", "1")}
    idle = records["idle await"]
    # No answer to the interrupt alone; the Tab (a complete_request) brings the cancel in.
    assert idle["seconds"] is None and idle["outcome"] == "CancelledError", idle
    assert records["await that wakes every 50 ms"]["outcome"] == "CancelledError"
    assert records["blocking code"]["outcome"] == "KeyboardInterrupt"


def test_any_shell_message_wakes_the_loop_a_control_message_does_not():
    records = {r["poke"]: r for r in _run("pokes", "--silent-s", "1", "--answer-s", "3")}
    for label, record in records.items():
        assert "before_poke_s" not in record, f"the idle await ended before any poke: {record}"
        want = "no answer" if label.endswith("control") else "CancelledError"
        assert record["outcome"] == want, record

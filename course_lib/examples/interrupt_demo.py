"""How fast does the kernel's interrupt button stop a cell? Measured.

Starts a fresh IPython kernel, runs cells that never end, presses "interrupt"
half a second into each (what JupyterLab's stop button does) and reports what
the cell ended with and how long it took:

    python -m course_lib.examples.interrupt_demo cells --silent-s 3
    python -m course_lib.examples.interrupt_demo pokes --silent-s 1 --repeats 2

``cells`` runs three cells:

1. ``await asyncio.Event().wait()``: an idle await, nothing else runs;
2. ``while True: await asyncio.sleep(0.05)``: an await that wakes up often;
3. ``while True: time.sleep(0.05)``: blocking code, no await at all.

When a cell has not answered ``--silent-s`` seconds after the interrupt, the
script sends one more message, a ``complete_request`` (what pressing Tab in
any cell sends), and times the answer from then.

``pokes`` interrupts the idle await again and again; each time it stays
silent for ``--silent-s`` seconds, then sends one message (one kind per run,
interleaved) and times the cell's answer from that message:

- ``complete_request`` on the shell channel: Tab in any cell;
- ``execute_request`` on the shell channel: running any other cell;
- ``kernel_info_request`` on the shell channel;
- ``kernel_info_request`` on the control channel (a thread of its own).

A message that gets no answer within ``--answer-s`` seconds is followed by a
``complete_request`` to free the kernel. Prints one JSON object per run.
"""

from __future__ import annotations

__all__ = ["CELLS", "POKES", "main"]

import argparse
import json
import queue
import sys
import time

IDLE_AWAIT = "import asyncio\nawait asyncio.Event().wait()"
CELLS = {
    "idle await": IDLE_AWAIT,
    "await that wakes every 50 ms": "import asyncio\nwhile True:\n    await asyncio.sleep(0.05)",
    "blocking code": "import time\nwhile True:\n    time.sleep(0.05)",
}


def _tab(kc) -> str:
    code = "import asyncio\nasyncio.Ev"
    return kc.complete(code, len(code))


def _run_a_cell(kc) -> str:
    return kc.execute("1 + 1")


def _kernel_info(kc) -> str:
    return kc.kernel_info()


def _kernel_info_on_control(kc) -> str:
    msg = kc.session.msg("kernel_info_request")
    kc.control_channel.send(msg)
    return msg["header"]["msg_id"]


POKES = {
    "Tab (complete_request, shell)": _tab,
    "run a cell (execute_request, shell)": _run_a_cell,
    "kernel_info_request, shell": _kernel_info,
    "kernel_info_request, control": _kernel_info_on_control,
}


def _reply(kc, msg_id: str, wait_s: float) -> dict | None:
    """The shell reply to ``msg_id`` within ``wait_s`` seconds, or None; other replies dropped."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply = kc.get_shell_msg(timeout=left)
        except queue.Empty:
            return None
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply
    return None


def _outcome(reply: dict) -> str:
    return reply["content"].get("ename", reply["content"]["status"])


def _settle(km, kc) -> None:
    """Wait until the kernel has answered everything sent so far (a restart if it never does)."""
    if _reply(kc, kc.execute("None"), 60) is None:
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)


def _interrupt(km, kc, code: str) -> tuple[str, float]:
    """Run ``code``, interrupt it after 1 s; return its msg_id and when the button was pressed."""
    msg_id = kc.execute(code)
    time.sleep(0.5)  # let the cell get going before pressing the button
    km.interrupt_kernel()
    return msg_id, time.monotonic()


def run_cells(km, kc, silent_s: float) -> list[dict]:
    results = []
    for label, code in CELLS.items():
        msg_id, pressed = _interrupt(km, kc, code)
        record = {"cell": label, "silent_s": silent_s}
        if (reply := _reply(kc, msg_id, silent_s)) is not None:
            record |= {"outcome": _outcome(reply), "seconds": round(time.monotonic() - pressed, 3)}
        else:
            poked = time.monotonic()
            _tab(kc)
            reply = _reply(kc, msg_id, 30)
            record |= {
                "outcome": "no answer" if reply is None else _outcome(reply),
                "seconds": None,
                "after_tab_s": round(time.monotonic() - poked, 3),
            }
        _settle(km, kc)
        results.append(record)
    return results


def run_pokes(km, kc, silent_s: float, answer_s: float, repeats: int) -> list[dict]:
    results = []
    for attempt in range(repeats):
        for label, poke in POKES.items():
            msg_id, pressed = _interrupt(km, kc, IDLE_AWAIT)
            record = {"poke": label, "attempt": attempt, "silent_s": silent_s}
            if (reply := _reply(kc, msg_id, silent_s)) is not None:
                # The loop woke up by itself before the poke: say so, don't hide it.
                before_s = round(time.monotonic() - pressed, 3)
                record |= {"outcome": _outcome(reply), "before_poke_s": before_s}
            else:
                poked = time.monotonic()
                poke(kc)
                reply = _reply(kc, msg_id, answer_s)
                if reply is None:
                    record |= {"outcome": "no answer", "seconds": None}
                    _tab(kc)  # free the kernel for the next run
                    _reply(kc, msg_id, 30)
                else:
                    elapsed = round(time.monotonic() - poked, 3)
                    record |= {"outcome": _outcome(reply), "seconds": elapsed}
            _settle(km, kc)
            results.append(record)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cells", "pokes"], nargs="?", default="cells")
    parser.add_argument(
        "--silent-s", type=float, default=3.0, help="how long to wait after the interrupt"
    )
    parser.add_argument("--answer-s", type=float, default=3.0, help="pokes: wait after a poke")
    parser.add_argument("--repeats", type=int, default=1, help="pokes: runs of each kind")
    args = parser.parse_args(argv)

    # Imported here, not at module level: course_lib never needs Jupyter to import.
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        if args.what == "cells":
            records = run_cells(km, kc, args.silent_s)
        else:
            records = run_pokes(km, kc, args.silent_s, args.answer_s, args.repeats)
        for record in records:
            print(json.dumps(record), flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How fast does the kernel's interrupt button stop a cell? Measured.

Starts a fresh IPython kernel, runs three cells that never end, presses
"interrupt" one second into each (what JupyterLab's stop button does) and
reports what the cell ended with and how long it took:

    python -m course_lib.examples.interrupt_demo --wait-s 3

1. ``await asyncio.Event().wait()``: an idle await, nothing else runs;
2. ``while True: await asyncio.sleep(0.05)``: an await that wakes up often;
3. ``while True: time.sleep(0.05)``: blocking code, no await at all.

Prints one JSON object per cell. ``outcome`` is the exception the cell ended
with, or ``"no answer"`` when the kernel had not answered after ``--wait-s``
seconds (the kernel is then restarted).
"""

from __future__ import annotations

__all__ = ["CELLS", "main"]

import argparse
import json
import queue
import sys
import time

CELLS = {
    "idle await": "import asyncio\nawait asyncio.Event().wait()",
    "await that wakes every 50 ms": "import asyncio\nwhile True:\n    await asyncio.sleep(0.05)",
    "blocking code": "import time\nwhile True:\n    time.sleep(0.05)",
}


def _interrupt(km, kc, code: str, wait_s: float) -> dict:
    msg_id = kc.execute(code)
    time.sleep(1.0)  # let the cell get going before pressing the button
    pressed = time.monotonic()
    km.interrupt_kernel()
    deadline = pressed + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply = kc.get_shell_msg(timeout=left)
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == msg_id:
            return {
                "outcome": reply["content"].get("ename", reply["content"]["status"]),
                "seconds": round(time.monotonic() - pressed, 2),
            }
    # Still stuck: only a restart frees the kernel.
    km.restart_kernel(now=True)
    kc.wait_for_ready(timeout=60)
    return {"outcome": "no answer", "seconds": wait_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-s", type=float, default=3.0, help="how long to wait for an answer")
    args = parser.parse_args(argv)

    # Imported here, not at module level: course_lib never needs Jupyter to import.
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        for label, code in CELLS.items():
            print(json.dumps({"cell": label, **_interrupt(km, kc, code, args.wait_s)}), flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 6's slow worker: orders priced between two awaits, with a hot spot to find.

    seconds = await process(orders(200), concurrency=10)            # the slow one
    seconds = await process(orders(200), concurrency=10, fixed=True)  # after the fix

Each order is handled the way a queue worker handles a job: fetch it (an ``await``
of 2 ms: a database), price it (CPU), store the result (an ``await`` of 1 ms). The
slow version looks up prices in ``price_table()``, which parses the whole price list
(a JSON document of 5,000 products) on every call: a helper that was cheap when the
list was short. The fixed version parses it once (``functools.cache``); nothing
else changes. A profiler finds it; the chapter shows which one, and how.
"""

from __future__ import annotations

__all__ = ["PRICE_LIST", "handle_order", "orders", "price_table", "process", "spy_top"]

import asyncio
import functools
import json
import time

PRICE_LIST = json.dumps([{"sku": f"SKU-{i:05d}", "cents": 100 + i % 900, "tax": 0.2}
                         for i in range(5_000)])
FETCH_S = 0.002
STORE_S = 0.001


def orders(n: int) -> list[dict]:
    """``n`` orders of three lines each, over the price list's products."""
    return [{"id": k, "lines": [{"sku": f"SKU-{(k * 7 + j * 13) % 5000:05d}", "qty": j + 1}
                                for j in range(3)]} for k in range(n)]


def price_table() -> dict[str, dict]:
    """SKU -> product, parsed from the price list (on every call: the hot spot)."""
    return {p["sku"]: p for p in json.loads(PRICE_LIST)}


@functools.cache
def _price_table_once() -> dict[str, dict]:
    return price_table()


def _total_cents(order: dict, table: dict[str, dict]) -> int:
    total = 0.0
    for line in order["lines"]:
        product = table[line["sku"]]
        total += product["cents"] * line["qty"] * (1 + product["tax"])
    return round(total)


async def fetch_order(order: dict) -> dict:
    await asyncio.sleep(FETCH_S)  # the database
    return order


async def store_result(order_id: int, cents: int) -> None:
    await asyncio.sleep(STORE_S)  # the database again


async def handle_order(order: dict, *, fixed: bool = False) -> int:
    """One job: fetch, price, store. Returns the total in cents."""
    order = await fetch_order(order)
    table = _price_table_once() if fixed else price_table()
    cents = _total_cents(order, table)
    await store_result(order["id"], cents)
    return cents


async def process(batch: list[dict], *, concurrency: int = 10, fixed: bool = False) -> float:
    """Handle every order, at most ``concurrency`` at once; return the seconds it took."""
    slots = asyncio.Semaphore(concurrency)

    async def one(order: dict) -> None:
        async with slots:
            await handle_order(order, fixed=fixed)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for order in batch:
            tg.create_task(one(order))
    return time.perf_counter() - start


def spy_top(seconds: float = 1.0, *, fixed: bool = False, timeout_s: float = 30.0,
            top: int = 5) -> list[tuple[int, str]] | str:
    """Sample this worker, run as a script, with ``py-spy record``; the hottest stacks.

    Returns ``(samples, "outer;...;innermost")`` pairs, most samples first, or one line
    saying why py-spy could not record (not installed, no ptrace permission).
    """
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from collections import Counter

    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        return "py-spy is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "stacks.txt")
        cmd = [spy, "record", "--format", "raw", "--rate", "250", "--nonblocking",
               "--duration", str(max(1, round(seconds))), "--output", out, "--",
               sys.executable, "-m", __name__, "--seconds", str(seconds + 1)]
        if fixed:
            cmd.append("--fixed")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            return f"py-spy did not finish within {timeout_s} s"
        if not os.path.exists(out):
            said = (done.stderr or done.stdout).strip().splitlines()
            return "py-spy could not record: " + (said[-1] if said else f"exit {done.returncode}")
        counts: Counter[str] = Counter()
        with open(out) as f:
            for line in f:
                stack, _, n = line.rstrip().rpartition(" ")
                if stack:
                    counts[";".join(_short(frame) for frame in stack.split(";"))] += int(n)
    return [(n, stack) for stack, n in counts.most_common(top)]


def _short(frame: str) -> str:
    # py-spy's raw frames read "function (path/file.py:line)": keep the function only.
    return frame.split(" (")[0]


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="run the slow worker for a while")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--fixed", action="store_true")
    args = parser.parse_args()

    async def run() -> None:
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            await process(orders(50), fixed=args.fixed)

    asyncio.run(run())


if __name__ == "__main__":
    _main()

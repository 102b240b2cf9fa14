"""How the CLI prints what Redis holds: dead letters and ``stats --watch`` blocks, safely.

    print(_letter_line(letter))   # id, when, which job, why: one line, no arguments
    _printable("\\x1b[2Jgotcha")   # '\\\\x1b[2Jgotcha': the escape shown, not obeyed

Text from Redis (a job's error, an entry's fields) is whatever was enqueued or
raised: printed raw, an escape sequence in it would move the cursor, recolour or
retitle the reader's terminal, so everything goes through ``_printable``.
"""

from __future__ import annotations

__all__: list[str] = []  # the CLI's own helpers

import argparse
import dataclasses
import datetime
import json
import time
from typing import Any

from ..monitor.queue_figures import COUNTS, QueueSample
from .dead_letters import DeadLetter
from .job import InvalidJob, Job
from .replies import _text

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: only on a terminal


def _letter_dict(letter: DeadLetter) -> dict[str, Any]:
    shown = dataclasses.asdict(letter)
    shown["job"] = None if letter.job is None else _text(letter.job)
    shown["extra"] = letter.extra_text()  # names and values, non-UTF-8 bytes escaped
    return shown


def _letter_line(letter: DeadLetter) -> str:
    """One line, arguments left out (they can hold secrets): id, when, which job, why."""
    when = datetime.datetime.fromtimestamp(letter.dead_at, datetime.UTC)
    try:
        job = Job.decode(letter.job or b"")
        what = f"{job.task}(id={job.id}) {job.attempt}/{job.max_attempts}"
    except InvalidJob:
        what = "(not a job)"
    why = letter.reason
    if letter.error_type:
        why += f"; {letter.error_type}: {letter.error}"
    why = " ".join(why.split())  # one line
    if len(why) > 160:
        why = why[:157] + "..."
    return _printable(f"{letter.entry_id}  {when:%Y-%m-%d %H:%M:%S}Z  {what}  {why}")


def _printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _watch_block(args: argparse.Namespace, q: QueueSample, sample: int, redraw: bool) -> str:
    """One sample of ``stats --watch``: a block of lines, or one JSON line with ``--json``."""
    counts = {name: getattr(q, name) for name in COUNTS}
    stale = {name for name, idle_s in q.idle_s.items() if idle_s > args.stale_after}
    counts["stale"] = len(stale)
    if args.json:
        return json.dumps({"queue": args.queue, **counts, "time": time.time(),
                           "rates": q.rates, "done": q.done, "done_per_s": q.done_per_s,
                           "in_flight": q.in_flight, "idle_s": q.idle_s}) + "\n"
    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S')}  sample {sample}, every "
             f"{args.interval or 1.0:g} s  (Ctrl-C stops)"]
    for name, value in {"queue": args.queue, **counts}.items():
        line = f"{name:<10} {value}"
        if q.rates is not None and name in q.rates:
            line = f"{line:<22} {q.rates[name]:+.1f}/s"
        lines.append(line)
    if q.done_per_s is not None:
        lines.append(f"{'done/s':<10} {q.done_per_s:.1f}   ({q.done} in the last "
                     f"{q.interval_s:.1f} s)")
    else:  # the first sample has no interval; Redis < 7 reports no entries-added
        lines.append(f"{'done/s':<10} {'-' if q.rates is None else 'n/a'}")
    if q.in_flight:
        lines.append(f"{'in_flight':<10} " + " | ".join(
            f"{name} {n}, idle {q.idle_s.get(name, 0):.1f} s" + (" (stale)" * (name in stale))
            for name, n in q.in_flight.items()))
    return (_CLEAR if redraw else "") + "\n".join(lines) + ("\n" if redraw else "\n\n")

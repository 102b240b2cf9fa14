"""The heartbeat: every ``heartbeat_s``, one call beats every entry the worker holds.

    heartbeat = Heartbeat(keys, settings, control, script, holding=runner.holding)
    heartbeat.start()                 # its loop, apart from the reader's
    await heartbeat.close()           # once nothing runs any more

``scripts.HEARTBEAT`` resets the idle time of each entry (so no other worker reclaims a
long job), reports those another worker took over (this one looked dead: the job may
run twice) and those ``Queue.cancel`` flagged (their tasks are cancelled here).
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import logging
from typing import TYPE_CHECKING

from .control import Control, Settings, cancel_until_done
from .keys import QueueKeys
from .queue import _text
from .scripts import Script

if TYPE_CHECKING:
    from .running import Delivery

logger = logging.getLogger("course_lib.distributed.worker")


class Heartbeat:
    """Beats the entries held here, from start until ``close()``; a loop of its own."""

    def __init__(self, keys: QueueKeys, settings: Settings, control: Control, script: Script,
                 holding: dict[str, Delivery]) -> None:
        self.script = script
        self._keys, self._settings, self._control = keys, settings, control
        self._holding = holding  # the runner's: running, or held while START is refused
        self._job_key = keys.job("").encode()
        self._over = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Beat until ``close()``: it beats on while a stop lets running jobs finish."""
        self._task = asyncio.create_task(self._loop(), name=f"{self._settings.name} heartbeat")

    async def _loop(self) -> None:
        """Every ``heartbeat_s``, beat all the entries held here (``beat``), at once.

        Ends when ``_over`` is set, between beats: it is not cancelled mid-command. (On
        Python 3.11 a cancel that lands as a fakeredis reply arrives can be lost inside
        ``wait_for``; a loop that missed its cancel would beat on.)
        """
        while True:
            await self._control.sleep(self._settings.heartbeat_s, self._over)
            if self._over.is_set():
                return
            await self.beat()

    async def beat(self) -> None:
        """Reset the idle time of every entry running here, in one call; report reclaims.

        An entry found reclaimed by another worker (this one looked dead: a long pause,
        a partition) is logged once: the job may then run twice, and whichever settle
        comes second writes nothing. The same call reads the cancel flags
        ``Queue.cancel`` sets: a job flagged has its task cancelled, so a cancel lands
        within one ``heartbeat_s`` (and a round trip).
        """
        held = [d for d in self._holding.values() if not d.settling and not d.lost]
        if not held:
            return
        stream = self._keys.stream
        try:
            lost, cancel = await self.script(
                keys=[stream, *(stream if d.job is None else
                                self._job_key + d.job.id.encode() for d in held)],
                args=[self._keys.group, self._settings.name, *(d.entry_id for d in held)])
        except Exception as exc:  # Redis away: the next beat may do
            logger.debug("worker %s: heartbeat of %d entries failed: %r", self._settings.name,
                         len(held), exc)
            return
        for entry_id in lost:
            d = self._holding.get(_text(entry_id))
            if d is not None and not d.settling and not d.lost:  # not settled meanwhile
                d.lost = True
                logger.warning("entry %s was reclaimed by another worker while running here: "
                               "the job may run twice", d.entry_id)
        for entry_id in cancel:
            d = self._holding.get(_text(entry_id))
            if d is None or d.settling or d.lost or d.cancel:
                continue
            d.cancel = True
            if d.started is not None and d.runner is not None:  # else _run_one sees the flag
                logger.info("entry %s: cancel asked for job %s; cancelling its task",
                            d.entry_id, d.job.id if d.job else "?")
                d.runner.cancel()

    def end_soon(self) -> None:
        """No more beats after the one in flight (a stop that ended early)."""
        self._over.set()

    async def close(self) -> None:
        """End the loop, once nothing runs any more."""
        self._over.set()
        if self._task is None:
            return
        # A beat in flight takes a round trip; one stuck on a dead connection is
        # cancelled after heartbeat_s, again until it ends.
        s = self._settings
        _, late = await asyncio.wait({self._task}, timeout=s.heartbeat_s)
        if late:  # said: a stop that takes this long should say why
            logger.warning("worker %s: a heartbeat still waits on Redis %s s after the stop "
                           "(not answering?); cancelling it", s.name, s.heartbeat_s)
        if await cancel_until_done({self._task}, self._settings.cancel_timeout_s):
            logger.error("worker %s: its heartbeat ignores cancellation", self._settings.name)

"""Alert rules over every worker's events: one engine, in worker 0.

A threshold ("3 failed logins of one user in a minute") must count the user's events in
every worker, so only worker 0 runs the alert engine; it gets its own events as a single
process does (as the trail writes them) and reads each sibling's trail as it grows, from
the end it had when worker 0 started (as a restart of a single process does). Fired alerts
are written to worker 0's trail and sent from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from proxy.audit.record import Event
from proxy.audit.recovery import trail_end
from proxy.audit.trailset import worker_audit_dir
from proxy.store.tail import TrailGap, TrailTail
from proxy.workers.role import WorkerRole

log = logging.getLogger("pgwarden.workers")

POLL_SECONDS = 0.25
_BATCH = 1000

Feed = Callable[[list[Event]], None]


class SiblingTrails:
    """Tails of the sibling workers' trails, read off the event loop."""

    def __init__(self, role: WorkerRole) -> None:
        self.tails = [
            TrailTail(path, trail_end(path) if path.is_dir() else 0)
            for path in (worker_audit_dir(role.audit_root, i) for i in role.siblings)
        ]

    def read(self) -> list[Event]:
        """The events written since the last read, every sibling's."""
        out: list[Event] = []
        for tail in self.tails:
            try:
                lines = tail.read(_BATCH)
            except TrailGap as gap:
                # Files removed under us (retention, by hand): the trail's own verify says
                # what; alerting carries on after the gap.
                log.warning("alerts: %s in %s; continuing after it", gap, tail.directory)
                tail.skip_to(gap.found)
                continue
            out.extend(line.event for line in lines)
        return out

    def close(self) -> None:
        for tail in self.tails:
            tail.close()


async def feed_from_siblings(role: WorkerRole, feed: Feed, poll: float = POLL_SECONDS) -> None:
    """Hand ``feed`` every sibling's new events, until cancelled."""
    trails = SiblingTrails(role)
    try:
        while True:
            events = await asyncio.to_thread(trails.read)
            if events:
                feed(events)
            else:
                await asyncio.sleep(poll)
    finally:
        trails.close()

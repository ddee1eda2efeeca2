"""CPU time and resident memory of a process tree, read from ``/proc``.

Counting the whole tree matters: a proxy may run worker processes, and we want the cost of the
proxy, not of whichever process happens to hold the listening socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system) and resident set size (kB) of a process tree."""

    cpu_seconds: float
    rss_kb: int


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name is in parentheses and may itself contain spaces or ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    children = _children_by_parent()
    found = [pid]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def _cpu_seconds(pid: int, reaped: bool = False) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat(5) (utime, stime), counted after the ')' from field 3 on; with
    # ``reaped`` also 16 and 17 (cutime, cstime): children that exited and were waited for.
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS_PER_SECOND


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def usage(pid: int) -> Usage:
    """Summed CPU seconds and RSS of ``pid`` and its live descendants, plus the CPU of the
    children ``pid`` has reaped: a PostgreSQL backend exits when its client disconnects, and
    its time would vanish from the tree (and make a difference of two readings negative).
    ``pid`` itself is read last, so a child reaped during the reading is counted once or, in
    that narrow window, twice, never lost."""
    cpu = 0.0
    rss = 0
    members = tree(pid)
    for member in [*members[1:], members[0]]:
        try:
            cpu += _cpu_seconds(member, reaped=member == pid)
            rss += _rss_kb(member)
        except (OSError, ValueError):
            continue
    return Usage(cpu, rss)

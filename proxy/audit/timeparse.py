"""Points in time as users type them: ISO-8601 (``2026-11-26``, ``2026-11-26T07:40Z``) or
relative to now (``30m``, ``2h``, ``7d``, ``1w``), plus ``now``, ``today`` and ``yesterday``.

Times without a zone are UTC, like every ``ts`` in the audit trail.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*(?:ago)?\s*", re.I)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime for ``text``; :class:`ValueError` with an example otherwise."""
    now = now or datetime.now(UTC)
    raw = text.strip()
    lowered = raw.lower()
    if lowered == "now":
        return now
    if lowered in ("today", "yesterday"):
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight if lowered == "today" else midnight - timedelta(days=1)
    match = _RELATIVE.fullmatch(raw)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return now - timedelta(seconds=seconds)
    candidate = raw[:-1] + "+00:00" if raw[-1:] in ("Z", "z") else raw
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO-8601 such as 2026-11-26T07:40:00Z, "
            "or a relative time such as 30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso_z(moment: datetime) -> str:
    """The audit trail's ``ts`` format: ``2026-11-26T07:40:00.123456Z`` (always µs, UTC).

    Strings in this exact format order like the times they name, so filters compare them
    as strings instead of parsing every event's ``ts``.
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(ts: str) -> datetime:
    """Parse an event ``ts`` (or any ISO-8601 text) into an aware UTC datetime."""
    parsed = datetime.fromisoformat(ts)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

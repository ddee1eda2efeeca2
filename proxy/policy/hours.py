"""Time windows for the ``hours`` condition: ``"Mon-Fri 09:00-18:00 Europe/Berlin"``.

Grammar: ``[DAYS] START-END [TIMEZONE]``. DAYS is a comma-separated list of days or day ranges
(``Mon-Fri``, ``Sat,Sun``, ``Fri-Mon`` wraps); without it every day counts. START and END are
``HH:MM`` (END may be ``24:00``); the window is START ≤ t < END in local time. When END is before
START the window crosses midnight and belongs to the day it starts on. TIMEZONE is an IANA name
(``zoneinfo``); without it the window is in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


class HoursError(ValueError):
    """An hours spec is malformed or names an unknown time zone."""


@dataclass(frozen=True, slots=True)
class HoursWindow:
    text: str
    days: frozenset[int]  # datetime.weekday() numbers, 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, 1..1440
    tz: ZoneInfo

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end and local.weekday() in self.days
        if minute >= self.start:
            return local.weekday() in self.days
        if minute < self.end:
            return (local - timedelta(days=1)).weekday() in self.days
        return False


def _day(word: str) -> int:
    lower = word.lower()
    if lower in DAY_NAMES:
        return DAY_NAMES.index(lower)
    if lower in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(lower)
    raise HoursError(f"unknown day {word!r} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)")


def _days(spec: str) -> frozenset[int]:
    days: set[int] = set()
    for item in spec.split(","):
        first, dash, last = item.strip().partition("-")
        a = _day(first.strip())
        if not dash:
            days.add(a)
            continue
        b = _day(last.strip())
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _minutes(text: str, *, end: bool) -> int:
    m = _TIME.fullmatch(text)
    if not m:
        raise HoursError(f"bad time {text!r} (use HH:MM)")
    hour, minute = int(m.group(1)), int(m.group(2))
    if minute > 59 or hour > 24 or (hour == 24 and (minute or not end)):
        raise HoursError(f"bad time {text!r}")
    return hour * 60 + minute


def parse_hours(text: str) -> HoursWindow:
    words = text.split()
    times_at = next((i for i, w in enumerate(words) if _TIME.match(w)), None)
    if times_at is None:
        raise HoursError(f"{text!r} has no time range (e.g. 'Mon-Fri 09:00-18:00 UTC')")
    if times_at > 1:
        raise HoursError(f"{text!r}: write days without spaces, e.g. 'Mon-Fri' or 'Sat,Sun'")
    if len(words) > times_at + 2:
        raise HoursError(f"{text!r}: unexpected {' '.join(words[times_at + 2 :])!r}")
    days = _days(words[0]) if times_at == 1 else frozenset(range(7))
    start_text, dash, end_text = words[times_at].partition("-")
    if not dash:
        raise HoursError(f"bad time range {words[times_at]!r} (use HH:MM-HH:MM)")
    start = _minutes(start_text, end=False)
    end = _minutes(end_text, end=True)
    if start == end:
        raise HoursError(f"empty time range {words[times_at]!r}")
    zone_name = words[times_at + 1] if len(words) > times_at + 1 else "UTC"
    try:
        tz = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HoursError(f"unknown time zone {zone_name!r}") from None
    return HoursWindow(text, days, start, end, tz)


def aware(now: datetime | None) -> datetime:
    """The evaluation time; a naive ``now`` is taken as UTC."""
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

"""NCRONTAB schedules as the Functions timer trigger reads them: six fields, seconds first.

`{second} {minute} {hour} {day} {month} {day-of-week}`; each field is `*`, a number, a range
`a-b`, a step `*/n` or `a-b/n`, or a comma list of those. Day-of-week 0-6 (Sunday = 0, 7 also
Sunday). As in cron, when both day fields are restricted a time matches either. Times are UTC
(WEBSITE_TIME_ZONE is not supported by the local host).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12),
           ("day-of-week", 0, 7))
FORMAT = "six fields, seconds first: '{second} {minute} {hour} {day} {month} {day-of-week}', e.g. '0 */5 * * * *'"


class InvalidSchedule(ValueError):
    pass


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidSchedule(f"{name} step {step_text!r} is not a positive number")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise InvalidSchedule(f"{name} range {part!r} is not 'a-b'")
            start, end = int(a), int(b)
        elif part.isdigit():
            start = end = int(part)
            if step != 1:
                end = high
        else:
            raise InvalidSchedule(f"{name} value {part!r} is not a number, range or '*'")
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise InvalidSchedule(f"{name} {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> "Schedule":
        fields = expression.split()
        if len(fields) != 6:
            raise InvalidSchedule(f"schedule {expression!r} has {len(fields)} fields: use {FORMAT}")
        try:
            parsed = [_parse_field(f, name, lo, hi) for f, (name, lo, hi) in zip(fields, _FIELDS)]
        except InvalidSchedule as exc:
            raise InvalidSchedule(f"schedule {expression!r}: {exc}; use {FORMAT}") from None
        weekdays = frozenset(d % 7 for d in parsed[5])
        return cls(*parsed[:5], weekdays, fields[3] != "*", fields[5] != "*")

    def _day_matches(self, t: datetime) -> bool:
        weekday = (t.weekday() + 1) % 7  # Python: Monday=0; cron: Sunday=0
        day_ok, wd_ok = t.day in self.days, weekday in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or wd_ok
        return day_ok and wd_ok

    def next_after(self, moment: datetime) -> datetime:
        """The first matching time strictly after `moment` (UTC, whole seconds)."""
        t = moment.astimezone(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        limit = t + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            if t.second not in self.seconds:
                t += timedelta(seconds=1)
                continue
            return t
        raise InvalidSchedule("schedule never fires (e.g. day 31 of a 30-day month only)")

"""NCRONTAB schedules as the Functions timer trigger reads them, for the local host.

Stands in for NCrontab (atifaziz/NCrontab) as the timer extension uses it (CronSchedule.TryCreate in
Azure/azure-webjobs-sdk-extensions): six fields with seconds first, or five fields (no seconds,
second 0). The fields are parsed here with NCrontab's grammar and its refusals; croniter
(`day_or=False`) finds the occurrences. Rules, as NCrontab has them:

- a field is `*`, a value, a range `a-b` (reversed ends are swapped: `5-2` is `2-5`), or any of
  those with a step (`*/n`, `a-b/n`, `a/n` = from a to the maximum); a comma list of those;
  a step below 1 counts as 1 (`*/0` is `*`);
- values are numbers, or for month and day-of-week a name or any prefix of it, in any case
  (`Jan`, `january`, `Augu`, `Mon`, `W` = Wednesday); day-of-week is 0-6, Sunday = 0 (7 is refused);
- a time matches when day-of-month AND day-of-week match (cron ORs them; NCrontab does not);
- nothing else: `?`, `L`, `W` after a day, `#`, `H` and out-of-range values are refused.

Times are UTC (WEBSITE_TIME_ZONE is not supported by the local host). Only the local host imports
this module (croniter is a local-only dependency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

FORMAT = ("NCRONTAB, six fields with seconds first '{second} {minute} {hour} {day} {month} {day-of-week}' "
          "(e.g. '0 */5 * * * *') or five without seconds; each field *, a value, a range a-b, a step */n or a-b/n, "
          "or a comma list; day-of-week 0-6 (Sunday = 0) or names (Mon), months 1-12 or names (Jan)")

# Returned by next_after for a schedule that never fires (e.g. '0 0 0 31 2 *'), as NCrontab returns
# DateTime.MaxValue: the timer waits for ever.
NEVER = datetime.max.replace(tzinfo=timezone.utc)

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
# (name, min, max, value names) in six-field order
_FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None), ("day", 1, 31, None),
           ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DAYS))
_INT32_MAX = 2**31 - 1
_STEP = re.compile(r"[+-]?[0-9]+")  # .NET int.Parse accepts a sign


class InvalidSchedule(ValueError):
    pass


class _Refused(Exception):
    pass


def _value(text: str, low: int, names) -> int:
    if not text:
        raise _Refused("an empty value")
    if text[0] in "0123456789":
        if not (text.isascii() and text.isdigit()) or int(text) > _INT32_MAX:
            raise _Refused(f"{text!r} is not a number")
        return int(text)
    for i, name in enumerate(names or ()):
        if name.lower().startswith(text.lower()):
            return low + i
    raise _Refused(f"{text!r} is not a number" + (f" or a name ({', '.join(n[:3] for n in names)})" if names else ""))


def _field(text: str, low: int, high: int, names) -> set[int]:
    if "," in text:
        return set().union(*(_field(part, low, high, names) for part in text.split(",")))
    step = None
    slash = text.find("/")
    if slash > 0:
        step_text, text = text[slash + 1:], text[:slash]
        if not _STEP.fullmatch(step_text) or abs(int(step_text)) > _INT32_MAX:
            raise _Refused(f"step {step_text!r} is not a number")
        step = int(step_text)
    if text == "*":
        start, end = low, high
    else:
        dash = text.find("-")
        if dash > 0:
            start, end = _value(text[:dash], low, names), _value(text[dash + 1:], low, names)
        else:
            start = _value(text, low, names)
            end = start if step is None else high
        start, end = min(start, end), max(start, end)
        for v in (start, end):
            if not low <= v <= high:
                raise _Refused(f"{v} is outside {low}-{high}")
    return set(range(start, end + 1, max(step or 1, 1)))


def _cron_field(values: set[int], low: int, high: int) -> str:
    return "*" if values == set(range(low, high + 1)) else ",".join(map(str, sorted(values)))


@dataclass(frozen=True)
class Schedule:
    expression: str
    cron: str  # the same schedule for croniter: six fields, seconds first, explicit values

    @classmethod
    def parse(cls, expression: str) -> "Schedule":
        tokens = [t for t in expression.split(" ") if t]
        if len(tokens) not in (5, 6):
            raise InvalidSchedule(f"schedule {expression!r} has {len(tokens)} fields; use {FORMAT}")
        if len(tokens) == 5:
            tokens.insert(0, "0")
        parts = []
        for token, (name, low, high, names) in zip(tokens, _FIELDS):
            try:
                parts.append(_cron_field(_field(token, low, high, names), low, high))
            except _Refused as exc:
                raise InvalidSchedule(f"schedule {expression!r}: {name} {token!r}: {exc}; use {FORMAT}") from None
        return cls(expression, " ".join(parts))

    def next_after(self, moment: datetime) -> datetime:
        """The first matching time strictly after `moment` (whole seconds, UTC), or NEVER."""
        from croniter import CroniterBadDateError, croniter
        start = moment.astimezone(timezone.utc).replace(microsecond=0)
        if start.year >= 9999:
            return NEVER
        # A pattern of dates repeats every 400 years (the Gregorian cycle): none in 400 years is never.
        it = croniter(self.cron, start, day_or=False, second_at_beginning=True, max_years_between_matches=401)
        try:
            return it.get_next(datetime).astimezone(timezone.utc)
        except CroniterBadDateError:
            return NEVER

    def __str__(self) -> str:
        return self.expression


__all__ = ["FORMAT", "NEVER", "InvalidSchedule", "Schedule"]

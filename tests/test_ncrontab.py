"""NCRONTAB as NCrontab (the Functions timer trigger's parser) evaluates it; see local/ncrontab.py."""

import re
from datetime import datetime, timezone

import pytest

from local.ncrontab import NEVER, InvalidSchedule, Schedule
from tests.conftest import ROOT

T0 = datetime(2026, 11, 25, 10, 0, 7, 500000, tzinfo=timezone.utc)  # a Wednesday


def at(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.mark.parametrize("expr, moment, expected", [
    # six fields, seconds first
    ("*/5 * * * * *", T0, at(2026, 11, 25, 10, 0, 10)),
    ("0 */5 * * * *", T0, at(2026, 11, 25, 10, 5, 0)),
    ("0 0 * * * *", T0, at(2026, 11, 25, 11, 0, 0)),
    ("30 15 9 * * *", T0, at(2026, 11, 26, 9, 15, 30)),
    ("0 0 0 * * 0", T0, at(2026, 11, 29, 0, 0, 0)),                 # next Sunday
    ("0 0 0 1 1 *", T0, at(2027, 1, 1, 0, 0, 0)),
    ("0 0 12 29 2 *", T0, at(2028, 2, 29, 12, 0, 0)),               # leap day
    ("0,20,40 * * * * *", T0, at(2026, 11, 25, 10, 0, 20)),
    ("0 0 9-17 * * 1-5", T0, at(2026, 11, 25, 11, 0, 0)),
    ("5/20 * * * * *", T0, at(2026, 11, 25, 10, 0, 25)),            # a/n: from a to the maximum
    ("10-40/15 * * * * *", T0, at(2026, 11, 25, 10, 0, 10)),
    ("*/5 * * * * *", at(2026, 11, 25, 10, 0, 10), at(2026, 11, 25, 10, 0, 15)),  # strictly after
    ("  0  0 * * * *  ", T0, at(2026, 11, 25, 11, 0, 0)),          # extra spaces
    # day-of-month AND day-of-week (cron would OR them)
    ("0 0 0 13 * 5", T0, at(2027, 8, 13, 0, 0, 0)),                 # Friday the 13th only
    ("0 0 0 1 * Mon", T0, at(2027, 2, 1, 0, 0, 0)),                 # a 1st that is a Monday
    ("0 0 0 29 2 1", T0, at(2044, 2, 29, 0, 0, 0)),                 # 29 February on a Monday
    # names: any prefix, any case
    ("0 30 9 * Jan Mon", T0, at(2027, 1, 4, 9, 30, 0)),
    ("0 0 12 * * sunday", T0, at(2026, 11, 29, 12, 0, 0)),
    ("0 0 0 * * W", T0, at(2026, 12, 2, 0, 0, 0)),                  # W = Wednesday
    ("0 0 0 * * Mon-FRI", T0, at(2026, 11, 26, 0, 0, 0)),
    ("0 0 0 1 Ju *", T0, at(2027, 6, 1, 0, 0, 0)),                  # first name it prefixes: June
    ("0 0 0 1 Augu,DECEM *", T0, at(2026, 12, 1, 0, 0, 0)),
    # five fields: no seconds (second 0)
    ("30 9 * * Mon-Fri", T0, at(2026, 11, 26, 9, 30, 0)),
    ("*/5 * * * *", T0, at(2026, 11, 25, 10, 5, 0)),
    ("0 0 13 * 5", T0, at(2027, 8, 13, 0, 0, 0)),
    # NCrontab's own readings
    ("0 0 20-8 * * *", T0, at(2026, 11, 25, 11, 0, 0)),             # reversed range = 8-20, not a wrap
    ("*/0 * * * * *", T0, at(2026, 11, 25, 10, 0, 8)),              # a step below 1 counts as 1
    ("0 0 0 31 2 *", T0, NEVER),                                    # parses, never fires
])
def test_next_occurrence(expr, moment, expected):
    assert Schedule.parse(expr).next_after(moment) == expected


@pytest.mark.parametrize("expr", [
    "", "every five minutes", "@daily", "* * * *", "0 0 0 1 1 * 2027", "0 */5 * * * * *",
    "60 * * * * *", "* 60 * * * *", "0 0 24 * * *", "0 0 0 0 * *", "0 0 0 32 * *", "0 0 0 * 0 *", "0 0 0 * 13 *",
    "0 0 0 * * 7",                                  # NCrontab's day-of-week is 0-6
    "0 0 0 L * *", "0 0 0 * * 5L", "0 0 0 LW * *",  # last day / last weekday
    "0 0 0 15W * *",                                # nearest weekday
    "0 0 0 * * 5#3",                                # nth weekday
    "0 0 0 ? * *", "0 0 0 * * ?",                   # no-specific-value
    "H * * * * *", "H(0-29) * * * * *",             # hashed values
    "0 0 0 * * Mun", "0 0 0 1 Jna *", "Jan * * * * *",  # names only in month/day-of-week, and real ones
    "a * * * * *", "*/x * * * * *", "1-2-3 * * * * *", "*-5 * * * * *", "0 0 0 * * -1", "0 0 0 1,,2 * *",
    "0 0 0 1, * *", "/5 * * * * *", "5- * * * * *", "99999999999 * * * * *", "1.5 * * * * *",
])
def test_what_ncrontab_refuses_is_refused(expr):
    with pytest.raises(InvalidSchedule) as exc:
        Schedule.parse(expr)
    message = str(exc.value)
    assert "\n" not in message and "seconds first" in message and "five without seconds" in message


def test_croniter_stays_out_of_the_function_app():
    """Only the local host pays croniter's import; the deployed code must not need it."""
    offenders = [str(p.relative_to(ROOT)) for d in ("functions", "shared") for p in (ROOT / d).rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+(local\.ncrontab|croniter)\b", p.read_text(), re.M)]
    offenders += ["function_app.py"] if "croniter" in (ROOT / "function_app.py").read_text() else []
    assert offenders == []

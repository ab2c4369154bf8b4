from datetime import datetime, timezone

import pytest

from local.ncrontab import InvalidSchedule, Schedule

T0 = datetime(2026, 11, 25, 10, 0, 7, 500000, tzinfo=timezone.utc)  # a Wednesday


@pytest.mark.parametrize("expr, expected", [
    ("*/5 * * * * *", datetime(2026, 11, 25, 10, 0, 10, tzinfo=timezone.utc)),
    ("0 */5 * * * *", datetime(2026, 11, 25, 10, 5, 0, tzinfo=timezone.utc)),
    ("0 0 * * * *", datetime(2026, 11, 25, 11, 0, 0, tzinfo=timezone.utc)),
    ("30 15 9 * * *", datetime(2026, 11, 26, 9, 15, 30, tzinfo=timezone.utc)),
    ("0 0 0 * * 0", datetime(2026, 11, 29, 0, 0, 0, tzinfo=timezone.utc)),      # next Sunday
    ("0 0 0 1 1 *", datetime(2027, 1, 1, 0, 0, 0, tzinfo=timezone.utc)),
    ("0 0 12 29 2 *", datetime(2028, 2, 29, 12, 0, 0, tzinfo=timezone.utc)),    # leap day
    ("0,20,40 * * * * *", datetime(2026, 11, 25, 10, 0, 20, tzinfo=timezone.utc)),
    ("0 0 9-17 * * 1-5", datetime(2026, 11, 25, 11, 0, 0, tzinfo=timezone.utc)),
])
def test_next_occurrence(expr, expected):
    assert Schedule.parse(expr).next_after(T0) == expected


@pytest.mark.parametrize("expr", ["* * * * *", "0 */5 * * * * *", "60 * * * * *", "*/0 * * * * *", "a * * * * *",
                                  "0 0 25 * * *"])
def test_bad_schedules_say_the_format(expr):
    with pytest.raises(InvalidSchedule) as exc:
        Schedule.parse(expr)
    assert "seconds first" in str(exc.value)

"""Timestamps as Azure writes them, read by plain `datetime.fromisoformat` (Python 3.11 reads `Z`, and
fractions of any length such as .NET's seven digits, truncated to microseconds)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.modelspec import _date
from shared.ttl import parse_expires_at

UTC = timezone.utc


@pytest.mark.parametrize("value, expected", [
    ("2026-11-26T12:00:00Z", datetime(2026, 11, 26, 12, tzinfo=UTC)),
    ("2026-11-26T12:00:00.1234567Z", datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)),  # .NET's 7 digits
    ("2026-11-26t12:00:00z", datetime(2026, 11, 26, 12, tzinfo=UTC)),  # RFC 3339 allows lower case
    ("2026-11-26T13:00:00.5+01:00", datetime(2026, 11, 26, 12, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-26T12:00:00", None),  # no offset: ambiguous
    ("2026-11-26T12:00:00ZZ", None),
])
def test_expires_at(value, expected):
    assert parse_expires_at(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("2026-07-01T00:00:00Z", datetime(2026, 7, 1, tzinfo=UTC)),
    ("2026-07-01T00:00:00.0000000Z", datetime(2026, 7, 1, tzinfo=UTC)),
    ("2026-07-01", datetime(2026, 7, 1, tzinfo=UTC)),  # a date alone: UTC midnight
    ("July 2026", None),
])
def test_model_spec_dates(value, expected):
    assert _date(value) == expected

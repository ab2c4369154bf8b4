from datetime import datetime, timedelta, timezone

import pytest

from shared.ttl import InvalidTTL, expires_at, parse_expires_at, parse_ttl

NOW = datetime(2026, 2, 28, 23, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, seconds", [
    ("45s", 45), ("30m", 1800), ("8h", 28800), ("7d", 604800), ("2w", 1209600), (" 8H ", 28800),
    ("PT8H", 28800), ("P1DT12H", 129600), ("PT30M", 1800), ("P2W", 1209600), ("pt90s", 90),
])
def test_ttl_grammar(text, seconds):
    assert parse_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0", "0h", "PT0S", "-5m", "8", "h", "8 hours", "P", "PT", "P1DT", "1.5h", None])
def test_bad_ttls_name_the_accepted_formats(text):
    with pytest.raises(InvalidTTL) as exc:
        parse_ttl(text)
    assert "30m" in str(exc.value) and "PT8H" in str(exc.value)


def test_expires_at_is_absolute_utc():
    assert expires_at(NOW, "1h") == "2026-03-01T00:30:00Z"  # crosses a month end (2026 is no leap year)


@pytest.mark.parametrize("value, expected", [
    ("2026-03-01T00:30:00Z", datetime(2026, 3, 1, 0, 30, tzinfo=timezone.utc)),
    ("2026-03-01T01:30:00+01:00", datetime(2026, 3, 1, 0, 30, tzinfo=timezone.utc)),
    ("2026-03-01T00:30:00", None),  # no offset: ambiguous, refused
    ("tomorrow", None), ("", None), (None, None), (12, None),
])
def test_parse_expires_at(value, expected):
    assert parse_expires_at(value) == expected

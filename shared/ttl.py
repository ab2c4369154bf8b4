"""One grammar for endpoint lifetimes, and absolute UTC expiry times.

A TTL is turned into an absolute `expires-at` once, when the endpoint is created, and never
re-interpreted; `expires-at` is ISO 8601 with an explicit offset and is compared in UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

ACCEPTED = "a number with a unit (45s, 30m, 8h, 7d, 2w) or an ISO 8601 duration (PT8H, P1DT12H)"
_SHORT = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InvalidTTL(ValueError):
    pass


def parse_ttl(text: str) -> timedelta:
    """Parse a TTL; zero or negative TTLs are refused (never "0 means forever" or "now")."""
    raw = (text or "").strip()
    m = _SHORT.match(raw)
    if m:
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
    else:
        m = _ISO.match(raw)
        if not m or raw.upper() in ("P", "PT") or raw.upper().endswith("T"):
            raise InvalidTTL(f"TTL {text!r} is not understood: use {ACCEPTED}")
        w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = (((w * 7 + d) * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise InvalidTTL(f"TTL {text!r} must be longer than zero: use {ACCEPTED}")
    return timedelta(seconds=seconds)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expires_at(now: datetime, ttl: str) -> str:
    return format_utc(now + parse_ttl(ttl))


def parse_expires_at(value: str | None) -> datetime | None:
    """An aware UTC datetime, or None when missing or unparseable (never a reason to delete)."""
    if not value or not isinstance(value, str):
        return None
    try:  # 3.11 reads Z and fractions of any length; upper(): RFC 3339 allows a lower-case t and z, 3.11 not z
        moment = datetime.fromisoformat(value.strip().upper())
    except ValueError:
        return None
    if moment.tzinfo is None:  # a local time without offset is ambiguous: refuse it
        return None
    return moment.astimezone(timezone.utc)

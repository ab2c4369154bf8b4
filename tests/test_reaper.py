from datetime import datetime, timezone

import pytest

from shared.ml.base import EndpointInfo
from shared.reaper import decide

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
MANAGED = {"managed-by": "tuneflow"}


def ep(tags, state="Succeeded"):
    return EndpointInfo(name="tf-x", tags=tags, provisioning_state=state)


@pytest.mark.parametrize("tags, state, action, rule", [
    ({**MANAGED, "expires-at": "2026-11-25T11:59:59Z"}, "Succeeded", "delete", "expired"),
    ({**MANAGED, "expires-at": "2026-11-25T12:00:00Z"}, "Succeeded", "delete", "expired"),
    ({**MANAGED, "expires-at": "2026-11-25T13:00:00+02:00"}, "Succeeded", "delete", "expired"),  # 11:00 UTC
    ({**MANAGED, "expires-at": "2026-11-25T12:00:01Z"}, "Succeeded", "keep", "not-expired"),
    ({**MANAGED, "expires-at": "2026-11-25T11:00:00Z"}, "Failed", "delete", "expired"),
    ({**MANAGED, "Expires-At": "2026-11-25T11:00:00Z"}, "Succeeded", "delete", "expired"),
    ({**MANAGED, "expires-at": "2026-11-25T11:00:00Z", "do-not-delete": "true"}, "Succeeded", "keep", "do-not-delete"),
    ({**MANAGED, "expires-at": "2026-11-25T11:00:00Z", "do-not-delete": "True"}, "Succeeded", "keep", "do-not-delete"),
    ({**MANAGED, "expires-at": "2026-11-25T11:00:00Z"}, "Creating", "keep", "in-transition"),
    ({**MANAGED, "expires-at": "2026-11-25T11:00:00Z"}, "Deleting", "keep", "in-transition"),
    ({**MANAGED, "expires-at": "2026-11-25T11:00:00"}, "Succeeded", "flag", "bad-expiry"),   # no offset
    ({**MANAGED, "expires-at": "soon"}, "Succeeded", "flag", "bad-expiry"),
    ({**MANAGED, "expires-at": ""}, "Succeeded", "flag", "bad-expiry"),
    (MANAGED, "Succeeded", "flag", "bad-expiry"),
    ({"expires-at": "2020-01-01T00:00:00Z"}, "Succeeded", "keep", "not-managed"),
    ({"managed-by": "someone-else", "expires-at": "2020-01-01T00:00:00Z"}, "Succeeded", "keep", "not-managed"),
])
def test_reaper_rules(tags, state, action, rule):
    d = decide(ep(tags, state), NOW)
    assert (d.action, d.rule) == (action, rule), d.reason

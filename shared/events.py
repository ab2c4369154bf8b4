"""Azure ML events (Event Grid or CloudEvents schema) and what the app does about each.

Only this app's own pipeline runs matter: child step runs, other people's runs, non-terminal
statuses and events about jobs we never submitted are ignored, each with a reason.

Read as Azure has published them: data keys in camelCase or PascalCase, statuses in any case
(`"runStatus": "failed"`), a pipeline run named by `runType` or, when that is null, by
`runProperties["azureml.runsource"]`. A completion comes as RunCompleted and as RunStatusChanged
`Completed`; both register (registration is idempotent), `dataVersion` is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.contracts import (EVENT_RUN_COMPLETED, EVENT_RUN_STATUS_CHANGED, EVENT_SUBSCRIPTION_VALIDATION,
                              MANAGED_BY_VALUE, PIPELINE_RUN_TYPE, TAG_FLOW_ID, TAG_MANAGED_BY)

FAILED_STATES = ("Failed", "Canceled")
_STATUSES = {s.lower(): s for s in ("Completed", *FAILED_STATES)}  # terminal statuses, matched case-insensitively


class InvalidEvent(ValueError):
    pass


@dataclass(frozen=True)
class Event:
    """The fields of one event, whatever schema carried it."""

    id: str
    type: str
    subject: str
    time: str
    data: dict = field(default_factory=dict)
    source: str = ""


def normalize(raw: dict) -> Event:
    """Accept one event in the Event Grid schema (`eventType`) or CloudEvents 1.0 (`specversion`)."""
    if not isinstance(raw, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(raw).__name__}")
    if "specversion" in raw:
        keys = ("id", "type", "subject", "time", "source")
    elif "eventType" in raw:
        keys = ("id", "eventType", "subject", "eventTime", "topic")
    else:
        raise InvalidEvent("not an event: neither Event Grid (eventType) nor CloudEvents (specversion) schema")
    missing = [k for k in keys[:2] if not raw.get(k)]
    if missing:
        raise InvalidEvent(f"event lacks {', '.join(missing)}")
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise InvalidEvent("event data must be a JSON object")
    ident, etype, subject, etime, source = (str(raw.get(k) or "") for k in keys)
    return Event(id=ident, type=etype, subject=subject, time=etime, data=data, source=source)


def from_trigger(event) -> Event:
    """The event as the Event Grid trigger hands it over: azure-functions' converter decodes a delivery
    in the Event Grid schema into `func.EventGridEvent` (event_type, topic, event_time) and one in
    CloudEvents 1.0 into `func.CloudEvent` (type, source, time), whatever the parameter's annotation."""
    def iso(when):  # the converter has already refused an offset other than Z or -00:00; Azure sends Z
        return when.isoformat() if when else ""

    if hasattr(event, "event_type"):  # func.EventGridEvent
        raw = {"id": event.id, "eventType": event.event_type, "subject": event.subject, "topic": event.topic,
               "eventTime": iso(event.event_time)}
    else:  # func.CloudEvent
        raw = {"specversion": event.specversion, "id": event.id, "type": event.type, "subject": event.subject,
               "source": event.source, "time": iso(event.time)}
    return normalize({**raw, "data": event.get_json()})


@dataclass(frozen=True)
class Decision:
    action: str  # register | record-failure | ignore | validate
    job: str
    reason: str
    flow_id: str = ""
    status: str = ""
    at: str = field(default="", compare=False)  # the event's time, as sent (a redelivery keeps it)


def _keys_folded(value) -> dict:
    """A mapping with its keys lower-cased: Azure ML has published these payloads in camelCase
    (`runId`, `runStatus`) and in PascalCase (`RunId`, `RunStatus`)."""
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else {}


def _is_pipeline_run(run_type: str, properties: dict) -> bool:
    """Recognised by `runType`, or by `runProperties["azureml.runsource"]` when `runType` is null."""
    pipeline = PIPELINE_RUN_TYPE.lower()
    return run_type.lower() == pipeline or str(properties.get("azureml.runsource") or "").lower() == pipeline


def decide(event: Event) -> Decision:
    data = _keys_folded(event.data)
    job = str(data.get("runid") or "")
    tags = _keys_folded(data.get("runtags"))
    properties = _keys_folded(data.get("runproperties"))
    flow = str(tags.get(TAG_FLOW_ID, ""))
    etype = event.type.lower()
    if etype == EVENT_SUBSCRIPTION_VALIDATION.lower():
        return Decision("validate", "", "subscription validation handshake")
    if etype not in (EVENT_RUN_COMPLETED.lower(), EVENT_RUN_STATUS_CHANGED.lower()):
        return Decision("ignore", job, f"event type {event.type} is not an Azure ML run event")
    run_type = data.get("runtype")
    if not _is_pipeline_run(str(run_type or ""), properties):
        parent = properties.get("azureml.pipelinerunid", "")
        return Decision("ignore", job, f"run type {run_type!r} is not a pipeline run"
                        + (f" (a step of {parent})" if parent else ""), flow)
    if tags.get(TAG_MANAGED_BY) != MANAGED_BY_VALUE:
        return Decision("ignore", job, f"run is not tagged {TAG_MANAGED_BY}={MANAGED_BY_VALUE}", flow)
    if not job:
        return Decision("ignore", job, "event has no runId", flow)
    if etype == EVENT_RUN_COMPLETED.lower():
        return Decision("register", job, "pipeline run completed", flow, "Completed", event.time)
    given = str(data.get("runstatus") or "")
    status = _STATUSES.get(given.lower(), given)  # Azure's spelling, whatever case the event used
    if status == "Completed":
        return Decision("register", job, "pipeline run completed (status change)", flow, status, event.time)
    if status in FAILED_STATES:
        return Decision("record-failure", job, f"pipeline run {status.lower()}", flow, status, event.time)
    return Decision("ignore", job, f"status {status or 'unknown'} is not terminal", flow, status)


def read_events(path) -> list:
    """The events in a file: one JSON object, a JSON array (as Event Grid delivers), or JSON Lines."""
    import json
    from pathlib import Path
    text = Path(path).read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise InvalidEvent(f"{path} is not JSON ({exc}): give an event object, an array of events or JSON Lines") from None
    if value in ([], {}):
        raise InvalidEvent(f"{path} holds no events")
    return value if isinstance(value, list) else [value]


def explain_all(raws: list) -> list[dict]:
    """What job_events does with each event, in delivery order, as one delivery would see them:
    a repeated event id is ignored, and so is any terminal status after a job's first one (the same
    outcome reported by the other event type, or a stale one)."""
    seen: set[str] = set()
    terminal: dict[str, tuple[str, str]] = {}  # job -> (status, event id)
    out = []
    for raw in raws:
        try:
            event = normalize(raw)
        except InvalidEvent as exc:
            out.append({"action": "ignore", "job": "", "reason": f"invalid event: {exc}"})
            continue
        decision = decide(event)
        if event.id in seen:
            decision = Decision("ignore", decision.job, f"repeat of event {event.id}", decision.flow_id)
        elif decision.action in ("register", "record-failure") and decision.job in terminal:
            status, first = terminal[decision.job]
            why = "the same outcome reported again" if status == decision.status else "stale"
            decision = Decision("ignore", decision.job, f"{why}: job already {status.lower()} (event {first})",
                                decision.flow_id, decision.status)
        elif decision.action in ("register", "record-failure"):
            terminal[decision.job] = (decision.status, event.id)
        seen.add(event.id)
        out.append({"action": decision.action, "job": decision.job, "reason": decision.reason,
                    "event_id": event.id, "event_type": event.type})
    return out

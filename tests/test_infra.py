"""infra/ checked offline: every Bicep file parses (pycep, the parser checkov uses), checkov finds
nothing it does not explain, and the Function App's settings hold no key, SAS or connection string."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT

INFRA = ROOT / "infra"
BICEP = sorted(INFRA.rglob("*.bicep"))
SECRET = re.compile(r"AccountKey|SharedAccessSignature|SharedAccessKey|[?&]sig=|DefaultEndpointsProtocol|"
                    r"listKeys|listConnectionStrings|InstrumentationKey=|Password|secret", re.IGNORECASE)
# The one connection-string-named setting: Application Insights' ingestion address. Its instrumentation
# key is not a credential, and the component has local auth disabled: only Entra-authenticated telemetry
# (APPLICATIONINSIGHTS_AUTHENTICATION_STRING, the app's identity) is accepted.
ALLOWED = {"APPLICATIONINSIGHTS_CONNECTION_STRING"}


def parse(path):
    from pycep import BicepParser
    return BicepParser().parse(text=path.read_text())


def test_there_is_infra_and_azd():
    assert (INFRA / "main.bicep").exists() and (ROOT / "azure.yaml").exists()
    assert {p.name for p in BICEP} >= {"main.bicep", "functions.bicep", "storage.bicep", "servicebus.bicep",
                                        "rbac.bicep", "ml.bicep", "events.bicep", "monitoring.bicep"}


@pytest.mark.parametrize("path", BICEP, ids=[p.name for p in BICEP])
def test_every_bicep_file_parses(path):
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules")


def test_the_parser_does_reject_broken_bicep():
    from pycep import BicepParser
    with pytest.raises(Exception):
        BicepParser().parse(text="resource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'a'\n")


def _app_settings() -> dict[str, str]:
    """The settings functions.bicep gives the app: the `appSettings` variable and the config resource."""
    text = (INFRA / "app" / "functions.bicep").read_text()
    block = re.search(r"var appSettings = \{\n(.*?)\n\}", text, re.S).group(1)
    settings = {}
    for line in block.splitlines():
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*(//.*)?$", line)
        if m:
            settings[m.group(1)] = m.group(2)
    extra = re.search(r"union\(appSettings, \{(.*?)\}\)", text, re.S).group(1)
    for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^,}]+)", extra):
        settings[m.group(1)] = m.group(2).strip()
    parsed = parse(INFRA / "app" / "functions.bicep")
    assert "appSettings" in parsed["variables"]  # the parser sees the same variable
    return settings


def test_app_settings_are_identity_based_only():
    settings = _app_settings()
    for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential", "AzureWebJobsStorage__clientId",
                 "ServiceBusConnection__fullyQualifiedNamespace", "ServiceBusConnection__credential", "AZURE_CLIENT_ID",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "TUNEFLOW_ML_BACKEND", "TUNEFLOW_AML_WORKSPACE"):
        assert name in settings, name
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["ServiceBusConnection__credential"] == "'managedidentity'"
    assert "AzureWebJobsStorage" not in settings and "ServiceBusConnection" not in settings  # no connection strings
    for name, value in settings.items():
        if name in ALLOWED:
            continue
        assert not SECRET.search(name) and not SECRET.search(value), f"{name}: {value}"
        assert "ConnectionString" not in value, f"{name} is given a connection string: {value}"


def test_no_bicep_file_reads_a_key_or_builds_a_connection_string():
    for path in BICEP:
        text = path.read_text()
        assert not re.search(r"listKeys|listConnectionStrings|AccountKey=|SharedAccessKey", text), path
    storage = (INFRA / "app" / "storage.bicep").read_text()
    assert "allowSharedKeyAccess: false" in storage
    assert "disableLocalAuth: true" in (INFRA / "app" / "servicebus.bicep").read_text()


def test_settings_the_app_reads_are_the_settings_infra_gives():
    from shared.settings import SETTINGS
    settings = _app_settings()
    known = {s.name for s in SETTINGS}
    assert {k for k in settings if k.startswith("TUNEFLOW_")} <= known


def test_service_bus_queue_detects_duplicates_and_dead_letters():
    text = (INFRA / "app" / "servicebus.bicep").read_text()
    for needle in ("name: 'deployments'", "requiresDuplicateDetection: true", "deadLetteringOnMessageExpiration: true",
                   "maxDeliveryCount: 10"):
        assert needle in text


def test_checkov_finds_nothing_unexplained():
    checkov = ROOT / ".venv-infra" / "bin" / "checkov"
    assert checkov.exists(), "run `make setup`: it installs checkov into .venv-infra"
    res = subprocess.run([str(checkov), "-d", str(INFRA), "--framework", "bicep", "--compact", "--quiet",
                          "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(res.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["file_path"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], failed
    assert sum(r["summary"]["passed"] for r in reports) > 10  # it really scanned the resources
    for path in BICEP:
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                reason = line.split("checkov:skip=", 1)[1].split(":", 1)
                assert len(reason) == 2 and len(reason[1].strip()) > 15, f"{path.name}: a skip without its reason: {line}"


def test_the_circuit_breaker_alert_matches_what_the_reaper_logs():
    """The alert rule's query and the reaper's CRITICAL record must agree, or the alert never fires."""
    import logging
    from shared import reaper
    bicep = (INFRA / "app" / "monitoring.bicep").read_text()
    prefix = re.search(r'message startswith "([^"]+)"', bicep).group(1)
    assert "severityLevel >= 4" in bicep  # Application Insights' Critical
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    reaper.log.addHandler(handler)
    try:
        from tests.test_reaper import NOW, azure, deploy
        d = azure()
        for i in range(3):
            deploy(d, f"tf-expired-{i}")
        run = reaper.reap(d.backend, NOW, reaper.ReaperPolicy(), dry_run=True)
    finally:
        reaper.log.removeHandler(handler)
    assert run.alert
    critical = [r for r in records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and critical[0].getMessage().startswith(prefix)

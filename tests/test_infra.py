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
                                        "rbac.bicep", "ml.bicep", "events.bicep", "monitoring.bicep",
                                        "event-subscriptions.bicep"}


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


# --- First contact with a real subscription (issue 11, section 2, item 10) --------------------------------------
# Each test below reads what `azd up` would send and fails on the files as they were before the fix.

HOOK = INFRA / "hooks" / "postdeploy.sh"
ROLE = {"storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "serviceBusDataOwner": "090c5cfd-751d-490a-894a-3ce6f1109419",
        "serviceBusDataReceiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
        "serviceBusDataSender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"}


def _resources(tree, rtype):
    return {name: r for name, r in tree["resources"].items() if r["type"] == rtype}


def _config(resource):
    """A parsed resource's body; a conditional (`if`) resource nests it under `config`."""
    config = resource["config"]
    return config["config"] if "condition" in config else config


def _decorator(item, kind):
    return next((d["argument"] for d in item.get("decorators", []) if d["type"] == kind), None)


def _role_id(role_assignment, variables):
    """The role GUID of a parsed roleAssignments resource (`roles.<name>` or a literal GUID)."""
    arg = _config(role_assignment)["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    if isinstance(arg, dict):
        operands = arg["operator"]["operands"]
        return variables[operands["operand_1"]]["value"][operands["operand_2"]]
    return variables[arg]["value"] if arg in variables else arg


def test_azure_yaml_subscribes_event_grid_after_deploy_only():
    """The system keys exist once the deployed code has started: postdeploy, and no postprovision run that
    would find no key (and, before, exit 0 with nothing subscribed)."""
    import yaml
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    assert set(hooks) == {"postdeploy"}, hooks
    assert hooks["postdeploy"]["run"] == "./infra/hooks/postdeploy.sh"
    assert hooks["postdeploy"].get("continueOnError", False) is False
    assert HOOK.exists() and HOOK.stat().st_mode & 0o111, "the hook must be executable"


def test_hook_stops_on_errors_and_names_the_subscription_on_every_az_call():
    text = HOOK.read_text()
    assert re.search(r"^set -e", text, re.M), "the hook must stop at the first failing command"
    assert not re.search(r"^\s*exit 0\b", text, re.M), "the hook must not report success early"
    logical = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    calls = [line for line in logical.splitlines()
             if re.search(r"(^|[\s($])az\s", line) and not line.lstrip().startswith("#") and "command -v az" not in line]
    assert len(calls) >= 3, calls
    for line in calls:
        assert '--subscription "$sub"' in line, f"an az call without the azd environment's subscription: {line}"
    assert 'sub="$AZURE_SUBSCRIPTION_ID"' in text and "${AZURE_SUBSCRIPTION_ID:?" in text
    assert "date +%s" in text and "deadline" in text, "the wait for the system keys needs a deadline"


FAKE_AZ = r"""#!/bin/sh
echo "$*" >> "$FAKE_AZ_LOG"
case "$*" in
  "functionapp show "*) echo "func-test.azurewebsites.net" ;;
  "functionapp keys list "*)
    n=$(cat "$FAKE_AZ_COUNT" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$FAKE_AZ_COUNT"
    if [ "$n" -le "${FAKE_KEYS_AFTER:-0}" ]; then echo "ERROR: Encountered an error (ServiceUnavailable)" >&2; exit 1; fi
    case "$*" in
      *blobs_extension*) echo "${FAKE_BLOB_KEY}" ;;
      *eventgrid_extension*) echo "${FAKE_EG_KEY}" ;;
    esac ;;
  "deployment group create "*)
    for a in "$@"; do case "$a" in @*) cp "${a#@}" "$FAKE_AZ_PARAMS" ;; esac; done ;;
  *) echo "fake az: unexpected call: $*" >&2; exit 2 ;;
esac
"""


def _run_hook(tmp_path, *, blob_key="blobKey_1==", eg_key="egKey-2", keys_after=0, wait_s=3):
    import os
    import stat
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"az": FAKE_AZ, "curl": "#!/bin/sh\nexit 0\n"}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "FAKE_AZ_LOG": str(tmp_path / "az.log"), "FAKE_AZ_COUNT": str(tmp_path / "count"),
           "FAKE_AZ_PARAMS": str(tmp_path / "params.json"), "FAKE_KEYS_AFTER": str(keys_after),
           "FAKE_BLOB_KEY": blob_key, "FAKE_EG_KEY": eg_key,
           "TUNEFLOW_HOOK_WAIT_S": str(wait_s), "TUNEFLOW_HOOK_POLL_S": "1",
           "AZURE_SUBSCRIPTION_ID": "00000000-1111-2222-3333-444444444444", "AZURE_RESOURCE_GROUP": "rg-test",
           "AZURE_FUNCTION_APP_NAME": "func-test", "AZURE_STORAGE_ACCOUNT_NAME": "sttest",
           "AZURE_EVENTGRID_STORAGE_TOPIC": "egst-storage-test", "AZURE_EVENTGRID_ML_TOPIC": "egst-ml-test",
           "AZURE_EVENTGRID_DEADLETTER_CONTAINER": "eventgrid-deadletters"}
    res = subprocess.run(["sh", str(HOOK)], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    log = (tmp_path / "az.log").read_text().splitlines() if (tmp_path / "az.log").exists() else []
    params = tmp_path / "params.json"
    return res, log, (json.loads(params.read_text()) if params.exists() else None)


def test_hook_fails_loudly_when_the_system_keys_never_come(tmp_path):
    res, log, params = _run_hook(tmp_path, blob_key="", eg_key="", wait_s=2)
    assert res.returncode != 0, res.stdout
    assert "ERROR" in res.stderr and "Nothing was subscribed" in res.stderr
    assert params is None and not any(line.startswith("deployment ") for line in log)
    assert sum(line.startswith("functionapp keys list") for line in log) >= 4  # it retried


def test_hook_waits_for_the_keys_then_subscribes_with_them(tmp_path):
    res, log, params = _run_hook(tmp_path, keys_after=3, wait_s=30)
    assert res.returncode == 0, res.stderr
    assert all("--subscription 00000000-1111-2222-3333-444444444444" in line for line in log), log
    deploy = [line for line in log if line.startswith("deployment group create")]
    assert len(deploy) == 1 and "event-subscriptions.bicep" in deploy[0] and "--resource-group rg-test" in deploy[0]
    assert "blobKey_1" not in deploy[0] and "egKey-2" not in deploy[0]  # secrets only in the parameters file
    values = {k: v["value"] for k, v in params["parameters"].items()}
    assert values["blobsExtensionKey"] == "blobKey_1==" and values["eventGridExtensionKey"] == "egKey-2"
    assert values["functionHost"] == "func-test.azurewebsites.net"
    assert values["deadLetterContainer"] == "eventgrid-deadletters"
    declared = set(parse(INFRA / "app" / "event-subscriptions.bicep")["parameters"])
    assert set(values) <= declared, set(values) - declared


def test_event_subscriptions_dead_letter_with_the_topic_identity_and_retry_explicitly():
    tree = parse(INFRA / "app" / "event-subscriptions.bicep")
    subs = _resources(tree, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert {s["config"]["name"] for s in subs.values()} == {"tuneflow-datasets", "tuneflow-job-events"}
    variables = tree["variables"]
    for name, sub in subs.items():
        assert sub["api_version"] == "2022-06-15", name  # GA; has deadLetterWithResourceIdentity and retryPolicy
        props = sub["config"]["properties"]
        retry = variables[props["retryPolicy"]]["value"]
        assert set(retry) == {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"}
        dead = variables[props["deadLetterWithResourceIdentity"]]["value"]
        assert dead["identity"] == {"type": "SystemAssigned"}
        assert dead["deadLetterDestination"]["endpointType"] == "StorageBlob"
        assert set(dead["deadLetterDestination"]["properties"]) == {"resourceId", "blobContainerName"}
        assert props["destination"]["endpointType"] == "WebHook"
    params = tree["parameters"]
    for key in ("blobsExtensionKey", "eventGridExtensionKey"):  # never in the deployment's history
        assert any(d["type"] == "secure" for d in params[key]["decorators"]), key
    assert params["maxDeliveryAttempts"]["default"] == 30 and params["eventTimeToLiveInMinutes"]["default"] == 1440
    urls = [s["config"]["properties"]["destination"]["properties"]["endpointUrl"] for s in subs.values()]
    assert any("/runtime/webhooks/blobs?functionName=Host.Functions.data_arrival&code=" in u for u in urls)
    assert any("/runtime/webhooks/EventGrid?functionName=job_events&code=" in u for u in urls)
    assert all("&code=${uriComponent(" in u for u in urls)  # a base64 key may hold '+', '/' or '=
    for function in ("data_arrival", "job_events"):
        assert f'@bp.function_name("{function}")' in (ROOT / "functions" / f"{function}.py").read_text()


def test_system_topics_have_an_identity_that_may_write_the_dead_letters():
    tree = parse(INFRA / "app" / "events.bicep")
    topics = _resources(tree, "Microsoft.EventGrid/systemTopics")
    assert len(topics) == 2
    for name, topic in topics.items():
        assert topic["config"]["identity"] == {"type": "SystemAssigned"}, name
    grants = _resources(tree, "Microsoft.Authorization/roleAssignments")
    containers = {n for n, r in tree["resources"].items()
                  if r["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"}
    assert len(grants) == 2
    for grant in grants.values():
        assert _config(grant)["scope"] in containers  # the dead-letter container, not the account
        assert _role_id(grant, tree["variables"]) == ROLE["storageBlobDataContributor"]
        assert _config(grant)["properties"]["principalType"] == "ServicePrincipal"
    assert "deadLetterContainer" in parse(INFRA / "app" / "storage.bicep")["variables"]["containers"]["value"]


def test_key_vault_can_be_purged_by_azd_down():
    """azd down --purge purges only vaults with soft delete and without purge protection; with it, the next
    azd up of the same environment fails on the soft-deleted name."""
    tree = parse(INFRA / "app" / "ml.bicep")
    (vault,) = _resources(tree, "Microsoft.KeyVault/vaults").values()
    props = _config(vault)["properties"]
    assert props.get("enableSoftDelete") is True
    assert "enablePurgeProtection" not in props  # Key Vault refuses `false`; unset is off


def test_the_deploying_principal_type_comes_from_azd():
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE}"
    main = parse(INFRA / "main.bicep")
    assert set(_decorator(main["parameters"]["principalType"], "allowed")) >= {"User", "ServicePrincipal"}
    assert main["modules"]["rbac"]["config"]["params"]["userPrincipalType"] == "principalType"
    for path in BICEP:
        for line in path.read_text().splitlines():
            assert "principalType: 'User'" not in line, f"{path.name}: a hard-coded principal type: {line}"


def test_service_bus_data_owner_on_the_deployments_queue_only():
    """The trigger's scaling reads the queue's length: Manage rights, i.e. Data Owner, scoped to the queue."""
    tree = parse(INFRA / "app" / "rbac.bicep")
    variables = tree["variables"]
    grants = _resources(tree, "Microsoft.Authorization/roleAssignments")
    queues = {n for n, r in tree["resources"].items() if r["type"] == "Microsoft.ServiceBus/namespaces/queues"}
    namespaces = {n for n, r in tree["resources"].items() if r["type"] == "Microsoft.ServiceBus/namespaces"}
    bus = {n: g for n, g in grants.items() if _role_id(g, variables) in
           (ROLE["serviceBusDataOwner"], ROLE["serviceBusDataReceiver"], ROLE["serviceBusDataSender"])}
    assert [_role_id(g, variables) for g in bus.values()] == [ROLE["serviceBusDataOwner"]]
    (owner,) = bus.values()
    assert _config(owner)["scope"] in queues and _config(owner)["scope"] not in namespaces
    assert _config(owner)["properties"]["principalId"] == "identityPrincipalId"
    main = parse(INFRA / "main.bicep")
    assert "serviceBusQueueName" in main["modules"]["rbac"]["config"]["params"]
    assert "queueName" in parse(INFRA / "app" / "servicebus.bicep")["outputs"]


def test_the_fine_tune_identity_may_write_its_model_to_the_workspace_storage():
    """Serverless jobs run as the submitting identity (the app's); with shared keys disabled it writes the
    MLflow model output with that token: Storage Blob Data Contributor on the workspace's default storage."""
    tree = parse(INFRA / "app" / "rbac.bicep")
    variables = tree["variables"]
    grants = _resources(tree, "Microsoft.Authorization/roleAssignments")
    job = [g for g in grants.values() if _role_id(g, variables) == ROLE["storageBlobDataContributor"]
           and _config(g)["properties"]["principalId"] == "identityPrincipalId"]
    assert len(job) == 1
    scope = _config(job[0])["scope"]
    assert tree["resources"][scope]["type"] == "Microsoft.Storage/storageAccounts"
    assert "mlStorageSegments" in json.dumps(_config(tree["resources"][scope])["name"])
    assert "mlStorageAccountId" in json.dumps(variables["mlStorageSegments"])
    assert "storageAccountId" in parse(INFRA / "app" / "ml.bicep")["outputs"]
    main = parse(INFRA / "main.bicep")
    assert "mlStorageAccountId" in main["modules"]["rbac"]["config"]["params"]


def test_only_flex_consumption_regions_are_allowed():
    main = parse(INFRA / "main.bicep")
    allowed = _decorator(main["parameters"]["location"], "allowed")
    assert allowed and len(allowed) == len(set(allowed)) >= 20
    assert {"eastus", "eastus2", "northeurope", "westeurope", "swedencentral", "westus3"} <= set(allowed)
    # Regions without the Flex Consumption plan, and the canary region ordinary subscriptions cannot use.
    assert not {"westindia", "qatarcentral", "chinaeast", "usgovvirginia", "eastus2euap"} & set(allowed)
    text = (INFRA / "main.bicep").read_text()
    assert "list-flexconsumption-locations" in text  # where the list comes from, cited next to it


def test_host_json_never_samples_out_the_reapers_circuit_breaker_record():
    """Application Insights sampling in the Functions host works by telemetry type; the reaper's CRITICAL
    record (logger tuneflow.reaper, forwarded by the Python worker) is a Trace: Trace must be excluded, and
    the log level of the reaper function's user category must let Critical through."""
    host = json.loads((ROOT / "host.json").read_text())
    logging_ = host["logging"]
    sampling = logging_.get("applicationInsights", {}).get("samplingSettings", {})
    if sampling.get("isEnabled", True):
        excluded = {t.strip().lower() for t in sampling.get("excludedTypes", "").split(";") if t.strip()}
        assert "trace" in excluded, sampling
    levels = {k.lower(): v.lower() for k, v in logging_.get("logLevel", {}).items()}
    category = "function.reaper.user"  # the host's category for what the worker logs in function `reaper`
    match = max((k for k in levels if k != "default" and category.startswith(k)), key=len, default="default")
    assert levels.get(match, "information") in ("trace", "debug", "information", "warning", "error", "critical")
    source = (ROOT / "shared" / "reaper.py").read_text()
    assert 'getLogger("tuneflow.reaper")' in source and "log.critical(" in source
    assert '@bp.function_name("reaper")' in (ROOT / "functions" / "reaper.py").read_text()

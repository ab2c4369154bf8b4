"""function_app.py as the real Functions host sees it: functions, triggers, bindings, settings, cold start."""

import json
import re
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ["azure.ai.ml", "azure.servicebus", "polars", "yaml", "pydantic", "torch", "transformers", "mlflow", "datasets", "pyarrow", "peft"]


def _functions():
    code = ("import json, function_app\n"
            "out = {}\n"
            "for f in function_app.app.get_functions():\n"
            "    out[f.get_function_name()] = [{k: (getattr(v, 'name', v)) for k, v in b.get_dict_repr().items()}"
            " for b in f.get_bindings()]\n"
            "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_five_functions_with_their_real_trigger_types():
    fns = _functions()
    triggers = {name: next(b for b in bs if b["type"].endswith("Trigger")) for name, bs in fns.items()}
    assert {n: t["type"] for n, t in triggers.items()} == {
        "data_arrival": "blobTrigger", "submit": "queueTrigger", "job_events": "eventGridTrigger",
        "deploy": "serviceBusTrigger", "reaper": "timerTrigger"}
    assert triggers["data_arrival"]["path"] == "datasets/{name}" and triggers["data_arrival"]["source"] == "EventGrid"
    assert triggers["submit"]["queueName"] == "finetune-requests"
    assert triggers["deploy"]["queueName"] == "deployments"
    assert triggers["reaper"]["schedule"] == "%TUNEFLOW_REAPER_SCHEDULE%"
    outputs = {n: [(b["type"], b.get("queueName")) for b in bs if b["direction"] == "OUT"] for n, bs in fns.items()}
    assert outputs["data_arrival"] == [("queue", "finetune-requests")]
    assert outputs["job_events"] == []  # it sends with the SDK: only that sets MessageId (see shared/bus.py)


def test_importing_the_app_loads_no_heavy_library():
    code = f"import sys, json, function_app; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_host_json_and_settings_example_are_valid_for_the_real_host():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    example = json.loads((ROOT / "local.settings.json.example").read_text())
    values = example["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    referenced = set(re.findall(r"%([^%]+)%", json.dumps(_functions())))
    assert referenced <= set(values), f"settings referenced by bindings but missing: {referenced - set(values)}"
    # No secrets in the example: only the local development storage shortcut.
    assert not re.search(r"AccountKey=|SharedAccessSignature|sig=", json.dumps(example))


def test_requirements_for_azure_hold_no_local_only_packages():
    reqs = (ROOT / "requirements.txt").read_text().lower()
    for pkg in ("torch", "mlflow", "transformers", "peft"):
        assert not re.search(rf"^{pkg}\b", reqs, re.M)
    assert re.search(r"^azure-functions==1\.", reqs, re.M)


def test_the_settings_reference_documents_every_setting_with_its_default():
    from shared.settings import SETTINGS
    table = (ROOT / "docs" / "settings.md").read_text()
    missing = [s.name for s in SETTINGS if f"| `{s.name}` | {f'`{s.default}`' if s.default else '(empty)'} |" not in table]
    assert not missing, f"docs/settings.md lacks (or gives another default for) {missing}"

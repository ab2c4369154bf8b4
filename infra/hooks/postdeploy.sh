#!/bin/sh
# azd `postdeploy` hook (azure.yaml): the Event Grid subscriptions into the Function App's webhooks.
#
# Why after deploy, not after provision: each webhook URL carries an extension's system key
# (blobs_extension for the data_arrival blob trigger, eventgrid_extension for job_events). The Functions
# host creates those keys when it starts the extensions of the deployed code, so they exist only after
# `azd deploy` (and the host's first start), never right after `azd provision`.
#
# What it does: reads both keys, waiting for the host for up to TUNEFLOW_HOOK_WAIT_S seconds (default
# 600), then deploys infra/app/event-subscriptions.bicep (dead-letter destination, retry policy) with the
# keys as secure parameters. Anything missing or failing ends the hook non-zero, so `azd up` fails
# loudly instead of reporting success with nothing subscribed. Every `az` call names the subscription
# of the azd environment (AZURE_SUBSCRIPTION_ID), never the CLI's current default.
# Idempotent: the deployment replaces both subscriptions.
set -eu

say() { echo "postdeploy: $*"; }
die() { echo "postdeploy: ERROR: $*" >&2; exit 1; }

command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is not on PATH; it is a prerequisite of the deploy (see README, Deploy to Azure)"

: "${AZURE_SUBSCRIPTION_ID:?run through azd (azd up / azd deploy): AZURE_SUBSCRIPTION_ID is not set}"
: "${AZURE_RESOURCE_GROUP:?run through azd: AZURE_RESOURCE_GROUP is not set (provision first)}"
: "${AZURE_FUNCTION_APP_NAME:?run through azd: AZURE_FUNCTION_APP_NAME is not set (provision first)}"
: "${AZURE_STORAGE_ACCOUNT_NAME:?run through azd: AZURE_STORAGE_ACCOUNT_NAME is not set (provision first)}"
: "${AZURE_EVENTGRID_STORAGE_TOPIC:?run through azd: AZURE_EVENTGRID_STORAGE_TOPIC is not set (provision first)}"
: "${AZURE_EVENTGRID_ML_TOPIC:?run through azd: AZURE_EVENTGRID_ML_TOPIC is not set (provision first)}"
: "${AZURE_EVENTGRID_DEADLETTER_CONTAINER:?run through azd: AZURE_EVENTGRID_DEADLETTER_CONTAINER is not set (provision first)}"

sub="$AZURE_SUBSCRIPTION_ID"
rg="$AZURE_RESOURCE_GROUP"
app="$AZURE_FUNCTION_APP_NAME"
wait_s="${TUNEFLOW_HOOK_WAIT_S:-600}"
poll_s="${TUNEFLOW_HOOK_POLL_S:-15}"
template="$(cd "$(dirname "$0")/../app" && pwd)/event-subscriptions.bicep"
[ -f "$template" ] || die "missing $template"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
errlog="$work/az.err"
: >"$errlog"

host="$(az functionapp show --subscription "$sub" --resource-group "$rg" --name "$app" --query defaultHostName --output tsv)" \
  || die "cannot read function app $app in $rg (subscription $sub); see the error above"
[ -n "$host" ] || die "function app $app in $rg (subscription $sub) has no host name"

# One extension's system key; empty while the host has not created it yet. The CLI's error, if any,
# is kept for the final message.
key() {
  value="$(az functionapp keys list --subscription "$sub" --resource-group "$rg" --name "$app" \
    --query "systemKeys.$1" --output tsv 2>>"$errlog")" || value=""
  case "$value" in None | null) value="" ;; esac
  printf '%s' "$value"
}

deadline=$(( $(date +%s) + wait_s ))
while :; do
  blob_key="$(key blobs_extension)"
  eg_key="$(key eventgrid_extension)"
  if [ -n "$blob_key" ] && [ -n "$eg_key" ]; then
    break
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "postdeploy: ERROR: after ${wait_s}s the function app $app still has no system key" \
      "blobs_extension$([ -n "$blob_key" ] && echo ' (found)' || echo ' (missing)')" \
      "/ eventgrid_extension$([ -n "$eg_key" ] && echo ' (found)' || echo ' (missing)'):" \
      "the host has not started the deployed code. Nothing was subscribed." >&2
    echo "postdeploy: check the app's logs in Application Insights, then run 'azd deploy' again" \
      "(or raise TUNEFLOW_HOOK_WAIT_S). Last Azure CLI error, if any:" >&2
    tail -n 5 "$errlog" >&2 || true
    exit 1
  fi
  say "waiting for the host to create its system keys (up to ${wait_s}s) ..."
  # An HTTP request makes the platform start an instance of a scaled-to-zero app; harmless otherwise.
  if command -v curl >/dev/null 2>&1; then
    curl --silent --output /dev/null --max-time 30 "https://$host/" || :
  fi
  sleep "$poll_s"
done

for k in "$blob_key" "$eg_key"; do
  case "$k" in *[!A-Za-z0-9_=+/-]*) die "a system key has unexpected characters; refusing to write it into a URL" ;; esac
done

# Secure parameters go through a file readable by this user only, not the command line.
params="$work/event-subscriptions.parameters.json"
umask 077
cat >"$params" <<EOF
{
  "\$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "storageTopicName": { "value": "$AZURE_EVENTGRID_STORAGE_TOPIC" },
    "mlTopicName": { "value": "$AZURE_EVENTGRID_ML_TOPIC" },
    "storageAccountName": { "value": "$AZURE_STORAGE_ACCOUNT_NAME" },
    "deadLetterContainer": { "value": "$AZURE_EVENTGRID_DEADLETTER_CONTAINER" },
    "functionHost": { "value": "$host" },
    "blobsExtensionKey": { "value": "$blob_key" },
    "eventGridExtensionKey": { "value": "$eg_key" }
  }
}
EOF

say "subscribing the Event Grid topics to https://$host (dead letters: $AZURE_EVENTGRID_DEADLETTER_CONTAINER) ..."
az deployment group create --subscription "$sub" --resource-group "$rg" \
  --name tuneflow-event-subscriptions --template-file "$template" --parameters "@$params" \
  --only-show-errors --output none \
  || die "deploying the Event Grid subscriptions failed (see the error above); nothing is subscribed until 'azd deploy' succeeds"

if [ "${TUNEFLOW_ML_STORAGE_ROLE_ASSIGNED:-true}" = "false" ]; then
  echo "postdeploy: WARNING: the Azure ML workspace's storage account is outside resource group $rg:" \
    "grant the app's identity Storage Blob Data Contributor on it yourself, or fine-tunes cannot write" \
    "their model (README, Deploy to Azure)." >&2
fi

say "Event Grid subscriptions tuneflow-datasets and tuneflow-job-events point at https://$host"

#!/bin/sh
# Event Grid subscriptions into the Function App's webhooks (they carry the blobs_extension /
# eventgrid_extension system keys, so they are made after the app exists, not in Bicep).
# Idempotent: `az eventgrid system-topic event-subscription create` replaces a subscription of the
# same name. Runs after provision and after deploy (the keys exist once the app has started).
set -eu
: "${AZURE_RESOURCE_GROUP:?run through azd}" "${AZURE_FUNCTION_APP_NAME:?run through azd}"
rg="$AZURE_RESOURCE_GROUP"
app="$AZURE_FUNCTION_APP_NAME"
host="$(az functionapp show -g "$rg" -n "$app" --query defaultHostName -o tsv)"

key() {  # the system key of an extension; empty until the app has run once
  az functionapp keys list -g "$rg" -n "$app" --query "systemKeys.$1" -o tsv 2>/dev/null || true
}

blob_key="$(key blobs_extension)"
eg_key="$(key eventgrid_extension)"
if [ -z "$blob_key" ] || [ -z "$eg_key" ]; then
  echo "postprovision: the function app has no system keys yet (deploy the code first); azd runs this again after deploy"
  exit 0
fi

# BlobCreated on datasets/ -> the data_arrival blob trigger (source=EventGrid)
az eventgrid system-topic event-subscription create -g "$rg" \
  --system-topic-name "$AZURE_EVENTGRID_STORAGE_TOPIC" --name tuneflow-datasets \
  --endpoint-type webhook \
  --endpoint "https://$host/runtime/webhooks/blobs?functionName=Host.Functions.data_arrival&code=$blob_key" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with /blobServices/default/containers/datasets/ \
  --max-delivery-attempts 30 --event-ttl 1440 >/dev/null

# Azure ML run events -> job_events
az eventgrid system-topic event-subscription create -g "$rg" \
  --system-topic-name "$AZURE_EVENTGRID_ML_TOPIC" --name tuneflow-job-events \
  --endpoint-type webhook \
  --endpoint "https://$host/runtime/webhooks/EventGrid?functionName=job_events&code=$eg_key" \
  --included-event-types Microsoft.MachineLearningServices.RunCompleted Microsoft.MachineLearningServices.RunStatusChanged \
  --max-delivery-attempts 30 --event-ttl 1440 >/dev/null

echo "postprovision: Event Grid subscriptions point at $host"

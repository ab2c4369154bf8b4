// The two Event Grid subscriptions into the Function App's webhooks. Not part of main.bicep: the
// webhook URLs carry the extensions' system keys (blobs_extension, eventgrid_extension), which exist
// only once the deployed code has started, so infra/hooks/postdeploy.sh deploys this file after
// `azd deploy` (resource-group scope, keys as secure parameters). Redeploying replaces both.
//
// Delivery: Event Grid retries a failing webhook with backoff up to `maxDeliveryAttempts` or
// `eventTimeToLiveInMinutes`, whichever comes first (30 and 1440 are the service maxima), then writes
// the event to the dead-letter container instead of dropping it, with the system topic's own identity
// (deadLetterWithResourceIdentity; the role is granted in events.bicep). The keys are URI-encoded into
// the webhook URLs (a base64 key may hold '+', '/' or '=').
targetScope = 'resourceGroup'

param storageTopicName string
param mlTopicName string
param storageAccountName string
param deadLetterContainer string
@description('The Function App host name (defaultHostName).')
param functionHost string
@secure()
@description('The blobs_extension system key: the data_arrival blob trigger (source EventGrid).')
param blobsExtensionKey string
@secure()
@description('The eventgrid_extension system key: the job_events Event Grid trigger.')
param eventGridExtensionKey string
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource storageTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: storageTopicName
}

resource mlTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: mlTopicName
}

var retryPolicy = {
  maxDeliveryAttempts: maxDeliveryAttempts
  eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
}

var deadLetter = {
  identity: { type: 'SystemAssigned' }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: storage.id
      blobContainerName: deadLetterContainer
    }
  }
}

// BlobCreated under datasets/ -> the data_arrival blob trigger (source=EventGrid)
resource datasets 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: storageTopic
  name: 'tuneflow-datasets'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionHost}/runtime/webhooks/blobs?functionName=Host.Functions.data_arrival&code=${uriComponent(blobsExtensionKey)}'
      }
    }
    filter: {
      includedEventTypes: ['Microsoft.Storage.BlobCreated']
      subjectBeginsWith: '/blobServices/default/containers/datasets/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

// Azure ML run events -> job_events
resource jobEvents 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: mlTopic
  name: 'tuneflow-job-events'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionHost}/runtime/webhooks/EventGrid?functionName=job_events&code=${uriComponent(eventGridExtensionKey)}'
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.RunCompleted'
        'Microsoft.MachineLearningServices.RunStatusChanged'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

output subscriptions array = [datasets.name, jobEvents.name]

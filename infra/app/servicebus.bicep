// Service Bus for deploy requests: duplicate detection drops a second request for the same model
// version (MessageId model:version, sent by job_events), dead-lettering keeps what fails.
param name string
param location string
param tags object

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource deployments 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: 'deployments'
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    maxDeliveryCount: 10
    lockDuration: 'PT5M' // renewed by the host up to maxAutoLockRenewalDuration (host.json): a deployment takes long
    defaultMessageTimeToLive: 'P7D'
  }
}

output name string = namespace.name
output queueName string = deployments.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'

// The app's storage account: datasets in, prepared data out, flow records, the reaper's state,
// the app package, Event Grid's dead letters; the trigger queues. Shared-key access is off: every
// client uses Entra ID.
param name string
param location string
param tags object
param deploymentContainer string
@description('Where Event Grid writes events it could not deliver (after the retry policy of infra/app/event-subscriptions.bicep).')
param deadLetterContainer string = 'eventgrid-deadletters'

var containers = ['datasets', 'prepared', 'flows', 'reaper', deadLetterContainer, deploymentContainer]
var queues = ['finetune-requests', 'finetune-requests-poison']

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without a VNet reaches storage over its public endpoint; access is Entra-only (no shared keys).
  // checkov:skip=CKV_AZURE_59: same reason: the public endpoint stays enabled; blobs are never public (allowBlobPublicAccess: false) and authorization is Entra-only.
  // checkov:skip=CKV_AZURE_206: LRS: datasets are uploaded copies and everything else is derived or rebuildable.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: true, days: 7 }
    containerDeleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for c in containers: {
  parent: blobs
  name: c
  properties: { publicAccess: 'None' }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource storageQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for q in queues: {
  parent: queueService
  name: q
}]

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output preparedContainer string = 'prepared'
output deadLetterContainer string = deadLetterContainer

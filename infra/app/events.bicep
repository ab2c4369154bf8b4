// Event Grid system topics for the two event sources, each with a system-assigned identity that may
// write dead letters (Storage Blob Data Contributor on the dead-letter container only: the role Event
// Grid's docs name for a blob dead-letter destination reached with the topic's managed identity).
// Their subscriptions point at the function app's webhooks, which need its system keys, so they are
// not made here: infra/hooks/postdeploy.sh deploys infra/app/event-subscriptions.bicep after the code
// is deployed, with the dead-letter destination and the retry policy.
param location string
param tags object
param storageAccountId string
param storageAccountName string
param deadLetterContainer string
param mlWorkspaceId string
param storageTopicName string
param mlTopicName string

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource storageTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: storageTopicName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource mlTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: mlTopicName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    source: mlWorkspaceId
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobs
  name: deadLetterContainer
}

resource storageTopicDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetters.id, storageTopic.id, storageBlobDataContributor)
  scope: deadLetters
  properties: {
    principalId: storageTopic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource mlTopicDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetters.id, mlTopic.id, storageBlobDataContributor)
  scope: deadLetters
  properties: {
    principalId: mlTopic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

output storageTopicName string = storageTopic.name
output mlTopicName string = mlTopic.name
output deadLetterContainer string = deadLetterContainer

// Event Grid system topics for the two event sources. Their subscriptions point at the function
// app's webhooks, which need its system key: infra/hooks/postprovision.sh creates them after deploy.
param location string
param tags object
param storageAccountId string
param mlWorkspaceId string
param storageTopicName string
param mlTopicName string

module storageTopic 'br/public:avm/res/event-grid/system-topic:0.6.1' = {
  name: 'storage-topic'
  params: {
    name: storageTopicName
    location: location
    tags: tags
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

module mlTopic 'br/public:avm/res/event-grid/system-topic:0.6.1' = {
  name: 'ml-topic'
  params: {
    name: mlTopicName
    location: location
    tags: tags
    source: mlWorkspaceId
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output storageTopicName string = storageTopicName
output mlTopicName string = mlTopicName

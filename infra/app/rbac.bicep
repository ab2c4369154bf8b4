// Least privilege for the app's identity: data-plane roles on exactly the resources it uses.
param identityPrincipalId string
param storageAccountName string
param serviceBusName string
param serviceBusQueueName string
param applicationInsightsName string
param mlWorkspaceName string
param mlWorkspacePrincipalId string
@description('The workspace\'s default storage account (resource id): the fine-tune job writes its MLflow model output there.')
param mlStorageAccountId string
@description('Optional: the developer (or CI service principal) running azd, for reading the data while debugging.')
param userPrincipalId string = ''
@description('What userPrincipalId is: azd passes AZURE_PRINCIPAL_TYPE (User, or ServicePrincipal when azd runs as one in CI).')
@allowed(['User', 'ServicePrincipal', 'Group'])
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // the Functions host's blob trigger receipts and leases
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // queue trigger and output
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // the ML workspace reads prepared data
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // the fine-tune's model output; a developer uploads datasets
  // The deploy trigger, job_events' send, the dead-letter tooling, and the scale controller reading the
  // queue's length: "Manage" rights (Data Owner), scoped to the one queue. With Receiver only, target-based
  // scaling cannot read the length and silently falls back to incremental scaling.
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Entra-authenticated telemetry
  azureMlDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121' // jobs, models, online endpoints; no compute or workspace changes
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: storageAccountName }
resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = { name: serviceBusName }
resource deploymentsQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: serviceBus
  name: serviceBusQueueName
}
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = { name: applicationInsightsName }
resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = { name: mlWorkspaceName }

// The workspace's default storage: this template's account for a new workspace, the workspace's own for an
// existing one (assigned here when it lives in this resource group and subscription, as workspace creation
// puts it; otherwise grant the role yourself, see the README).
var mlStorageSegments = split(mlStorageAccountId, '/')
var mlStorageHere = toLower(mlStorageSegments[2]) == toLower(subscription().subscriptionId) && toLower(mlStorageSegments[4]) == toLower(resourceGroup().name)
resource mlStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: last(mlStorageSegments) }

resource appBlob 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

resource appQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

resource workspaceReadsPrepared 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, mlWorkspacePrincipalId, roles.storageBlobDataReader)
  scope: storage
  properties: {
    principalId: mlWorkspacePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
  }
}

// The fine-tune runs on serverless compute as the identity that submitted it (user identity: the app's
// identity here). Serverless compute has no system-assigned identity, and with shared keys disabled on
// the workspace's storage the job writes its MLflow model output with that identity's token, which needs
// Storage Blob Data Contributor on the workspace's default storage account.
resource jobWritesModel 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (mlStorageHere) {
  name: guid(mlStorage.id, identityPrincipalId, roles.storageBlobDataContributor)
  scope: mlStorage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

resource appOwnsDeploymentsQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deploymentsQueue.id, identityPrincipalId, roles.serviceBusDataOwner)
  scope: deploymentsQueue
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
  }
}

resource appTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identityPrincipalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

resource appMl 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, identityPrincipalId, roles.azureMlDataScientist)
  scope: workspace
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMlDataScientist)
  }
}

resource userBlob 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, roles.storageBlobDataContributor)
  scope: storage
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

output mlStorageRoleAssigned bool = mlStorageHere

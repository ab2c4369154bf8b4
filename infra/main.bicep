// tuneflow on Azure: a Flex Consumption Function App driving an Azure ML workspace, identity only.
// `azd up` provisions this, deploys the app, then runs infra/hooks/postdeploy.sh, which deploys
// infra/app/event-subscriptions.bicep: the Event Grid subscriptions need the function's system keys,
// which exist only once the deployed code has started.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; a short hash of it names every resource.')
param environmentName string

// Regions that offer the Flex Consumption plan: the list of Azure-Samples/functions-quickstart-python-http-azd
// (infra/main.bicep, Microsoft's azd template for Python on Flex Consumption), without its canary region
// eastus2euap. Microsoft's docs keep the live list behind `az functionapp list-flexconsumption-locations`
// (https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to#view-currently-supported-regions):
// check it there before adding a region. Every resource (the Azure ML workspace included) goes here.
@minLength(1)
@description('Primary location for all resources; must offer the Flex Consumption plan.')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({ azd: { type: 'location' } })
param location string

@description('Use this existing Azure ML workspace (in the same resource group); empty: create one.')
param existingMlWorkspaceName string = ''

@description('Object id of the person running azd, given data access for debugging; empty: none.')
param principalId string = ''

@description('What principalId is: azd passes AZURE_PRINCIPAL_TYPE, ServicePrincipal when it runs as one (CI).')
@allowed(['User', 'ServicePrincipal', 'Group'])
param principalType string = 'User'

@description('How long an endpoint lives before the reaper deletes it (30m, 8h, 7d, 2w, PT8H).')
param endpointTtl string = '2h'

@description('Base model in the azureml registry (must support chat-completion fine-tuning).')
param baseModel string = 'Phi-4'

@description('E-mail for the reaper circuit-breaker alert; empty: the alert fires in Azure Monitor only.')
param alertEmail string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var deploymentContainer = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}tuneflow-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainer: deploymentContainer
  }
}

module serviceBus 'app/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: '${abbrs.serviceBusNamespaces}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    alertEmail: alertEmail
  }
}

module ml 'app/ml.bicep' = {
  name: 'ml'
  scope: rg
  params: {
    existingWorkspaceName: existingMlWorkspaceName
    workspaceName: '${abbrs.machineLearningServicesWorkspaces}${resourceToken}'
    keyVaultName: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    storageAccountId: storage.outputs.id
    preparedContainer: storage.outputs.preparedContainer
  }
}

module functions 'app/functions.bicep' = {
  name: 'functions'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainer: deploymentContainer
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    serviceBusNamespace: serviceBus.outputs.fullyQualifiedNamespace
    mlWorkspaceName: ml.outputs.workspaceName
    mlDatastoreName: ml.outputs.datastoreName
    endpointTtl: endpointTtl
    baseModel: baseModel
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    identityPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusName: serviceBus.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    serviceBusQueueName: serviceBus.outputs.queueName
    mlWorkspaceName: ml.outputs.workspaceName
    mlWorkspacePrincipalId: ml.outputs.workspacePrincipalId
    mlStorageAccountId: ml.outputs.storageAccountId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module events 'app/events.bicep' = {
  name: 'events'
  scope: rg
  params: {
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
    storageAccountName: storage.outputs.name
    deadLetterContainer: storage.outputs.deadLetterContainer
    mlWorkspaceId: ml.outputs.workspaceId
    storageTopicName: '${abbrs.eventGridSystemTopics}storage-${resourceToken}'
    mlTopicName: '${abbrs.eventGridSystemTopics}ml-${resourceToken}'
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functions.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_SERVICEBUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output AZURE_ML_WORKSPACE_NAME string = ml.outputs.workspaceName
output AZURE_EVENTGRID_STORAGE_TOPIC string = events.outputs.storageTopicName
output AZURE_EVENTGRID_ML_TOPIC string = events.outputs.mlTopicName
output AZURE_EVENTGRID_DEADLETTER_CONTAINER string = events.outputs.deadLetterContainer
output TUNEFLOW_ML_STORAGE_ROLE_ASSIGNED bool = rbac.outputs.mlStorageRoleAssigned

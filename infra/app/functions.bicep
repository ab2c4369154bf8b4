// The Function App on Flex Consumption (Python 3.11), running as the user-assigned identity, with
// every connection identity-based: no account key, SAS or connection string in its settings.
param name string
param planName string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainer string
param applicationInsightsName string
param serviceBusNamespace string
param mlWorkspaceName string
param mlDatastoreName string
param endpointTtl string
param baseModel string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'plan'
  params: {
    name: planName
    location: location
    tags: tags
    sku: { name: 'FC1', tier: 'FlexConsumption' }
    reserved: true
  }
}

// What the app reads (see shared/settings.py and the README's settings table).
var appSettings = {
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  AZURE_CLIENT_ID: identityClientId // DefaultAzureCredential in the Azure ML backend picks this identity
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  TUNEFLOW_ML_BACKEND: 'azure'
  TUNEFLOW_AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
  TUNEFLOW_AZURE_RESOURCE_GROUP: resourceGroup().name
  TUNEFLOW_AML_WORKSPACE: mlWorkspaceName
  TUNEFLOW_AML_DATASTORE: mlDatastoreName
  TUNEFLOW_BASE_MODEL: baseModel
  TUNEFLOW_ENDPOINT_TTL: endpointTtl
  TUNEFLOW_REAPER_SCHEDULE: '0 */5 * * * *'
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: public network access: Event Grid delivers to the app's webhooks (authorized by the extension's system key); a VNet deployment is out of scope.
  // checkov:skip=CKV_AZURE_70: HTTPS only is set (httpsOnly: true); the check does not read it on Flex Consumption sites.
  // checkov:skip=CKV_AZURE_17: no client certificates: the only callers are Event Grid webhooks, which authenticate with the system key.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero on demand: a standing minimum would bill idle GPU-less instances for nothing.
  // checkov:skip=CKV_AZURE_213: no HTTP functions to probe; the platform tracks the triggers' health.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'app' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.outputs.resourceId
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: { type: 'UserAssignedIdentity', userAssignedIdentityResourceId: identityId }
        }
      }
      scaleAndConcurrency: { maximumInstanceCount: 40, instanceMemoryMB: 2048 }
      runtime: { name: 'python', version: '3.11' }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  // This is the `appsettings` config (name/value pairs), not the site's `web` config: checkov applies its
  // web-config checks to every sites/config resource. None of them concern app settings:
  // checkov:skip=CKV_AZURE_13: web-config check (App Service authentication); see above.
  // checkov:skip=CKV_AZURE_63: web-config check (HTTP logging); see above.
  // checkov:skip=CKV_AZURE_65: web-config check (detailed errors); see above.
  // checkov:skip=CKV_AZURE_66: web-config check (failed request tracing); see above.
  // checkov:skip=CKV_AZURE_80: web-config check (.NET version; this is a Python app); see above.
  // checkov:skip=CKV_AZURE_88: web-config check (Azure Files mounts); see above.
  // checkov:skip=CKV_AZURE_222: web-config check (public network access, skipped on the site with its reason); see above.
  parent: app
  name: 'appsettings'
  properties: union(appSettings, { APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString })
}

output name string = app.name

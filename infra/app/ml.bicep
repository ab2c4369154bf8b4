// The Azure ML workspace the app fine-tunes in: an existing one, or a new one (with its Key Vault;
// it shares the app's storage account and Application Insights). Either way, the datastore
// `tuneflow_prepared` points at the `prepared` container with identity-based access, which is
// where the pipeline job reads train.jsonl and test.jsonl.
param existingWorkspaceName string
param workspaceName string
param keyVaultName string
param location string
param tags object
param applicationInsightsId string
param storageAccountId string
param preparedContainer string

var createWorkspace = empty(existingWorkspaceName)
var datastoreName = 'tuneflow_prepared'

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = if (createWorkspace) {
  // checkov:skip=CKV_AZURE_109: the workspace's own vault; network rules follow the workspace, which is public without a VNet.
  // checkov:skip=CKV_AZURE_189: same: public network access is needed without private endpoints.
  // checkov:skip=CKV_AZURE_42: soft delete is on (enableSoftDelete: true); checkov does not read the properties of a conditional (`if`) resource: the same vault without the condition passes.
  // checkov:skip=CKV_AZURE_110: purge protection is deliberately off: `azd down --purge` purges only vaults without it, so with it the next `azd up` of the same environment fails on the soft-deleted name; the vault holds no secret of ours (identity-based datastores, RBAC only).
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    // enablePurgeProtection is left unset (off). Key Vault refuses `false` for it, and once on it
    // cannot be turned off, so `azd down --purge` could never purge this name again.
    softDeleteRetentionInDays: 7
  }
}

resource created 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = if (createWorkspace) {
  // checkov:skip=CKV_AZURE_243: no private endpoint without a VNet; the workspace is reached with Entra RBAC only.
  name: workspaceName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  sku: { name: 'Basic', tier: 'Basic' }
  properties: {
    friendlyName: workspaceName
    storageAccount: storageAccountId
    keyVault: keyVault.id
    applicationInsights: applicationInsightsId
    systemDatastoresAuthMode: 'identity'
    publicNetworkAccess: 'Enabled'
  }
}

resource existing 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = if (!createWorkspace) {
  name: existingWorkspaceName
}

var name = createWorkspace ? created.name : existing.name

resource datastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-04-01' = {
  name: '${name}/${datastoreName}'
  properties: {
    datastoreType: 'AzureBlob'
    accountName: last(split(storageAccountId, '/'))
    containerName: preparedContainer
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: { credentialsType: 'None' } // identity-based: the job's identity reads the blobs
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
  }
  dependsOn: [created]
}

output workspaceName string = name
output workspaceId string = createWorkspace ? created.id : existing.id
@description('The workspace\'s default storage account (where the fine-tune writes its MLflow model output).')
output storageAccountId string = createWorkspace ? storageAccountId : existing.properties.storageAccount
output workspacePrincipalId string = createWorkspace ? created.identity.principalId : existing.identity.principalId
output datastoreName string = datastoreName

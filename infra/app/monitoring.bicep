// Logs and traces: Log Analytics and an Application Insights that accepts Entra-authenticated
// telemetry only (the function app sends with its managed identity).
param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'loganalytics'
  params: {
    name: logAnalyticsName
    location: location
    tags: tags
    dataRetention: 30
  }
}

module appInsights 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'appinsights'
  params: {
    name: applicationInsightsName
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
  }
}

output applicationInsightsName string = appInsights.outputs.name
output applicationInsightsId string = appInsights.outputs.resourceId

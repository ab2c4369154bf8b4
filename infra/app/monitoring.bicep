// Logs and traces: Log Analytics and an Application Insights that accepts Entra-authenticated
// telemetry only (the function app sends with its managed identity).
param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object
@description('Optional e-mail address for the reaper circuit-breaker alert; empty: the alert fires without notifying anyone.')
param alertEmail string = ''

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

resource alertGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-tuneflow-reaper'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'tf-reaper'
    enabled: true
    emailReceivers: [{ name: 'platform', emailAddress: alertEmail, useCommonAlertSchema: true }]
  }
}

// The reaper's circuit breaker logs one CRITICAL record ("reaper circuit breaker: ...") and deletes
// nothing: a person should look. Severity 1, evaluated every 5 minutes (the reaper's schedule).
resource breakerAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'tuneflow-reaper-circuit-breaker'
  location: location
  tags: tags
  properties: {
    displayName: 'tuneflow: the reaper circuit breaker tripped'
    description: 'A reaper run would have deleted too many endpoints and deleted none. Check the flagged endpoints (tuneflow reap --dry-run) before raising TUNEFLOW_REAPER_MAX_DELETES.'
    severity: 1
    enabled: true
    scopes: [appInsights.outputs.resourceId]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT10M'
    criteria: {
      allOf: [
        {
          query: 'traces | where severityLevel >= 4 and message startswith "reaper circuit breaker"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    actions: { actionGroups: empty(alertEmail) ? [] : [alertGroup.id] }
  }
}

output applicationInsightsName string = appInsights.outputs.name
output applicationInsightsId string = appInsights.outputs.resourceId

"""Names every part of the system agrees on: containers, queues, tags, function names."""

DATASETS_CONTAINER = "datasets"
PREPARED_CONTAINER = "prepared"
FLOWS_CONTAINER = "flows"
REAPER_CONTAINER = "reaper"  # the reaper's lock, first-seen times and audit records

FINETUNE_QUEUE = "finetune-requests"
DEPLOY_QUEUE = "deployments"

TAG_MANAGED_BY = "managed-by"
MANAGED_BY_VALUE = "tuneflow"
TAG_FLOW_ID = "flow-id"
TAG_EXPIRES_AT = "expires-at"
TAG_DO_NOT_DELETE = "do-not-delete"
TAG_DATASET = "dataset"
TAG_DATASET_VERSION = "dataset-version"
TAG_JOB = "job"
TAG_MODEL = "model"
TAG_GATE = "gate"  # on a job: `off` when its request switched the quality gate off
TAG_EVAL_LOSS = "eval-loss"  # on a model: its gate figures
TAG_BASE_EVAL_LOSS = "base-eval-loss"
TAG_BASE_MODEL = "base-model"  # the registry model (with its version) a job fine-tuned: deploy reads its sizes

PIPELINE_RUN_TYPE = "azureml.PipelineRun"
EVENT_RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
EVENT_RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
EVENT_SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
EVENT_BLOB_CREATED = "Microsoft.Storage.BlobCreated"

TAG_FLOW_STARTED_AT = "flow-started-at"  # on a deployment: when its flow began (a later flow's model supersedes it)
TAG_TRAFFIC_CHANGED_AT = "traffic-changed-at"  # on an endpoint: tuneflow's last traffic change (idle deployments age from it)

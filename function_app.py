"""The tuneflow Function App (Python v2 model): one blueprint per function in `functions/`.

Heavy libraries (azure-ai-ml, torch, transformers, mlflow, pyarrow) are imported only inside the
code that needs them: the worker imports this file, and so every function, at cold start.
"""

import azure.functions as func

from functions import data_arrival, deploy, job_events, reaper, submit
from shared.observability import install_flow_ids

install_flow_ids()  # every log record, of any logger, carries its invocation's flow id

app = func.FunctionApp()
for module in (data_arrival, submit, job_events, deploy, reaper):
    app.register_functions(module.bp)

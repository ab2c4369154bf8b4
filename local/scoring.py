"""A local online deployment: `python -m local.scoring DEPLOYMENT_DIR` (started by the local workspace,
behind its endpoint's router, local/router.py).

Loads the registered MLflow model, listens on a free loopback port (the same one again when
restarted) and serves the Azure ML chat-completion contract: `POST /score` with `Authorization: Bearer <key>` and the body
`{"input_data": {"input_string": [messages], "parameters": {...}}}` (a list holding one conversation,
as the seed sends it), answering `{"output": text}`. Without the right key: 401; any other body (a
flat list of turns included): 400 with the reason. A conversation containing TUNEFLOW_LOCAL_SCORING_FAULT
(when set) is answered 500, as a model that crashes on some inputs: how tests fail a smoke test. It records itself in `process.json` at once, and its
port with `ready` once it serves (shared/ml/procs.py).
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.ml import procs
from shared.ml.procs import read_json
from shared.scoring import BadScoringRequest, read_request

MAX_NEW_TOKENS_CAP = 512


class ChatModel:
    def __init__(self, model, tokenizer):
        import torch
        self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        self._torch = torch
        self._lock = threading.Lock()

    @classmethod
    def from_mlflow(cls, model_uri: str, tracking_uri: str) -> "ChatModel":
        """A registered model, as the endpoint serves it."""
        import mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        parts = mlflow.transformers.load_model(model_uri, return_type="components")
        return cls(parts["model"], parts["tokenizer"])

    @classmethod
    def from_checkpoint(cls, folder) -> "ChatModel":
        """A checkpoint folder (the base model), answering exactly as an endpoint would."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        return cls(AutoModelForCausalLM.from_pretrained(folder, local_files_only=True),
                   AutoTokenizer.from_pretrained(folder, local_files_only=True))

    def generate(self, messages: list[dict], params: dict) -> str:
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer(prompt, return_tensors="pt")
        do_sample = bool(params.get("do_sample", False))
        kwargs = {"max_new_tokens": max(1, min(int(params.get("max_new_tokens", 200)), MAX_NEW_TOKENS_CAP)),
                  "do_sample": do_sample, "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": self.tokenizer.eos_token_id}
        if do_sample:
            kwargs.update(temperature=float(params.get("temperature", 1.0)), top_p=float(params.get("top_p", 1.0)))
        with self._lock, self._torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def make_handler(chat: ChatModel, key: str, fault: str = ""):
    class Handler(BaseHTTPRequestHandler):
        server_version = "tuneflow-local-endpoint"

        def log_message(self, fmt, *args):
            print("http " + fmt % args, flush=True)

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                return self._reply(200, {"status": "Healthy"})
            self._reply(404, {"error": "not found"})

        def do_POST(self):
            if self.path.rstrip("/") != "/score":
                return self._reply(404, {"error": "not found: POST /score"})
            auth = self.headers.get("Authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), key.encode()):
                return self._reply(401, {"error": "missing or wrong key: send 'Authorization: Bearer <endpoint key>'"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                messages, params = read_request(body)
            except (ValueError, BadScoringRequest) as exc:
                return self._reply(400, {"error": str(exc)})
            if fault and fault in json.dumps(messages):  # the stand-in's fault injection (tests, chaos)
                return self._reply(500, {"error": f"RuntimeError: the model crashed on this input "
                                                  f"(TUNEFLOW_LOCAL_SCORING_FAULT={fault!r})"})
            try:
                text = chat.generate(messages, params)
            except Exception as exc:  # report, keep serving
                return self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})
            self._reply(200, {"output": text})

    return Handler


def main(argv: list[str]) -> int:
    dep_dir = Path(argv[1])  # <endpoint>/deployments/<deployment>
    procs.announce(dep_dir)  # first: whoever looks finds this process, even if its starter died
    record = read_json(dep_dir / "deployment.json")
    key = (dep_dir.parent.parent / "key").read_text().strip()  # the endpoint's key: the router forwards it
    chat = ChatModel.from_mlflow(record["model"]["uri"], record["tracking_uri"])
    # A deployment's address is stable: a restarted process binds the port its first process was given.
    server = ThreadingHTTPServer(("127.0.0.1", int(record.get("port") or 0)), make_handler(
        chat, key, os.environ.get("TUNEFLOW_LOCAL_SCORING_FAULT", "")))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    procs.announce(dep_dir, port=server.server_address[1], ready=True)
    print(f"deployment {record['name']} serving {record['model']['uri']} on 127.0.0.1:{server.server_address[1]}",
          flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The Azure ML chat-completion request/response contract, as the seed notebook uses it."""

from __future__ import annotations

SEED_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}


class BadScoringRequest(ValueError):
    pass


SHAPE = '{"input_data": {"input_string": [[{"role": ..., "content": ...}, ...]], "parameters": {...}}}'
ROLES = ("system", "user", "assistant")


def request_body(messages: list[dict], parameters: dict | None = None) -> dict:
    """The seed's body for one conversation: `"input_string": [messages]`, a list holding the conversation."""
    return {"input_data": {"input_string": [messages], "parameters": {**SEED_PARAMETERS, **(parameters or {})}},
            "params": {}}


def read_request(body: object) -> tuple[list[dict], dict]:
    """The conversation and generation parameters of a request body, validated: `input_string` is a
    list holding one conversation, as the seed sends it; a flat list of turns is refused."""
    if not isinstance(body, dict) or not isinstance(body.get("input_data"), dict):
        raise BadScoringRequest(f"body must be {SHAPE}")
    data = body["input_data"]
    conversations = data.get("input_string")
    if not isinstance(conversations, list) or not conversations:
        raise BadScoringRequest(f"input_data.input_string must be a list holding one conversation: {SHAPE}")
    if any(isinstance(turn, dict) for turn in conversations):
        raise BadScoringRequest("input_data.input_string is a flat list of turns: wrap the conversation in a list, "
                                '"input_string": [messages]')
    if len(conversations) != 1:
        raise BadScoringRequest(f"input_data.input_string holds {len(conversations)} conversations: "
                                f"send one per request")
    messages = conversations[0]
    if not isinstance(messages, list) or not messages:
        raise BadScoringRequest(f"input_data.input_string[0] must be a non-empty list of messages: {SHAPE}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise BadScoringRequest('each message must be {"role": system|user|assistant, "content": string}')
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadScoringRequest("input_data.parameters must be an object")
    return messages, params


def reply_text(response: object) -> str:
    """The generated text from any of the shapes endpoints answer with: {"output": ...}, a list, records."""
    if isinstance(response, dict):
        for key in ("output", "generated_text", "content", "0"):
            if key in response:
                return reply_text(response[key])
        return str(response)
    if isinstance(response, list):
        return reply_text(response[0]) if response else ""
    return "" if response is None else str(response)


def held_out_prompt(row: dict) -> list[dict]:
    """A held-out conversation up to (not including) its last assistant turn."""
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last] or messages[:1]

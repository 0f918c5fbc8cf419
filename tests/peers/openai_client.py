"""The official OpenAI Python client against parlor's /v1/chat/completions.

Usage: openai_client.py BASE_URL MODEL TASKS_JSON

Prints one JSON object on stdout with what it saw; tests/server_chat.rs
checks it. Exits non-zero if the client raised something unexpected.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, model, tasks_path = sys.argv[1:4]
    with open(tasks_path) as f:
        tasks = json.load(f)
    tools = [{"type": "function", "function": t} for t in tasks["tools"]]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    out = {"openai_version": openai.__version__}

    # Non-streaming, with tools: a structured tool call.
    r = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": tasks["system"]},
            {"role": "user", "content": "Where is my order 1042?"},
        ],
        tools=tools,
        temperature=0,
    )
    choice = r.choices[0]
    call = choice.message.tool_calls[0]
    out["tool_call"] = {
        "finish_reason": choice.finish_reason,
        "content": choice.message.content,
        "id": call.id,
        "name": call.function.name,
        "arguments": json.loads(call.function.arguments),
        "usage_total": r.usage.total_tokens,
    }

    # Streaming text.
    text = []
    finish = None
    chunks = 0
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello to Ada in one short sentence."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    out["stream"] = {"text": "".join(text), "finish_reason": finish, "chunks": chunks, "usage_total": usage}

    # Errors raise the client's own exception types.
    errors = {}
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        errors["not_found"] = "no exception"
    except openai.NotFoundError as e:
        errors["not_found"] = {"status": e.status_code, "code": e.code, "message": e.message}
    try:
        client.chat.completions.create(model=model, messages=[])
        errors["bad_request"] = "no exception"
    except openai.BadRequestError as e:
        errors["bad_request"] = {"status": e.status_code, "code": e.code, "param": e.param, "message": e.message}
    out["errors"] = errors

    print(json.dumps(out))


if __name__ == "__main__":
    main()

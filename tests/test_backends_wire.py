"""The ``openai`` (vLLM) and ``ollama`` backends over their wire protocols, with tool calls.

Tiny fake servers (``http.server`` in a thread, on loopback) stand in for vLLM's
OpenAI-compatible ``POST /v1/chat/completions`` (JSON, or server-sent events when streamed) and
Ollama's ``POST /api/chat`` (a stream of JSON lines). They answer a question with a tool call,
and a conversation that holds the tool's result with a sentence quoting it, so each test runs
the round trip the agent makes: the request (model, tools, token limit, the tool result sent
back) and the reply read into LangChain tool calls and text.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from assistant.backends import (
    LOCAL_API_KEY,
    describe_backend,
    make_chat_model,
    sends_data_off_machine,
)
from assistant.config import AssistantConfig

VLLM_MODEL = "Qwen/Qwen2.5-7B-Instruct"
OLLAMA_MODEL = "llama3.1"
TOOL_RESULT = "AHI (3 % rule) 23.4 events/h, moderate; ODI 19.8 /h; SpO2 nadir 81 %"

#: The vLLM configuration example of the README (``--config vllm.toml``).
VLLM_TOML = f"""\
# vLLM on this machine: vllm serve {VLLM_MODEL} --enable-auto-tool-choice \\
#   --tool-call-parser hermes --port 8000
backend = "openai"
base_url = "http://127.0.0.1:8000/v1"
model = "{VLLM_MODEL}"
timeout_s = 120
"""


@tool
def report_facts(section: str = "all") -> str:
    """The clinical numbers of the night (AHI, ODI, SpO2, sleep architecture)."""
    return TOOL_RESULT


Responder = Callable[[str, dict], tuple[str, bytes]]


@contextlib.contextmanager
def fake_server(respond: Responder) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 answering every request with ``respond(path, body)``
    (content type, bytes); yields its root URL and the requests it got (path, headers with
    lower-case names, JSON body)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict) -> None:
            seen.append({"path": self.path, "body": body,
                         "headers": {k.lower(): v for k, v in self.headers.items()}})
            ctype, data = respond(self.path, body)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer({})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(json.loads(self.rfile.read(length) or b"{}"))

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _tool_result(messages: list[dict]) -> str | None:
    """The content of the last tool message of a request, if any."""
    results = [m.get("content") for m in messages if m.get("role") == "tool"]
    return str(results[-1]) if results else None


def _answer_from(result: str) -> str:
    ahi = re.search(r"AHI[^\d]*\d[^\d]*?(\d+\.\d)", result)
    return f"The AHI is {ahi.group(1) if ahi else '?'} events/h (moderate)."


# --------------------------------------------------------------------- vLLM (OpenAI API)


def _openai_respond(path: str, body: dict) -> tuple[str, bytes]:
    """vLLM's ``/v1/models`` and ``/v1/chat/completions`` (with ``--enable-auto-tool-choice``)."""
    if path.endswith("/models"):
        return "application/json", json.dumps(
            {"object": "list", "data": [{"id": VLLM_MODEL, "object": "model"}]}).encode()
    assert path == "/v1/chat/completions", path
    result = _tool_result(body["messages"])
    if result is None:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "chatcmpl-tool-1", "type": "function",
             "function": {"name": "report_facts", "arguments": '{"section": "respiratory"}'}}]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": _answer_from(result)}
        finish = "stop"
    usage = {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}
    if not body.get("stream"):
        return "application/json", json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": VLLM_MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage}).encode()
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": VLLM_MODEL}
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    if message.get("tool_calls"):
        tc = message["tool_calls"][0]
        deltas += [{"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                    "function": {"name": "report_facts", "arguments": ""}}]},
                   {"tool_calls": [{"index": 0, "function": {"arguments": '{"section": '}}]},
                   {"tool_calls": [{"index": 0, "function": {"arguments": '"respiratory"}'}}]}]
    else:
        deltas += [{"content": word} for word in re.split(r"(?<= )", message["content"])]
    events = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
              for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return "text/event-stream", text.encode()


@pytest.fixture
def vllm():
    with fake_server(_openai_respond) as (root, seen):
        yield root + "/v1", seen


def test_vllm_config_example_is_local_and_complete(tmp_path):
    path = tmp_path / "vllm.toml"
    path.write_text(VLLM_TOML, encoding="utf-8")
    config = AssistantConfig.load(path, env={})
    assert (config.backend, config.base_url, config.model, config.timeout_s) == (
        "openai", "http://127.0.0.1:8000/v1", VLLM_MODEL, 120)
    assert not sends_data_off_machine(config)
    assert describe_backend(config) == (f"OpenAI-compatible server at http://127.0.0.1:8000 "
                                        f"(model {VLLM_MODEL}; data stays on this machine)")


def test_vllm_tool_call_round_trip(vllm, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url, seen = vllm
    config = AssistantConfig(backend="openai", base_url=url, model=VLLM_MODEL, timeout_s=10,
                             max_retries=0)
    model = make_chat_model(config, max_tokens=64).bind_tools([report_facts])
    question = HumanMessage("What is the AHI?")
    first = model.invoke([question])
    assert isinstance(first, AIMessage)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("report_facts", {"section": "respiratory"})]
    request = seen[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {LOCAL_API_KEY}"  # loopback: no key
    body = request["body"]
    assert body["model"] == VLLM_MODEL and body["temperature"] == 0.0
    assert body["max_tokens"] == 64 or body.get("max_completion_tokens") == 64
    assert [t["function"]["name"] for t in body["tools"]] == ["report_facts"]
    assert "section" in body["tools"][0]["function"]["parameters"]["properties"]

    call = first.tool_calls[0]
    result = ToolMessage(report_facts.invoke(call["args"]), tool_call_id=call["id"])
    answer = model.invoke([question, first, result])
    assert answer.text == "The AHI is 23.4 events/h (moderate)." and not answer.tool_calls
    sent = seen[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    # what OpenAI clients send for a tool-call turn (llama-cpp-python's server refuses the
    # null content; assistant.gguf_parts serves it with a filter that accepts it)
    assert sent[1]["content"] is None
    assert sent[1]["tool_calls"][0]["function"]["name"] == "report_facts"
    assert sent[2] == {"role": "tool", "content": TOOL_RESULT,
                       "tool_call_id": call["id"]}


def test_vllm_streamed_tool_call_and_answer(vllm):
    url, seen = vllm
    model = make_chat_model(AssistantConfig(backend="openai", base_url=url, model=VLLM_MODEL,
                                            timeout_s=10, max_retries=0)).bind_tools(
        [report_facts])
    question = HumanMessage("What is the AHI?")
    first = None
    for chunk in model.stream([question]):
        first = chunk if first is None else first + chunk
    assert seen[-1]["body"]["stream"] is True
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("report_facts", {"section": "respiratory"})]
    result = ToolMessage(TOOL_RESULT, tool_call_id=first.tool_calls[0]["id"])
    pieces = [c.text for c in model.stream([question, first, result])]
    assert len(pieces) > 3 and "".join(pieces) == "The AHI is 23.4 events/h (moderate)."


# ------------------------------------------------------------------------------- Ollama


def _ollama_respond(path: str, body: dict) -> tuple[str, bytes]:
    """Ollama's ``/api/chat``: JSON lines, the last one with ``done: true``."""
    assert path == "/api/chat", path
    result = _tool_result(body["messages"])
    stamp = {"model": body["model"], "created_at": "2026-12-06T00:00:00Z"}
    if result is None:
        lines = [{**stamp, "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "report_facts", "arguments": {"section": "respiratory"}}}]},
            "done": False}]
    else:
        lines = [{**stamp, "message": {"role": "assistant", "content": word}, "done": False}
                 for word in re.split(r"(?<= )", _answer_from(result))]
    lines.append({**stamp, "message": {"role": "assistant", "content": ""}, "done": True,
                  "done_reason": "stop", "total_duration": 1000, "prompt_eval_count": 50,
                  "eval_count": 12})
    return "application/x-ndjson", "".join(json.dumps(x) + "\n" for x in lines).encode()


def test_ollama_tool_call_round_trip():
    pytest.importorskip("langchain_ollama")
    with fake_server(_ollama_respond) as (root, seen):
        config = AssistantConfig(backend="ollama", base_url=root, model=OLLAMA_MODEL,
                                 timeout_s=10)
        assert not sends_data_off_machine(config)
        model = make_chat_model(config, max_tokens=64).bind_tools([report_facts])
        question = HumanMessage("What is the AHI?")
        first = model.invoke([question])
        assert [(c["name"], c["args"]) for c in first.tool_calls] == [
            ("report_facts", {"section": "respiratory"})]
        body = seen[-1]["body"]
        assert body["model"] == OLLAMA_MODEL
        assert body["options"]["num_predict"] == 64 and body["options"]["temperature"] == 0.0
        assert [t["function"]["name"] for t in body["tools"]] == ["report_facts"]

        result = ToolMessage(TOOL_RESULT, tool_call_id=first.tool_calls[0]["id"])
        answer = model.invoke([question, first, result])
        assert answer.text == "The AHI is 23.4 events/h (moderate)." and not answer.tool_calls
        sent = seen[-1]["body"]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        assert sent[1]["tool_calls"][0]["function"] == {"name": "report_facts",
                                                        "arguments": {"section": "respiratory"}}
        assert sent[2]["content"] == TOOL_RESULT

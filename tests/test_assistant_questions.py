"""The assistant's question set (assistant/questions.jsonl) and its benchmark's scoring.

The schema checks read the shipped question set: enough items, every category, real tool and
measure names, sound conversations. A subset of its questions then runs through the offline
planner on a tiny simulated library with an untrained tiny SleepLM (the questions re-pointed at
the tiny patient): routing must match and no answer may hold a number that is in none of its
sources (tool results, question, earlier turns).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_checkpoint, write_tiny_library

from assistant.agent import Answer, Assistant, ToolStep
from assistant.config import AssistantConfig
from assistant.planner import OfflinePlanner
from sleeplm.library.patients import PatientLibrary
from tools import ToolContext, report_facts
from tools.langchain_tools import TOOL_NAMES

ROOT = Path(__file__).resolve().parents[1]
PLAN = (("osa_moderate", 51, "SC4031E0"),)
PATIENT = "sim-00051-osa_moderate"
#: Questions of the shipped set that any short night can answer (in set order: q024 lists
#: the longest apnea, q028 follows it up).
SUBSET = ("q001", "q002", "q007", "q024", "q028", "q042", "q072", "q080", "q099")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "assistant_questions", ROOT / "benchmarks" / "assistant_questions.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


B = _load_benchmark()


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> PatientLibrary:
    root = tmp_path_factory.mktemp("questions")
    lib_dir = root / "lib"
    lib_dir.mkdir()
    write_tiny_library(lib_dir, PLAN)
    ck = tiny_checkpoint(root)
    return PatientLibrary(lib_dir, model_dir=ck)


@pytest.fixture(scope="module")
def measure_names(library) -> set[str]:
    facts = report_facts(ToolContext(library=library, patient=PATIENT))
    return {m.name for ms in facts.sections.values() for m in ms}


# ---------------------------------------------------------------------------- the set


def test_question_set_schema(measure_names):
    questions = B.load_questions()
    assert B.QUESTIONS_PATH.parent == ROOT / "assistant"  # ships inside the package folder
    assert len(questions) >= 80
    assert {q.category for q in questions} == set(B.CATEGORIES)
    tools = set(TOOL_NAMES) | set(B.REPORT_TOOL_NAMES)
    assert B.check_question_set(questions, tools, measure_names) == []
    assert sum(q.paraphrase_of is not None for q in questions) >= 10
    assert len({q.patient for q in questions}) >= 5
    # follow-ups and report edits come after something to refer to, in the same thread
    for convo in B.conversations(questions):
        assert convo[0].category not in ("followup", "report_edit"), convo[0].id
    # out-of-scope requests call no tool
    assert all(not q.expect_tools for q in questions if q.category == "out_of_scope")


def test_question_set_rejects_bad_items(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "patient": "p", "conversation": "c", "question": "x", '
                   '"category": "gossip"}\n')
    with pytest.raises(ValueError, match="unknown category"):
        B.load_questions(bad)
    bad.write_text('{"id": "a", "patient": "p", "conversation": "c", "question": "x", '
                   '"category": "measure", "expect_tools": ["report_facts"]}\n' * 2)
    with pytest.raises(ValueError, match="duplicate"):
        B.load_questions(bad)
    q = B.Question(id="a", patient="p", conversation="c", question="x", category="measure",
                   expect_tools=["crystal_ball"], expect_facts=["ahi_9"], paraphrase_of="zz")
    problems = B.check_question_set([q], TOOL_NAMES, {"ahi_3a"})
    assert len(problems) == 3 and "crystal_ball" in problems[0]


def test_the_blind_and_held_out_sets_are_sound(measure_names):
    """The question sets written without seeing the router (blind, held-out, second blind)
    name real tools and measures, keep a conversation with one patient, and start no
    conversation with a follow-up."""
    tools = set(TOOL_NAMES) | set(B.REPORT_TOOL_NAMES)
    folder = B.QUESTIONS_PATH.parent
    sets = [folder / f"questions_{n}.jsonl" for n in ("blind", "heldout", "blind2")]
    questions = B.load_question_sets(sets)
    assert len(questions) == 30 + 40 + 45
    # an index per arousal cause exists where the night scores arousals of that cause (the
    # tiny test night scores no limb arousals)
    from sleeplm.clinical.arousals import _CAUSES

    known = set(measure_names) | {f"{c}_arousal_index" for c in _CAUSES}
    assert B.check_question_set(questions, tools, known) == []
    for convo in B.conversations(questions):
        assert convo[0].category not in ("followup", "report_edit"), convo[0].id
    assert all(not q.expect_tools for q in questions if q.category == "out_of_scope")


def test_question_sets_load_in_order_with_unique_ids(tmp_path):
    shipped = B.QUESTIONS_PATH
    blind = shipped.parent / "questions_blind.jsonl"
    both = B.load_question_sets([shipped, blind])
    assert [q.id for q in both] == [q.id for q in B.load_questions(shipped)] + \
        [q.id for q in B.load_questions(blind)]
    copy = tmp_path / "copy.jsonl"
    copy.write_text(blind.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match="is in both"):
        B.load_question_sets([blind, copy])


# ---------------------------------------------------------------------------- scoring


def test_numbers_and_sources():
    toks = B.numbers_in("1. obstructive apnea at 01:19:47: (epoch 367, N2), 25.7 s; SpO2 "
                        "nadir 88 % in sim-01003-osa_moderate on 2026-01-02, AHI by ahi_3a")
    assert [t.text for t in toks] == ["01:19:47", "367", "25.7", "88"]
    src = B.NumberSources(['{"onset_clock": "01:19:47", "epoch": 367, "duration_s": 25.73}',
                           "nadir 88.0 %"])
    assert all(src.has(t) for t in toks)
    assert B.wrong_numbers("The AHI is 17.6 events/h at 01:20.", src) == ["17.6", "01:20"]
    assert B.wrong_numbers("below the reference of 85 %, T90 at 90 %", src) == []
    assert B.wrong_numbers("the first 2:\n1. a\n2. b", src) == []  # a list's own length
    # a number with a unit needs a source with a unit of the same kind
    facts = B.NumberSources(["- Total sleep time: 411.5 min\n- Wake time: 62.5 min "
                             "[epochs 0-29, 78-221]", '{"value": 17.6, "unit": "events/h"}'])
    assert B.wrong_numbers("slept 411.5 minutes (6.9 hours), awake 62.5 min", facts) == []
    assert B.wrong_numbers("411.5 minutes (62.5 hours) in bed, 78.0 hours asleep", facts) == \
        ["62.5", "78.0"]
    assert B.wrong_numbers("an AHI of 17.6 events per hour; 17.6 %", facts) == ["17.6"]
    assert B.wrong_numbers("epochs 78 to 221, the AHI 17.6", facts) == []  # unitless: any
    # units of no kind (the 1.5 B model invented "40 cm H2O" beside "epoch 40")
    sig = B.NumberSources(["epoch 40 and 61: airflow 1.5 L/min, 4 breaths/min, 12 cm H2O"])
    assert B.wrong_numbers("40 cm H2O and 61 mmHg; 12 cm H2O, 1.5 L/min, 4 breaths per "
                           "minute, epoch 40", sig) == ["40", "61"]


def test_score_checks_routing_facts_and_numbers():
    q = B.Question(id="a", patient="p", conversation="c", question="What is the AHI?",
                   category="measure", expect_tools=["report_facts"], expect_facts=["ahi_3a"])
    step = ToolStep(name="report_facts", content="- AHI: 17.6 events/h")
    good = Answer(patient="p", question=q.question, text="AHI: 17.6 events/h",
                  tool_calls=[step])
    row = B.score(q, good, {"ahi_3a": "17.6 events/h"}, [])
    assert row.passed and row.reasons == []
    assert row.tool_results == ["report_facts({}): - AHI: 17.6 events/h"]  # kept to read
    bad = Answer(patient="p", question=q.question, text="AHI: 0.0 events/h")
    row = B.score(q, bad, {"ahi_3a": "17.6 events/h"}, [])
    assert not row.routing_ok and not row.facts_ok and row.wrong_numbers == ["0.0"]
    summary = B.summarise([row])
    assert summary["all"]["routing"] == 0.0 and summary["measure"]["wrong_numbers"] == 1
    assert "measure" in B.format_table(summary)
    # a number from the tool text given to the wrong measure is a wrong number too
    from sleeplm.clinical.measure import Measure

    q = B.Question(id="b", patient="p", conversation="c", question="how many awakenings?",
                   category="measure", expect_tools=["report_facts"])
    step = ToolStep(name="report_facts", content="- Awakenings: 23 [epochs 3-9 and 20 more]")
    wrote = Answer(patient="p", question=q.question, text="Number of awakenings: 20.",
                   tool_calls=[step])
    awakenings = Measure(name="awakenings", label="Awakenings", value=23, unit="count")
    row = B.score(q, wrote, {}, [], [awakenings])
    assert [w.split(" (")[0] for w in row.wrong_numbers] == ["20"]
    assert "Awakenings 23" in row.wrong_numbers[0]
    assert B.score(q, wrote, {}, []).wrong_numbers == []  # without the measures: present


def test_wrong_numbers_before_grounding_and_routing_without_fallback():
    q = B.Question(id="a", patient="p", conversation="c", question="What is the AHI?",
                   category="measure", expect_tools=["report_facts"], expect_facts=["ahi_3a"])
    step = ToolStep(name="report_facts", content="- AHI: 17.6 events/h")
    grounded = Answer(patient="p", question=q.question, tool_calls=[step],
                      text="AHI: 17.6 events/h; the AHI is [unverified] in REM.",
                      ungrounded_text="AHI: 17.6 events/h; the AHI is 42.0 in REM.")
    row = B.score(q, grounded, {"ahi_3a": "17.6 events/h"}, [])
    assert row.wrong_numbers == [] and row.wrong_numbers_before == ["42.0"]
    assert row.passed and row.llm_routed
    from assistant.toolcalls import FallbackNote

    planner = Answer(patient="p", question=q.question, tool_calls=[step],
                     text="AHI: 17.6 events/h", fallback=FallbackNote(reason="no_tool_call"))
    row2 = B.score(q, planner, {"ahi_3a": "17.6 events/h"}, [])
    row2.fell_back = True
    assert row2.routing_ok and not row2.llm_routed and row2.wrong_numbers_before == []
    s = B.summarise([row, row2])["all"]
    assert s["routing"] == 1.0 and s["routing_own"] == 0.5
    assert s["wrong_numbers"] == 0 and s["wrong_numbers_before"] == 1
    table = B.format_comparison({"gguf": {"per_category": {"all": s}}})
    assert "before" in table and "own" in table
    line = table.splitlines()[-1].split()
    assert line[:7] == ["gguf", "2", "1.00", "0.50", "1.00", "0", "1"]


# ---------------------------------------------------------------------------- offline run


def test_offline_planner_on_a_subset(tmp_path, library):
    by_id = {q.id: q for q in B.load_questions()}
    subset = [by_id[i].model_copy(update={"patient": PATIENT}) for i in SUBSET]
    config = AssistantConfig.load(env={}, state_dir=tmp_path / "state")
    bot = Assistant(config, library=library, index=None, chat_model=OfflinePlanner())
    sink = B.row_sink(tmp_path / "rows.jsonl", "offline")
    rows = B.run_questions(bot, subset, progress=False, sink=sink)
    assert [r.id for r in rows] == list(SUBSET)
    # each row reached the JSON-lines file as it was scored (a stopped run keeps them)
    written = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [w["id"] for w in written] == list(SUBSET)
    assert {w["backend"] for w in written} == {"offline"}
    assert [w["routing_ok"] for w in written] == [r.routing_ok for r in rows]
    for r in rows:
        assert r.error is None, (r.id, r.error)
        assert r.routing_ok, (r.id, r.tools, r.intent, r.reasons)
        assert r.wrong_numbers == [], (r.id, r.answer)
        assert r.answer.strip()
    assert all(r.intent for r in rows)  # the planner's route is read back from the thread
    facts = {r.id: r for r in rows}
    assert facts["q002"].facts_ok and facts["q072"].facts_ok and facts["q099"].facts_ok


def test_a_stopped_run_resumes_with_the_same_code(tmp_path, library):
    """A run stopped half-way continues: finished conversations are kept, a conversation
    left half-way is asked again from its start, and rows of other code are refused."""
    by_id = {q.id: q for q in B.load_questions()}
    subset = [by_id[i].model_copy(update={"patient": PATIENT})
              for i in ("q024", "q028", "q072", "q080")]
    config = AssistantConfig.load(env={}, backend="offline", state_dir=tmp_path / "state")
    rows_path = tmp_path / "run.rows.jsonl"
    first = B.run_backend(config, library, subset[:3], index=False, latency=False,
                          progress=False, sink=B.row_sink(rows_path, "offline", "c1"))
    assert [r["id"] for r in first["rows"]] == ["q024", "q028", "q072"]
    # the run stopped after q024 of the next attempt: drop q028 and q072's lines
    lines = rows_path.read_text().splitlines()
    rows_path.write_text("\n".join([lines[0], lines[2]]) + "\n")

    kept = B.resume_rows(rows_path, subset, "c1")
    assert [r.id for r in kept["offline"]] == ["q072"]  # moderate-events lost q028: asked again
    with pytest.raises(B.ResumeError, match="answered by code 'c1'.*--resume-any-code"):
        B.resume_rows(rows_path, subset, "c2")
    assert [r.id for r in B.resume_rows(rows_path, subset, "c2", any_code=True)["offline"]
            ] == ["q072"]
    assert B.resume_rows(tmp_path / "none.rows.jsonl", subset, "c1") == {}

    B.write_kept_rows(rows_path, kept)
    asked: list[str] = []
    sink = B.row_sink(rows_path, "offline", "c1")
    res = B.run_backend(config, library, subset, index=False, latency=False, progress=False,
                        prior=kept["offline"], sink=lambda r: (asked.append(r.id), sink(r)))
    assert asked == ["q024", "q028", "q080"]
    assert [r["id"] for r in res["rows"]] == ["q024", "q028", "q072", "q080"]
    assert res["n"] == 4 and res["resumed_rows"] == 1
    written = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert sorted(w["id"] for w in written) == ["q024", "q028", "q072", "q080"]
    assert {w["code"] for w in written} == {"c1"}
    # nothing left to ask: no assistant is built, the rows are summarised as they are
    again = B.run_backend(config, library, subset, index=False, latency=False, progress=False,
                          prior=B.resume_rows(rows_path, subset, "c1")["offline"])
    assert again["n"] == 4 and again["resumed_rows"] == 4
    assert again["rows"] == res["rows"]

    bad = tmp_path / "bad.rows.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(B.ResumeError, match="bad.rows.jsonl:1 is no benchmark row"):
        B.resume_rows(bad, subset, "c1")


def test_code_version(tmp_path):
    version = B.code_version()
    assert version == "unknown" or version[:40].isalnum() and len(version.split("+")[0]) == 40
    assert B.code_version(tmp_path) == "unknown"  # no git checkout

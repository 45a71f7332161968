"""The assistant: a LangChain agent over the SleepLM tools, one remembered thread per patient.

>>> from assistant.agent import Assistant
>>> from assistant.config import AssistantConfig
>>> bot = Assistant(AssistantConfig.load())                       # doctest: +SKIP
>>> bot.ask("sim-01003-osa_moderate", "what is the AHI?").text   # doctest: +SKIP

``create_agent`` runs the same graph for every backend (the offline planner or a real LLM):
the model asks for tools, the tools run on the current patient (the runtime context, never a
path the LLM writes), and the model answers. Limits on model and tool calls per question and
retries of failed model calls are middleware. Conversations are LangGraph checkpoints in one
SQLite file (``<state_dir>/conversations.sqlite``), thread ``patient:<id>``, so a follow-up
after a restart still resolves "the second one".

With a real LLM two more middlewares of :mod:`assistant.toolcalls` run: the
:class:`~assistant.toolcalls.ToolCallGuard` repairs tool calls written as text, drops invented
arguments, blocks repeated identical calls, and lets the offline planner answer a question the
LLM could not (recorded in :attr:`Answer.fallback`); the
:class:`~assistant.toolcalls.ChatGroundingMiddleware` checks every number and clock time of the
LLM's final answer against the conversation's tool outputs and replaces an unsupported one by
``[unverified]`` (listed in :attr:`Answer.withdrawn`). Answer tokens stream as the model writes
them; the final ``answer`` event (and the stored conversation) carries the grounded text.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Literal

from langchain.agents import create_agent
from langchain.agents.middleware import (
    ModelCallLimitMiddleware,
    ModelRetryMiddleware,
    ToolCallLimitMiddleware,
)
from langchain.tools import ToolRuntime, tool
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from assistant.config import AssistantConfig
from assistant.grounding import WithdrawnClaim
from assistant.prompts import load_prompt
from assistant.toolcalls import (
    COMPLETED_KEY,
    FALLBACK_KEY,
    NOTES_KEY,
    ChatGroundingMiddleware,
    FallbackNote,
    ToolCallGuard,
    ungrounded_of,
    withdrawn_of,
)
from sleeplm._logging import logger
from sleeplm.errors import SleepLMError
from sleeplm.library.patients import PatientLibrary, validate_patient_id
from tools.context import ToolContext
from tools.langchain_tools import ToolArtifact, make_tools

__all__ = ["Answer", "Assistant", "AssistantContext", "StreamEvent", "ToolStep",
           "report_tools", "write_draft"]


@dataclasses.dataclass(eq=False)
class AssistantContext(ToolContext):
    """The tools' context plus what the report tools need.

    Attributes
    ----------
    writer : object or None
        The report's narrative writer (``None``: the offline templates).
    reports_dir : pathlib.Path or None
        Where drafts are kept, one folder per patient.
    fill_index : callable or None
        Called before the index is used (:meth:`Assistant.ensure_index`).
    """

    writer: Any = None
    reports_dir: Path | None = None
    fill_index: Any = None

    def require_index(self):
        """The index, filled with the library's patients first when the assistant gave a
        ``fill_index`` hook (so any backend's first retrieval finds every night)."""
        if self.fill_index is not None:
            self.fill_index()
        return super().require_index()


class ToolStep(BaseModel):
    """One tool call of an answer, as the UI shows it.

    Attributes
    ----------
    name : str
    args : dict
    content : str
        The text the model read.
    duration_s : float
        Seconds from the call to its result.
    error : bool
    artifact : ToolArtifact or None
        The full result, table and figures.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    content: str = ""
    duration_s: float = 0.0
    error: bool = False
    artifact: Any = None


class Answer(BaseModel):
    """An answer with the tool calls behind it.

    Attributes
    ----------
    patient, question, text : str
        ``text`` is the grounded answer: an LLM's number or clock time that no tool output of
        the conversation supports is replaced by ``[unverified]``.
    tool_calls : list of ToolStep
    seconds : float
        Wall time of the whole answer.
    fallback : FallbackNote or None
        Set when the LLM could not answer and the offline planner did (or the question
        stopped): why.
    withdrawn : list of WithdrawnClaim
        What the grounding check took out of the LLM's answer.
    tool_call_notes : list of str
        Repairs of the LLM's tool calls (read from text, invented arguments dropped).
    ungrounded_text : str or None
        The LLM's answer as it wrote it, when the grounding check changed it (kept for audits
        and benchmarks; never shown as the answer).
    completed : list of str
        Measures the question named that the LLM's answer left out; their measured values
        were added under it from its ``report_facts`` result.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    patient: str
    question: str
    text: str
    tool_calls: list[ToolStep] = Field(default_factory=list)
    seconds: float = 0.0
    fallback: FallbackNote | None = None
    withdrawn: list[WithdrawnClaim] = Field(default_factory=list)
    tool_call_notes: list[str] = Field(default_factory=list)
    ungrounded_text: str | None = None
    completed: list[str] = Field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        """Whether the LLM did not answer this question itself."""
        return self.fallback is not None

    def notices(self) -> list[str]:
        """Short notes for the user: a fallback, and what the grounding check withdrew."""
        out = []
        if self.fallback is not None:
            out.append(self.fallback.describe())
        numbers = [w for w in self.withdrawn
                   if w.kind not in ("absence", "other_patient", "stage")]
        stages = [w for w in self.withdrawn if w.kind == "stage"]
        denials = [w for w in self.withdrawn if w.kind == "absence"]
        foreign = [w for w in self.withdrawn if w.kind == "other_patient"]
        if numbers:
            tokens = ", ".join(dict.fromkeys(w.token for w in numbers))
            out.append(f"{len(numbers)} number(s) or time(s) of the model's answer were "
                       f"withdrawn because no tool result supports them ({tokens}); they are "
                       "marked [unverified].")
        if stages:
            out.append(f"{len(stages)} sleep stage(s) the model gave for an epoch disagree with "
                       f"the scored hypnogram ({'; '.join(w.reason for w in stages)}); they "
                       "are marked [unverified].")
        if denials:
            out.append(f"The model's answer denied events that the tool result lists "
                       f"({'; '.join(w.reason for w in denials)}); the denial is marked "
                       "[unverified] and the scored count added below it.")
        if foreign:
            tokens = ", ".join(dict.fromkeys(w.token for w in foreign))
            out.append(f"{len(foreign)} number(s) the model gave about other patients were "
                       f"withdrawn because no tool result gives them for those patients "
                       f"({tokens}); they are marked [unverified].")
        measures = [c for c in self.completed if c != "scored_events"]
        if measures:
            out.append(f"The model's answer left out {len(measures)} measure(s) the "
                       "question asks for; their measured values were added below it.")
        return out

    @property
    def figures(self) -> list[Any]:
        """Every figure the tools drew for this answer."""
        return [f for s in self.tool_calls if isinstance(s.artifact, ToolArtifact)
                for f in s.artifact.figures]


class StreamEvent(BaseModel):
    """One event of :meth:`Assistant.stream`.

    ``kind`` is ``tool_start`` (``step`` has name and args), ``tool_end`` (``step`` complete),
    ``token`` (``text`` is the next piece of the answer) or ``answer`` (``answer`` is final).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: Literal["tool_start", "tool_end", "token", "answer"]
    text: str = ""
    step: ToolStep | None = None
    answer: Answer | None = None


# ------------------------------------------------------------------------- report tools
class DraftReportInput(BaseModel):
    """Arguments of ``draft_report``."""

    # "ignore", not "forbid": LangChain validates the injected runtime against the schema too
    model_config = ConfigDict(extra="ignore")

    indication: str | None = Field(default=None, description="why the study was done")


class ReviseReportInput(BaseModel):
    """Arguments of ``revise_report``."""

    model_config = ConfigDict(extra="ignore")

    edit: str = Field(description="the change, e.g. 'shorten the impression', 'add the "
                                  "positional AHI'")


def _report_dir(ctx: AssistantContext) -> Path:
    patient = ctx.require_patient()
    if ctx.reports_dir is None:
        raise ToolException("the report tools need the assistant's context (reports_dir)")
    return Path(ctx.reports_dir) / patient


def _edits_path(ctx: AssistantContext) -> Path:
    return _report_dir(ctx) / "edits.json"


def write_draft(ctx: AssistantContext, edits: Sequence[str] = (),
                indication: str | None = None) -> tuple[Any, dict[str, Path]]:
    """Draft the patient's report with ``edits``, write every format into
    ``<reports_dir>/<patient>/`` and remember the edits (the next revision adds to them).

    The context's writer is wrapped for redaction first when its LLM is off this machine.

    Returns
    -------
    report : assistant.report.Report
    files : dict of str to pathlib.Path
        Format -> file.
    """
    from assistant.backends import redact_writer
    from assistant.render import write_report_files
    from assistant.report import draft_report

    report = draft_report(ctx, writer=redact_writer(ctx.writer, ctx), indication=indication,
                          edits=list(edits))
    files = write_report_files(report, _report_dir(ctx), ctx=ctx)
    _save_edits(ctx, list(edits))
    return report, files


def _draft(ctx: AssistantContext, edits: list[str], indication: str | None) -> tuple[str, Any]:
    report, files = write_draft(ctx, edits, indication)
    text = _report_text(report, files)
    return text, ToolArtifact(tool="draft_report", result=report,
                              table=[{"format": k, "path": str(v)} for k, v in files.items()])


def _report_text(report: Any, files: dict[str, Path]) -> str:
    impression = next((s for s in report.sections if s.key == "impression"), None)
    dropped = len(getattr(report.grounding, "dropped", []) or [])
    lines = ["Draft report ready (" + ", ".join(sorted(files)) + ")."]
    if impression is not None and impression.narrative:
        lines.append("Impression: " + impression.narrative)
    if dropped:
        lines.append(f"The grounding check dropped {dropped} sentence(s) whose numbers or times "
                     "did not match the measurements.")
    for note in getattr(report.grounding, "fallbacks", []) or []:
        # "impression and later sections: the chat question's time budget was spent; the
        # template text was used": whose words the draft holds
        lines.append(f"Narrative by {report.writer}, except: {note}.")
    lines.append(report.disclaimer)
    return "\n".join(lines)


def _save_edits(ctx: AssistantContext, edits: list[str]) -> None:
    from assistant.render import atomic_write

    path = _edits_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(edits).encode("utf-8"))


def _load_edits(ctx: AssistantContext) -> list[str]:
    path = _edits_path(ctx)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [str(x) for x in data] if isinstance(data, list) else []
    except (OSError, json.JSONDecodeError):
        return []


def report_tools() -> list[BaseTool]:
    """``draft_report`` and ``revise_report`` as LangChain tools (content and artifact)."""

    def _ctx(runtime: ToolRuntime) -> AssistantContext:
        ctx = runtime.context
        if not isinstance(ctx, ToolContext):
            raise ToolException("the report tools need the assistant's context")
        return ctx  # type: ignore[return-value]

    @tool("draft_report", args_schema=DraftReportInput, response_format="content_and_artifact")
    def draft_report_tool(runtime: ToolRuntime, indication: str | None = None):
        """Draft the clinical report of the current night (Markdown, HTML, PDF, JSON) from the
        deterministic measurements; every number and time is checked against them."""
        ctx = _ctx(runtime)
        try:
            return _draft(ctx, [], indication)
        except (SleepLMError, ValueError, OSError) as exc:
            raise ToolException(f"{type(exc).__name__}: {exc}") from exc

    @tool("revise_report", args_schema=ReviseReportInput, response_format="content_and_artifact")
    def revise_report_tool(runtime: ToolRuntime, edit: str):
        """Revise the current draft report (e.g. 'shorten the impression', 'add the positional
        AHI'); the report is drafted again with every edit asked so far."""
        ctx = _ctx(runtime)
        try:
            edits = _load_edits(ctx) + [edit]
            text, art = _draft(ctx, edits, None)
            applied = getattr(art.result, "edits", None)
            if applied:
                notes = [f"- {e.request}: {'applied' if e.applied else 'not applied'}"
                         + (f" ({e.note})" if getattr(e, "note", "") else "") for e in applied]
                text += "\nEdits:\n" + "\n".join(notes)
            return text, art
        except (SleepLMError, ValueError, OSError) as exc:
            raise ToolException(f"{type(exc).__name__}: {exc}") from exc

    for t in (draft_report_tool, revise_report_tool):
        t.handle_tool_error = True
    return [draft_report_tool, revise_report_tool]


# ------------------------------------------------------------------------------- agent
class Assistant:
    """The chat assistant over a patient library.

    Parameters
    ----------
    config : AssistantConfig
    library : PatientLibrary, optional
        Default: ``config.library`` or the example patients.
    index : EmbeddingIndex or "auto" or None
        For retrieval across the library. ``"auto"`` (default): an embedded chromadb index in
        ``<state_dir>/index`` that :meth:`ensure_index` fills with every patient of the library
        (incrementally; called before the first retrieval). ``None``: no index (``retrieve``
        then says so).
    chat_model : BaseChatModel, optional
        Overrides the backend of ``config`` (tests pass a scripted model here).
    llm_server : assistant.llm_server.LlamaServer, optional
        The local LLM server this process started for ``config`` (``demo.py --gguf``): when it
        dies, an answer raises :class:`~assistant.llm_server.LLMServerCrashed` naming how it
        exited, with the end of its log, instead of a connection error.
    """

    def __init__(self, config: AssistantConfig | None = None, *,
                 library: PatientLibrary | None = None, index: Any = "auto",
                 chat_model: Any = None, llm_server: Any = None):
        self.config = config or AssistantConfig.load()
        self.llm_server = llm_server
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        if library is None:
            if self.config.library is not None:
                library = PatientLibrary(self.config.library)
            else:
                from sleeplm.simulate import example_library

                library = PatientLibrary(example_library(progress=False))
        self.library = library
        if isinstance(index, str) and index == "auto":
            from sleeplm.library.index import EmbeddingIndex, IndexConfig

            index = EmbeddingIndex(IndexConfig(path=self.config.state_dir / "index",
                                               model_version=library.model_version))
            self._index_filled = False
        else:
            self._index_filled = True
        self.index = index
        if chat_model is None:
            from assistant.backends import make_chat_model

            chat_model = make_chat_model(self.config)
        self.chat_model = chat_model
        self.tools = make_tools() + report_tools()
        from assistant.planner import OfflinePlanner

        middleware: list[Any] = []
        #: The guard of a real LLM's tool calls (None with the offline planner as the model).
        self.guard: ToolCallGuard | None = None
        if not isinstance(chat_model, OfflinePlanner):
            fallback = (OfflinePlanner(router_threshold=self.config.router_threshold)
                        if self.config.fallback else None)
            self.guard = ToolCallGuard(
                self.tools, fallback=fallback, time_budget_s=self.config.time_budget_s,
                max_repeats=self.config.max_repeats,
                max_tool_errors=self.config.max_tool_errors,
                shortlist=self.config.shortlist_tools,
                compact=self.config.compact_tools,
                result_chars=self.config.compact_result_chars,
                history_chars=self.config.compact_history_chars)
            middleware += [self.guard, ChatGroundingMiddleware()]
        from assistant.backends import RedactionMiddleware, describe_backend, \
            sends_data_off_machine

        #: One line for the user: which LLM answers, and whether data leave this machine.
        self.backend_description = describe_backend(self.config)
        self.sends_data_off_machine = sends_data_off_machine(self.config)
        if self.sends_data_off_machine:  # header identifiers -> study id before anything leaves
            middleware.append(RedactionMiddleware())
        self._conn = sqlite3.connect(str(self.config.memory_path), check_same_thread=False)
        from langgraph.checkpoint.sqlite import SqliteSaver

        self._saver = SqliteSaver(self._conn)
        self._lock = threading.Lock()
        self._contexts: dict[str, AssistantContext] = {}
        self.agent = create_agent(
            self.chat_model, self.tools, system_prompt=load_prompt("system"),
            middleware=[
                *middleware,
                ModelCallLimitMiddleware(run_limit=self.config.max_model_calls,
                                         exit_behavior="end"),
                ToolCallLimitMiddleware(run_limit=self.config.max_tool_calls,
                                        exit_behavior="end"),
                # with a guard, a model call that still fails goes to the guard (fallback)
                ModelRetryMiddleware(max_retries=self.config.max_retries, initial_delay=0.5,
                                     on_failure="error" if self.guard else "continue"),
            ],
            context_schema=AssistantContext, checkpointer=self._saver)

    def ensure_index(self) -> int:
        """Add the library's patients that the index lacks (each processed once, cached).

        Returns
        -------
        int
            Nights added.
        """
        if self.index is None or self._index_filled:
            return 0
        from tools.context import index_library

        added = index_library(self.library, self.index)
        self._index_filled = True
        logger.info("embedding index: %d night(s) added", added)
        return added

    def warm_up(self, patient: str | None = None) -> float:
        """Load what the first answer would otherwise wait for: the offline planner's question
        embedder and example index, and (with ``patient``) the patient's cached artefacts.

        Returns
        -------
        float
            Seconds spent.
        """
        t0 = time.perf_counter()
        router = getattr(self.chat_model, "router", None)
        if router is not None:
            router.route("summarise this night")
        if patient is not None:
            self.context(patient).processed()
        return time.perf_counter() - t0

    # -- context -------------------------------------------------------------------------
    def context(self, patient: str) -> AssistantContext:
        """The (cached) tool context of ``patient``."""
        validate_patient_id(patient)
        if patient not in self._contexts:
            writer = None
            if self.config.backend != "offline":
                from assistant.backends import sends_data_off_machine
                from assistant.report import LLMWriter

                writer = LLMWriter(self.chat_model, budget_s=self.config.report_budget_s)
                writer.sends_off_machine = sends_data_off_machine(self.config)
            self._contexts[patient] = AssistantContext(
                library=self.library, patient=patient, index=self.index,
                output_dir=self.config.state_dir / "figures",
                writer=writer, reports_dir=self.config.state_dir / "reports",
                fill_index=self.ensure_index)
        return self._contexts[patient]

    @contextmanager
    def _question_clock(self, ctx: AssistantContext) -> Iterator[None]:
        """While a question runs, an LLM report writer stops once the question's time budget
        (``time_budget_s``) is spent, not only its own (a 1.5 B model's draft took 287 s of a
        120-s question, as the writer's 120 s came after the model's first call)."""
        writer = getattr(ctx, "writer", None)
        if writer is None or not hasattr(writer, "question_deadline"):
            yield
            return
        writer.question_deadline = time.monotonic() + self.config.time_budget_s
        try:
            yield
        finally:
            writer.question_deadline = None

    @staticmethod
    def thread_id(patient: str) -> str:
        """The conversation thread of a patient."""
        return f"patient:{validate_patient_id(patient)}"

    def _run_config(self, patient: str) -> dict:
        return {"configurable": {"thread_id": self.thread_id(patient)},
                "recursion_limit": 4 * self.config.max_model_calls + 8}

    # -- asking --------------------------------------------------------------------------
    def ask(self, patient: str, question: str) -> Answer:
        """Answer ``question`` about ``patient`` (blocking)."""
        answer = None
        for ev in self.stream(patient, question):
            if ev.kind == "answer":
                answer = ev.answer
        assert answer is not None
        return answer

    def stream(self, patient: str, question: str) -> Iterator[StreamEvent]:
        """Tool calls and answer tokens as they happen, then the whole answer.

        ``token`` events carry the model's text as it is written (with a real LLM: before the
        grounding check, and also text of an LLM answer that the offline planner then
        replaced); the final ``answer`` event carries the answer to show, grounded, with its
        :attr:`Answer.fallback` and :attr:`Answer.withdrawn`. A UI replaces the streamed text
        by ``answer.text`` at the end (as :mod:`assistant.app` does).

        Raises
        ------
        ValueError
            An empty question.
        InvalidPatientIdError, UnknownPatientError
            A hostile or unknown patient id.
        """
        question = (question or "").strip()
        if not question:
            raise ValueError("empty question: ask something about the night")
        if len(question) > 4000:
            raise ValueError(f"question of {len(question)} characters: keep it under 4000")
        ctx = self.context(patient)
        ctx.processed()  # unknown patient / unreadable study: fail before the agent runs
        t0 = time.perf_counter()
        steps: dict[str, ToolStep] = {}
        started: dict[str, float] = {}
        order: list[str] = []
        final_text = ""
        final_msg: AIMessage | None = None
        fallback: FallbackNote | None = None
        notes: list[str] = []
        watch = self.llm_server.watch() if self.llm_server is not None else nullcontext()
        with self._lock, watch, self._question_clock(ctx):
            if self.llm_server is not None:
                self.llm_server.check()  # dead before the question: say so, do not ask it
            stream = self.agent.stream({"messages": [HumanMessage(question)]},
                                       self._run_config(patient), context=ctx,
                                       stream_mode=["messages", "updates"])
            for mode, data in stream:
                if mode == "messages":
                    chunk, meta = data
                    if isinstance(chunk, AIMessageChunk) and chunk.content and \
                            not chunk.tool_call_chunks:
                        yield StreamEvent(kind="token", text=str(chunk.content))
                    continue
                for node, update in (data or {}).items():
                    for msg in (update or {}).get("messages", []) if isinstance(update,
                                                                                dict) else []:
                        if isinstance(msg, AIMessage) and msg.tool_calls:
                            for tc in msg.tool_calls:
                                step = ToolStep(name=tc["name"], args=dict(tc["args"]))
                                steps[tc["id"]], started[tc["id"]] = step, time.perf_counter()
                                order.append(tc["id"])
                                yield StreamEvent(kind="tool_start", step=step)
                        elif isinstance(msg, ToolMessage):
                            step = steps.get(msg.tool_call_id) or ToolStep(name=msg.name or "")
                            step.content = str(msg.content)
                            step.error = msg.status == "error"
                            step.artifact = getattr(msg, "artifact", None)
                            step.duration_s = time.perf_counter() - started.get(
                                msg.tool_call_id, t0)
                            yield StreamEvent(kind="tool_end", step=step)
                        if isinstance(msg, AIMessage) and node != "tools":
                            kw = msg.additional_kwargs
                            if fallback is None and kw.get(FALLBACK_KEY):
                                fallback = FallbackNote.model_validate(kw[FALLBACK_KEY])
                            notes += [n for n in kw.get(NOTES_KEY, []) if n not in notes]
                            if not msg.tool_calls:
                                final_text, final_msg = str(msg.content), msg
            if self.llm_server is not None:  # a failed model call may end as an error text
                self.llm_server.check()
        answer = Answer(patient=patient, question=question, text=final_text,
                        tool_calls=[steps[i] for i in order], seconds=time.perf_counter() - t0,
                        fallback=fallback, tool_call_notes=notes,
                        withdrawn=withdrawn_of(final_msg) if final_msg is not None else [],
                        ungrounded_text=(ungrounded_of(final_msg) if final_msg is not None
                                         else None),
                        completed=(list(final_msg.additional_kwargs.get(COMPLETED_KEY, []))
                                   if final_msg is not None else []))
        logger.info("answered %s in %.2f s with %d tool call(s)", patient, answer.seconds,
                    len(answer.tool_calls))
        yield StreamEvent(kind="answer", answer=answer)

    # -- memory --------------------------------------------------------------------------
    def history(self, patient: str) -> list[tuple[str, str]]:
        """``(role, text)`` of the patient's conversation so far (``user`` / ``assistant``)."""
        state = self.agent.get_state(self._run_config(patient))
        out = []
        for m in (state.values or {}).get("messages", []):
            if isinstance(m, HumanMessage):
                out.append(("user", str(m.content)))
            elif isinstance(m, AIMessage) and not m.tool_calls and m.content:
                out.append(("assistant", str(m.content)))
        return out

    def forget(self, patient: str) -> None:
        """Delete the patient's conversation."""
        self._saver.delete_thread(self.thread_id(patient))

    def close(self) -> None:
        """Close the conversation database."""
        self._conn.close()

"""The embedded offline planner: a LangChain chat model that needs no LLM.

It is the default backend, so ``python demo.py`` works on a machine with no network and no API
key, and the agent graph is the same for every backend (``create_agent`` binds the tools to it
as to any chat model). On each call it reads the conversation and either asks for the next tool
call or writes the answer:

1. **Route** the question (:class:`~assistant.routing.SemanticRouter`: all-MiniLM-L6-v2
   nearest examples plus a few unambiguous words).
2. **Extract** its arguments (:mod:`assistant.extract`: clock times and ranges, epochs, stages,
   event kinds, ordinals, quoted labels).
3. **Call tools**, one at a time, each next call decided from the previous results (e.g. "the
   first REM period" takes the REM epochs from the facts, then captions them).
4. **Answer** from the tool outputs only: every number in an answer is formatted from a tool's
   value, with its unit and evidence; when the tools could not answer, it says so.

Follow-ups ("the second one", "that desaturation") resolve against the intervals or events the
planner listed in an earlier answer, which it keeps in that answer's ``additional_kwargs``
(persisted with the conversation).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from assistant import extract as X
from assistant.insights import (EFFICIENCY_NEEDS, UNLINKED_NIGHTS, efficiency_explanation,
                                positional_verdict)
from assistant.routing import Route, SemanticRouter
from tools.common import requirements_for

__all__ = ["OfflinePlanner", "PLAN_KEY", "REFS_KEY", "ToolResult", "ToolShortlist"]

#: ``additional_kwargs`` key of the planner's route on the messages it writes.
PLAN_KEY = "sleeplm_plan"
#: ``additional_kwargs`` key of the intervals/events an answer listed (for follow-ups).
REFS_KEY = "sleeplm_refs"
#: ``additional_kwargs`` key of the item of those a follow-up answer was about ("it", "that").
FOCUS_KEY = "sleeplm_focus"

_NOTICE = ("Draft information for a qualified clinician to review; sleeplm is not a medical "
           "device.")

_STAGE_WORD = {"W": "wake", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM"}
#: Sort keys of listed events for "the longest / shortest / deepest" (``list_events``'s
#: ``order``, applied here to a result listed in time order).
_EVENT_ORDER_KEYS = {
    "longest": lambda e: -e.duration_s,
    "shortest": lambda e: e.duration_s,
    "deepest": lambda e: (e.attributes or {}).get("spo2_nadir", 101.0),
}


class ToolResult:
    """One tool's answer in the current turn: name, arguments, text, artifact, error flag."""

    def __init__(self, name: str, args: dict, content: str, artifact: Any, error: bool):
        self.name, self.args, self.content = name, args, content
        self.artifact, self.error = artifact, error

    @property
    def result(self) -> Any:
        """The tool's pydantic output (``None`` after an error)."""
        return getattr(self.artifact, "result", None) if not self.error else None


class ToolShortlist(BaseModel):
    """The tools a question most likely needs, as the offline planner sees it.

    A small LLM (1-3 B parameters) picks the wrong tool among 14 far more often than among a
    few: :class:`~assistant.toolcalls.ToolCallGuard` offers it only these, with the planner's
    proposed first call as a hint it may follow or not (``AssistantConfig.shortlist_tools``).

    Attributes
    ----------
    intent : str
        The router's intent for the question (after the arguments' correction).
    tools : list of str
        Tool names, the planner's first call's tool first, then the tools of the next-ranked
        intents; empty when no intent of the top ranks needs a tool.
    call : dict or None
        ``{"name": ..., "args": {...}}``: the planner's first call, or None when it would
        answer without a tool (out of scope, not recorded, help, a follow-up it answers from
        the conversation).
    """

    intent: str
    tools: list[str] = Field(default_factory=list)
    call: dict[str, Any] | None = None

    def hint(self) -> str:
        """One line appended to the question the LLM reads."""
        if self.call is None:
            return ("Routing hint: this question probably needs no tool (it is "
                    f"{self.intent.replace('_', ' ')}); answer it directly, or call one of the "
                    "tools offered if it asks about this night's data.")
        return (f"Routing hint: call {self.call['name']} first, with the arguments "
                f"{json.dumps(self.call['args'], separators=(',', ':'))} (adjust them if the "
                "question asks otherwise), then answer from its result.")


class _Step:
    """Either a tool call or an answer."""

    def __init__(self, *, tool: str | None = None, args: dict | None = None,
                 text: str | None = None, refs: list[dict] | None = None):
        self.tool, self.args, self.text, self.refs = tool, args or {}, text, refs
        self.focus: int | None = None


# ------------------------------------------------------------------------------- helpers
def _sel(args: X.Args) -> dict | None:
    """A TimeSelection dict from the question's epochs, range or clock time."""
    if args.epochs:
        a, b = args.epochs
        return {"epoch": a} if a == b else {"epochs": [a, b]}
    if args.time_range:
        s, e = args.time_range
        return {k: v for k, v in (("start", s), ("end", e)) if v is not None}
    if args.clock:
        return {"start": args.clock, "end": _plus_minutes(args.clock, 1)}
    if args.part:
        return {"part": args.part}
    return None


def _plus_minutes(clock: str, minutes: int) -> str:
    h, m = int(clock[:2]), int(clock[3:5])
    t = (h * 60 + m + minutes) % (24 * 60)
    return f"{t // 60:02d}:{t % 60:02d}"


def _runs(epoch_runs: Sequence[Sequence[int]], gap: int = 2) -> list[tuple[int, int]]:
    """Evidence runs ``(first, last)`` merged across gaps of up to ``gap`` epochs (a stage
    period that a few epochs of another stage interrupt is one period)."""
    runs: list[list[int]] = []
    for a, b in sorted((int(r[0]), int(r[1])) for r in epoch_runs):
        if runs and a - runs[-1][1] <= gap + 1:
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b])
    return [(a, b) for a, b in runs]


def _measures(res: Any) -> dict[str, Any]:
    """``name -> Measure`` of a FactsOutput."""
    out: dict[str, Any] = {}
    for ms in getattr(res, "sections", {}).values():
        for m in ms:
            out[m.name] = m
    return out


def _fmt(m: Any) -> str:
    """A measure as "label: value unit" (or why it is unavailable), with the epoch and clock
    time of a measure taken at one point ("SpO2 nadir during sleep: 87.1 % [epochs 95: lowest
    valid 1-s SpO2 during sleep, at 2855 s (23:03:35)]"; the nadir was given without its time)."""
    from tools.facts import point_evidence

    return f"{m.label}: {m.format()}" + (point_evidence(m) if m.value is not None else "")


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] \
        if items else ""


def _finding(key: str, value: str) -> str:
    return f"{key}: {value}"


def _simulated(res: Any) -> str:
    return (" (This is a SIMULATED night, not a real patient.)"
            if getattr(res, "simulated", None) else "")


#: What a study may show but neither scores nor measures (snoring): a question about it is a
#: search of the signals by SleepLM, said to be so.
_UNSCORED = re.compile(r"\bsnor(?:e|es|ed|ing|er|ers)\b", re.IGNORECASE)


#: A question about where events bunch up ("the densest cluster of desaturations").
_CLUSTER = re.compile(r"\bclusters?\b|\bclustered\b|\bdensest\b|\bback[- ]to[- ]back\b|"
                      r"\bbunched\b|\bbusiest\b|\bmost (?:concentrated|frequent)\b",
                      re.IGNORECASE)
#: "similar", "like this": a question about resemblance, answered by SleepLM's embeddings.
_LIKE = re.compile(r"\b(?:similar|like (?:this|that|hers|his|theirs|patient|sim-)|resembl\w*|"
                   r"comparable)\b", re.IGNORECASE)
#: Per-hour indices a question about "lots of" some events ranks nights by.
_EVENT_INDEX = {"limb_movement": "plmi", "plm": "plmi", "arousal": "arousal_index",
                "desaturation": "odi3", "obstructive_apnea": "obstructive_apnea_index",
                "central_apnea": "central_apnea_index", "mixed_apnea": "apnea_index",
                "apnea": "apnea_index", "hypopnea": "ahi_3a"}
#: Measures where more is worse ("the worst AHI" is the highest).
_MORE_IS_WORSE = re.compile(r"index|ahi|odi|plmi|waso|latency|t90|awakenings|count")


def _ranking_measure(a: X.Args, low: str) -> tuple[str, bool] | None:
    """``(measure, lowest first)`` to rank the library's nights by, for a library question
    that names a measure or a kind of event ("which patients have the highest AHI", "nights
    with lots of leg kicks"); None when it names neither."""
    if re.search(r"\bepochs?\b", low):
        return None  # epochs across the library: SleepLM's search
    names = [n for n in a.measures if not n.endswith("_count")] or list(a.measures)
    types = set(a.event_types)
    if {"obstructive_apnea", "central_apnea", "mixed_apnea", "apnea"} <= types:
        # "lots of apneas": all apneas; "apneas and hypopneas", "breathing events": the AHI
        names = names or ["ahi_3a" if "hypopnea" in types else "apnea_index"]
    names = names or [_EVENT_INDEX[t] for t in a.event_types if t in _EVENT_INDEX]
    if not names:
        return None
    name = names[0]
    low_words = re.search(r"\b(?:lowest|least|fewest|smallest|shortest|minimum|poorest|"
                          r"worst)\b", low)
    lowest = bool(low_words) and not (low_words.group(0) == "worst"
                                      and _MORE_IS_WORSE.search(name))
    return name, lowest


def _strip_lead(q: str) -> str:
    """The thing to find in a localisation question, without the question words."""
    t = q.strip().rstrip("?.! ")
    t = re.sub(r"^(?:please\s+)?(?:where|when|at what time)\s+(?:in the night\s+)?"
               r"(?:is|are|does|do|did|was|were)\s+(?:there\s+)?", "", t, flags=re.I)
    t = re.sub(r"^(?:please\s+)?(?:find|locate|search(?: the night)? for|look for|show me|"
               r"where are|when is|mark)\s+(?:the\s+)?(?:periods? of\s+|epochs? (?:with|of|that "
               r"look like)\s+)?", "", t, flags=re.I)
    # "does the model see any loss of atonia in REM - high chin tone ...? where": what to
    # find, without the asking (SleepLM's text encoder reads the query as a description)
    t = re.sub(r"^(?:(?:where\s+(?:in the night\s+)?)?(?:does|do|did|can|could|would|will)\s+)?"
               r"(?:the model|sleeplm|the ai|it|you)\s+(?:see|find|detect|spot|show|pick up|"
               r"put|think there (?:is|are))\s+(?:any\s+)?(?:signs?\s+of\s+)?", "", t, flags=re.I)
    t = re.sub(r"[\s?,.;-]+(?:and\s+|if so,?\s+)?(?:where(?: in the night)?|when)\s*$", "", t,
               flags=re.I)
    t = re.sub(r"\s+(?:happen|occur|happens|occurs)$", "", t, flags=re.I)
    t = re.sub(r"^(?:the\s+)", "", t, flags=re.I)
    return t.strip(" ?.!,;-") or q.strip()


_STAGE_LABEL = {"R": "REM sleep", "N3": "N3 deep sleep", "N2": "N2 sleep", "N1": "N1 sleep",
                "W": "wake"}


def _label(text: str) -> str:
    """A stage written as a bare name ("rem", "n2") becomes its prompt wording."""
    st = X.stage(text)
    return _STAGE_LABEL[st] if st and len(text.split()) <= 2 else text


def _event_refs(events: Sequence[Any]) -> list[dict]:
    return [{"kind": "event", "label": e.type, "start_s": e.onset_s, "end_s": e.end_s,
             "first_epoch": max(e.epoch, 0), "last_epoch": max(e.epoch, 0), "clock": e.clock,
             "stage": e.stage} for e in events]


def _interval_refs(intervals: Sequence[Any], label: str) -> list[dict]:
    return [{"kind": "interval", "label": label, "start_s": iv.span.start_s,
             "end_s": iv.span.end_s, "first_epoch": iv.span.first_epoch,
             "last_epoch": iv.span.last_epoch, "clock": iv.span.start_clock,
             "stage": iv.span.main_stage} for iv in intervals]


# ------------------------------------------------------------------------------- planner
class OfflinePlanner(BaseChatModel):
    """A chat model that plans tool calls and writes answers without an LLM.

    Parameters
    ----------
    router_threshold : float
        Below this similarity a question is "not understood" (and the planner says so).
    tool_names : tuple of str
        Set by :meth:`bind_tools`; a step that needs a tool not bound is answered with a
        message instead.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    router_threshold: float = 0.35
    tool_names: tuple[str, ...] = Field(default_factory=tuple)
    _router: SemanticRouter | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "sleeplm-offline-planner"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"router_threshold": self.router_threshold}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "OfflinePlanner":
        """This planner with the names of ``tools`` (it plans only calls to those)."""
        names = []
        for t in tools:
            name = getattr(t, "name", None) or (t.get("name") if isinstance(t, dict) else None)
            if name is None and isinstance(t, dict):
                name = t.get("function", {}).get("name")
            if name:
                names.append(name)
        clone = self.model_copy(update={"tool_names": tuple(names)})
        clone._router = self._router
        return clone

    @property
    def router(self) -> SemanticRouter:
        if self._router is None:
            self._router = SemanticRouter(threshold=self.router_threshold)
        return self._router

    # -- LangChain interface -------------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                  ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.respond(messages))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        msg = self.respond(messages)
        if msg.tool_calls:
            chunk = AIMessageChunk(content="", additional_kwargs=msg.additional_kwargs,
                                   tool_call_chunks=[
                                       {"name": tc["name"], "args": _json(tc["args"]),
                                        "id": tc["id"], "index": i, "type": "tool_call_chunk"}
                                       for i, tc in enumerate(msg.tool_calls)])
            yield ChatGenerationChunk(message=chunk)
            return
        words = re.findall(r"\S+\s*|\s+", str(msg.content))
        for i, w in enumerate(words):
            chunk = AIMessageChunk(content=w, additional_kwargs=(msg.additional_kwargs
                                                                  if i == 0 else {}))
            if run_manager:
                run_manager.on_llm_new_token(w, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    # -- planning ------------------------------------------------------------------------
    def respond(self, messages: Sequence[BaseMessage]) -> AIMessage:
        """The next message: a tool call, or the answer."""
        last_h = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)),
                     default=None)
        if last_h is None:
            return AIMessage(content="Ask me about the current patient's night.")
        question = _text(messages[last_h])
        turn = messages[last_h + 1:]
        from assistant.routing import normalise

        question = normalise(question)
        route = self._turn_route(turn) or self.router.route(question)
        results = _results(turn)
        history = messages[:last_h]
        args = X.extract(question)
        route = _adjust(route, question, args)
        step = self._step(route, question, args, results, history)
        plan = {"intent": route.intent, "score": round(route.score, 3), "by": route.by}
        if step.tool is not None:
            if step.tool not in self.tool_names:
                step = _Step(text=f"I would need the '{step.tool}' tool for this, and it is not "
                                  "available in this session.")
            else:
                return AIMessage(content="", additional_kwargs={PLAN_KEY: plan},
                                 tool_calls=[{"name": step.tool, "args": step.args,
                                              "id": f"call_{uuid.uuid4().hex[:12]}",
                                              "type": "tool_call"}])
        kw: dict[str, Any] = {PLAN_KEY: plan}
        if step.refs is not None:
            kw[REFS_KEY] = step.refs
        if step.focus is not None:
            kw[FOCUS_KEY] = step.focus
        return AIMessage(content=step.text or "", additional_kwargs=kw)

    def shortlist(self, messages: Sequence[BaseMessage], k: int = 4) -> ToolShortlist:
        """The tools the last question of ``messages`` most likely needs (see
        :class:`ToolShortlist`): the planner's first call for the router's intent, then the
        first calls it would make for the next-ranked intents, at most ``k`` tools."""
        last_h = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)),
                     default=None)
        if last_h is None:
            return ToolShortlist(intent="unknown")
        from assistant.routing import normalise

        question = normalise(_text(messages[last_h]))
        history = messages[:last_h]
        args = X.extract(question)
        route = _adjust(self.router.route(question), question, args)
        first = self._step(route, question, args, [], history)
        names: list[str] = [first.tool] if first.tool else []
        for intent, score in route.ranking:
            if len(names) >= k:
                break
            if intent == route.intent or intent in ("unknown", "help"):
                continue
            try:
                step = self._step(Route(intent, score, route.ranking, "ranking"), question,
                                  args, [], history)
            except Exception:  # noqa: BLE001 - a handler that needs context it lacks: skip
                continue
            if step.tool and step.tool not in names:
                names.append(step.tool)
        call = {"name": first.tool, "args": first.args} if first.tool else None
        return ToolShortlist(intent=route.intent, tools=names[:k], call=call)

    @staticmethod
    def _turn_route(turn: Sequence[BaseMessage]) -> Route | None:
        """The route chosen at the start of this turn (kept on its first tool call)."""
        for m in turn:
            if isinstance(m, AIMessage) and PLAN_KEY in m.additional_kwargs:
                p = m.additional_kwargs[PLAN_KEY]
                return Route(p["intent"], float(p.get("score", 1.0)), (), p.get("by", "rule"))
        return None

    def _step(self, route: Route, q: str, a: X.Args, done: list[ToolResult],
              history: Sequence[BaseMessage]) -> _Step:
        if done and done[-1].error:
            return _Step(text=_error_answer(done[-1]))
        handler = getattr(self, f"_do_{route.intent}", None)
        if handler is None:
            return self._do_unknown(route, q, a, done, history)
        return handler(route, q, a, done, history)

    # -- intents -------------------------------------------------------------------------
    def _do_unknown(self, route, q, a, done, history) -> _Step:
        return _Step(text=(
            "I did not understand that question well enough to answer it from this night's "
            "data. I can summarise the night, give a measurement (AHI, ODI, sleep efficiency, "
            "...), list scored events in a time range, find where something described in words "
            "happens, describe an epoch or period, find similar nights, classify an epoch, draw "
            "the hypnogram, event timeline or signals, and draft a report."))

    def _do_help(self, route, q, a, done, history) -> _Step:
        return _Step(text=(
            "Ask me about the current patient's night in plain language, for example: "
            "\"summarise this night\", \"what is the AHI?\", \"list the apneas between 2 and 3 "
            "am\", \"where is there snoring with paradoxical breathing?\", \"describe the first "
            "REM period\", \"is the apnea positional?\", \"find similar nights\" or \"draft the "
            "report\". Every number I give comes from the deterministic measurements. "
            + _NOTICE))

    def _do_out_of_scope(self, route, q, a, done, history) -> _Step:
        return _Step(text=(
            "That is outside what I can do. I describe and measure this sleep study and draft a "
            "report for a clinician to review; I do not prescribe, dose or change treatment, "
            "diagnose, or answer questions unrelated to the recording. " + _NOTICE))

    def _do_not_recorded(self, route, q, a, done, history) -> _Step:
        return _Step(text=(
            "This recording cannot answer that: polysomnography as sleeplm reads it has EEG, "
            "EOG, chin and leg EMG, ECG (heart rate), airflow and nasal pressure, thoracic and "
            "abdominal effort, SpO2, snoring and body position, but no blood pressure, CO2 or "
            "other measurement of that kind. " + _NOTICE))

    def _do_summary(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="report_facts", args={"sections": []})
        res = done[-1].result
        ms = _measures(res)
        keys = ["tst_min", "sleep_efficiency_pct", "sleep_onset_latency_min", "waso_min",
                "r_pct_tst", "n3_pct_tst", "ahi_3a", "odi3", "spo2_nadir", "t90_pct",
                "arousal_index", "plmi", "hr_mean"]
        lines = [f"- {_fmt(ms[k])}" for k in keys if k in ms and ms[k].value is not None]
        findings = [f"- {_finding(k, v)}" for k, v in getattr(res, "findings", {}).items()]
        missing = [f"- {k.replace('_', ' ')}: not available ({v})"
                   for k, v in getattr(res, "unavailable", {}).items()]
        text = ("Summary of this night" + _simulated(res) + ":\n" + "\n".join(lines)
                + ("\n\nFindings:\n" + "\n".join(findings) if findings else "")
                + ("\n\nNot available:\n" + "\n".join(missing) if missing else "")
                + f"\n\nIndices are per hour of {res.index_basis}. {_NOTICE}")
        return _Step(text=text)

    def _do_measure(self, route, q, a, done, history) -> _Step:
        if not a.sections:
            return self._do_summary(route, q, a, done, history)
        if not done:
            return _Step(tool="report_facts", args={"sections": a.sections})
        res = done[-1].result
        ms = _measures(res)
        found = [ms[n] for n in a.measures if n in ms]
        lines = [f"- {_fmt(m)}" + (f" (rule: {m.rule})" if getattr(m, "rule", None) else "")
                 for m in found]
        unavailable = [f"- {res.unavailable[s]}" for s in a.sections
                       if s in getattr(res, "unavailable", {})]
        if not lines and not unavailable:
            return _Step(text="The measurements I found for this question:\n"
                              + res.summary())
        findings = [_finding(k, v) for k, v in getattr(res, "findings", {}).items()
                    if any(n.startswith("ahi") for n in a.measures)]
        text = "\n".join(lines + unavailable)
        if findings:
            text += "\n" + " ".join(findings)
        return _Step(text=text + _simulated(res))

    def _do_events(self, route, q, a, done, history) -> _Step:
        types = a.event_types or ["obstructive_apnea", "central_apnea", "mixed_apnea",
                                  "hypopnea"]
        if not done:
            args: dict[str, Any] = {"types": types, "limit": 200}
            if (sel := _sel(a)) is not None:
                args["within"] = sel
            if a.superlative in ("longest", "shortest", "deepest") and not _CLUSTER.search(q):
                args["order"] = a.superlative  # the tool ranks them, for the LLM's call too
            if _CLUSTER.search(q):  # "the densest cluster of desaturations": a 10-min window
                args.update(densest_window_min=10.0, limit=5000)  # its events, wherever it is
            return _Step(tool="list_events", args=args)
        res = done[-1].result
        events = list(res.events)
        if not events:
            return _Step(text=res.summary(), refs=[])
        if a.superlative in _EVENT_ORDER_KEYS and getattr(res, "order", "time") != a.superlative:
            # a call made without the order (an LLM's, answered from here): rank what it listed
            events.sort(key=_EVENT_ORDER_KEYS[a.superlative])
        n = 1 if a.superlative and re.search(r"\bthe (?:longest|shortest|deepest|worst)\b",
                                              q.lower()) else X.limit(q, 10)
        dense = getattr(res, "densest", None)
        if dense is not None:
            ids = set(dense.event_ids)
            events = sorted((e for e in events if e.id in ids), key=lambda e: e.onset_s)
            n = X.limit(q, 10)
        shown = events[:n]
        lines = [f"{i}. {e.describe()}" for i, e in enumerate(shown, 1)]
        auto = any(e.automatic for e in events)
        total = max(int(getattr(res, "n_total", 0) or 0), len(events))  # not only those listed
        head = (f"{total} {'detected' if auto else 'scored'} event(s) of type "
                f"{', '.join(types)}"
                + (" in the selected time range" if "within" in done[-1].args else "")
                + (f"; the densest cluster:\n{dense.describe()}"
                   + (f"; its first {len(shown)}:" if len(shown) < len(events) else ":")
                   if dense is not None else f"; the {a.superlative}:" if a.superlative else
                   f"; {'the first ' + str(len(shown)) if len(shown) < total else 'all'}:"))
        notes = [w for w in getattr(res, "warnings", []) if "automatic" in w]
        return _Step(text=head + "\n" + "\n".join(lines)
                     + ("\n(" + " ".join(notes) + ")" if notes else ""),
                     refs=_event_refs(shown))

    def _do_localize(self, route, q, a, done, history) -> _Step:
        query = (a.quoted[0] if a.quoted else _strip_lead(q))
        unscored = _UNSCORED.search(q) if not a.quoted else None
        if unscored:  # "did they snore": searched for in the words SleepLM was trained on
            query = "snoring"
        if a.event_types and not a.quoted and not _ASKS_MODEL.search(q):
            return self._scored_first(route, q, a, done, history, query)
        if not done:
            args: dict[str, Any] = {"query": query, "limit": X.limit(q, 5)}
            if (sel := _sel(a)) is not None:
                args["within"] = sel
            return _Step(tool="localize", args=args)
        res = done[-1].result
        refs = _interval_refs(res.intervals, query)
        head = ("Snoring is not scored in this study's annotations and no "
                "measurement of it is computed here; this is SleepLM's search of the signals "
                "for it.\n" if unscored else "")
        return _Step(text=head + res.summary() + "\n(SleepLM's localisation is model output: "
                                                 "check it against the signals.)", refs=refs)

    def _scored_first(self, route, q, a, done, history, query: str) -> _Step:
        """A where-question about a kind of event the study scores ("where does the breathing
        stop", "where are the spindles"): the scored (or detected) events first, with an offer
        of SleepLM's localisation; SleepLM's localisation only when none is scored."""
        if not done:
            return self._do_events(route, q, a, done, history)
        if len(done) == 1:
            if done[0].error or done[0].result is None or list(done[0].result.events):
                step = self._do_events(route, q, a, done, history)
                if step.text and not done[0].error:
                    auto = any(e.automatic
                               for e in getattr(done[0].result, "events", None) or [])
                    step.text += (f"\n\nThese are the {'detected' if auto else 'scored'} "
                                  "events. SleepLM can also search the "
                                  "signals for what you described: ask \"where does the model "
                                  f"see {query.rstrip('?.! ')}?\"")
                return step
            args: dict[str, Any] = {"query": query, "limit": X.limit(q, 5)}
            if (sel := _sel(a)) is not None:
                args["within"] = sel
            return _Step(tool="localize", args=args)
        res = done[-1].result
        head = (f"No {', '.join(t.replace('_', ' ') for t in a.event_types)} event is scored "
                "in this part of the study, so here is SleepLM's reading of the signals.\n")
        if res is None:
            return _Step(text=head + done[-1].content)
        return _Step(text=head + res.summary() + "\n(SleepLM's localisation is model output: "
                                                  "check it against the signals.)",
                     refs=_interval_refs(res.intervals, query))

    def _do_caption(self, route, q, a, done, history) -> _Step:
        sel = _sel(a)
        if sel is None and a.stage and re.search(r"\b(?:first|second|third|last)\b.*\bperiod\b|"
                                                 r"\bperiod\b", q.lower()):
            if not done:
                return _Step(tool="report_facts", args={"sections": ["architecture"]})
            if len(done) == 1:
                key = {"R": "r_min", "N3": "n3_min", "N2": "n2_min", "N1": "n1_min",
                       "W": "w_min"}[a.stage]
                m = _measures(done[0].result).get(key)
                runs = _runs(m.evidence.epochs) if m is not None else []
                if not runs:
                    return _Step(text=f"This night has no {_STAGE_WORD[a.stage]} period "
                                      "scored.")
                k = a.ordinal or 1
                if k > len(runs):
                    return _Step(text=f"This night has only {len(runs)} "
                                      f"{_STAGE_WORD[a.stage]} period(s).")
                first, last = runs[k - 1 if k > 0 else -1]
                return _Step(tool="caption", args={
                    "target": {"epochs": [first, last]},
                    "system": a.system or "holistic", "max_epochs": 4})
        elif not done:
            args: dict[str, Any] = {"system": a.system or "holistic"}
            if sel is not None:
                args["target"] = sel
            return _Step(tool="caption", args=args)
        res = done[-1].result
        return _Step(text=res.summary() + "\n(Generated captions are SleepLM's words; the facts "
                                          "listed with them are the measured values.)")

    def _do_retrieve(self, route, q, a, done, history) -> _Step:
        if not done:
            sel = _sel(a)
            low = q.lower()
            args: dict[str, Any] = {"k": X.limit(q, 5)}
            prof = re.search(r"\b(healthy_young|healthy_older|osa_mild|osa_moderate|osa_severe|"
                             r"csa_cheyne_stokes|plm_disorder|insomnia|narcolepsy|rbd)\b",
                             low.replace((a.patient or "\0").lower(), " "))
            if prof:
                args["profile"] = prof.group(1)
            ranked = None if sel is not None or a.patient or _LIKE.search(low) \
                else _ranking_measure(a, low)
            if ranked is not None:  # "nights in the library with lots of leg kicks"
                args.update(source="measure", level="night", measure=ranked[0],
                            lowest_first=ranked[1], exclude_current_patient=False)
            elif sel is not None:
                args.update(source="epoch" if "epoch" in sel else "interval", selection=sel,
                            level="epoch")
            elif (a.patient or re.search(r"\bnights?\b|\bpatients?\b|\bstud(?:y|ies)\b|"
                                         r"this one\b", low)) and not re.search(r"\bepochs?\b",
                                                                              low):
                args.update(source="night", level="night")
                if a.patient:
                    args["like_patient"] = a.patient
            else:
                text = a.quoted[0] if a.quoted else re.sub(
                    r"^(?:find|search(?: the library)? for|show me)\s+(?:epochs?\s+)?(?:that "
                    r"(?:match|look like)\s+|similar to\s+|like\s+)?(?:(?:of|with|for|"
                    r"showing)\s+)?", "", q.strip().rstrip("?."), flags=re.I)
                text = re.sub(r"\s+(?:across|in) the library$", "", text, flags=re.I)
                args.update(source="text", text=text, level="epoch")
                if a.stage:
                    args["stage"] = a.stage
            return _Step(tool="retrieve", args=args)
        return _Step(text=done[-1].content)

    def _do_classify(self, route, q, a, done, history) -> _Step:
        if not done:
            labels = list(a.quoted)
            low = q.lower()
            if len(labels) < 2 and re.search(r"\s(?:versus|vs\.?)\s", low):
                # "how likely is this Cheyne-Stokes breathing versus obstructive sleep apnea
                # versus normal breathing?": the classes are the terms around "versus"
                seg = re.split(r"[,;:]\s*|\b(?:how likely|probability|likelihood|chance|"
                               r"classify)\b(?:\s+(?:is|of|that))*", low)[-1]
                seg = re.sub(r"^\s*(?:is|are|was|does|do)?\s*(?:it|this|that|the night|this "
                             r"night|this epoch|epochs?\s+\d+(?:\s*(?:-|to)\s*\d+)?)?\s*"
                             r"(?:look|looks)?\s*(?:more\s+)?(?:like\s+)?", "", seg).strip(" ?.!")
                labels = [x.strip() for x in re.split(r"\s+(?:versus|vs\.?)\s+", seg)
                          if x.strip()]
            if len(labels) < 2:
                m = re.search(r"\b(?:is|was)\s+(?:it|this|that|epochs?\s+[\d\s\-to]+|the night)?\s*"
                              r"(?:more\s+)?(.+?)\s+or\s+(.+?)\??$", low)
                lst = re.search(r"\b(?:more like|look like|like|between|as)\s+([^?.]+?,[^?.]+?"
                                r"\bor\b[^?.]+?)(?:\?|\.|$)", low)
                if lst:
                    labels = [x.strip() for x in re.split(r",\s*(?:or\s+)?|\s+or\s+",
                                                          lst.group(1)) if x.strip()]
                elif m:
                    labels = [m.group(1).strip(), m.group(2).strip()]
                elif m := re.search(r"[:\u2013-]\s*([\w' ]{1,30}?)\s+or\s+([\w' ]{1,30}?)\s*\??$",
                                    low):  # "epoch 450: REM or N1?"
                    labels = [m.group(1).strip(), m.group(2).strip()]
                elif re.search(r"\bwhat stage\b|\bwhich stage\b", low):
                    labels = ["wake", "N1 sleep", "N2 sleep", "N3 deep sleep", "REM sleep"]
                elif m := re.search(r"(?:probability|how likely|chance|likelihood)\b(?:\s+(?:is|"
                                    r"of|that))*\s*(?:this night|the night|this epoch|it|he|"
                                    r"she|the patient|this patient)?\s*(?:is|has|shows?|had|"
                                    r"of|reflects?)?\s+(?:an?\s+|the\s+)?(.+?)\??$", low):
                    labels = [m.group(1).strip(), "normal healthy sleep"]
            labels = [_label(re.sub(r"^(?:a|an|the)\s+", "", x)) for x in labels if x]
            if len(labels) < 2:
                return _Step(text="To classify I need at least two labels, e.g. 'is this epoch "
                                  "\"REM sleep\" or \"N2 sleep\"?'")
            args: dict[str, Any] = {"labels": labels}
            if (sel := _sel(a)) is not None:
                args["target"] = sel
            return _Step(tool="classify", args=args)
        return _Step(text=done[-1].content + "\n(Zero-shot probabilities from SleepLM: model "
                                             "output, not a diagnosis.)")

    def _do_plot_hypnogram(self, route, q, a, done, history) -> _Step:
        if not done:
            sel = _sel(a)
            return _Step(tool="plot_hypnogram", args={"highlight": sel} if sel else {})
        return _Step(text=done[-1].content)

    def _do_plot_events(self, route, q, a, done, history) -> _Step:
        if not done:
            args: dict[str, Any] = {"types": a.event_types}
            if (sel := _sel(a)) is not None:
                args["within"] = sel
            return _Step(tool="plot_events", args=args)
        return _Step(text=done[-1].content)

    def _do_plot_signals(self, route, q, a, done, history) -> _Step:
        sel = _sel(a)
        if sel is None and a.superlative and a.event_types:  # "around the longest apnea"
            if not done:
                return self._do_events(route, q, a, done, history)
            if len(done) == 1:
                step = self._do_events(route, q, a, done, history)
                if not step.refs:
                    return step
                r = step.refs[0]
                return _Step(tool="plot_signals", args={
                    "window": {"start": r["start_s"], "end": r["end_s"]},
                    "system": a.system, "pad_s": 30.0})
            return _Step(text=done[-1].content)
        if sel is None:
            return _Step(text="Which part of the night? Raw signals are drawn a few minutes "
                              "at a time: give a clock time, a range of clock times or an "
                              "epoch, or ask about an event listed before ('show the second "
                              "one'). For the whole night, ask for the hypnogram or the event "
                              "timeline.")
        if not done:
            args = {"window": sel, "system": a.system, "pad_s": 15.0}
            needs = {need for need, _ in requirements_for(q)}
            if needs and needs <= {"SpO2", "body position"}:  # trend channels: any window
                args = {"window": sel, "channels": [c for n, chans in requirements_for(q)
                                                    for c in chans], "pad_s": 15.0}
            return _Step(tool="plot_signals", args=args)
        return _Step(text=done[-1].content)

    def _do_report(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="draft_report", args={})
        return _Step(text=done[-1].content)

    def _do_revise_report(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="revise_report", args={"edit": q.strip()})
        return _Step(text=done[-1].content)

    def _do_insight_efficiency(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="report_facts", args={"sections": ["architecture", "arousals"]})
        res = done[-1].result
        ms = _measures(res)
        need = [*EFFICIENCY_NEEDS, "awakenings", "arousal_index"]
        why = efficiency_explanation(ms)
        if why is None:
            return _Step(text="The sleep architecture of this night is not available, so I "
                              "cannot explain the sleep efficiency: " + res.summary())
        lines = [f"- {_fmt(ms[k])}" for k in need if k in ms and ms[k].value is not None]
        text = (why + "\n" + "\n".join(lines)
                + "\nArousals and awakenings show how fragmented the sleep was; respiratory "
                  "events and limb movements that end in arousals are in the respiratory and "
                  "limb-movement sections." + _simulated(res))
        return _Step(text=text)

    def _do_insight_positional(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="report_facts", args={"sections": ["respiratory"]})
        res = done[-1].result
        ms = _measures(res)
        sup, non, tsup = ms.get("ahi_supine"), ms.get("ahi_nonsupine"), ms.get(
            "supine_sleep_min")
        if sup is None or non is None or sup.value is None or non.value is None:
            why = "; ".join(m.reason for m in (sup, non) if m is not None and m.reason) or \
                "the night has no usable body-position signal or no sleep in one of the positions"
            return _Step(text=f"I cannot tell whether the apnea is positional: {why}.")
        text = (f"{positional_verdict(ms)}\n- {_fmt(sup)}\n- {_fmt(non)}"
                + (f"\n- {_fmt(tsup)}" if tsup is not None and tsup.value is not None else "")
                + _simulated(res))
        return _Step(text=text)

    def _do_insight_nadir(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="report_facts", args={"sections": ["oximetry"]})
        nadir = _measures(done[0].result).get("spo2_nadir")
        if nadir is None or nadir.value is None or not nadir.evidence.epochs:
            reason = getattr(done[0].result, "unavailable", {}).get("oximetry") or (
                nadir.reason if nadir is not None else "no SpO2 nadir was measured")
            return _Step(text=f"I cannot look around the lowest SpO2: {reason}.")
        e = int(nadir.evidence.epochs[0][0])
        if len(done) == 1:
            return _Step(tool="list_events", args={
                "types": ["obstructive_apnea", "central_apnea", "mixed_apnea", "apnea",
                          "hypopnea", "desaturation", "arousal"],
                "within": {"epochs": [max(0, e - 3), e + 1]}, "limit": 50})
        if len(done) == 2:
            return _Step(tool="caption", args={"target": {"epoch": e},
                                               "system": "respiration"})
        events = done[1].result.events if done[1].result is not None else []
        ev = [f"- {x.type.replace('_', ' ')} at {x.clock} ({x.duration_s:.1f} s)"
              for x in events]
        text = (f"The lowest SpO2 during sleep is {nadir.format()} in epoch {e}.\n"
                + ("Scored events around it (from 3 epochs before to 1 after):\n" + "\n".join(ev)
                   if ev else "No event was scored in the 2 minutes around it.")
                + "\n\nWhat SleepLM and the measurements say about that epoch:\n"
                + done[2].content)
        return _Step(text=text, refs=_event_refs(events))

    def _do_compare_night(self, route, q, a, done, history) -> _Step:
        if not done:
            return _Step(tool="retrieve", args={"source": "night", "level": "night", "k": 3})
        return _Step(text=(
            UNLINKED_NIGHTS + " The most similar nights in the library, by SleepLM's "
            "night embedding:\n" + done[-1].content))

    def _do_followup(self, route, q, a, done, history) -> _Step:
        refs, focus = _last_refs(history)
        if not refs and _last_list(history) == []:  # the last list came out empty
            return _Step(text="The last search or list found nothing, so it has no such item. "
                              "Ask again with other words, or list scored events, e.g. 'list "
                              "the apneas'.")
        then = _THEN.search(q)
        if then and _last_list(history) is None and (at := _last_clock(history)):
            # "what was happening around then?" after "the nadir was at 23:33:17": that time
            prep = then.group(0).split()[0].lower()
            prep = prep if prep in ("before", "after") else "at"
            q2 = q[:then.start()] + f"{prep} {at}" + q[then.end():]
            a2 = X.extract(q2)
            if _SHOW.search(q):
                return self._do_plot_signals(route, q2, a2, done, history)
            return self._do_caption(route, q2, a2, done, history)
        if not refs:
            return _Step(text="I have no earlier list of events or intervals in this "
                              "conversation to refer to. Ask e.g. 'list the apneas' or "
                              "'where is there snoring?' first.")
        k = a.ordinal
        if k is None:  # "it", "that apnea": the item talked about last, else the first
            match = [i for i, r in enumerate(refs) if r["label"] in a.event_types]
            if focus is not None and (not a.event_types or focus in match):
                idx = focus
            else:
                idx = match[0] if match else 0
        else:
            idx = _place_index(k, len(refs))
            if idx is None:
                return _Step(text=f"The last list had {len(refs)} item(s); there is no "
                                  "such item in it.")
        ref = refs[idx]
        step = self._followup_step(q, ref, done)
        if step.text is not None:
            step.refs, step.focus = refs, idx
        return step

    def _followup_step(self, q: str, ref: dict, done: list[ToolResult]) -> _Step:
        where = {"epochs": [ref["first_epoch"], ref["last_epoch"]]}
        low = q.lower()
        if re.search(r"\b(?:what|which)(?: sleep)? stage\b", low):
            return _Step(text=f"It started at {ref['clock']} in "
                              f"{_STAGE_WORD.get(ref['stage'], ref['stage'])} (epoch "
                              f"{ref['first_epoch']}).")
        # the system the question names ("the EEG around then") before the item's own
        named = X.system(q)
        if _SHOW.search(low):
            if not done:
                return _Step(tool="plot_signals", args={
                    "window": {"start": ref["start_s"], "end": ref["end_s"]},
                    "system": named or X.system(ref["label"].replace("_", " ")),
                    "pad_s": 20.0})
            return _Step(text=done[-1].content)
        if not done:
            return _Step(tool="caption", args={"target": where, "system": named or X.system(
                ref["label"].replace("_", " ")) or "holistic", "max_epochs": 3})
        return _Step(text=f"{ref['label'].replace('_', ' ').capitalize()} at {ref['clock']}:\n"
                          + done[-1].content)


_ASKS_VALUE = re.compile(
    r"^\s*(?:(?:and |so )?what(?:'s| is| was| are| were|s)\b|how (?:many|much|long|low|high|"
    r"bad|severe|often)\b|give me the\b|tell me the\b|which (?:is|was)\b|is the\b|was the\b)",
    re.I)


#: A question that asks for the model's own reading ("where does the model see ...").
_ASKS_MODEL = re.compile(r"\bmodel\b|\bsleeplm\b|\bembedding|\bai\b", re.I)


def _adjust(route: Route, question: str, a: X.Args) -> Route:
    """Correct the embedding's guess where the extracted arguments are unambiguous: a question
    that asks for a value and names a measurement (AHI, ODI, T90, TST, ...) is a measurement,
    whatever the sentence embedding (which does not know the abbreviations) thought."""
    if route.by != "embedding":
        return route
    if a.measures and _ASKS_VALUE.search(question) and route.intent in {
            "unknown", "summary", "help", "localize", "caption", "classify", "events",
            "followup", "out_of_scope", "insight_nadir", "compare_night", "retrieve"} and not (
            a.time_range and a.event_types):
        return Route("measure", route.score, route.ranking, "embedding+arguments")
    if route.intent == "unknown" and a.measures:
        return Route("measure", route.score, route.ranking, "embedding+arguments")
    if route.intent == "unknown" and a.event_types:
        return Route("events", route.score, route.ranking, "embedding+arguments")
    return route


# ------------------------------------------------------------------------------- messages
def _text(m: BaseMessage) -> str:
    c = m.content
    if isinstance(c, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)
    return str(c)


def _results(turn: Sequence[BaseMessage]) -> list[ToolResult]:
    calls = {tc["id"]: tc for m in turn if isinstance(m, AIMessage) for tc in m.tool_calls}
    out = []
    for m in turn:
        if isinstance(m, ToolMessage):
            tc = calls.get(m.tool_call_id, {"name": m.name or "", "args": {}})
            out.append(ToolResult(tc["name"], tc.get("args", {}), _text(m),
                                  getattr(m, "artifact", None), m.status == "error"))
    return out


def followup_referent(question: str, history: Sequence[BaseMessage]) -> dict | None:
    """The item of the conversation's last list that a follow-up names by its place ("the
    second one", "the last one", "#3"), as the planner answers it.

    Parameters
    ----------
    question : str
        The follow-up question.
    history : sequence of BaseMessage
        The conversation before it.

    Returns
    -------
    dict or None
        The item (``label``, ``clock``, ``stage``, ``first_epoch``, ``last_epoch``,
        ``start_s``, ``end_s``); None without a place in the question, without a list, or past
        the list's end.
    """
    k = X.ordinal(question)
    if k is None:
        return None
    refs, _focus = _last_refs(history)
    idx = _place_index(k, len(refs))
    return refs[idx] if idx is not None else None


def _place_index(k: int, n: int) -> int | None:
    """The index of the ``k``-th item of a list of ``n`` (``k`` from
    :func:`assistant.extract.ordinal`: 1 = the first, -1 = the last); None past its end."""
    if n == 0 or k > n:
        return None
    return k - 1 if k > 0 else n - 1


def _last_refs(history: Sequence[BaseMessage]) -> tuple[list[dict], int | None]:
    """The last list of intervals/events and the item talked about last (or None).

    An answer the planner wrote carries its list (``REFS_KEY``). An answer an LLM wrote does
    not: its list is the events or intervals of the ``list_events`` / ``localize`` results it
    was given in that turn, in the order the tool returned them (the order an LLM lists them
    in), so "and the second one?" after an LLM's answer resolves as it does after the
    planner's.
    """
    for i in range(len(history) - 1, -1, -1):
        m = history[i]
        if not isinstance(m, AIMessage):
            continue
        if m.additional_kwargs.get(REFS_KEY):
            return list(m.additional_kwargs[REFS_KEY]), m.additional_kwargs.get(FOCUS_KEY)
        if m.tool_calls or REFS_KEY in m.additional_kwargs:
            continue  # a call, or a planner answer whose list was empty
        refs = _tool_refs(history[:i])
        if refs:
            return refs, None
    return [], None


#: A follow-up asking to see the signals ("zoom in on that one", "pull up the raw traces").
_SHOW = re.compile(r"\b(?:show|plot|draw|zoom|display|pull up|bring up|traces?|waveforms?|raw)\b",
                   re.IGNORECASE)
#: A time named by reference to the last answer: "around then", "at that time".
_THEN = re.compile(r"\b(?:around|at|near|during|before|after|by) (?:then|that time|that point|"
                   r"that moment)\b", re.IGNORECASE)


def _last_clock(history: Sequence[BaseMessage]) -> str | None:
    """The first clock time (``HH:MM:SS``) the conversation's last answer gives, or None."""
    from assistant.grounding import clock_times

    last = next((m for m in reversed(history) if isinstance(m, AIMessage) and not m.tool_calls),
                None)
    found = clock_times(_text(last)) if last is not None else []
    return found[0] if found else None


def _last_list(history: Sequence[BaseMessage]) -> list[dict] | None:
    """The list the conversation's last answer gave ([] when it came out empty), or None when
    that answer gave no list (a measurement, a caption)."""
    i = next((j for j in range(len(history) - 1, -1, -1) if isinstance(history[j], AIMessage)
              and not history[j].tool_calls), None)
    if i is None:
        return None
    if REFS_KEY in history[i].additional_kwargs:
        return list(history[i].additional_kwargs[REFS_KEY] or [])
    turn: list[BaseMessage] = []
    for m in reversed(history[:i]):
        if isinstance(m, HumanMessage):
            break
        turn.append(m)
    listed = any(isinstance(m, ToolMessage) and m.name in ("list_events", "localize")
                 and m.status != "error" for m in turn)
    return _tool_refs(history[:i]) if listed else None


def _field(obj: Any, key: str, default: Any = None) -> Any:
    """``obj.key`` or ``obj[key]`` (a tool result is a dict after a checkpoint round trip)."""
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _tool_refs(before: Sequence[BaseMessage]) -> list[dict]:
    """The refs of the last ``list_events`` / ``localize`` result in the turn that ends
    ``before`` (the messages back to its question)."""
    for m in reversed(before):
        if isinstance(m, HumanMessage):
            return []
        if not isinstance(m, ToolMessage) or m.status == "error":
            continue
        art = getattr(m, "artifact", None)
        res = _field(art, "result") if art is not None else None
        if res is None:
            continue
        if m.name == "list_events" and _field(res, "events"):
            return [{"kind": "event", "label": _field(e, "type"),
                     "start_s": _field(e, "onset_s"), "end_s": _field(e, "end_s"),
                     "first_epoch": max(int(_field(e, "epoch", 0)), 0),
                     "last_epoch": max(int(_field(e, "epoch", 0)), 0),
                     "clock": _field(e, "clock"), "stage": _field(e, "stage")}
                    for e in _field(res, "events")]
        if m.name == "localize" and _field(res, "intervals"):
            label = str(_field(res, "query", "") or "interval")
            out = []
            for iv in _field(res, "intervals"):
                sp = _field(iv, "span")
                out.append({"kind": "interval", "label": label,
                            "start_s": _field(sp, "start_s"), "end_s": _field(sp, "end_s"),
                            "first_epoch": _field(sp, "first_epoch"),
                            "last_epoch": _field(sp, "last_epoch"),
                            "clock": _field(sp, "start_clock"),
                            "stage": _field(sp, "main_stage")})
            return out
    return []


def _error_answer(r: ToolResult) -> str:
    msg = re.sub(r"^Error:\s*", "", r.content).strip()
    if msg.startswith("ToolException("):
        msg = re.sub(r"^ToolException\(['\"]?|['\"]?\)$", "", msg)
    return f"I could not answer that from this night: {msg}"


def _json(obj: Any) -> str:
    return json.dumps(obj)

"""Robust tool calling for small real LLMs, and grounded chat answers for any LLM.

Small local models (Qwen2.5-Coder, Llama 3.2, Gemma 3 at 1-8 B parameters) often answer with a
tool call written as text instead of a structured call, with doubled or extra braces, single
quotes, trailing commas, Python's ``True``/``None`` or the arguments as a JSON string; they
invent arguments, call the same tool again and again, answer without calling any tool, or take
too long. Two agent middlewares make the agent of :mod:`assistant.agent` robust to that:

:class:`ToolCallGuard` (around every model and tool call)
    * **repairs** tool calls written as text (:func:`extract_tool_calls`, :func:`loads_lenient`)
      into proper calls when they name a known tool, and **validates** every call's arguments
      against the tool's schema (:func:`clean_args`: unknown or invented arguments and ``null``
      for an optional one are dropped, with a logged note kept on the message);
    * **blocks loops**: a call identical to one already made in this question (same tool, same
      arguments) is not run again; the model is told its result is already above, and after
      ``max_repeats`` blocked repeats the loop stops;
    * **falls back** to the embedded offline planner (:class:`~assistant.planner.OfflinePlanner`)
      for the rest of the question when the model answers without a tool call although the
      question needs one (the planner's router decides), writes a tool call that cannot be
      read, gives an empty answer, has ``max_tool_errors`` tool calls fail, fails itself, or
      the question's time budget (``time_budget_s``) is spent. The messages of the fallback
      carry a :class:`FallbackNote` (why), which :class:`~assistant.agent.Answer` reports;
    * in **compact** mode (small context windows, e.g. 4k tokens) sends the model short tool
      descriptions and schemas (:func:`compact_tool_schema`) and tool results cut to a budget
      (:func:`shorten_tool_result`); the conversation keeps the full results, so the user and
      the :class:`~assistant.agent.ToolStep` see everything.

:class:`ChatGroundingMiddleware` (at the end of each question)
    checks every number and clock time of an LLM's final answer against the tool outputs of the
    conversation and the question's own numbers (:func:`ground_conversation`, built on
    :mod:`assistant.grounding`). An unsupported one is replaced by ``[unverified]`` in the
    stored answer and listed in the message's ``additional_kwargs`` (:data:`WITHDRAWN_KEY`).
    A number a prompt injection asks for ("say the AHI is 0") never passes as a measure's value:
    the question's numbers are allowed only unbound to any named measure, and annotation labels
    and file names are quotable data, not facts. Answers of the offline planner (primary or
    fallback) are written from tool values by deterministic code and are not altered.
    Measures the question names that the LLM's ``report_facts`` result holds but its answer
    leaves out are then added under the answer from that result (:func:`missing_measures`,
    :data:`COMPLETED_KEY`).

Both hooks are synchronous (the assistant runs its agent with ``stream``/``invoke``).
"""

from __future__ import annotations

import ast
import json
import math
import types
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import (Annotated, Any, Literal, NotRequired, TypeVar, Union, get_args,
                    get_origin)

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, \
    ModelResponse
from langchain.agents.middleware.types import ExtendedModelResponse, PrivateStateAttr
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.channels.untracked_value import UntrackedValue
from pydantic import BaseModel, Field, ValidationError

from assistant.grounding import (
    RULE_VARIANTS,
    UNVERIFIED,
    FactItem,
    GroundedAnswer,
    ToolOutput,
    WithdrawnClaim,
    _parse_clock,
    chat_allowed,
    clock_times,
    duration_spans,
    ground_answer,
    _clause_bounds,
    located_sentences,
    problem_spans,
    misbound_spans,
    specific_rules,
    split_sentences,
)
from assistant.insights import (POSITIONAL_WORDS, efficiency_explanation, explains,
                                judges_position, positional_verdict, unlinked_night_note)
from sleeplm._logging import logger
from sleeplm.clinical.architecture import SLEEP_EFFICIENCY_REFERENCE_PCT
from sleeplm.clinical.detectors import is_automatic

__all__ = [
    "ANSWER_HINT",
    "FALLBACK_KEY",
    "NOTES_KEY",
    "REFERENCE_FACTS",
    "REPEAT_KEY",
    "UNGROUNDED_KEY",
    "WITHDRAWN_KEY",
    "WRITER_KEY",
    "INTENT_KEY",
    "HEADLINE_MEASURES",
    "INSIGHT_MEASURES",
    "ChatGroundingMiddleware",
    "COMPLETED_KEY",
    "facts_measures",
    "absence_spans",
    "repeated_answer",
    "impossible_epoch_spans",
    "densest_claim_spans",
    "shared_duration_spans",
    "unlisted_event_lines",
    "wrong_referent",
    "report_answer",
    "grounded_withdrawals",
    "onset_epoch_lines",
    "epoch_aside_spans",
    "epoch_count_spans",
    "rate_claim_spans",
    "stage_claim_spans",
    "epoch_source_spans",
    "localized_denial_spans",
    "extreme_event_spans",
    "count_spans",
    "other_patient_spans",
    "epoch_clock_spans",
    "onset_epoch_spans",
    "local_value_spans",
    "denied_result",
    "contradicted_verdict",
    "stale_citations",
    "stale_number_spans",
    "model_output_note",
    "detection_note",
    "MODEL_OUTPUT_NOTES",
    "missing_measures",
    "FallbackNote",
    "ToolCallGuard",
    "ToolCallParseError",
    "ToolCallRepair",
    "call_signature",
    "clean_args",
    "compact_tool_schema",
    "conversation_outputs",
    "extract_tool_calls",
    "ground_conversation",
    "loads_lenient",
    "shorten_tool_result",
    "ungrounded_of",
    "withdrawn_of",
]

#: ``additional_kwargs`` key: who wrote an AI message (``llm``, ``planner`` or ``guard``).
WRITER_KEY = "sleeplm_writer"
#: ``additional_kwargs`` key of a fallback's :class:`FallbackNote` (as a dict).
FALLBACK_KEY = "sleeplm_fallback"
#: ``additional_kwargs`` key of the notes on repaired or cleaned tool calls (list of str).
NOTES_KEY = "sleeplm_toolcall_notes"
#: ``additional_kwargs`` key of a tool message that answers a blocked repeated call.
REPEAT_KEY = "sleeplm_repeat"
#: ``additional_kwargs`` key of a tool message for a call not run (time budget spent).
SKIPPED_KEY = "sleeplm_skipped"
#: ``additional_kwargs`` key of what the grounding check withdrew (list of dicts).
WITHDRAWN_KEY = "sleeplm_withdrawn"
#: ``additional_kwargs`` key of the LLM's answer as written, when the grounding changed it.
UNGROUNDED_KEY = "sleeplm_ungrounded"
#: ``additional_kwargs`` key of the router's intent for the question an LLM message answers
#: (shortlist mode).
INTENT_KEY = "sleeplm_intent"
_STARTED_KEY = "sleeplm_question_started"

#: Router intents the planner answers without a tool: an LLM may too.
NO_TOOL_INTENTS = frozenset({"help", "out_of_scope", "not_recorded", "unknown", "followup"})

#: Words of a question that select nothing in a tool result (:func:`shorten_tool_result`).
_STOPWORDS = frozenset(
    "the and for was were what whats which when where who how many much did does this that "
    "with from their they them there any are during night patient study one show tell give "
    "gimme please can you about been have has had its his her our just also all".split())

#: Intents the planner declines itself in shortlist mode (the LLM is not asked).
DECLINED_INTENTS = frozenset({"out_of_scope", "not_recorded"})

#: Tools whose finished result a fallback reuses whatever the LLM's arguments (a report
#: draft or revision: slow with an LLM writer, and the same study either way).
REUSABLE_TOOLS = frozenset({"draft_report", "revise_report"})

#: Appended, in shortlist mode, to the tool result a small LLM reads last.
ANSWER_HINT = ("Now answer the question from the tool results above: quote their values with "
               "their units and clock times as written; do not compute new numbers, and say "
               "so when the results do not answer it.")

#: Reference values the assistant itself states (the offline planner's sleep-efficiency
#: reference): allowed in answers, bound to no measure.
REFERENCE_FACTS: tuple[FactItem, ...] = (
    FactItem(name="reference_sleep_efficiency", label="commonly used reference",
             value=SLEEP_EFFICIENCY_REFERENCE_PCT,
             unit="%", source="reference"),
)

FallbackReason = Literal["no_tool_call", "unreadable_tool_call", "empty_answer", "tool_errors",
                         "tool_loop", "time_budget", "model_error", "out_of_scope",
                         "not_understood", "stale_answer", "denied_result",
                         "contradicted_verdict", "hollow_answer", "ungrounded_answer",
                         "repeated_answer", "wrong_referent"]

_REASON_TEXT: dict[str, str] = {
    "no_tool_call": "the model answered without consulting a tool",
    "unreadable_tool_call": "the model wrote a tool call that could not be read",
    "empty_answer": "the model gave no answer",
    "tool_errors": "the model's tool calls failed",
    "tool_loop": "the model kept repeating the same tool call",
    "time_budget": "the question's time budget was spent",
    "model_error": "the model call failed",
    "out_of_scope": ("the question is outside the study (treatment, driving, anything not "
                     "recorded), which the assistant declines by fixed rule"),
    "stale_answer": ("the model's answer cited only times or epochs of an earlier result, "
                     "none of this question's"),
    "not_understood": ("the planner could not place the question, and a small model is not "
                       "asked what the planner cannot route"),
    "denied_result": ("the model's answer said its tool gave nothing, but the tool's result "
                      "holds data"),
    "contradicted_verdict": ("the model's conclusion contradicts the measured values it was "
                             "given"),
    "hollow_answer": ("the model's answer left out what it gave a place for (\"occurred at "
                      "epoch:\")"),
    "ungrounded_answer": "none of the numbers in the model's answer matched a tool result",
    "repeated_answer": "the model repeated its answer to an earlier question",
    "wrong_referent": ("the model's answer was about another item than the one the question "
                       "names by its place in the last list (\"the first one\", \"the last "
                       "one\")"),
}

#: "positional" with a negation up to three words before it ("is not positional", "isn't
#: really positional", "non-positional").
_POSITIONAL = re.compile(r"\bpositional\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|non|never|isn't|aren't|wasn't|weren't)\b|n't\b",
                       re.IGNORECASE)

#: An answer saying the tools gave nothing ("The tool did not provide any information about
#: other nights", "The tool response does not provide any information about other nights", "I apologize, but I cannot provide a timeline ... no data available in the
#: tool results"); "did not provide any additional information" after a full answer is none.
_DENIED_RESULT = re.compile(
    r"\b(?:tools?|tool (?:results?|responses?|outputs?|calls?))\s+"
    r"(?:did not|didn't|does not|doesn't|do not|don't)\s+"
    r"(?:provide|return|give|contain|include|show)\b"
    r"(?!\s+(?:any\s+)?(?:additional|further|more)\b)"
    r"|\bno (?:tool )?(?:results?|data|information)\b[^.\n]{0,60}\b(?:tools?|provided "
    r"(?:text|results?))\b"
    r"|\bno tool results?\b"
    r"|\bI (?:apologi[sz]e|am sorry|'m sorry),? but I (?:cannot|can't|am unable to)\b"
    r"|\bI (?:do not|don't) have (?:the |any )?(?:tool )?(?:results?|data|information)\b"
    r"|^\s*I (?:do not|don't) have\b",
    re.IGNORECASE)

#: An answer about its own failed call rather than the question: "The error indicates that
#: the target object must have two epochs specified. The provided response does not include
#: any epochs, so it cannot be classified ..." (a 1.5 B model, after a malformed classify).
_ABOUT_THE_ERROR = re.compile(
    r"\b(?:the|this|an?) error\b|\berror (?:message|indicates|says|shows|means)\b"
    r"|\b(?:arguments?|parameters?|target object|the provided response)\b"
    r"|\bthe (?:tool|function)(?: call)? (?:requires|needs|expects|must)\b",
    re.IGNORECASE)


class ToolCallParseError(ValueError):
    """Text that should hold a tool call (JSON or near-JSON) cannot be read."""


class FallbackNote(BaseModel):
    """Why a question was not answered by the LLM.

    Attributes
    ----------
    reason : str
        ``no_tool_call``, ``unreadable_tool_call``, ``empty_answer``, ``tool_errors``,
        ``tool_loop``, ``time_budget``, ``model_error``, ``out_of_scope`` (shortlist mode:
        the planner declines what is outside the study itself) or ``not_understood``
        (shortlist mode: the planner cannot place the question) or ``stale_answer`` (the
        answer cites only times or epochs of an earlier question's results), or
        ``denied_result``, ``contradicted_verdict``, ``hollow_answer`` (the answer gives a
        place, "at epoch:", and leaves it empty), ``ungrounded_answer`` (two or more
        numbers, none supported by a tool result) or ``repeated_answer`` (the words of an
        earlier LLM answer of the conversation).
    detail : str
        Specifics (the error, the call repeated, the seconds spent).
    by : {"offline_planner", "stopped"}
        The offline planner answered instead, or (fallback off) the question stopped.
    """

    reason: FallbackReason
    detail: str = ""
    by: Literal["offline_planner", "stopped"] = "offline_planner"

    def describe(self) -> str:
        """One sentence for the user."""
        what = _REASON_TEXT[self.reason] + (f" ({self.detail})" if self.detail else "")
        if self.by == "offline_planner":
            return f"The offline planner answered this question: {what}."
        return f"The question was stopped: {what}."


class ToolCallRepair(BaseModel):
    """Tool calls read from a model's text.

    Attributes
    ----------
    content : str
        The text around the calls (the model's words), or the whole text when nothing usable
        was found.
    calls : list of dict
        LangChain tool calls (``name``, ``args``, ``id``, ``type``) naming known tools.
    notes : list of str
        What was repaired or dropped.
    unreadable : list of str
        Text that looked like a tool call but could not be used (unparseable, unknown tool).
    """

    content: str = ""
    calls: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    unreadable: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------ lenient JSON
_WORDS = {"True": "true", "False": "false", "None": "null", "true": "true", "false": "false",
          "null": "null"}


def _pythonish_to_json(text: str) -> str:
    """Near-JSON as JSON: single-quoted strings, ``True``/``False``/``None``, bare keys and
    trailing commas rewritten; everything inside strings kept."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j, buf = i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt)
                               if nxt in "ntr\"'\\/" else "\\" + nxt)
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ToolCallParseError(f"unterminated string at character {i}")
            out.append(json.dumps("".join(buf)))
            i = j + 1
            continue
        if c == ",":
            k = i + 1
            while k < n and text[k].isspace():
                k += 1
            if k < n and text[k] in "}]":
                i += 1  # trailing comma
                continue
        if c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            k = j
            while k < n and text[k].isspace():
                k += 1
            if k < n and text[k] == ":" and word not in _WORDS:
                out.append(json.dumps(word))  # a bare key
            elif word in _WORDS:
                out.append(_WORDS[word])
            else:
                raise ToolCallParseError(f"unexpected word {word!r}")
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _balanced(text: str) -> str | None:
    """The first complete JSON object or array of ``text`` (string-aware); missing closers are
    added at the end, extra ones after it dropped."""
    start = next((i for i, c in enumerate(text) if c in "{["), None)
    if start is None:
        return None
    stack: list[str] = []
    quote: str | None = None
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
        elif c in "}]":
            if not stack:
                break
            stack.pop()
            if not stack:
                return text[start:i + 1]
        i += 1
    if quote:
        return None
    return text[start:i] + "".join(reversed(stack))


def _undouble(text: str) -> str:
    """Template-escaped braces (``{{`` and ``}}``) as single ones."""
    return text.replace("{{", "{").replace("}}", "}")


def loads_lenient(text: str) -> Any:
    """Parse JSON as small models write it.

    Accepted besides JSON: doubled braces (``{{"name": ...}}``, a chat template's escaping),
    extra or missing closing braces, single quotes, trailing commas, Python ``True``/``False``/
    ``None``, bare keys, a trailing semicolon.

    Raises
    ------
    ToolCallParseError
        Nothing readable.
    """
    s = (text or "").strip().rstrip(";").strip()
    if not s:
        raise ToolCallParseError("empty text")
    variants = [s]
    if "{{" in s or "}}" in s:
        variants.append(_undouble(s))
    for v in list(variants):
        b = _balanced(v)
        if b is not None and b != v:
            variants.append(b)
    last: Exception | None = None
    for v in variants:
        try:
            return json.loads(v)
        except json.JSONDecodeError as exc:
            last = exc
        try:
            return json.loads(_pythonish_to_json(v))
        except (json.JSONDecodeError, ToolCallParseError) as exc:
            last = exc
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            last = exc
    raise ToolCallParseError(f"not JSON: {last}")


# ------------------------------------------------------------------ tool calls in text
_TAGGED = re.compile(r"<\|?tool_call\|?>\s*(.*?)\s*(?:<\|?/tool_call\|?>|(?=<\|?tool_call\|?>)|$)",
                     re.DOTALL)
_FUNCTION_TAG = re.compile(r"<function=(?P<name>[\w.\-]+)>\s*(?P<args>.*?)\s*</function>",
                           re.DOTALL)
_FENCED = re.compile(r"```(?:json|tool_call|tool|python|javascript)?\s*(.*?)```", re.DOTALL)
_MISTRAL = re.compile(r"\[TOOL_CALLS\]\s*(.*)$", re.DOTALL)
_ARG_KEYS = ("arguments", "parameters", "args", "input", "kwargs")
_LOOKS_LIKE_CALL = re.compile(r"<\|?tool_call|<function=|\[TOOL_CALLS\]|^\s*[\[{]+\s*[\"']?"
                              r"(?:name|function|tool)[\"']?\s*:", re.IGNORECASE)


def _norm_name(name: Any, known: Iterable[str]) -> str | None:
    """``name`` as a known tool's name (case, ``functions.`` prefixes, dashes forgiven)."""
    if not isinstance(name, str):
        return None
    known = list(known)
    if name in known:
        return name
    n = re.sub(r"^(?:functions?|tools?)[.:]", "", name.strip().strip("`'\"").lower())
    n = re.sub(r"[\s\-]+", "_", n).removesuffix("()")
    return n if n in known else None


def _call_parts(obj: Any, known: Sequence[str]) -> list[tuple[Any, Any]]:
    """``(name, arguments)`` pairs of a parsed tool-call object (or list of them)."""
    if isinstance(obj, list):
        return [p for o in obj for p in _call_parts(o, known)]
    if not isinstance(obj, dict):
        return []
    fn = obj.get("function")
    if isinstance(fn, dict):
        return _call_parts({**fn, **{k: v for k, v in obj.items() if k != "function"}}, known)
    name = obj.get("name", obj.get("tool", obj.get("tool_name", fn)))
    if name is not None:
        args = next((obj[k] for k in _ARG_KEYS if k in obj), {})
        return [(name, args)]
    if len(obj) == 1:  # {"report_facts": {...}}
        (k, v), = obj.items()
        if _norm_name(k, known) and isinstance(v, (dict, str)):
            return [(k, v)]
    return []


def _blobs(text: str) -> tuple[list[str], str]:
    """Candidate tool-call texts of a model answer, and the text around them."""
    for rx in (_TAGGED, _MISTRAL, _FENCED):
        found = [m.group(1) for m in rx.finditer(text) if m.group(1).strip()]
        if found:
            return found, rx.sub("", text).strip()
    stripped = text.strip()
    if stripped[:1] in "{[":
        b = _balanced(stripped)
        if b is not None:
            return [b], stripped.replace(b, "", 1).strip() if b in stripped else ""
        return [stripped], ""
    blobs, rest = [], text
    for m in re.finditer(r"[{\[]+\s*[\"']?(?:name|function|tool)[\"']?\s*:", text):
        b = _balanced(text[m.start():])
        if b and b not in blobs:
            blobs.append(b)
            rest = rest.replace(text[m.start():m.start() + len(b)], "", 1)
    return blobs, rest.strip()


def extract_tool_calls(text: str, tools: Mapping[str, BaseTool] | Sequence[str]
                       ) -> ToolCallRepair:
    """Tool calls written as text, repaired into proper calls of known tools.

    Reads ``<tool_call>...</tool_call>`` blocks (Hermes, Qwen; also unterminated), Mistral's
    ``[TOOL_CALLS]``, ``<function=name>{...}</function>`` (Llama 3.1), fenced code blocks, a
    bare JSON object or list, or an object with a ``name`` key inside prose. Each object may be
    ``{"name", "arguments"|"parameters"|"args"}``, ``{"function": {"name", "arguments"}}`` or
    ``{tool: {arguments}}``; arguments may be a JSON string. The JSON may be near-JSON
    (:func:`loads_lenient`). Arguments are cleaned with :func:`clean_args` when ``tools`` are
    tool objects.

    Parameters
    ----------
    text : str
        The model's answer text.
    tools : mapping of str to BaseTool, or sequence of str
        The known tools (by name).

    Returns
    -------
    ToolCallRepair
    """
    known = list(tools)
    out = ToolCallRepair(content=text or "")
    if not text or not text.strip():
        return out
    pairs: list[tuple[Any, Any, str]] = []
    for m in _FUNCTION_TAG.finditer(text):
        pairs.append((m.group("name"), m.group("args") or "{}", m.group(0)))
    if pairs:
        rest = _FUNCTION_TAG.sub("", text).strip()
        blobs: list[str] = []
    else:
        blobs, rest = _blobs(text)
    for blob in blobs:
        try:
            obj = loads_lenient(blob)
        except ToolCallParseError as exc:
            out.unreadable.append(blob[:300])
            out.notes.append(f"unreadable tool call ({exc}): {blob[:120]}")
            continue
        parts = _call_parts(obj, known)
        if not parts:
            out.unreadable.append(blob[:300])
            continue
        pairs += [(n, a, blob) for n, a in parts]
    for raw_name, raw_args, blob in pairs:
        name = _norm_name(raw_name, known)
        if name is None:
            out.unreadable.append(blob[:300])
            out.notes.append(f"tool call names an unknown tool {raw_name!r}")
            continue
        args: Any = raw_args
        if isinstance(args, str):
            try:
                args = loads_lenient(args) if args.strip() else {}
            except ToolCallParseError as exc:
                out.unreadable.append(blob[:300])
                out.notes.append(f"unreadable arguments of {name} ({exc})")
                continue
        if args is None:
            args = {}
        if not isinstance(args, dict):
            out.unreadable.append(blob[:300])
            out.notes.append(f"arguments of {name} are not an object: {args!r:.80}")
            continue
        if isinstance(tools, Mapping):
            args, notes = clean_args(tools[name], args)
            out.notes += notes
        out.notes.append(f"read a {name} call written as text")
        out.calls.append({"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}",
                          "type": "tool_call"})
    if out.calls:
        out.content = rest
    return out


# ---------------------------------------------------------------------- argument checks
def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Model``, ``Model | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for a in get_args(annotation):
            m = _model_in(a)
            if m is not None:
                return m
    return None


def _clean_against(model: type[BaseModel], args: dict[str, Any], where: str,
                   notes: list[str]) -> dict[str, Any]:
    fields = model.model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    out: dict[str, Any] = {}
    for k, v in args.items():
        if k not in names or k == "runtime":
            notes.append(f"dropped the argument {where}{k}={v!r:.60} that {model.__name__} "
                         "does not have")
            continue
        f = fields.get(k) or next(x for x in fields.values() if x.alias == k)
        if v is None and not f.is_required() and f.default is not None:
            notes.append(f"dropped {where}{k}=null (the default applies)")
            continue
        sub = _model_in(f.annotation)
        if sub is not None and isinstance(v, dict):
            v = _clean_against(sub, v, f"{where}{k}.", notes)
        out[k] = v
    return out


def clean_args(tool: BaseTool, args: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A tool call's arguments checked against the tool's schema.

    Arguments the schema does not have (invented ones, at any depth of nested models) are
    dropped, as is ``null`` for an optional argument whose default is not null; arguments
    wrapped once more (``{"arguments": {...}}``, or that as a JSON string) are unwrapped.
    Values are not coerced: a wrong value reaches the tool, whose error the model reads.

    Returns
    -------
    args : dict
    notes : list of str
        One line per change (also logged).
    """
    notes: list[str] = []
    args = dict(args)
    schema = getattr(tool, "args_schema", None)
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        return args, notes
    fields = set(schema.model_fields)
    wrapped = [k for k in args if k in _ARG_KEYS and k not in fields]
    if len(args) == 1 and wrapped:
        inner = args[wrapped[0]]
        if isinstance(inner, str):
            try:
                inner = loads_lenient(inner)
            except ToolCallParseError:
                inner = None
        if isinstance(inner, dict):
            notes.append(f"unwrapped the arguments of {tool.name} from {wrapped[0]!r}")
            args = inner
    args = _clean_against(schema, args, "", notes)
    try:
        schema.model_validate(args)
    except ValidationError as exc:
        notes.append(f"{tool.name} arguments still invalid (the tool will say why): "
                     f"{exc.errors()[0].get('msg', '')}")
    for n in notes:
        logger.info("tool call %s: %s", tool.name, n)
    return args, notes


def call_signature(name: str, args: Mapping[str, Any]) -> str:
    """A canonical text of a call (tool and arguments), equal for identical calls."""
    return json.dumps({"tool": name, "args": args}, sort_keys=True, default=str)


# ------------------------------------------------------------------------ compact mode
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)[.;:](?=\s+[A-Z(\"'])")
_PRIMITIVES = ("string", "number", "integer", "boolean", "null")


def _short(text: str, limit: int) -> str:
    """The first sentence of ``text`` (one line), cut to ``limit`` characters."""
    t = " ".join((text or "").split())
    m = _SENTENCE_END.search(t)
    if m and m.start() > 10:
        t = t[:m.start()]
    t = t.rstrip(".;: ")
    return t if len(t) <= limit else t[:limit - 1].rstrip(" ,;(") + "…"


def _compact_schema(node: Any, field_chars: int, depth: int) -> Any:
    """A JSON schema without what a small model does not need (see
    :func:`compact_tool_schema`); ``depth`` 1 is a tool's own arguments."""
    if isinstance(node, list):
        return [_compact_schema(x, field_chars, depth) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if isinstance(any_of, list):
        options = [o for o in any_of if not (isinstance(o, dict) and o.get("type") == "null")]
        if len(options) == 1 and isinstance(options[0], dict):
            node = {**options[0], **node}
        elif options and all(isinstance(o, dict) and set(o) == {"type"}
                             and o["type"] in _PRIMITIVES for o in options):
            node["type"] = [o["type"] for o in options]
        else:
            node["anyOf"] = options
    prefix = node.pop("prefixItems", None)
    if isinstance(prefix, list) and prefix and all(p == prefix[0] for p in prefix):
        node["items"] = prefix[0]
    elif prefix is not None:
        node["prefixItems"] = prefix
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("title", "additionalProperties", "$schema", "default", "minimum", "maximum",
                 "minItems", "maxItems", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if k == "description":
            if depth <= 1:
                out[k] = _short(str(v), field_chars)
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {p: _compact_schema(s, field_chars, depth + 1) for p, s in v.items()}
            continue
        out[k] = _compact_schema(v, field_chars, depth)
    return out


def compact_tool_schema(tool: BaseTool | dict[str, Any], *, description_chars: int = 90,
                        field_chars: int = 32) -> dict[str, Any]:
    """A tool's OpenAI-format schema shortened for a small context window.

    The description is cut to its first sentence (``description_chars`` at most), each
    argument's description likewise (``field_chars``; nested objects' fields keep none),
    titles, defaults, bounds and ``additionalProperties`` are dropped, ``anyOf [X, null]``
    becomes ``X`` and a union of plain types a list of types. Argument names, types, enums and
    required lists are kept, so a call that fits the compact schema reaches the tool, whose
    own validation (and defaults) still apply.
    """
    spec = convert_to_openai_tool(tool)
    fn = dict(spec["function"])
    fn["description"] = _short(fn.get("description", ""), description_chars)
    if "parameters" in fn:
        fn["parameters"] = _compact_schema(fn["parameters"], field_chars, 0)
    return {"type": "function", "function": fn}


def _focus_words(text: str) -> set[str]:
    """The words of a question that can pick out lines of a tool result."""
    words = {w for w in re.findall(r"[a-z][a-z0-9]+", text.lower())
             if len(w) >= 3 and w not in _STOPWORDS}
    return words | {w[:-1] for w in words if w.endswith("s") and len(w) > 4}


def shorten_tool_result(text: str, limit: int, focus: str = "") -> str:
    """A tool result cut to about ``limit`` characters at line breaks, saying what was left
    out (the model is told the user sees it all).

    Parameters
    ----------
    text : str
    limit : int
        Characters to keep, about.
    focus : str
        The question: when lines share a word with it, the result's first line and those
        lines are kept (in their order) and the others left out, so a 1.5 B model reading a
        long report sees the line with the RDI it was asked for, and only such lines (given
        the whole list, it quotes the first number it meets).
    """
    text = text or ""
    if len(text) <= limit:
        return text
    lines = text.splitlines()
    words = _focus_words(focus) if focus else set()
    first = [i for i, ln in enumerate(lines)
             if words and words & set(re.findall(r"[a-z][a-z0-9]+", ln.lower()))]
    if first and first[0] != 0:
        first = [0, *first]  # the header: which patient, which units
    order = first if first else list(range(len(lines)))
    take: set[int] = set()
    used = 0
    for i in order:
        if used + len(lines[i]) + 1 > limit:
            if i in first:
                continue  # a long relevant line: try the next
            break
        take.add(i)
        used += len(lines[i]) + 1
    kept = [lines[i] for i in sorted(take)]
    if not kept:
        return (text[:limit].rstrip() + f" [... {len(text) - limit} more characters not "
                "shown to save context; the user sees the full result]")
    return ("\n".join(kept) + f"\n[... {len(lines) - len(kept)} more line(s) not shown to save "
            "context; the user sees the full result]")


# ---------------------------------------------------------------------- conversations
def _text(m: BaseMessage) -> str:
    c = m.content
    if isinstance(c, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)
    return str(c or "")


def _recent_history(earlier: Sequence[BaseMessage], chars: int) -> list[BaseMessage]:
    """The most recent whole questions of ``earlier`` (each from its HumanMessage on, with its
    tool calls and results) whose text fits in ``chars``; older ones are left out."""
    turns: list[list[BaseMessage]] = []
    for m in earlier:
        if isinstance(m, HumanMessage) or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    kept: list[list[BaseMessage]] = []
    used = 0
    for t in reversed(turns):
        size = sum(len(_text(m)) for m in t)
        if used + size > chars:
            break
        kept.insert(0, t)
        used += size
    return [m for t in kept for m in t]


def _tool_name(tool: Any) -> str | None:
    """The name of a tool given as a BaseTool or an OpenAI-style dict."""
    if isinstance(tool, BaseTool):
        return tool.name
    if isinstance(tool, dict):
        return tool.get("function", {}).get("name") or tool.get("name")
    return getattr(tool, "name", None)


def _last_human(messages: Sequence[BaseMessage]) -> int | None:
    return max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)),
               default=None)


def _result_of(artifact: Any) -> Any:
    """The structured result of a tool artifact (a ToolArtifact, or its dict after a
    restart)."""
    if artifact is None:
        return None
    if isinstance(artifact, dict):
        return artifact.get("result")
    return getattr(artifact, "result", None)


def _ran(messages: Iterable[BaseMessage]) -> list[ToolMessage]:
    """The tool messages of calls that ran (blocked repeats and skipped calls left out)."""
    return [m for m in messages if isinstance(m, ToolMessage)
            and not (m.additional_kwargs.get(REPEAT_KEY) or m.additional_kwargs.get(SKIPPED_KEY))]


def conversation_outputs(messages: Sequence[BaseMessage], *,
                         timebase: Sequence[BaseMessage] | None = None) -> list[ToolOutput]:
    """Every tool result of a conversation (blocked repeats and skipped calls left out).

    A result that gives a span in seconds of the night ("[event respiration 11148-11167 s]")
    also gives its clock times ("01:21:48-01:22:07") when the results of ``timebase``
    (default ``messages``) fix the clock time of epoch 0: an answer may write either.
    """
    base = _epoch_clock(messages if timebase is None else timebase)
    t0 = base[0] if base is not None and base[1] - base[0] < 1.0 else None
    out = []
    for m in _ran(messages):
        content = _text(m)
        if t0 is not None:
            spans = [f"{_clock_at(t0 + float(a))}-{_clock_at(t0 + float(b))}"
                     for a, b in _SECONDS_SPAN.findall(content)]
            if spans:
                content += "\n[the spans above in clock time: " + ", ".join(spans) + "]"
        out.append(ToolOutput(name=m.name or "", content=content,
                              result=_result_of(getattr(m, "artifact", None))))
    return out


def _clock_at(seconds_of_day: float) -> str:
    """``"HH:MM:SS"`` of a time in seconds of the day (wrapping past midnight)."""
    t = int(round(seconds_of_day)) % int(_DAY_S)
    return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"


def ground_conversation(messages: Sequence[BaseMessage], text: str | None = None, *,
                        extra: Iterable[FactItem] = REFERENCE_FACTS) -> GroundedAnswer:
    """Check an answer against a conversation's tool outputs and its last question.

    Parameters
    ----------
    messages : sequence of BaseMessage
        The conversation (its last human message is the question).
    text : str, optional
        The answer (default: the last message's text).
    extra : iterable of FactItem
        Further allowed facts (default :data:`REFERENCE_FACTS`).

    Returns
    -------
    GroundedAnswer
    """
    h = _last_human(messages)
    question = _text(messages[h]) if h is not None else ""
    if text is None:
        text = _text(messages[-1]) if messages else ""
    allowed = chat_allowed(conversation_outputs(messages), question, extra=extra)
    return ground_answer(text, allowed)


def stale_number_spans(text: str, messages: Sequence[BaseMessage], *,
                       extra: Iterable[FactItem] = REFERENCE_FACTS
                       ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Numbers and times of an answer that only an earlier question's results about events or
    epochs give, when this question has results of its own.

    Asked "Show me the raw traces around the last one you listed", the 1.5 B model drew them
    and wrote "The respiratory rate during the last obstructive apnea was 6 breaths per
    minute, and the saturation averaging was 96%": both numbers were the caption of the
    apnea before, from the question before. The night's measures (``report_facts``) stay
    quotable in any later answer; other results only in the question that asked for them.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Character spans in ``text``, in order, of what the check over the whole
        conversation lets pass.
    """
    h = _last_human(messages)
    if h is None or not any(isinstance(m, ToolMessage) and m.status != "error"
                            and not m.additional_kwargs.get(REPEAT_KEY)
                            for m in messages[h + 1:]):
        return []
    if not any(isinstance(m, ToolMessage) and m.name != "report_facts" for m in messages[:h]):
        return []
    keep = [m for i, m in enumerate(messages)
            if i > h or not isinstance(m, ToolMessage) or m.name == "report_facts"]
    question = _text(messages[h])
    full = chat_allowed(conversation_outputs(messages), question, extra=extra)
    strict = chat_allowed(conversation_outputs(keep, timebase=messages), question, extra=extra)
    passed = {(a, b) for a, b, _c in problem_spans(text, full)}
    return [(a, b, claim.model_copy(update={
        "reason": "only an earlier question's results give it, not this question's"}))
        for a, b, claim in problem_spans(text, strict) if (a, b) not in passed]


# ------------------------------------------------------------------------ middlewares
class GuardState(AgentState):
    """Agent state with the question's start time (not persisted)."""

    sleeplm_question_started: NotRequired[Annotated[float, UntrackedValue, PrivateStateAttr]]


def _tag(msg: AIMessage, **kw: Any) -> AIMessage:
    return msg.model_copy(update={"additional_kwargs": {**msg.additional_kwargs, **kw}})


def _split(result: Any) -> tuple[Any, AIMessage | None, Callable[[AIMessage], Any]]:
    """The AI message of a handler result and a function putting a replacement back."""
    if isinstance(result, AIMessage):
        return result, result, lambda m: ModelResponse(result=[m])
    if isinstance(result, ExtendedModelResponse):
        _inner, msg, put = _split(result.model_response)
        return result, msg, lambda m: ExtendedModelResponse(model_response=put(m),
                                                            command=result.command)
    if isinstance(result, ModelResponse):
        idx = max((i for i, m in enumerate(result.result) if isinstance(m, AIMessage)),
                  default=None)
        if idx is None:
            return result, None, lambda m: result

        def put(m: AIMessage) -> ModelResponse:
            msgs = list(result.result)
            msgs[idx] = m
            return ModelResponse(result=msgs, structured_response=result.structured_response)

        return result, result.result[idx], put
    return result, None, lambda m: result


def grounded_withdrawals(messages: Sequence[BaseMessage]) -> tuple[list[WithdrawnClaim], str]:
    """What the chat grounding (:class:`ChatGroundingMiddleware`) withdraws from the last
    message of ``messages``, an LLM's answer, and the answer's own text after it (without the
    values it adds under the answer).

    Returns
    -------
    withdrawn : list of WithdrawnClaim
    body : str
    """
    last = messages[-1]
    tagged = _tag(last, **{WRITER_KEY: "llm"}) if isinstance(last, AIMessage) else last
    done = ChatGroundingMiddleware().after_agent({"messages": [*messages[:-1], tagged]}, None)
    if not done:
        return [], _text(last)
    new = done["messages"][0]
    return withdrawn_of(new), _text(new).split(COMPLETION_HEAD)[0]


def report_answer(turn: Sequence[BaseMessage]) -> AIMessage | None:
    """The answer to a question whose last step was the LLM's own report draft or revision:
    the report tool's result itself, or None.

    The draft is the answer: its narrative was written by the LLM writer and checked sentence
    by sentence against the measurements, and the sections it had no time for by the
    templates (the result says which). A further model call only restated it, and with a
    1.5 B model on two CPU cores the draft used the question's whole time budget, so every
    chat report fell back to the planner (12 of 187 benchmark questions, 122-156 s), which
    answered with the same draft.

    Parameters
    ----------
    turn : sequence of BaseMessage
        The question's messages after it.

    Returns
    -------
    AIMessage or None
        Written by ``"report"`` (:data:`WRITER_KEY`); None unless the last message is a
        successful ``draft_report`` / ``revise_report`` result of a call the LLM made alone.
    """
    if not turn or not isinstance(turn[-1], ToolMessage):
        return None
    result = turn[-1]
    marks = result.additional_kwargs
    if result.name not in REUSABLE_TOOLS or result.status == "error" \
            or marks.get(REPEAT_KEY) or marks.get(SKIPPED_KEY):
        return None
    call = next((m for m in reversed(turn) if isinstance(m, AIMessage) and m.tool_calls), None)
    if call is None or call.additional_kwargs.get(WRITER_KEY) != "llm" \
            or [tc.get("id") for tc in call.tool_calls] != [result.tool_call_id]:
        return None
    return AIMessage(content=_text(result), additional_kwargs={
        WRITER_KEY: "report", **({INTENT_KEY: call.additional_kwargs[INTENT_KEY]}
                                 if INTENT_KEY in call.additional_kwargs else {})})


class ToolCallGuard(AgentMiddleware):
    """Repairs, validates and de-loops an LLM's tool calls; falls back to the offline planner.

    Parameters
    ----------
    tools : sequence of BaseTool
        The agent's tools (for names and schemas).
    fallback : BaseChatModel, optional
        The offline planner that answers when the LLM cannot (None: the question stops with a
        message instead).
    time_budget_s : float
        Seconds a question may take before the fallback answers.
    max_repeats : int
        Blocked repeated calls in a question before the loop stops.
    max_tool_errors : int
        Failed tool calls in a question before the fallback answers.
    compact : bool
        Compact tool schemas and tool results for the LLM (:func:`compact_tool_schema`,
        :func:`shorten_tool_result`).
    result_chars : int
        Characters of a tool result of the current question the LLM reads in compact mode
        (a quarter of that for earlier questions).
    history_chars : int
        In compact mode, characters of earlier questions the LLM reads: the most recent whole
        questions that fit (a 4k-token context overflows after a few questions otherwise, and
        llama.cpp then streams nothing); 0 = every earlier question.
    shortlist : int
        With a fallback planner: offer the LLM only the (at most) this many tools the planner
        ranks first for the question (:meth:`~assistant.planner.OfflinePlanner.shortlist`); on
        the question's first model call append the planner's proposed call to the question as
        a hint the LLM may follow or not (and require a tool call when the planner needs data);
        let the planner decline out-of-scope questions itself. 0 = every tool, no hint.
    """

    state_schema = GuardState

    def __init__(self, tools: Sequence[BaseTool], *, fallback: Any = None,
                 time_budget_s: float = 120.0, max_repeats: int = 2, max_tool_errors: int = 2,
                 compact: bool = False, result_chars: int = 1200,
                 history_chars: int = 0, shortlist: int = 0) -> None:
        super().__init__()
        self._tools: dict[str, BaseTool] = {t.name: t for t in tools}
        self.fallback = fallback
        self.time_budget_s = float(time_budget_s)
        self.max_repeats = int(max_repeats)
        self.max_tool_errors = int(max_tool_errors)
        self.compact = bool(compact)
        self.result_chars = int(result_chars)
        self.history_chars = int(history_chars)
        self.shortlist = int(shortlist) if hasattr(fallback, "shortlist") else 0
        self._compact_specs = ({n: compact_tool_schema(t) for n, t in self._tools.items()}
                               if compact else {})

    # -- hooks ---------------------------------------------------------------------------
    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Start the question's clock."""
        return {_STARTED_KEY: time.monotonic()}

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]
                        ) -> Any:
        """Call the LLM (or, once fallen back, the planner) and check what it wrote."""
        messages = list(request.messages)
        h = _last_human(messages)
        turn = messages[h + 1:] if h is not None else messages
        question = _text(messages[h]) if h is not None else ""
        started = (request.state or {}).get(_STARTED_KEY)
        cut = next((i for i, m in enumerate(turn) if isinstance(m, AIMessage)
                    and FALLBACK_KEY in m.additional_kwargs), None)
        if cut is not None:
            note = FallbackNote.model_validate(turn[cut].additional_kwargs[FALLBACK_KEY])
            return self._fall_back(request, handler, messages, h, turn[cut:], note)
        drafted = report_answer(turn)
        if drafted is not None:
            return ModelResponse(result=[drafted])
        note = self._stop_reason(turn, started)
        sl = (self.fallback.shortlist(messages[:h + 1], k=self.shortlist)
              if self.shortlist and h is not None else None)
        if note is None and sl is not None and not turn:
            note = self._declined(sl)
        if note is not None:
            return self._fall_back(request, handler, messages, h, [], note)
        try:
            result = handler(self._for_llm(request, h, sl))
        except Exception as exc:  # noqa: BLE001 - any failure of the model call falls back
            from assistant.llm_server import LLMServerCrashed

            if isinstance(exc, LLMServerCrashed):
                raise
            detail = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("model call failed: %s", detail)
            return self._fall_back(request, handler, messages, h, [],
                                   FallbackNote(reason="model_error", detail=detail))
        result, msg, put = _split(result)
        if msg is None:
            return result
        msg, unreadable = self._repair(msg)
        tags = {WRITER_KEY: "llm", **({INTENT_KEY: sl.intent} if sl is not None else {})}
        if msg.tool_calls:
            if self._over_budget(started):
                return self._fall_back(request, handler, messages, h, [], self._budget_note(
                    started))
            return put(_tag(msg, **tags))
        note = self._answer_problem(msg, turn, question, unreadable,
                                    earlier=messages[:h] if h is not None else (),
                                    conversation=messages,
                                    intent=sl.intent if sl is not None else None)
        if note is not None:
            return self._fall_back(request, handler, messages, h, [], note)
        return put(_tag(msg, **tags))

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Run an LLM's tool call unless it repeats one of this question or time is up."""
        call = request.tool_call
        state = request.state if isinstance(request.state, dict) else {}
        messages = list(state.get("messages", []))
        at = next((i for i in range(len(messages) - 1, -1, -1)
                   if isinstance(messages[i], AIMessage)
                   and any(tc.get("id") == call.get("id") for tc in messages[i].tool_calls)),
                  None)
        if at is None or messages[at].additional_kwargs.get(WRITER_KEY) != "llm":
            return handler(request)
        started = state.get(_STARTED_KEY)
        if self._over_budget(started):
            return ToolMessage(
                content=f"Not run: this question's time budget ({self.time_budget_s:g} s) is "
                        "spent.", tool_call_id=call["id"], name=call["name"], status="error",
                additional_kwargs={SKIPPED_KEY: True})
        h = _last_human(messages[:at])
        sig = call_signature(call["name"], call.get("args", {}))
        earlier = [tc for m in messages[(h + 1 if h is not None else 0):at]
                   if isinstance(m, AIMessage) for tc in m.tool_calls]
        for tc in messages[at].tool_calls:  # calls before this one in the same message
            if tc.get("id") == call.get("id"):
                break
            earlier.append(tc)
        seen = sum(call_signature(tc["name"], tc.get("args", {})) == sig for tc in earlier)
        if seen:
            logger.info("blocked repeated tool call %s %s", call["name"], call.get("args"))
            return ToolMessage(
                content=(f"Not run again: you already called {call['name']} with exactly "
                         "these arguments in this question; its result is above. Answer from "
                         "that result, or call a different tool or other arguments."),
                tool_call_id=call["id"], name=call["name"], status="success",
                additional_kwargs={REPEAT_KEY: True})
        return handler(request)

    # -- helpers -------------------------------------------------------------------------
    def _over_budget(self, started: float | None) -> bool:
        return started is not None and time.monotonic() - started > self.time_budget_s

    def _budget_note(self, started: float | None) -> FallbackNote:
        spent = time.monotonic() - started if started is not None else 0.0
        return FallbackNote(reason="time_budget",
                            detail=f"{spent:.1f} s spent, budget {self.time_budget_s:g} s")

    def _stop_reason(self, turn: Sequence[BaseMessage], started: float | None
                     ) -> FallbackNote | None:
        if self._over_budget(started):
            return self._budget_note(started)
        tool_msgs = [m for m in turn if isinstance(m, ToolMessage)]
        repeats = [m for m in tool_msgs if m.additional_kwargs.get(REPEAT_KEY)]
        if len(repeats) >= self.max_repeats:
            return FallbackNote(reason="tool_loop",
                                detail=f"{repeats[-1].name or 'a tool'} asked for "
                                       f"{len(repeats) + 1} times with the same arguments")
        errors = [m for m in tool_msgs if m.status == "error"
                  and not m.additional_kwargs.get(SKIPPED_KEY)]
        if len(errors) >= self.max_tool_errors:
            return FallbackNote(reason="tool_errors",
                                detail=f"{len(errors)} failed; last: {_text(errors[-1])[:160]}")
        return None

    def _for_llm(self, request: ModelRequest, h: int | None, sl: Any = None) -> ModelRequest:
        """The request as the LLM gets it: compact tools and results in compact mode, the
        shortlisted tools (``sl``, a :class:`~assistant.planner.ToolShortlist`) with the
        routing hint in shortlist mode."""
        messages = [_without_added(m) if h is not None and i < h else m
                    for i, m in enumerate(request.messages)]
        if not self.compact and sl is None:
            return request.override(messages=messages)
        tools = list(request.tools)
        question = _text(messages[h]) if h is not None else ""
        if self.compact:
            for i, m in enumerate(messages):
                if isinstance(m, ToolMessage):
                    now = h is None or i > h
                    limit = self.result_chars if now else max(200, self.result_chars // 4)
                    full = _text(m)
                    if m.name == "report_facts":
                        full = _RUN_EVIDENCE.sub("", full)
                    short = shorten_tool_result(full, limit, focus=question if now else "")
                    if short != _text(m):
                        messages[i] = m.model_copy(update={"content": short})
        overrides: dict[str, Any] = {}
        if sl is not None and h is not None:
            rank = {n: i for i, n in enumerate(sl.tools)}
            tools = sorted((t for t in tools if _tool_name(t) in rank),
                           key=lambda t: rank[_tool_name(t)])
            # the hint goes at the end of what the LLM reads: a small model follows it best
            # there, and the system message, tools and history stay a prefix that the server
            # reuses from the question's previous model call
            last = len(messages) - 1
            if last == h:  # the question's first model call
                messages[h] = messages[h].model_copy(
                    update={"content": f"{question}\n\n({sl.hint()})"})
                if sl.call is not None and tools:
                    overrides["tool_choice"] = "required"  # data needed: call one of them
            elif isinstance(messages[last], ToolMessage):
                messages[last] = messages[last].model_copy(
                    update={"content": f"{_text(messages[last])}\n\n({ANSWER_HINT})"})
            logger.info("shortlist for the LLM: %s (%s)", ", ".join(sl.tools) or "no tool",
                        sl.intent)
        if self.compact:
            tools = [self._compact_specs.get(t.name, t) if isinstance(t, BaseTool) else t
                     for t in tools]
            if h is not None and self.history_chars > 0:
                messages = _recent_history(messages[:h], self.history_chars) + messages[h:]
        return request.override(tools=tools, messages=messages, **overrides)

    def _repair(self, msg: AIMessage) -> tuple[AIMessage, list[str]]:
        """Tool calls read from text and every call's arguments cleaned."""
        notes: list[str] = []
        unreadable: list[str] = []
        content: Any = msg.content
        calls = [dict(tc) for tc in msg.tool_calls]
        invalid = list(msg.invalid_tool_calls)
        for bad in list(invalid):
            name = _norm_name(bad.get("name"), self._tools)
            try:
                args = loads_lenient(bad.get("args") or "{}")
            except ToolCallParseError:
                continue
            if name is not None and isinstance(args, dict):
                calls.append({"name": name, "args": args,
                              "id": bad.get("id") or f"call_{uuid.uuid4().hex[:12]}",
                              "type": "tool_call"})
                invalid.remove(bad)
                notes.append(f"repaired the malformed arguments of a {name} call")
        if not calls:
            rep = extract_tool_calls(_text(msg), list(self._tools))  # cleaned below
            notes += rep.notes
            unreadable = rep.unreadable
            if rep.calls:
                calls, content = rep.calls, rep.content
        cleaned = []
        for tc in calls:
            name = _norm_name(tc.get("name"), self._tools) or tc.get("name")
            if name != tc.get("name"):
                notes.append(f"tool name {tc.get('name')!r} read as {name!r}")
            args = tc.get("args") or {}
            if name in self._tools and isinstance(args, dict):
                args, more = clean_args(self._tools[name], args)
                notes += more
            cleaned.append({**tc, "name": name, "args": args})
        if not notes:
            return msg, unreadable
        new = AIMessage(content=content, tool_calls=[
            {"name": c["name"], "args": c["args"], "id": c.get("id"), "type": "tool_call"}
            for c in cleaned], invalid_tool_calls=invalid, id=msg.id,
            additional_kwargs={**msg.additional_kwargs, NOTES_KEY: notes},
            response_metadata=msg.response_metadata, usage_metadata=msg.usage_metadata)
        return new, unreadable

    def _answer_problem(self, msg: AIMessage, turn: Sequence[BaseMessage], question: str,
                        unreadable: list[str], earlier: Sequence[BaseMessage] = (),
                        conversation: Sequence[BaseMessage] = (), intent: str | None = None
                        ) -> FallbackNote | None:
        """Why a final answer of the LLM cannot stand, or None (``intent``: the planner's
        reading of the question, when the caller has it)."""
        text = _text(msg).strip()
        stale = stale_citations(text, turn, earlier)
        if msg.invalid_tool_calls:
            bad = msg.invalid_tool_calls[0]
            return FallbackNote(reason="unreadable_tool_call",
                                detail=f"{bad.get('name')}: {bad.get('args')}"[:160])
        if unreadable or (text and _LOOKS_LIKE_CALL.search(text)):
            return FallbackNote(reason="unreadable_tool_call",
                                detail=(unreadable[0] if unreadable else text)[:160])
        if not text:
            return FallbackNote(reason="empty_answer")
        if stale:
            return FallbackNote(reason="stale_answer", detail=", ".join(stale))
        denied = denied_result(text, turn)
        if denied:
            return FallbackNote(reason="denied_result", detail=denied)
        if conversation:
            # every check the answer will get (ChatGroundingMiddleware), not only the tool
            # outputs': "Respiratory rate: 12 breaths/min, Saturation averaging: 96%, Lowest
            # SpO2: 96%" about a plot that gives no value, and "between 22:30:19 and 22:31:20
            # (epoch 18)" for a densest cluster at 02:55:59, were left with only their
            # markers
            out, body = grounded_withdrawals(list(conversation) + [msg])
            left = len(_NUMBER_LEFT.findall(body))
            clocks_out = sum(w.kind == "clock" for w in out)
            if len(out) >= 2 and (not left or (len(out) >= 3 and len(out) > left)) or (
                    clocks_out >= 3 and clocks_out > len(clock_times(body))):
                # "The total duration of sleep is 10 hours, with 6 hours of light sleep ..."
                # about a hypnogram plot: every number the model's own; "The hypnogram shows
                # 12 epochs. The first epoch starts at 0:00:00 and ends at 0:00:30, ...":
                # most of them; "- 1 obstructive apnea at 23:59:00\n- 1 central apnea at
                # 00:00:00 ..." for 100 lines about an events plot: most of its times
                return FallbackNote(reason="ungrounded_answer",
                                    detail=", ".join(w.token for w in out)[:160])
        ran = _ran(turn)
        if ran and all(m.status == "error" for m in ran) and (
                _DENIED_RESULT.search(text) or _ABOUT_THE_ERROR.search(text)):
            # "I apologize, but I cannot provide a timeline ..." or "The error indicates that
            # the target object must have two epochs" after its own call failed: the
            # planner's call may not
            return FallbackNote(reason="tool_errors",
                                detail=f"{ran[-1].name}: {_text(ran[-1])}"[:160])
        again = repeated_answer(text, earlier)
        if again:
            return FallbackNote(reason="repeated_answer", detail=again[:160])
        hollow = _HOLLOW.search(text)
        if hollow:
            return FallbackNote(reason="hollow_answer",
                                detail=text[max(0, hollow.start() - 60):hollow.end()].strip())
        wrong = contradicted_verdict(text, turn)
        if wrong:
            return FallbackNote(reason="contradicted_verdict", detail=wrong)
        router = getattr(self.fallback, "router", None) if self.fallback is not None else None
        from assistant.extract import ordinal

        named_by_place = bool(earlier) and ordinal(question) is not None
        if intent is None and router is not None and (
                named_by_place or not any(isinstance(m, ToolMessage) for m in turn)):
            from assistant.routing import normalise

            intent = router.route(normalise(question)).intent
        if intent == "followup" and named_by_place:
            other = wrong_referent(text, question, earlier)
            if other:
                return FallbackNote(reason="wrong_referent", detail=other)
        if self.fallback is None or any(isinstance(m, ToolMessage) for m in turn):
            return None
        if router is None or intent is None:
            return None
        if intent not in NO_TOOL_INTENTS:
            return FallbackNote(reason="no_tool_call",
                                detail=f"the question asks for {intent.replace('_', ' ')}")
        return None

    @staticmethod
    def _declined(sl: Any) -> FallbackNote | None:
        """Shortlist mode: a question the planner places out of scope or not recorded is
        answered by the planner's fixed refusal, never by the small LLM (asked whether to
        start CPAP or bilevel, a 1.5 B model recommended bilevel); one it cannot place at all
        gets its answer saying so and what it can do."""
        if sl.call is None and sl.intent in DECLINED_INTENTS:
            return FallbackNote(reason="out_of_scope",
                                detail=f"the planner reads it as {sl.intent.replace('_', ' ')}")
        if sl.call is None and sl.intent == "unknown":
            # every such question of the 187 benchmark questions was out of scope (driving,
            # a recipe, a capital), and a 1.5 B model offered tools called localize or
            # report_facts for them and answered with unrelated data
            return FallbackNote(reason="not_understood")
        return None

    def _reusable(self, messages: Sequence[BaseMessage], h: int) -> list[BaseMessage]:
        """The LLM's finished call of this question that the planner would make first (same
        tool and arguments, or any draft/revision of the report), with its result, so that
        a fallback (e.g. the time budget spent while the LLM's report was drafted) answers
        from it instead of running it again; [] when there is none."""
        if not hasattr(self.fallback, "shortlist"):
            return []
        sl = self.fallback.shortlist(messages[:h + 1], k=1)
        if sl.call is None:
            return []
        from assistant.planner import PLAN_KEY

        turn = messages[h + 1:]
        results = {m.tool_call_id: m for m in turn if isinstance(m, ToolMessage)
                   and m.status != "error" and not m.additional_kwargs.get(REPEAT_KEY)
                   and not m.additional_kwargs.get(SKIPPED_KEY)}
        for m in reversed(turn):
            for tc in m.tool_calls if isinstance(m, AIMessage) else []:
                same = tc["name"] == sl.call["name"] and (
                    tc["name"] in REUSABLE_TOOLS
                    or call_signature(tc["name"], tc.get("args", {}))
                    == call_signature(sl.call["name"], sl.call["args"]))
                if same and tc.get("id") in results:
                    plan = {"intent": sl.intent, "score": 1.0, "by": "llm_call_reused"}
                    return [AIMessage(content="", tool_calls=[tc],
                                      additional_kwargs={PLAN_KEY: plan}), results[tc["id"]]]
        return []

    def _fall_back(self, request: ModelRequest, handler: Callable[[ModelRequest], Any],
                   messages: list[BaseMessage], h: int | None, own: list[BaseMessage],
                   note: FallbackNote) -> Any:
        """The offline planner's next message for this question (it sees the conversation
        before the question, the question and its own steps), or a stop message."""
        if not own:
            logger.warning("falling back for this question: %s", note.describe())
        if self.fallback is None:
            note = note.model_copy(update={"by": "stopped"})
            return ModelResponse(result=[AIMessage(
                content=f"I could not answer this: {note.describe()} Please ask again or "
                        "rephrase.",
                additional_kwargs={WRITER_KEY: "guard", FALLBACK_KEY: note.model_dump()})])
        base = messages[:h + 1] if h is not None else []
        if not own and h is not None:
            own = self._reusable(messages, h)
        result = handler(request.override(model=self.fallback, messages=base + list(own)))
        result, msg, put = _split(result)
        if msg is None:
            return result
        return put(_tag(msg, **{WRITER_KEY: "planner", FALLBACK_KEY: note.model_dump()}))


class ChatGroundingMiddleware(AgentMiddleware):
    """At the end of a question, ground the LLM's final answer (see the module docstring).

    Parameters
    ----------
    extra : iterable of FactItem
        Further allowed facts (default :data:`REFERENCE_FACTS`).
    """

    def __init__(self, extra: Iterable[FactItem] = REFERENCE_FACTS) -> None:
        super().__init__()
        self.extra = tuple(extra)

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Replace the final answer by its grounded text when something was withdrawn."""
        messages = list(state.get("messages", []))
        if not messages:
            return None
        last = messages[-1]
        if not isinstance(last, AIMessage) or last.tool_calls \
                or last.additional_kwargs.get(WRITER_KEY) != "llm":
            return None
        # markers and a heading copied from earlier answers would claim a check or an
        # addition the code did not make
        own, marks = _MARKER.subn("", _text(last))
        own, hints = _COPIED_HINT.subn("\n\n", own)  # the hint after tool results, copied
        own, echoes = _ECHOED_HINT.subn("", own)
        marks += hints + echoes
        h0 = _last_human(messages)
        if h0 is not None and not any(m.name in MODEL_OUTPUT_NOTES
                                      for m in _ran(messages[h0 + 1:])):
            # "The sleep efficiency is 86.8 %, according to the SleepLM model output.": a
            # measured value called the model's; no tool of SleepLM's reading ran
            own, wrong_source = _FALSE_SOURCE.subn("", own)
            if wrong_source:
                logger.warning("removed %d attribution(s) of measured values to SleepLM",
                               wrong_source)
            marks += wrong_source
        if marks:
            messages[-1] = last.model_copy(update={"content": own.strip()})
        grounded = ground_conversation(messages, extra=self.extra)
        text, withdrawn = grounded.text, list(grounded.withdrawn)
        text, copied = _COPIED_HEAD.subn("", text)
        copied += marks
        h = _last_human(messages)
        spans = (misbound_spans(text, facts_measures(messages).values(), _text(messages[h]))
                 if h is not None else [])
        for a, b, claim in sorted(spans, key=lambda x: -x[0]):
            text = text[:a] + UNVERIFIED + text[b:]
        withdrawn += [claim for _a, _b, claim in sorted(spans, key=lambda x: x[0])]
        onsets = onset_epoch_spans(text, messages)
        placed = (epoch_clock_spans(text, messages) + onsets
                  + local_value_spans(text, messages) + impossible_epoch_spans(text, messages)
                  + epoch_source_spans(text, messages) + epoch_count_spans(text, messages)
                  + rate_claim_spans(text, messages) + stage_claim_spans(text, messages))
        placed = _disjoint(placed)
        for a, b, claim in sorted(placed, key=lambda x: -x[0]):
            text = text[:a] + UNVERIFIED + text[b:]
        withdrawn += [claim for _a, _b, claim in placed]
        # after them: a value beside an epoch just withdrawn goes with it
        asides = epoch_aside_spans(text, messages)
        for a, b, claim in sorted(asides, key=lambda x: -x[0]):
            text = text[:a] + UNVERIFIED + text[b:]
        withdrawn += [claim for _a, _b, claim in asides]
        foreign = other_patient_spans(text, messages, extra=self.extra)
        for a, b, claim in sorted(foreign, key=lambda x: -x[0]):
            text = text[:a] + UNVERIFIED + text[b:]
        withdrawn += [claim for _a, _b, claim in foreign]
        stale = stale_number_spans(text, messages, extra=self.extra)
        for a, b, claim in sorted(stale, key=lambda x: -x[0]):
            text = text[:a] + UNVERIFIED + text[b:]
        withdrawn += [claim for _a, _b, claim in stale]
        absent = absence_spans(text, messages[h + 1:]) if h is not None else []
        absent += extreme_event_spans(text, messages[h + 1:]) if h is not None else []
        absent += count_spans(text, messages[h + 1:], messages) if h is not None else []
        absent += localized_denial_spans(text, messages[h + 1:]) if h is not None else []
        absent += densest_claim_spans(text, messages[h + 1:]) if h is not None else []
        absent += shared_duration_spans(text, messages[h + 1:]) if h is not None else []
        absent = _disjoint(absent)  # two checks, one span: once
        for a, b, claim, _line in sorted(absent, key=lambda x: -x[0]):
            text = text[:a] + UNVERIFIED + text[b:]
        withdrawn += [claim for _a, _b, claim, _line in sorted(absent, key=lambda x: x[0])]
        intent = last.additional_kwargs.get(INTENT_KEY)
        # "Why is her sleep efficiency so poor?" answered with the value alone: the reason
        # the measured values give, written by code, goes first under the answer
        why: tuple[str, str | None] = ("", None)
        if h is not None and intent == "insight_efficiency" and not explains(text):
            why = ("efficiency_explanation",
                   efficiency_explanation(facts_measures(messages[h + 1:])))
        elif h is not None and POSITIONAL_WORDS.search(_text(messages[h])) \
                and not judges_position(text):
            # "is it worse on their back?" answered with the severity alone: the verdict
            why = ("positional_verdict", positional_verdict(facts_measures(messages[h + 1:])))
        missing = (missing_measures(_text(messages[h]), messages[h + 1:],
                                    text + ("\n" + why[1] if why[1] else ""), intent=intent)
                   if h is not None else [])
        missing[:0] = [why] if why[1] else []
        if h is not None:
            # "show me where the breathing stops" answered with one apnea of 56
            missing += [("scored_events", line) for line in unlisted_event_lines(
                _text(messages[h]), messages[h + 1:], text)]
        missing += [("localize" if line.startswith("SleepLM's") else "scored_events", line)
                    for line in dict.fromkeys(line for _a, _b, _c, line in absent)]
        # "The first REM was detected at epoch [unverified]": the epoch and its time
        for name, line in onset_epoch_lines(onsets, messages):
            at = next((i for i, (n, _l) in enumerate(missing) if n == name), None)
            if at is None:
                missing.append((name, line))
            else:
                missing[at] = (name, line)
        caveat = model_output_note(text, messages[h + 1:]) if h is not None else None
        detected = detection_note(text, messages[h + 1:]) if h is not None else None
        unlinked = (unlinked_night_note(_text(messages[h]), text) if h is not None else None)
        caveat = " ".join(c for c in (caveat, detected, unlinked) if c) or None
        if caveat:
            text = text.rstrip() + "\n\n" + caveat
        if not withdrawn and not missing and not copied and not caveat:
            return None
        kw: dict[str, Any] = {UNGROUNDED_KEY: _text(last)}
        if copied:
            logger.warning("removed %d copied [unverified] marker(s) or added-values "
                           "heading(s) from an answer", copied)
        if withdrawn:
            logger.warning("withdrew %d unsupported number(s)/time(s) from an answer: %s",
                           len(withdrawn), ", ".join(w.token for w in withdrawn))
            kw[WITHDRAWN_KEY] = [w.model_dump() for w in withdrawn]
        if missing:
            text = (text.rstrip() + "\n\n" + COMPLETION_HEAD + "\n"
                    + "\n".join(line if _SUB_ITEM.match(line) else f"- {line}"
                                for _, line in missing))
            kw[COMPLETED_KEY] = [name for name, _ in missing]
        return {"messages": [last.model_copy(update={
            "content": text, "additional_kwargs": {**last.additional_kwargs, **kw}})]}


#: An answer crediting SleepLM's model with what it says ("..., according to the SleepLM model
#: output.").
_FALSE_SOURCE = re.compile(r",?\s*(?:according to|as (?:given|reported|computed) by|from) (?:the )?"
                           r"SleepLM(?:'s)?(?: model)?(?: output)?(?=[\s.,;]|$)", re.IGNORECASE)


#: What an answer from a tool of SleepLM's reading must say it is (the planner's wording).
MODEL_OUTPUT_NOTES: dict[str, str] = {
    "localize": "(SleepLM's localisation is model output: check it against the signals.)",
    "classify": "(Zero-shot probabilities from SleepLM: model output, not a diagnosis.)",
    "caption": "(Generated captions are SleepLM's words; the facts listed with them are the "
               "measured values.)",
}


def model_output_note(text: str, turn: Sequence[BaseMessage]) -> str | None:
    """The note an LLM answer needs when it reports what SleepLM read rather than measured.

    The 1.5 B model answered "did they snore" with "The patient snored at epochs 748-754 ...
    and 924-925": SleepLM's search for snoring, written as a finding. An answer drawn from
    ``localize``, ``classify`` or ``caption`` that does not call it model output gets the
    planner's note for that tool.

    Returns
    -------
    str or None
    """
    if re.search(r"\bmodel output\b|\bmodel's (?:words|reading)\b|\bzero-shot\b", text or "",
                 re.IGNORECASE):
        return None
    used = [m.name for m in turn if isinstance(m, ToolMessage) and m.status != "error"
            and m.name in MODEL_OUTPUT_NOTES and not m.additional_kwargs.get(REPEAT_KEY)]
    return " ".join(dict.fromkeys(MODEL_OUTPUT_NOTES[n] for n in used)) or None


def detection_note(text: str, turn: Sequence[BaseMessage]) -> str | None:
    """The note an LLM answer needs when it lists automatic detections as if scored.

    Asked "where are the spindles", the 1.5 B model answered "The spindles were scored ...
    There were 799 spindle events": the study scores none, and its ``list_events`` result
    said the 799 were YASA's automatic detections. An answer drawn from such a result that
    says nothing of it (no "automatic", "detected", "detector", "YASA" or "not scored") gets
    the result's own warning.

    Returns
    -------
    str or None
    """
    if re.search(r"\bautomatic|\bdetect|\byasa\b|\bnot scored\b", text or "", re.IGNORECASE):
        return None
    notes = [str(w) for get in _events_fields(turn) for w in (get("warnings") or [])
             if "are scored in this study" in str(w)]
    return " ".join(f"({n})" for n in dict.fromkeys(notes)) or None


#: ``additional_kwargs`` key of the measures appended to an LLM's answer (their names).
COMPLETED_KEY = "sleeplm_completed"
#: The line that introduces the measures appended to an LLM's answer.
COMPLETION_HEAD = "Measured values this question asks for (added from the tool result):"


#: The added-values heading (or its "added from the tool result" tail) as an LLM copies it.
_COPIED_HEAD = re.compile(
    r"[ \t]*(?:" + re.escape(COMPLETION_HEAD.split(" (")[0]) + r"[ \t]*)?"
    r"\(?added from the tool results?\)?:?[ \t]*", re.IGNORECASE)


#: :data:`ANSWER_HINT` as a small model copies it into its answer with the tool result.
_COPIED_HINT = re.compile(r"\s*\(?" + re.escape(ANSWER_HINT) + r"\)?\s*")
#: The hint said over, a sentence without a number that speaks of the tool's text: "The
#: probabilities are given in the tool response, with their units and clock times as
#: written." (removed with the space before it).
_ECHOED_HINT = re.compile(r"[ \t]*(?<![^.!?\n])[ \t]*[^.!?\n\d]*?\b(?:(?:is|are) (?:given|listed|"
                          r"shown|provided|stated) in the tool (?:response|results?|output)|"
                          r"(?:units|values|clock times) as written)\b[^.!?\n\d]*(?:[.!?]+|$)",
                          re.IGNORECASE | re.MULTILINE)


#: An ``[unverified]`` marker with its brackets or parentheses and the space before it.
_MARKER = re.compile(r"[ \t]*\(?" + re.escape(UNVERIFIED) + r"\)?")


def _without_added(m: BaseMessage) -> BaseMessage:
    """An earlier answer as the LLM reads it again: without the measured values that code
    added below it (:data:`COMPLETED_KEY`) and without the ``[unverified]`` markers of the
    grounding check. A small LLM that saw them in its history wrote the added block's
    heading under a later answer, and "([unverified])" after its own numbers, right or
    wrong."""
    if not isinstance(m, AIMessage) or m.tool_calls:
        return m
    text = _text(m)
    if m.additional_kwargs.get(COMPLETED_KEY):
        cut = text.find("\n\n" + COMPLETION_HEAD)
        text = text if cut < 0 else text[:cut]
    text = _MARKER.sub("", text)
    return m if text == _text(m) else m.model_copy(update={"content": text})


def _measure_of(obj: Any) -> Any:
    """A :class:`~sleeplm.clinical.measure.Measure` (or its dict after a checkpoint)."""
    from sleeplm.clinical.measure import Measure

    return obj if isinstance(obj, Measure) else Measure.model_validate(obj)


def _states(text: str, number: str) -> bool:
    """Whether ``text`` writes ``number`` (as a whole number token, "24.1" not in "124.15")."""
    return re.search(r"(?<![\d.])" + re.escape(number) + r"(?![\d]|\.\d)", text) is not None


def facts_measures(messages: Iterable[BaseMessage]) -> dict[str, Any]:
    """``name -> Measure`` of every ``report_facts`` result among ``messages`` (the last
    result of a measure wins; results restored from a checkpoint as dicts are read too)."""
    found: dict[str, Any] = {}
    for m in messages:
        if not (isinstance(m, ToolMessage) and m.name == "report_facts"
                and m.status != "error"):
            continue
        res = _result_of(getattr(m, "artifact", None))
        sections = (res.get("sections") if isinstance(res, dict)
                    else getattr(res, "sections", None)) or {}
        for ms in sections.values():
            for item in ms:
                meas = _measure_of(item)
                found[meas.name] = meas
    return found


_CITED_EPOCH = re.compile(r"\bepochs?\s+(\d+)(?!\d|\.\d|\s*[-\u2013]\s*\d)", re.IGNORECASE)


def _citations(text: str) -> set[str]:
    """The clock times ("HH:MM", seconds left out) and single epochs ("epoch N") ``text``
    cites."""
    clocks = {t[:5] for t in clock_times(text)}
    return clocks | {f"epoch {m.group(1)}" for m in _CITED_EPOCH.finditer(text)}


#: A question asking for a sleep stage, and the stages an answer names (as scored: W, N1,
#: N2, N3, R).
_ASKS_STAGE = re.compile(r"\b(?:what|which)(?: sleep)? stage\b|\bstage (?:was|is) (?:it|that)\b",
                         re.IGNORECASE)
_STAGE_NAMED = re.compile(r"\b(?:N[123]|REM|wake|awake|wakefulness)\b", re.IGNORECASE)
_STAGE_NAMES = {"n1": "N1", "n2": "N2", "n3": "N3", "rem": "R", "wake": "W", "awake": "W",
                "wakefulness": "W"}
#: A stage given as the answer: "was in the REM stage", "during N2", "it was N3".
_STAGE_CLAIMED = re.compile(r"\b(?:in|during|was|is)\s+(?:the\s+)?(?:stage\s+)?(N[123]|REM|wake|"
                            r"awake|wakefulness)\b", re.IGNORECASE)


def wrong_referent(text: str, question: str, earlier: Sequence[BaseMessage]) -> str | None:
    """What an answer to "the first one" cites instead of that item, or None.

    Asked "what stage was the first one in" after a list of hypopneas from 03:02:36, the
    1.5 B model answered with no tool call "The first event was a desaturation at epoch
    808-947 (05:00:00-06:10:00, R)": the span of a list two questions before, and its
    stage. The item a follow-up names by its place is the one the planner resolves
    (:func:`~assistant.planner.followup_referent`); an answer that cites epochs or clock
    times must cite one of that item's, or an epoch next to them ("the raw traces around the
    last one", an apnea in epoch 444, drawn over epochs 444-445 and answered "epoch 445").
    One that cites neither, to a question asking for the item's stage, must not name only
    other stages ("The second stage in the sleep was N2" for an event in REM); and no answer
    to that question may give another stage as the answer ("... at epoch 573 (03:02:36, N2),
    which was in the REM stage").

    Parameters
    ----------
    text : str
        The answer.
    question : str
        The follow-up question.
    earlier : sequence of BaseMessage
        The conversation before the question.
    """
    from assistant.planner import followup_referent

    ref = followup_referent(question, earlier)
    if ref is None:
        return None
    lo, hi = int(ref["first_epoch"]), int(ref["last_epoch"])
    own = str(ref.get("stage", ""))
    what = f"the {str(ref.get('label', 'item')).replace('_', ' ')} at {ref.get('clock')}"
    if _ASKS_STAGE.search(question) and own in _STAGE_NAMES.values():
        # "The first hypopnea occurred at epoch 573 (03:02:36, N2), which was in the REM
        # stage": the right item, and another stage given as the answer
        claimed = {_STAGE_NAMES[m.group(1).lower()] for m in _STAGE_CLAIMED.finditer(text)}
        if claimed - {own}:
            return (f"the question names {what} (epoch {lo}, stage {own}); the answer says "
                    f"{', '.join(sorted(claimed))}")[:160]
    cited = [(int(m.group(1)), int(m.group(2) or m.group(1))) for m in _EPOCH_CITED.finditer(text)]
    clocks = {t[:5] for t in clock_times(text)}
    if not cited and not clocks:
        # "which stage was the second one in?" answered "The second stage in the sleep was
        # N2", citing nothing: the stage it names must be the item's
        named = {_STAGE_NAMES[m.group(0).lower()] for m in _STAGE_NAMED.finditer(text)}
        if _ASKS_STAGE.search(question) and named and own in _STAGE_NAMES.values() \
                and own not in named:
            return (f"the question names {what} (epoch {lo}, stage {own}); the answer names "
                    f"{', '.join(sorted(named))}")[:160]
        return None
    if any(a <= hi + 1 and b >= lo - 1 for a, b in cited) \
            or str(ref.get("clock", ""))[:5] in clocks:
        return None
    said = [f"epoch {a}" if a == b else f"epochs {a}-{b}" for a, b in cited] + sorted(clocks)
    return (f"the question names the {str(ref.get('label', 'item')).replace('_', ' ')} at "
            f"{ref.get('clock')} (epoch {lo}); the answer cites {', '.join(said)}")[:160]


def stale_citations(text: str, turn: Sequence[BaseMessage], earlier: Sequence[BaseMessage]
                    ) -> list[str]:
    """The times and epochs an answer cites when all of them come from an earlier question's
    tool results and none from this question's, which did list some; else [].

    Asked "Which desaturations were scored after 5 am?", the 1.5 B model called list_events
    (15 desaturations from 05:02:33) and answered "The longest desaturation of the night
    occurred in epoch 379 (01:25:30-01:26:00, N2)", the event of the question before.

    Parameters
    ----------
    text : str
        The answer.
    turn, earlier : sequence of BaseMessage
        This question's messages after it, and the conversation before it.
    """
    now_text = " ".join(_text(m) for m in turn if isinstance(m, ToolMessage)
                        and m.status != "error")
    now = _citations(now_text)
    said = _citations(text)
    if not now or not said or said & now:
        return []
    before = _citations(" ".join(_text(m) for m in earlier if isinstance(m, ToolMessage)))
    return sorted(said) if said <= before else []


#: Evidence of a measure over runs of epochs or many events, as report_facts writes it
#: ("[epochs 30, 44-74, 78-221 and 10 more runs]", "[121 events]"): left out of what a compact
def _gist(text: str) -> str:
    """An answer without numbers, markers and case, to compare answers by their words."""
    bare = _MARKER.sub(" ", text or "").lower()
    bare = bare.split(COMPLETION_HEAD.lower())[0]
    return " ".join(re.sub(r"[\d.:%/-]+", " ", bare).split())


def repeated_answer(text: str, earlier: Sequence[BaseMessage]) -> str | None:
    """The earlier LLM answer that ``text`` repeats, or None.

    After "Is his apnea worse when he sleeps on his back?" the 1.5 B model answered four
    questions in a row ("What's happening at 1:30?", "Describe epoch 300", ...) with "The
    apnea index is in the supine position (AASM recommended rule)", its earlier answer with
    the withdrawn numbers gone: no number to check, and nothing of the question. An answer
    whose words (numbers and markers set aside) are those of an earlier LLM answer of the
    conversation, 85 % alike or more, repeats it.
    """
    import difflib

    now = _gist(text)
    if len(now) < 20:
        return None
    for m in reversed(list(earlier)):
        if not (isinstance(m, AIMessage) and not m.tool_calls
                and m.additional_kwargs.get(WRITER_KEY) == "llm"):
            continue
        before = _gist(_text(m))
        if before and difflib.SequenceMatcher(None, now, before).ratio() >= 0.85:
            return _text(m).strip().splitlines()[0]
    return None


#: A number left in an answer (not inside an identifier such as "sim-01008-narcolepsy").
_NUMBER_LEFT = re.compile(r"(?<![\w.-])\d+(?:[.:]\d+)*(?![\w-])")
#: An answer that names an epoch and leaves it out: "The second obstructive apnea occurred at
#: epoch:.", "The lowest SpO2 value was 91.0 at epoch: (475.0 min)" (a 1.5 B model filling the
#: tools' evidence format with nothing, or with a value from another line).
_HOLLOW = re.compile(r"\bepochs?\s*:\s*(?:[.,;)(]|$|(?:s|secs?|min)\s*\))|"
                     r":\**[ \t]*(?:breaths?/min|bpm|events/h)[ \t]*$|\b(?:at|in) epochs?\s*[.,;]"
                     r"|\(\s*epochs?\s*[,)]|\b(?:of|at)\s*[.;](?=\s|$)"
                     r"|\b(?:approximately|roughly|of about)\s*[.;](?=\s|$)",
                     re.IGNORECASE | re.MULTILINE)


#: LLM reads (a 1.5 B model turned epoch indices into "78.0 hours" and wrote "which occurred
#: at epoch 30-947" after a severity); one or two single epochs with what they are stay
#: ("[epochs 30, 192: sleep onset and first R epoch]", the REM latency's).
_RUN_EVIDENCE = re.compile(r"[ \t]*\[(?:epochs? [^\]\n:]*[-,\u2013][^\]\n:]*|\d+ events?)\]")


#: Words that deny events right before their name ("there were no hypopneas", "not any
#: arousals"; not "none of the hypopneas", not "no more than 12 hypopneas").
_DENIAL = re.compile(r"\b(?:no|zero|not any|n't any|never any)\b(?:\s+[\w-]+){0,2}\s*$")


def _events_fields(turn: Sequence[BaseMessage]) -> Iterator[Callable[[str], Any]]:
    """A field getter of each ``list_events`` result among ``turn`` (results restored as
    dicts are read too)."""
    for m in turn:
        if not (isinstance(m, ToolMessage) and m.name == "list_events" and m.status != "error"
                and not m.additional_kwargs.get(REPEAT_KEY)):
            continue
        res = _result_of(getattr(m, "artifact", None))
        if res is not None:
            yield res.get if isinstance(res, dict) else (lambda k, r=res: getattr(r, k, None))


def _events_results(turn: Sequence[BaseMessage]) -> list[tuple[list[str], dict[str, int], str]]:
    """``(types asked, counts per type, "start-end" clock)`` of each ``list_events`` result
    among ``turn``."""
    out = []
    for get in _events_fields(turn):
        span = get("span") or {}
        sget = span.get if isinstance(span, dict) else (lambda k, sp=span: getattr(sp, k, ""))
        clock = (f"{sget('start_clock')}-{sget('end_clock')}"
                 if sget("start_clock") and sget("end_clock") else "")
        out.append((list(get("types") or []), dict(get("counts") or {}), clock))
    return out


def absence_spans(text: str, turn: Sequence[BaseMessage]
                  ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """Denials of events in ``text`` that the question's ``list_events`` results contradict.

    Asked "Were there any hypopneas between 3 and 4 am?", the 1.5 B model answered "There
    were no hypopneas between 3 and 4 am." while its result listed 12: a claim without a
    number, which the number check cannot see. A denial ("no", "zero", "not any" right before
    an event's name, :data:`assistant.extract.EVENT_WORDS`) is contradicted when every
    ``list_events`` result of the question that covers the event's types counts some.

    Returns
    -------
    list of (start, end, WithdrawnClaim, line)
        Where the denying word is in ``text``; ``line`` gives the count from the result
        ("Scored hypopnea events (03:00:00-04:00:00): 12"), to add under the answer.
    """
    from assistant.extract import event_mentions

    results = _events_results(turn)
    if not results:
        return []
    # types whose listed events are all automatic detections (YASA's spindles of a study
    # that scores none): "no spindles were scored" is then true
    listed: dict[str, list[bool]] = {}
    for get in _events_fields(turn):
        for e in get("events") or []:
            listed.setdefault(str(_field(e, "type")), []).append(
                is_automatic(_field(e, "label")))
    automatic = {t for t, flags in listed.items() if flags and all(flags)}
    out: list[tuple[int, int, WithdrawnClaim, str]] = []
    for at, sentence in located_sentences(text):
        low = sentence.lower()
        for start, end, types in event_mentions(sentence):
            auto = bool(types) and all(t in automatic for t in types if t in listed) and \
                any(t in listed for t in types)
            if auto and re.search(r"\bscored\b", low):
                continue  # "There were no spindle events scored in this study": true
            deny = _DENIAL.search(low[:start])
            if deny is not None and _NOT_THE_EVENTS.search(low[deny.start():start]):
                continue  # "no clusters of desaturations": no denial of desaturations
            covering = [(sum(n for t, n in counts.items() if t in types), clock)
                        for asked, counts, clock in results
                        if not asked or set(asked) & set(types)]
            if deny is None or not covering or min(n for n, _ in covering) == 0:
                continue
            n, clock = min(covering)
            name = low[start:end]
            word = re.match(r"[\w']+(?: any)?", low[deny.start():]).group(0)
            kinds = ", ".join(t.replace("_", " ") for t in types
                              if any(t in counts for _a, counts, _c in results))
            line = (("Automatically detected (not scored) " if auto else "Scored ")
                    + f"{kinds or name} events" + (f" ({clock})" if clock else "") + f": {n}")
            out.append((at + deny.start(), at + deny.start() + len(word), WithdrawnClaim(
                token=sentence[deny.start():deny.start() + len(word)], kind="absence",
                sentence=sentence, reason=f"the list_events result counts {n} {name}"
                + (f" in {clock}" if clock else "")), line))
    return out


#: Words between a denial and an event's name that make it deny something else: "no clusters
#: of desaturations" (2 within 10 min were listed), "no further apneas".
_NOT_THE_EVENTS = re.compile(r"\b(?:clusters?|runs?|series|bursts?|trains?|periods?|patterns?|"
                             r"sequences?|more|other|further|additional|new|longer|significant)\b")
#: A verb denied right before the word: "they did not snore", "never snored".
_VERB_DENIAL = re.compile(r"\b(?:did not|didn't|does not|doesn't|do not|don't|never)\s+$")
#: Query words too common to name what was searched for.
_QUERY_STOP = frozenset({"with", "during", "epochs", "epoch", "sleep", "night", "where", "the",
                         "and", "any", "some", "periods", "period", "episodes", "episode",
                         "signs", "evidence", "events", "event"})


def _same_word(a: str, b: str) -> bool:
    """Two words of one stem ("snore", "snoring", "snored"; "apneas", "apnea")."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n >= 4 and n >= min(len(a), len(b)) - 3


def localized_denial_spans(text: str, turn: Sequence[BaseMessage]
                           ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """Denials in ``text`` of what the question's ``localize`` results found.

    Asked "did they snore", the 1.5 B model answered "No snoring was detected." while
    SleepLM's search for snoring had returned 38 intervals above its threshold. Snoring is not
    scored in that file, so the honest answer is the model's reading, labelled as such; "no
    snoring" denies it. A denial ("no", "zero", "not any" right before a word of the query,
    or "did not", "never" right before a verb of it) is withdrawn when a ``localize`` result
    of the question for that query found intervals.

    Returns
    -------
    list of (start, end, WithdrawnClaim, line)
        Where the denying word is in ``text``; ``line`` says what the search found.
    """
    found: list[tuple[set[str], int, str]] = []
    for m in _ran(turn):
        if m.name != "localize" or m.status == "error":
            continue
        res = _result_of(getattr(m, "artifact", None))
        get = (res.get if isinstance(res, dict) else (lambda k, r=res: getattr(r, k, None)))
        if res is None or get("refusal"):
            continue
        n = int(get("n_intervals_total") or len(get("intervals") or []))
        query = str(get("query") or "")
        words = {w for w in re.findall(r"[a-z]+", query.lower())
                 if len(w) >= 4 and w not in _QUERY_STOP}
        if n and words:
            found.append((words, n, query))
    out: list[tuple[int, int, WithdrawnClaim, str]] = []
    for at, sentence in located_sentences(text):
        low = sentence.lower()
        for mw in re.finditer(r"[a-z]+", low):
            hit = next(((n, q) for words, n, q in found
                        if any(_same_word(mw.group(0), w) for w in words)), None)
            if hit is None:
                continue
            before = low[:mw.start()]
            deny = _DENIAL.search(before) or _VERB_DENIAL.search(before)
            if deny is None:
                continue
            n, query = hit
            word = re.match(r"[\w']+(?: (?:any|not))?", low[deny.start():]).group(0)
            out.append((at + deny.start(), at + deny.start() + len(word), WithdrawnClaim(
                token=sentence[deny.start():deny.start() + len(word)], kind="absence",
                sentence=sentence, reason=f"SleepLM's localisation of '{query}' found {n} "
                                          "interval(s)"),
                f"SleepLM's localisation of '{query}': {n} interval(s) above its threshold "
                "(model output, not scored events)"))
            break
    return out


#: A count written right before an event's name: "23 leg kicks", "65 scored hypopneas".
_COUNT_BEFORE = re.compile(r"(?<![\d.,:#])(\d{1,5})\s+(?:[a-z]+[- ]){0,2}$")
#: Words before a number that make it a rank or a selection, not a count ("the first 10").
_NOT_A_COUNT = re.compile(r"\b(?:first|last|top|next|previous|earliest|latest|longest|"
                          r"shortest|deepest|epoch|epochs|#)\s*$")
#: After an event's name: a rate, not a count ("5 hypopneas per hour").
_PER_HOUR = re.compile(r"\s*(?:per hour|an hour|/\s*h\b|each hour|every hour)")


def count_spans(text: str, turn: Sequence[BaseMessage], messages: Sequence[BaseMessage] = ()
                ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """Counts of events in ``text`` that the question's ``list_events`` results contradict.

    Asked "any leg kicks?", the 1.5 B model answered "There were 23 leg kicks." (23 was the
    number of awakenings, in an earlier result) while its result counted 61 limb movements.
    A number written right before an event's name (:data:`assistant.extract.EVENT_WORDS`)
    must be what a ``list_events`` result of the question that covers those types counts
    for them, or a count measure of those events in the conversation's ``report_facts``
    results (the night's hypopneas beside an hour's).

    Returns
    -------
    list of (start, end, WithdrawnClaim, line)
        Where each wrong count is in ``text``, and the line giving the result's count.
    """
    from assistant.extract import event_mentions

    results = _events_results(turn)
    if not results:
        return []
    measures = [m for m in facts_measures(messages).values()
                if getattr(m, "unit", "") == "count" and getattr(m, "value", None) is not None]
    out: list[tuple[int, int, WithdrawnClaim, str]] = []
    for at, sentence in located_sentences(text):
        low = sentence.lower()
        for start, end, types in event_mentions(sentence):
            mc = _COUNT_BEFORE.search(low[:start])
            covering = [(sum(n for t, n in counts.items() if t in types), clock)
                        for asked, counts, clock in results
                        if not asked or set(asked) & set(types)]
            if mc is None or not covering or _NOT_A_COUNT.search(low[:mc.start()]) \
                    or _PER_HOUR.match(low, end):
                continue  # "the first 10 apneas", "5 hypopneas per hour"
            said = int(mc.group(1))
            stems = {t.split("_")[0] for t in types} | ({"plm"} if "limb_movement" in types
                                                        else set())
            known = {n for n, _c in covering} | {
                int(round(m.value)) for m in measures
                if any(st in m.name for st in stems)}
            if said in known:
                continue
            n, clock = covering[-1]
            name = low[start:end]
            kinds = ", ".join(t.replace("_", " ") for t in types
                              if any(t in counts for _a, counts, _c in results))
            line = (f"Scored {kinds or name} events" + (f" ({clock})" if clock else "")
                    + f": {n}")
            out.append((at + mc.start(1), at + mc.end(1), WithdrawnClaim(
                token=mc.group(1), kind="measure", sentence=sentence,
                reason=f"the list_events result counts {n} {name}"
                + (f" in {clock}" if clock else "")), line))
    return out


#: "the longest apnea", "the shortest hypopnea": which end of the durations a sentence names.
_EXTREME = re.compile(r"\b(longest|most prolonged|shortest|briefest|first|earliest|last|"
                      r"latest|final)\b")
_EPOCH_NUMBER = re.compile(r"\bepoch\s+(\d+)\b", re.IGNORECASE)
_CLOCK_WORDS = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]\.?m\.?)?", re.IGNORECASE)


def _listed_events(turn: Sequence[BaseMessage]) -> list[tuple[list[str], list[Any], str, int]]:
    """``(types asked, events listed, order, events counted)`` of each ``list_events`` result
    among ``turn`` (events as dicts for results restored as dicts)."""
    return [(list(get("types") or []), list(get("events") or []), str(get("order") or "time"),
             int(get("n_total") or 0)) for get in _events_fields(turn)]


def extreme_event_spans(text: str, turn: Sequence[BaseMessage]
                        ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """Durations, epochs and clock times given for "the longest / shortest / first / last
    <event>" that are not those of that event in the question's ``list_events`` results.

    Asked "longest apnea?", the 1.5 B model answered "The longest apnea was 28 seconds, which
    occurred at epoch 50.": its result listed the first 20 of 56 apneas in time order, among
    them one of 28 s (epoch 196); the longest lasted 29.9 s (epoch 269). Every number there
    is in some source, so the number check passed it; so was "The first one occurred at epoch
    9, and the last one occurred at epoch 102." for 61 limb movements, the last in epoch 880.
    The extreme event is known from a result that covers the event named ("the last one":
    the question's only list) and ranks its events that way (``order``; time order gives
    the first), or lists all it counts. In the clause that names it (up to the next ";" or
    superlative), the epoch and clock time nearest after the word (else before it) and every
    duration after it (else the nearest before) must be that event's: its duration to the
    digits written, its epoch, its onset within 30 s ("The longest apnea was 30 s at epoch
    269: (18 s)" gave the 29.9-s apnea a second, wrong length).

    Returns
    -------
    list of (start, end, WithdrawnClaim, line)
        Where each wrong value is in ``text``, and a line giving the extreme event from the
        result, to add under the answer.
    """
    results = _listed_events(turn)
    if not results:
        return []
    out: list[tuple[int, int, WithdrawnClaim, str]] = []
    for at, whole in located_sentences(text):
        cuts = sorted({0, len(whole), *(m.start() for m in _EXTREME.finditer(whole.lower())),
                       *(m.end() for m in re.finditer(r";", whole))})
        for c0, c1 in zip(cuts, cuts[1:]):
            out += _extreme_claims(at + c0, whole[c0:c1], whole, results)
    return out


#: Words of a sentence about the densest run of events.
_DENSEST_WORDS = re.compile(r"\b(?:densest|cluster(?:ed|s)?|busiest|back-to-back)\b",
                            re.IGNORECASE)


def densest_claim_spans(text: str, turn: Sequence[BaseMessage]
                        ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """Clock times and epochs given for the densest cluster of events that lie outside the
    densest window of the question's ``list_events`` result (``densest_window_min``).

    Asked "When in the night is the densest cluster of back-to-back desaturations?", the
    1.5 B model answered "The densest cluster ... occurs between 22:30:19 and 22:31:20 (epoch
    18, N1)": the night's first desaturations; its result gave the densest 10 minutes as
    02:55:59-03:05:59 (epochs 549-569). In a sentence that speaks of the densest events or a
    cluster, a time must lie in the window (30 s either side) and an epoch in its epochs.

    Returns
    -------
    list of (start, end, WithdrawnClaim, line)
        Where each wrong time or epoch is in ``text``; ``line`` describes the window.
    """
    windows = []
    for get in _events_fields(turn):
        d = get("densest")
        if d is None:
            continue
        dget = d.get if isinstance(d, dict) else (lambda k, w=d: getattr(w, k, None))
        t0, t1 = _parse_clock(str(dget("start_clock") or "")), _parse_clock(str(dget("end_clock") or ""))
        line = (d.describe() if hasattr(d, "describe") else
                f"Densest {dget('minutes'):g}-min window: {dget('n_events')} events from "
                f"{dget('start_clock')} to {dget('end_clock')} (epochs {dget('first_epoch')}-"
                f"{dget('last_epoch')})")
        windows.append((t0, t1, int(dget("first_epoch")), int(dget("last_epoch")), line))
    if not windows:
        return []
    t0, t1, e0, e1, line = windows[-1]
    out: list[tuple[int, int, WithdrawnClaim, str]] = []
    for at, sentence in located_sentences(text):
        if not _DENSEST_WORDS.search(sentence):
            continue
        for mc in _CLOCK_WORDS.finditer(sentence):
            times = clock_times(mc.group(0))
            t = _parse_clock(times[0]) if times else None
            if t is None or t0 is None or t1 is None:
                continue
            span = (t1 - t0) % _DAY_S
            if (t - (t0 - 30.0)) % _DAY_S <= span + 60.0:
                continue
            out.append((at + mc.start(), at + mc.end(), WithdrawnClaim(
                token=mc.group(0), kind="clock", sentence=sentence,
                reason="outside the densest window of the list_events result"), line))
        for me in _EPOCH_NUMBER.finditer(sentence):
            if not e0 <= int(me.group(1)) <= e1:
                out.append((at + me.start(1), at + me.end(1), WithdrawnClaim(
                    token=me.group(1), kind="measure", sentence=sentence,
                    reason=f"the densest window spans epochs {e0}-{e1}"), line))
    return out


def _field(e: Any, k: str) -> Any:
    return e.get(k) if isinstance(e, dict) else getattr(e, k, None)


def _extreme_claims(at: int, clause: str, sentence: str,
                    results: list[tuple[list[str], list[Any], str, int]]
                    ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """:func:`extreme_event_spans` of one clause (at ``at`` in the answer) of ``sentence``."""
    from assistant.extract import event_mentions
    from assistant.grounding import duration_spans

    mx = _EXTREME.search(clause.lower())
    if mx is None:
        return []
    word = mx.group(1)
    which = ("shortest" if word in ("shortest", "briefest") else "first"
             if word in ("first", "earliest") else "last" if word in ("last", "latest", "final")
             else "longest")
    named = event_mentions(clause) or event_mentions(sentence)
    if named:
        start, end, types = next((n for n in named if n[0] >= mx.end()), named[0])
        words = (clause if event_mentions(clause) else sentence)[start:end].lower()
    elif len(results) == 1 and re.search(r"\b(?:one|event)\b", clause[mx.end():].lower()):
        types = tuple(results[0][0]) or tuple({_field(e, "type") for e in results[0][1]})
        words = "event"  # "the last one": one of the question's single list
    else:
        return []
    def nearest(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The value the superlative gives: the first after it, else the last before it."""
        after = [sp for sp in spans if sp[0] >= mx.end()]
        return after[:1] or [sp for sp in spans if sp[1] <= mx.start()][-1:]

    best = None
    beyond: int | None = None  # the last lies after every listed event: its epoch is later
    for asked, events, order, n_total in results:
        evs = [e for e in events if _field(e, "type") in types]
        complete = n_total == len(events)
        known = (order == which or complete or (which == "first" and order == "time"))
        if (asked and not set(asked) & set(types)) or not evs:
            continue
        if not known and which == "last" and order == "time":
            beyond = max(int(_field(e, "epoch")) for e in events)
            continue
        if not known:
            continue
        if which in ("first", "last"):
            pick = min if which == "first" else max
            best = pick(evs, key=lambda e: float(_field(e, "onset_s") or 0.0))
        else:
            pick = max if which == "longest" else min
            best = pick(evs, key=lambda e: float(_field(e, "duration_s")))
    if best is None and beyond is not None:
        # "the last one occurred at epoch 137" of 799 spindles, 100 listed up to epoch 137
        return [(at + a, at + b, WithdrawnClaim(
            token=clause[a:b], kind="measure", sentence=sentence,
            reason=f"the last is after epoch {beyond}, the last of those listed by the "
                   "list_events result"), f"The last {words}: after epoch {beyond} (the list "
                                          "given stops there)")
            for a, b in nearest([me.span(1) for me in _EPOCH_NUMBER.finditer(clause)])
            if int(clause[a:b]) <= beyond]
    if best is None:
        return []
    dur, epoch = float(_field(best, "duration_s")), int(_field(best, "epoch"))
    clock = str(_field(best, "clock") or "")
    line = (f"The {which} {words} listed: {str(_field(best, 'type')).replace('_', ' ')}"
            + (f" at {clock}" if clock else "") + f" (epoch {epoch}), {dur:.1f} s")

    wrong: list[tuple[int, int, str]] = []
    durations = {(a, b): (secs, half) for a, b, secs, half in duration_spans(clause)}
    # every duration after the word is the event's ("was 30 s at epoch 269: (18 s)")
    for a, b in ([sp for sp in sorted(durations) if sp[0] >= mx.end()]
                 or nearest(sorted(durations))):
        secs, half = durations[(a, b)]
        if abs(secs - dur) > half + 1e-6:
            wrong.append((a, b, f"the {which} lasted {dur:.1f} s"))
    for a, b in nearest([me.span(1) for me in _EPOCH_NUMBER.finditer(clause)]):
        if int(clause[a:b]) != epoch:
            wrong.append((a, b, f"the {which} is in epoch {epoch}"))
    if clock:
        h0, m0, s0 = (int(x) for x in clock.split(":"))
        for a, b in nearest([mc.span() for mc in _CLOCK_WORDS.finditer(clause)]):
            times = clock_times(clause[a:b])
            if not times:
                continue
            h, mi, se = (int(x) for x in times[0].split(":"))
            d = abs((h * 3600 + mi * 60 + se) - (h0 * 3600 + m0 * 60 + s0)) % 86400
            if min(d, 86400 - d) > 30:
                wrong.append((a, b, f"the {which} starts at {clock}"))
    return [(at + a, at + b, WithdrawnClaim(
        token=clause[a:b], kind="measure", sentence=sentence,
        reason=reason + " by the list_events result"), line) for a, b, reason in sorted(wrong)]


#: One duration given for a list of events: a "Duration: 26 seconds" line, or "with a
#: duration of 26 s".
_SHARED_DURATION = re.compile(r"(?im)^[ \t]*(?:[-*\u2022][ \t]*)?\**[ \t]*(?:durations?|length)"
                              r"[ \t]*\**[ \t]*:[ \t]*\**[^\n]*|\bwith (?:a )?(?:duration|"
                              r"length) of\b[^.;\n]*")
#: Words that make a duration one of a single event or of a statistic of the list.
_ONE_OF_MANY = re.compile(r"\b(?:mean|average|median|total|longest|shortest|maximum|minimum|"
                          r"max|min|range|from|between|each|first|last|epoch)\b|"
                          r"\d{1,2}:\d{2}|#\d", re.IGNORECASE)


def shared_duration_spans(text: str, turn: Sequence[BaseMessage]
                          ) -> list[tuple[int, int, WithdrawnClaim, str]]:
    """One duration given for several listed events of different durations.

    Asked "Pull up the obstructive apneas scored between 1 and 2 am.", the 1.5 B model
    answered with a block "- **Duration**: 26 seconds" above the seven apneas its
    ``list_events`` result listed (14 to 26 s): the first one's, given for all. A duration on
    a "Duration:" line or after "with a duration of" that names no single event (a clock
    time, an epoch, an event number) and no statistic (mean, longest, ...) is withdrawn when
    the question's results list several events whose durations differ.

    Returns
    -------
    list of (start, end, WithdrawnClaim, line)
        Where each such duration is in ``text``, and a line giving the listed events'
        shortest and longest durations.
    """
    durs = [float(_field(e, "duration_s")) for _types, events, _o, _n in _listed_events(turn)
            for e in events if _field(e, "duration_s") is not None]
    if len(durs) < 2 or max(durs) - min(durs) < 1.0:
        return []
    line = (f"The {len(durs)} events listed last from {min(durs):.1f} s to {max(durs):.1f} s "
            "each")
    out: list[tuple[int, int, WithdrawnClaim, str]] = []
    for m in _SHARED_DURATION.finditer(text):
        if _ONE_OF_MANY.search(m.group(0)):
            continue
        for a, b, _secs, _half in duration_spans(m.group(0)):
            out.append((m.start() + a, m.start() + b, WithdrawnClaim(
                token=m.group(0)[a:b], kind="measure", sentence=m.group(0).strip(),
                reason=f"one duration given for {len(durs)} listed events of different "
                       "durations by the list_events result"), line))
    return out


#: A question asking to see events, not to count them or judge them ("show me where the
#: breathing stops", "list the obstructive apneas", "which mixed apneas were scored?").
_LISTING = re.compile(r"\b(?:list|show|where|which|pull up|display|what are|give me|"
                      r"when (?:were|did|do))\b", re.IGNORECASE)
#: A numbered item under an added line (the events :func:`unlisted_event_lines` adds).
_SUB_ITEM = re.compile(r"\s+\d{1,3}\.\s")
#: Up to this many events are added under an answer that names too few of them.
LISTED_EVENTS_ADDED = 10


def unlisted_event_lines(question: str, turn: Sequence[BaseMessage], text: str) -> list[str]:
    """The events a listing question's ``list_events`` result holds when the answer names
    fewer than three of them (or than it listed), written by code.

    Asked "show me where the breathing stops", the 1.5 B model answered "The breathing
    stopped at epoch 56: ..." of 56 apneas; "Where in the night does the airflow stop
    completely?" got one epoch, "List the obstructive apneas between 1 and 2 am" none. An
    event counts as named by its clock time (to the minute) or its epoch. A question about
    one event ("the longest"), a count or a densest window has checks of its own.

    Returns
    -------
    list of str
        A head ("56 scored events of obstructive apnea, ...; the first 10 listed:") and one
        numbered, indented line per event (:meth:`tools.facts.EventItem.describe`), in the
        result's order; empty when nothing is to be added.
    """
    from tools.facts import EventItem

    if not _LISTING.search(question or "") or _EXTREME.search((question or "").lower()):
        return []
    fields = list(_events_fields(turn))
    if not fields or fields[-1]("densest") is not None:
        return []
    get = fields[-1]
    events = [e if isinstance(e, EventItem) else EventItem.model_validate(e)
              for e in (get("events") or [])]
    if not events:
        return []
    said_epochs = {int(m.group(1)) for m in _EPOCH_NUMBER.finditer(text)}
    said_clocks = {t[:5] for t in clock_times(text)}
    named = [e for e in events if e.epoch in said_epochs or e.clock[:5] in said_clocks]
    if len(named) >= min(3, len(events)):
        return []
    shown = events[:LISTED_EVENTS_ADDED]
    total = max(int(get("n_total") or 0), len(events))
    kinds = ", ".join(dict.fromkeys(e.type.replace("_", " ") for e in events))
    auto = any(e.automatic for e in events)
    head = (f"{total} {'detected' if auto else 'scored'} event(s) of {kinds}"
            + (f"; the first {len(shown)} listed:" if len(shown) < total else ":"))
    return [head, *(f"   {i}. {e.describe()}" for i, e in enumerate(shown, 1))]


def denied_result(text: str, turn: Sequence[BaseMessage]) -> str | None:
    """The tool whose result an answer says was empty although it was not, or None.

    The 1.5 B model answered "The tool did not provide any information about other nights"
    after ``retrieve`` had listed five, and "I apologize, but I cannot provide a timeline ...
    as there is no data available in the tool results" after ``plot_events`` had drawn one.

    Parameters
    ----------
    text : str
        The answer.
    turn : sequence of BaseMessage
        The messages of this question after it.

    Returns
    -------
    str or None
        The name of the first tool of the question that returned data, when the answer
        says there was none.
    """
    if not _DENIED_RESULT.search(text or ""):
        return None
    for m in _ran(turn):
        if m.status != "error" and _text(m).strip():
            return m.name or "a tool"
    return None


#: Sleep efficiency named in an answer.
_SE_NAMED = re.compile(r"\bsleep efficiency\b|\bSE\b|\befficiency of (?:her|his|their|the) "
                       r"sleep\b", re.IGNORECASE)
#: Words judging a sleep efficiency low (group 1) or not (group 2).
_SE_JUDGED = re.compile(r"\b(?:(low|lower|poor|poorer|reduced|decreased|impaired|suboptimal|"
                        r"below)|(normal|good|high|adequate|preserved|healthy|above|fine))\b",
                        re.IGNORECASE)
_SE_NEGATED = re.compile(r"\b(?:not|isn't|wasn't|never|hardly)\s+(?:\w+\s+)?$|n't\s+$",
                         re.IGNORECASE)


def _efficiency_verdict(text: str, found: Mapping[str, Any]) -> str | None:
    """Why an answer's judgement of the sleep efficiency contradicts the measured one, or
    None: "Sleep efficiency is low because ..." for 86.8 %, above the commonly used
    reference of 85 % (:data:`REFERENCE_FACTS`), as the 1.5 B model answered "Why is her
    sleep efficiency on the low side?"."""
    se = found.get("sleep_efficiency_pct")
    if se is None or se.value is None or not math.isfinite(se.value):
        return None
    low_truth = se.value < SLEEP_EFFICIENCY_REFERENCE_PCT
    for sentence in split_sentences(text):
        for m in _SE_NAMED.finditer(sentence):
            # the judgement nearest the words in their clause: "poor sleep efficiency",
            # "sleep efficiency is low because ...", "SE (86.8 %) is not below 85 %"
            c0, c1 = _clause_bounds(sentence, m.start())
            before = [j for j in _SE_JUDGED.finditer(sentence, c0, m.start())
                      if len(sentence[j.end():m.start()].split()) <= 1]
            after = [j for j in _SE_JUDGED.finditer(sentence, m.end(), c1)
                     if len(sentence[m.end():j.start()].split()) <= 8
                     and not re.search(r"\b(?:because|due|since|as|by|from|with|than)\b",
                                       sentence[m.end():j.start()], re.IGNORECASE)]
            judged = (before[-1:] or after[:1])
            if not judged:
                continue
            j = judged[0]
            said_low = j.group(1) is not None
            if _SE_NEGATED.search(sentence[max(c0, j.start() - 20):j.start()]):
                said_low = not said_low
            if said_low != low_truth:
                return (f"the answer calls the sleep efficiency {'low' if said_low else 'not low'}"
                        f"; it is {se.format()}, {'below' if low_truth else 'not below'} the "
                        f"commonly used reference of {SLEEP_EFFICIENCY_REFERENCE_PCT:g} %")
    return None


def contradicted_verdict(text: str, turn: Sequence[BaseMessage]) -> str | None:
    """Why an answer's conclusion contradicts the measured values of this question, or None.

    Asked "Is the apnea positional?", the 1.5 B model answered "The apnea is positional."
    with a supine AHI of 21.8 and a non-supine AHI of 17.0 events/h in its ``report_facts``
    result: not positional by the usual criterion
    (:func:`sleeplm.clinical.respiratory.is_positional`). A sentence calling the apnea
    positional, or not (a negation up to three words before "positional"), is checked
    against the supine and non-supine AHI of the question's results.

    Parameters
    ----------
    text : str
        The answer.
    turn : sequence of BaseMessage
        The messages of this question after it.

    Returns
    -------
    str or None
        What the answer says and what the measures say, when they disagree.
    """
    from sleeplm.clinical.respiratory import is_positional

    found = facts_measures(turn)
    wrong = _efficiency_verdict(text or "", found)
    if wrong:
        return wrong
    m = _POSITIONAL.search(text or "")
    if m is None:
        return None
    sup, non = found.get("ahi_supine"), found.get("ahi_nonsupine")
    if sup is None or non is None or sup.value is None or non.value is None:
        return None
    before = " ".join(re.split(r"\s+", text[:m.start()].strip())[-3:])
    said = not (_NEGATION.search(before) or text[max(0, m.start() - 4):m.start()].lower()
                == "non-")
    truth = is_positional(sup.value, non.value)
    if said == truth:
        return None
    return (f"the answer calls the apnea {'positional' if said else 'not positional'}; "
            f"AHI supine {sup.format()} is {'' if truth else 'not '}at least twice the "
            f"non-supine {non.format()}")


#: An epoch's exact start in a tool's text: "epoch 95 (23:03:30-23:04:00, N2)".
_EPOCH_START = re.compile(r"\bepoch (\d+) \((\d{1,2}):(\d{2}):(\d{2})[-\u2013]")
#: An event's onset inside its epoch in a tool's text: "22:44:03 (epoch 56, N2)".
_ONSET_IN_EPOCH = re.compile(r"\b(\d{1,2}):(\d{2}):(\d{2}) \(epoch (\d+)\b")
#: An epoch and a clock time written as one place in an answer: "epoch 144 (02:58:00)",
#: "epoch 144 at 02:58", "02:58:00 (epoch 144", "at 02:58 in epoch 144".
_EPOCH_THEN_CLOCK = re.compile(
    r"\bepoch (?P<e>\d+)\s*(?:\(|,\s*|:\s*|\s+at\s+|\s+)(?P<c>\d{1,2}:\d{2}(?::\d{2})?)\b",
    re.IGNORECASE)
_CLOCK_THEN_EPOCH = re.compile(
    r"\b(?P<c>\d{1,2}:\d{2}(?::\d{2})?)\s*(?:\(|,\s*|\s+in\s+|\s+)epoch (?P<e>\d+)\b",
    re.IGNORECASE)
_DAY_S = 86400.0


def _epoch_clock(messages: Iterable[BaseMessage]) -> tuple[float, float] | None:
    """The clock time (seconds of the day) at which epoch 0 starts, as an interval
    ``(earliest, latest)``, from the epoch times the conversation's tool results write; None
    when they write none."""
    lo, hi = -math.inf, math.inf
    found = False
    for m in messages:
        if not isinstance(m, ToolMessage) or m.status == "error":
            continue
        text = _text(m)
        for mt in _EPOCH_START.finditer(text):
            h, mi, sec, e = int(mt.group(2)), int(mt.group(3)), int(mt.group(4)), int(mt.group(1))
            t0 = (h * 3600 + mi * 60 + sec - 30.0 * e) % _DAY_S
            return t0, t0
        for mt in _ONSET_IN_EPOCH.finditer(text):
            h, mi, sec, e = (int(mt.group(i)) for i in range(1, 5))
            t0 = (h * 3600 + mi * 60 + sec - 30.0 * e) % _DAY_S  # onset in [start, start+30)
            if not found:
                lo, hi, found = t0 - 30.0, t0, True
            else:  # intersect, unwrapping around the day
                t0 += round((hi - t0) / _DAY_S) * _DAY_S
                lo, hi = max(lo, t0 - 30.0), min(hi, t0)
    return (lo, hi) if found and lo <= hi + 1.0 else None


def _clock_in_epoch(clock: str, epoch: int, span: tuple[float, float]) -> bool | None:
    """Whether a clock time ("22:48:55", "22:48") can lie in ``epoch`` (30 s of tolerance
    either side), given when epoch 0 starts (``span``, seconds of the day, from
    :func:`_epoch_clock`); None when ``clock`` is no time."""
    times = clock_times(clock)
    if not times:
        return None
    lo, hi = span
    h, mi, sec = (int(x) for x in times[0].split(":"))
    t = h * 3600 + mi * 60 + sec
    low = lo + 30.0 * epoch - 30.0
    width = (hi + 30.0 * epoch + 60.0) - low
    cands = (t, t + 12 * 3600.0) if h < 12 and len(clock) <= 5 else (t,)
    return any((c - low) % _DAY_S <= width for c in cands)


def epoch_clock_spans(text: str, messages: Sequence[BaseMessage]
                      ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Clock times an answer gives for an epoch that the epoch cannot have.

    The 1.5 B model wrote "The nadir SpO2 was 79.3% ..., at epoch 144 (02:58:00)": the
    epoch started at 22:58:00, and 02:58:00 passed the number check because another result
    of the conversation cited a time within 30 s of it. The tool results that write an
    epoch's time ("epoch 95 (23:03:30-...)", "22:44:03 (epoch 56") fix when every epoch
    starts; a time written as the place of an epoch must lie in it (30 s of tolerance
    either side).

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the clock times in ``text`` (kind ``clock``), in order.
    """
    span = _epoch_clock(messages)
    if span is None:
        return []
    lo, hi = span
    _current, others = _patients_named(messages)
    out: dict[int, tuple[int, int, WithdrawnClaim]] = {}
    for rx in (_EPOCH_THEN_CLOCK, _CLOCK_THEN_EPOCH):
        for mt in rx.finditer(text):
            line = text[text.rfind("\n", 0, mt.start()) + 1:mt.start()]
            if any(p in line for p in others):
                continue  # an epoch of another patient's night ("sim-01005 epoch 903 (...")
            e = int(mt.group("e"))
            if _clock_in_epoch(mt.group("c"), e, span) is not False:
                continue
            a, b = mt.span("c")
            h0, m0 = divmod(int(lo + 30.0 * e) % int(_DAY_S) // 60, 60)
            out[a] = (a, b, WithdrawnClaim(
                token=mt.group("c"), kind="clock", sentence=text[max(0, a - 80):b + 20],
                reason=f"epoch {e} starts at about {h0:02d}:{m0:02d} by the tool results"))
    return [out[a] for a in sorted(out)]


#: A value in brackets after "epoch N:" (and an event's clock time), as a 1.5 B model copies
#: the tools' evidence: "epoch 56: 22:48:55 (19 s)", "at epoch 30: (15.0 min)", "epoch: (22.0
#: min)".
_EPOCH_ASIDE = re.compile(
    r"\bepochs?\s*(?:(?P<e>\d+)|" + re.escape(UNVERIFIED) + r")?\s*:\s*"
    r"(?:(?:(?P<c>\d{1,2}:\d{2}(?::\d{2})?)|" + re.escape(UNVERIFIED) + r")\s*)?"
    r"\(\s*(?:(?P<t>\d{1,2}:\d{2}(?::\d{2})?)(?:\s*s\b)?|"
    r"(?P<d>\d+(?:\.\d+)?\s*(?:s|secs?|seconds?|min|mins|minutes?|h|hrs?|hours?)))\s*\)",
    re.IGNORECASE)


def epoch_aside_spans(text: str, messages: Sequence[BaseMessage]
                      ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Durations written in brackets after "epoch N:" that are neither an event's in that
    epoch nor a time of night inside it.

    The 1.5 B model copies the tools' evidence format and fills it from other lines: "The
    first REM occurred at epoch 30: (15.0 min)" (the sleep-onset latency), "The breathing
    stopped at epoch 56: 22:48:55 (19 s)" (the next apnea's length; the one in epoch 56
    lasted 18.4 s), "The longest apnea was 30 s at epoch 269: (18 s)". The value stands when
    an event of the conversation's ``list_events`` results lies in epoch N (or starts at the
    clock time written) with that duration, to the digits written, or when it is a time in
    seconds inside epoch N ("epoch 95: (2855 s)"); with no epoch number ("at epoch: (22.0
    min)", or one withdrawn: "at epoch [unverified]: (15.0 min)", the first REM given the
    sleep onset's epoch 30 and its time) it belongs to nothing and is withdrawn. A time of
    night in the brackets ("at epoch 56: 22:48:55 (23:02:58 s)") must lie in epoch N.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the values (kind ``measure``), in order.
    """
    events = [e for get in _events_fields(messages) for e in (get("events") or [])]
    span = _epoch_clock(messages)
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for mt in _EPOCH_ASIDE.finditer(text or ""):
        if mt.group("t"):
            # a time of night in the brackets ("at epoch 56: [unverified] (23:02:58 s)", an
            # apnea's time in epoch 93) must lie in the epoch
            e = int(mt.group("e")) if mt.group("e") else None
            inside = (_clock_in_epoch(mt.group("t"), e, span)
                      if e is not None and span is not None else None if e is not None
                      else False)
            if inside is False:
                a, b = mt.span("t")
                out.append((a, b, WithdrawnClaim(
                    token=text[a:b], kind="clock",
                    sentence=text[max(0, mt.start() - 80):mt.end()],
                    reason=(f"{text[a:b]} is not in epoch {e} by the tool results"
                            if e is not None else f"{text[a:b]} is given to no epoch"))))
            continue
        durations = duration_spans(mt.group("d"))
        if not durations:
            continue
        _a, _b, secs, half = durations[0]
        e = int(mt.group("e")) if mt.group("e") else None
        clock = mt.group("c")
        ok = False
        if e is not None:
            ok = 30.0 * e <= secs < 30.0 * (e + 1)  # a time of night in the epoch
            for ev in events:
                same = _field(ev, "epoch") == e or (
                    clock and str(_field(ev, "clock") or "").startswith(clock[:5]))
                dur = _field(ev, "duration_s")
                if same and dur is not None and abs(float(dur) - secs) <= half + 1e-6:
                    ok = True
                    break
        if ok:
            continue
        a, b = mt.span("d")
        out.append((a, b, WithdrawnClaim(
            token=text[a:b], kind="measure", sentence=text[max(0, mt.start() - 80):mt.end()],
            reason=(f"no listed event in epoch {e} lasts {text[a:b]}, nor is it a time in it"
                    if e is not None else f"{text[a:b]} is given to no epoch"))))
    return out


_EPOCH_CITED = re.compile(r"\bepochs?\s+(\d+)(?:\s*[-\u2013]\s*(\d+))?", re.IGNORECASE)
_EPOCH_SAID = re.compile(r"\bepoch\s+(\d+)(?:\s*s\b)?", re.IGNORECASE)


def impossible_epoch_spans(text: str, messages: Sequence[BaseMessage]
                           ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Epoch numbers beyond every epoch the conversation's tool results name.

    The 1.5 B model wrote the SpO2 nadir's time in seconds as an epoch: "at epoch 4337 s",
    "from epoch 144 to epoch 4337" in a night of 759 epochs. Any number supports an unitless
    "epoch N" for the number check, so an epoch after the last one any result names (its
    ranges included: "Time in bed [epochs 0-758]") is withdrawn here, with a unit written
    after it.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
    """
    last = -1
    for m in _ran(messages):
        if m.status == "error":
            continue
        for mc in _EPOCH_CITED.finditer(_text(m)):
            last = max(last, int(mc.group(2) or mc.group(1)))
    if last < 0:
        return []
    return [(me.start(1), me.end(), WithdrawnClaim(
        token=text[me.start(1):me.end()], kind="measure",
        sentence=text[max(0, me.start() - 80):me.end() + 20],
        reason=f"no tool result names an epoch after {last}"))
        for me in _EPOCH_SAID.finditer(text or "") if int(me.group(1)) > last]


#: Words naming the first REM epoch or the sleep onset, and the measure whose evidence
#: cites that epoch (its last single epoch: REM latency cites sleep onset and first R epoch).
_ONSET_WORDS = (
    (re.compile(r"\b(?:first|onset of|entered|entering|reached|hit|began|start(?:ed|s)?)\b"
                r"[^.;\n]{0,25}?\brem\b|\brem (?:onset|began|started|start)\b|\bfirst rem\b"),
     "rem_latency_min", "the first REM epoch"),
    (re.compile(r"\bsleep onset\b|\bfell asleep\b|\bfalling asleep\b|\bfirst (?:epoch of )?"
                r"sleep\b|\bbegan sleeping\b"), "sleep_onset_latency_min", "the sleep onset"),
)


#: Words before "sleep onset" that make it the point a latency counts from.
_LATENCY_FROM = re.compile(r"\b(?:after|from|since|following)\s+(?:the\s+)?$")


def onset_epoch_spans(text: str, messages: Sequence[BaseMessage]
                      ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Epochs an answer gives for the first REM or the sleep onset that are not those the
    ``report_facts`` results cite for them.

    Asked "when did they first hit REM?", the 1.5 B model answered "The patient first hit
    REM at epoch 30": epoch 30 was the sleep onset's (REM began 81 min later). The REM
    latency cites the sleep-onset and first R epochs, the sleep-onset latency the first
    sleep epoch; "epoch N" written after words naming either (the nearest before it, in its
    sentence) must be that epoch.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the epoch numbers (kind ``measure``), in order.
    """
    measures = facts_measures(messages)
    want: dict[str, int] = {}
    for _rx, name, _what in _ONSET_WORDS:
        m = measures.get(name)
        ep = getattr(getattr(m, "evidence", None), "epochs", None) or []
        if m is not None and getattr(m, "value", None) is not None and ep and \
                ep[-1][0] == ep[-1][1]:
            want[name] = int(ep[-1][0])
    if not want:
        return []
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for at, sentence in located_sentences(text):
        low = sentence.lower()
        found = sorted((mk.start(), mk.end(), name, what) for rx, name, what in _ONSET_WORDS
                       for mk in rx.finditer(low))
        # "The first REM started 81.0 minutes after sleep onset, at epoch 30": the sleep
        # onset a latency counts from is no place of its own; the epoch is the first REM's
        keys = [(end, name, what) for start, end, name, what in found
                if not (name == "sleep_onset_latency_min" and _LATENCY_FROM.search(low[:start])
                        and any(n == "rem_latency_min" and e <= start
                                for _s, e, n, _w in found))]
        for me in _EPOCH_NUMBER.finditer(sentence):
            before = [k for k in keys if k[0] <= me.start()]
            if not before:
                continue
            _end, name, what = before[-1]
            if name in want and int(me.group(1)) != want[name]:
                out.append((at + me.start(1), at + me.end(1), WithdrawnClaim(
                    token=me.group(1), kind="measure", sentence=sentence,
                    reason=f"{what} is epoch {want[name]} by the report_facts result")))
    return out


def onset_epoch_lines(claims: Sequence[tuple[int, int, WithdrawnClaim]],
                      messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    """For each measure whose epoch :func:`onset_epoch_spans` withdrew, its line as the
    ``report_facts`` result gives it, with the epochs it cites and their clock times ("REM
    latency (from sleep onset): 81.0 min (epochs 30, 192: sleep onset (22:31:00) and first
    R epoch (23:52:00))").

    Returns
    -------
    list of (name, line)
    """
    measures = facts_measures(messages)
    out: list[tuple[str, str]] = []
    for _rx, name, what in _ONSET_WORDS:
        m = measures.get(name)
        if m is None or not any(c.reason.startswith(what) for _a, _b, c in claims):
            continue
        ep = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in m.evidence.epochs)
        note = f": {m.evidence.note}" if m.evidence.note else ""
        out.append((name, f"{m.label}: {m.format()} (epochs {ep}{note})"))
    return out


#: A value, then an epoch in brackets as its source: "36.5 minutes (from epoch 30)".
_EPOCH_SOURCE = re.compile(
    r"(?<![\d.])(?P<v>\d+(?:\.\d+)?)(?:\s*%|(?:\s+[a-z][a-z/]*){0,3})\s*\(\s*(?:from|since|at|"
    r"in|starting (?:at|from))\s+epoch\s+(?P<e>\d+)\s*\)", re.IGNORECASE)


def _same_value(written: str, m: Any) -> bool:
    """Whether ``written`` ("36.5", "5") is measure ``m``'s value to the digits written."""
    value = getattr(m, "value", None)
    if value is None or not math.isfinite(float(value)):
        return False
    digits = len(written.split(".")[1]) if "." in written else 0
    return abs(float(written) - float(value)) <= 0.5 * 10.0 ** -digits + 1e-9


_SpanT = TypeVar("_SpanT", bound=tuple)


def _disjoint(spans: Iterable[_SpanT]) -> list[_SpanT]:
    """Span tuples ``(start, end, ...)`` in order of their start, each overlapping an earlier
    one left out (two checks that withdraw the same number replace it once)."""
    kept: list[_SpanT] = []
    for item in sorted(spans, key=lambda x: (x[0], -x[1])):
        if not kept or item[0] >= kept[-1][1]:
            kept.append(item)
    return kept


def epoch_source_spans(text: str, messages: Sequence[BaseMessage]
                       ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Epochs given in brackets as where a whole-night value comes from, that it does not.

    The 1.5 B model copied the tools' evidence as "(from epoch N)" and filled N from
    nowhere: "The total sleep time is 411.5 minutes (from epoch 0)" (sleep began at epoch
    30), "The AHI in REM is 30.8 events/h (from epoch 12)", "36.5 minutes of wake after sleep
    onset (from epoch 30)" (its first wake epoch is 31). When the value before the brackets
    is a ``report_facts`` measure's, the epoch must begin or end one of the runs of epochs
    that measure cites ("81.0 min (from epoch 30)" for the REM latency, which cites epochs
    30 and 192, stands); a value of no measure is left to the other checks.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the epoch numbers (kind ``measure``), in order.
    """
    measures = [m for m in facts_measures(messages).values()
                if getattr(m, "value", None) is not None]
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for mt in _EPOCH_SOURCE.finditer(text or ""):
        same = [m for m in measures if _same_value(mt.group("v"), m)]
        if not same:
            continue
        e = int(mt.group("e"))
        runs = [r for m in same for r in (m.evidence.epochs or [])]
        if any(e in (a, b) for a, b in runs) or (
                e == 0 and any(m.name == "sleep_onset_latency_min" for m in same)):
            continue  # (the sleep-onset latency counts from the first epoch)
        m = same[0]
        where = (", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in m.evidence.epochs[:3])
                 + (" ..." if len(m.evidence.epochs) > 3 else ""))
        out.append((mt.start("e"), mt.end("e"), WithdrawnClaim(
            token=mt.group("e"), kind="measure",
            sentence=text[max(0, mt.start() - 80):mt.end()],
            reason=(f"{m.label} ({m.format()}) does not come from epoch {e}"
                    + (f": it is measured over epochs {where}" if where
                       else ": it is a whole-night value")))))
    return out


#: "N epochs" as an amount ("a period of 308 epochs"), not an epoch's number.
_EPOCH_AMOUNT = re.compile(r"(?<![\d.,:\-\u2013])(?<!epochs )(?<!epoch )(\d+)\s+epochs\b",
                           re.IGNORECASE)


def epoch_count_spans(text: str, messages: Sequence[BaseMessage]
                      ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Event counts written as a number of epochs.

    Asked for the PLMI, the 1.5 B model answered "41.0 events/h, with a period of 308
    epochs": 308 was the count of leg movements, and any number of the tool results passes
    the number check. "N epochs" stands when N is a number of epochs some measure spans (or
    twice a time in minutes); it is withdrawn when it is, instead, a count of events and
    nothing else.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the numbers (kind ``measure``), in order.
    """
    measures = [m for m in facts_measures(messages).values()
                if getattr(m, "value", None) is not None and math.isfinite(float(m.value))]
    counts = {int(round(m.value)): m for m in measures if m.unit == "count"}
    if not counts:
        return []
    spans = {m.evidence.n_epochs for m in measures}
    spans |= {int(round(2 * m.value)) for m in measures if m.unit == "min"}
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for mt in _EPOCH_AMOUNT.finditer(text or ""):
        n = int(mt.group(1))
        if n not in counts or n in spans:
            continue
        m = counts[n]
        out.append((mt.start(1), mt.end(1), WithdrawnClaim(
            token=mt.group(1), kind="measure", sentence=text[max(0, mt.start() - 80):mt.end()],
            reason=f"{n} is the {m.label.lower()}, a count of events, not a number of epochs")))
    return out


#: Kinds of events a rate names ("5 central apneas per hour") -> the indices (events/h) that
#: rate may be; an empty tuple: no index of that kind exists (a count of them per hour is
#: then no measured value). Generic "events" name no kind.
_RATE_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"obstructive apn\w*", ("obstructive_apnea_index",)),
    (r"central apn\w*", ("central_apnea_index",)),
    (r"mixed apn\w*", ()),
    (r"apn\w* (?:and|or|&|plus) hypopn\w*|(?:respiratory|breathing) events?",
     ("ahi_3a", "ahi_4")),
    (r"hypopn\w*", ()),
    (r"apn\w*", ("apnea_index",)),
    (r"respiratory arousals?", ("respiratory_arousal_index",)),
    (r"spontaneous arousals?", ("spontaneous_arousal_index",)),
    (r"(?:limb|leg|plm) arousals?", ("limb_arousal_index",)),
    (r"arousals?", ("arousal_index", "respiratory_arousal_index", "spontaneous_arousal_index",
                    "limb_arousal_index")),
    (r"desat\w*", ("odi3", "odi4")),
    (r"periodic (?:limb|leg) movements?|plms?", ("plmi",)),
    (r"(?:limb|leg) movements?|leg kicks?", ("lm_index", "plmi")),
)
_RATE_ITEM = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s+((?:(?:obstructive|central|mixed|respiratory|breathing|"
    r"spontaneous|periodic|limb|leg|plm)\s+)*(?:apn\w*(?: (?:and|or|&|plus) hypopn\w*)?|"
    r"hypopn\w*|events?|arousals?|desat\w*|movements?|plms?|kicks?))\b", re.IGNORECASE)
_RATE_CHAIN = re.compile(r"\s*,\s*(?:and\s+)?|\s+(?:and|or)\s+", re.IGNORECASE)
_PER_HOUR = re.compile(r"\s*(?:of sleep\s+)?(?:per|an|each|every|a|/)\s*(?:hour|hr|h)\b",
                       re.IGNORECASE)


def rate_claim_spans(text: str, messages: Sequence[BaseMessage]
                     ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Counts of events written as rates that no index of that kind of event has.

    Asked "How many apneas and hypopneas per hour of sleep did she have?", the 1.5 B model
    answered "The patient had 43 obstructive apneas, 5 central apneas, and 8 mixed apneas per
    hour of sleep": the night's counts (43, 5, 8) as rates, the obstructive apnea index being
    6.3 events/h. Each "N <kind of event>" of a list that ends in "per hour" must be the
    value of that kind's index (:data:`_RATE_KINDS`), as the facts give it; a kind without
    an index (mixed apneas, hypopneas) has no such value.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the numbers (kind ``measure``), in order.
    """
    ms = {n: m for n, m in facts_measures(messages).items()
          if getattr(m, "value", None) is not None and math.isfinite(float(m.value))}
    if not ms or not text:
        return []
    items = list(_RATE_ITEM.finditer(text))
    out: list[tuple[int, int, WithdrawnClaim]] = []
    chain: list[re.Match] = []
    for i, it in enumerate(items):
        chain.append(it)
        nxt = items[i + 1] if i + 1 < len(items) else None
        if nxt is not None and _RATE_CHAIN.fullmatch(text[it.end():nxt.start()]):
            continue  # the list goes on
        rated = _PER_HOUR.match(text, it.end()) is not None
        for c in chain if rated else ():
            words = c.group(2).lower()
            kind = next((names for pat, names in _RATE_KINDS if re.fullmatch(pat, words)), None)
            if kind is None:
                continue  # "events": no kind named
            num = c.group(1)
            dec = len(num.split(".")[1]) if "." in num else 0
            have = [ms[n] for n in kind if n in ms]
            if any(abs(float(m.value) - float(num)) <= 0.5 * 10 ** -dec + 1e-9 for m in have):
                continue
            said = ", ".join(f"{m.label}: {m.format()}" for m in have) or "no index of them"
            out.append((c.start(1), c.end(1), WithdrawnClaim(
                token=num, kind="measure", sentence=text[max(0, c.start() - 80):c.end() + 20],
                reason=f"{num} {words} per hour is no measured rate ({said})")))
        chain = []
    return out


#: An epoch's scored stage as the tools write it: "(epoch 813, N2)", "epoch 371 (01:21:30-
#: 01:22:00, N2)".
_TOOL_EPOCH_STAGE = re.compile(r"\(epoch (\d+), (W|N1|N2|N3|R)\)|\bepoch (\d+) \(\d{2}:\d{2}:\d{2}-"
                               r"\d{2}:\d{2}:\d{2}, (W|N1|N2|N3|R)\)")
#: A stage an answer gives an epoch: "epoch 813 (05:02:33, R)", "(epoch 813, REM)".
_SAID_EPOCH_STAGE = re.compile(r"\bepoch (\d+),? \((?:[^()]{0,40}?, )?(W|N1|N2|N3|R|REM|wake)\)|"
                               r"\(epoch (\d+), (W|N1|N2|N3|R|REM|wake)\)", re.IGNORECASE)


def stage_claim_spans(text: str, messages: Sequence[BaseMessage]
                      ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Sleep stages an answer gives for single epochs that the tool results stage otherwise.

    Asked "Which desaturations were scored after 5 am?", the 1.5 B model answered "The
    longest was at epoch 813 (05:02:33, R)"; its list_events result read "desaturation at
    05:02:33 (epoch 813, N2)".

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the stage words (kind ``stage``), in order.
    """
    scored: dict[int, str] = {}
    for m in messages:
        if isinstance(m, ToolMessage) and m.status != "error":
            for mt in _TOOL_EPOCH_STAGE.finditer(_text(m)):
                scored[int(mt.group(1) or mt.group(3))] = mt.group(2) or mt.group(4)
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for mt in _SAID_EPOCH_STAGE.finditer(text or "") if scored else ():
        g = 2 if mt.group(1) else 4
        epoch, said = int(mt.group(g - 1)), mt.group(g)
        stage = _STAGE_NAMES.get(said.lower(), said.upper())
        if epoch in scored and scored[epoch] != stage:
            out.append((mt.start(g), mt.end(g), WithdrawnClaim(
                token=said, kind="stage", sentence=text[max(0, mt.start() - 80):mt.end()],
                reason=f"epoch {epoch} is scored {scored[epoch]}, not {said}")))
    return out


#: An SpO2 or heart-rate value as an answer writes it ("the SpO2 value was 91.0", "heart rate
#: of 73.9 bpm"): the measure's words, then the first number within a few words.
_LOCAL_VALUE = re.compile(
    r"\b(?P<what>spo2|sp02|o2 sat\w*|oxygen(?: saturation)?|saturation|heart rate|pulse(?: rate)?)"
    r"\b[^.;,\d\n]{0,30}?(?P<num>\d+(?:\.\d+)?)(?![\d:])", re.IGNORECASE)
#: Numbers of a tool result with their unit: percentages and beats per minute.
_UNIT_VALUE = re.compile(r"(?<![\d.:#])(\d+(?:\.\d+)?)\s*(%|bpm|beats/min)")
#: "[epoch respiration 2850-2880 s]": an epoch of caption facts, in seconds of the night.
_SECONDS_SPAN = re.compile(r"\b(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) s\]")


def _mentions_epoch(text: str, epoch: int, epoch_s: float = 30.0) -> bool:
    """Whether a tool result is about ``epoch``: it writes "epoch N" (or "epochs N", "epochs
    a, N: ...") or a span of seconds of the night inside it."""
    if re.search(rf"\bepochs?\s+(?:\d+,\s*)*{epoch}(?![\d.])", text, re.IGNORECASE):
        return True
    return any(float(a) >= epoch * epoch_s - 1e-6 and float(b) <= (epoch + 1) * epoch_s + 1e-6
               for a, b in _SECONDS_SPAN.findall(text))


def local_value_spans(text: str, messages: Sequence[BaseMessage]
                      ) -> list[tuple[int, int, WithdrawnClaim]]:
    """SpO2 and heart-rate values an answer places at an epoch that no tool result about that
    epoch gives.

    The 1.5 B model listed the obstructive apneas as "The first obstructive apnea occurred at
    epoch 65, when the SpO2 value was 91.0 and the heart rate was 73.9 bpm.": 73.9 bpm was
    the mean heart rate in stage W, and the list it read gives no SpO2 or heart rate. Both
    numbers were in the conversation's results, so the number check passed them. A value
    written after "epoch N" in its clause must be a percentage (SpO2) or a rate (bpm) of a
    tool result that is about epoch N (it writes "epoch N" or a span of seconds inside it),
    to the digits written.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans of the numbers (kind ``measure``), in order.
    """
    results = [_text(m) for m in messages
               if isinstance(m, ToolMessage) and m.status != "error"]
    if not results:
        return []
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for at, sentence in located_sentences(text):
        for clause_at, clause in _clauses(sentence):
            epochs = list(_EPOCH_NUMBER.finditer(clause))
            for mv in _LOCAL_VALUE.finditer(clause):
                before = [me for me in epochs if me.end() <= mv.start()]
                if not before:
                    continue
                if re.search(r"(?:[<>\u2264\u2265]=?|\b(?:below|under|above|over|less than|"
                             r"more than))\s*$", clause[:mv.start("num")], re.IGNORECASE):
                    continue  # "time with SpO2 < 90%": a threshold, no value at the epoch
                epoch = int(before[-1].group(1))
                pct = not re.match(r"heart|pulse", mv.group("what"), re.IGNORECASE)
                num = mv.group("num")
                digits = len(num.split(".")[1]) if "." in num else 0
                value = float(num)
                ok = any(abs(float(v) - value) <= 0.5 * 10.0 ** -digits + 1e-9
                         and (u == "%") == pct
                         for r in results if _mentions_epoch(r, epoch)
                         for v, u in _UNIT_VALUE.findall(r))
                if not ok:
                    a, b = clause_at + mv.start("num"), clause_at + mv.end("num")
                    out.append((at + a, at + b, WithdrawnClaim(
                        token=num, kind="measure", sentence=sentence,
                        reason=f"no tool result about epoch {epoch} gives this "
                               f"{'SpO2' if pct else 'heart rate'}")))
    return out


def _clauses(sentence: str) -> list[tuple[int, str]]:
    """``sentence`` cut at semicolons: (start, clause)."""
    out, pos = [], 0
    for part in sentence.split(";"):
        out.append((pos, part))
        pos += len(part) + 1
    return out


def _patients_named(messages: Iterable[BaseMessage]) -> tuple[str | None, set[str]]:
    """The current patient and the other patients that ``retrieve`` results name."""
    current: str | None = None
    others: set[str] = set()
    for m in messages:
        if not (isinstance(m, ToolMessage) and m.name == "retrieve" and m.status != "error"):
            continue
        res = _result_of(getattr(m, "artifact", None))
        if res is None:
            continue
        get = res.get if isinstance(res, dict) else (lambda k, r=res: getattr(r, k, None))
        current = get("patient") or current
        for hit in get("hits") or []:
            pid = hit.get("patient") if isinstance(hit, dict) else getattr(hit, "patient", None)
            if pid:
                others.add(str(pid))
    return current, others - {current}


_LIST_LINE = re.compile(r"[ \t]*(?:[-*\u2022]|\d{1,3}[.)])\s")


def _attributed_end(text: str, start: int, limit: int) -> int:
    """Where what ``text`` says about a patient named just before ``start`` ends: the end
    of that sentence, and the list lines right under it (a heading "P (...):" then "- TST:
    ..."), but never past ``limit`` (the next patient named)."""
    nl = text.find("\n", start)
    line_end = len(text) if nl < 0 else nl
    stop = re.search(r"[.!?](?=\s|$)", text[start:line_end])
    end = start + stop.end() if stop else line_end
    if stop is None:  # the line goes on into a list under it
        pos = line_end
        while pos < len(text):
            nxt = text.find("\n", pos + 1)
            line = text[pos + 1:len(text) if nxt < 0 else nxt]
            if not _LIST_LINE.match(line):
                break
            end = pos = len(text) if nxt < 0 else nxt
    return min(end, limit)


def other_patient_spans(text: str, messages: Sequence[BaseMessage],
                        extra: Iterable[FactItem] = ()) -> list[tuple[int, int, WithdrawnClaim]]:
    """Numbers an answer gives about another patient that no tool result gives for them.

    Asked to find nights similar to this one, the 1.5 B model listed the five nights that
    ``retrieve`` found and under each one this patient's own time in bed, total sleep time,
    WASO and sleep efficiency: every number was in a tool result of the conversation, so the
    number check passed, but about the wrong patient. What follows the name of another
    patient (that sentence, or the list under it) may only hold numbers of the tool-result
    lines that name that patient (and :data:`REFERENCE_FACTS`).

    Parameters
    ----------
    text : str
        The answer (after the number check).
    messages : sequence of BaseMessage
        The conversation (the ``retrieve`` results name the patients).
    extra : iterable of FactItem
        Further allowed facts.

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Spans in ``text`` (kind ``other_patient``), in order.
    """
    current, others = _patients_named(messages)
    if not others:
        return []
    names = sorted(others | ({current} if current else set()), key=len, reverse=True)
    mention = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    found = list(mention.finditer(text))
    lines = [line for m in messages if isinstance(m, ToolMessage) and m.status != "error"
             for line in _text(m).splitlines()]
    extra = tuple(extra)
    out: list[tuple[int, int, WithdrawnClaim]] = []
    for i, m in enumerate(found):
        pid = m.group(1)
        if pid not in others:
            continue
        limit = found[i + 1].start() if i + 1 < len(found) else len(text)
        end = _attributed_end(text, m.end(), limit)
        own = [line for line in lines if re.search(
            r"(?<![\w-])" + re.escape(pid) + r"(?![\w-])", line)]
        allowed = chat_allowed([ToolOutput(name="retrieve", content="\n".join(own))],
                               extra=extra)
        for a, b, claim in problem_spans(text[m.end():end], allowed):
            out.append((m.end() + a, m.end() + b, claim.model_copy(update={
                "kind": "other_patient",
                "reason": f"no tool result gives {claim.token} for {pid}"})))
    return out


#: The headline measures of a night: what a summary ("quick overview", "headline numbers")
#: must state (the offline planner's summary lists these first).
HEADLINE_MEASURES: tuple[str, ...] = ("tst_min", "sleep_efficiency_pct", "ahi_3a",
                                      "spo2_nadir")
#: What an insight question needs beyond the measures it names: the numbers the offline
#: planner explains it with ("Why is her sleep efficiency so poor?" was answered with the
#: sleep efficiency alone).
INSIGHT_MEASURES: dict[str, tuple[str, ...]] = {
    "insight_efficiency": ("sleep_efficiency_pct", "tst_min", "tib_min",
                           "sleep_onset_latency_min", "waso_min", "awakenings"),
    "insight_positional": ("ahi_supine", "ahi_nonsupine", "supine_sleep_min"),
}


def missing_measures(question: str, turn: Sequence[BaseMessage], text: str,
                     intent: str | None = None) -> list[tuple[str, str]]:
    """The measures ``question`` names that a ``report_facts`` result of this question holds
    and the answer ``text`` does not state.

    A small LLM given the respiratory facts for "supine vs non-supine AHI?" answered "The
    apnea is positional." with neither number; the measured values are then added under the
    answer (:class:`ChatGroundingMiddleware`), written by deterministic code.

    Parameters
    ----------
    question : str
    turn : sequence of BaseMessage
        The messages of this question after it (its tool calls and results).
    text : str
        The answer (after the grounding check).
    intent : str, optional
        The router's intent for the question. A ``summary`` question that names no measure
        asks for the :data:`HEADLINE_MEASURES` ("Give me the headline numbers" was answered
        without the AHI and the SpO2 nadir); an insight asks for its
        :data:`INSIGHT_MEASURES` too.

    Returns
    -------
    list of (name, line)
        ``line`` is "label: value unit", in the order the question's words name them; a
        measure without a value (e.g. no SpO2 channel) is left out, and so is an index by
        another scoring rule when one is stated or added (:data:`RULE_VARIANTS`), unless
        the question names that rule ("the AHI by the 4% rule" was answered with the AHI by
        the 3 % rule) or a value of the answer was withdrawn ("The RDI is [unverified], and
        the RDI (4% rule) is 13.7 events/h": the withdrawn 8.2 had stood for the 3 % rule's
        17.6, which is then added).
    """
    from assistant import extract as X

    names = X.extract(question).measures or (
        list(HEADLINE_MEASURES) if intent == "summary" else [])
    names = list(dict.fromkeys([*names, *INSIGHT_MEASURES.get(intent or "", ())]))
    if not names:
        return []
    explicit = specific_rules(question)
    found = facts_measures(turn)
    def valued(name: str) -> Any:
        meas = found.get(name)
        ok = meas is not None and meas.value is not None and math.isfinite(meas.value)
        return meas if ok else None

    def stated(name: str) -> bool:
        meas = valued(name)
        return meas is not None and _states(text, meas.format().split()[0])

    out: list[tuple[str, str]] = []
    for name in dict.fromkeys(names):
        meas = valued(name)
        if meas is None or stated(name):
            continue
        group = next((g for g in RULE_VARIANTS if name in g and name not in explicit),
                     (name,))
        if any(n in group for n, _ in out) or (
                UNVERIFIED not in text and any(stated(g) for g in group)):
            continue  # the same index by another rule is stated (or already added)
        out.append((name, f"{meas.label}: {meas.format()}"))
    return out


def ungrounded_of(message: BaseMessage) -> str | None:
    """The LLM's answer as it wrote it, before the grounding check changed it (None when the
    check changed nothing)."""
    text = message.additional_kwargs.get(UNGROUNDED_KEY)
    return str(text) if text is not None else None


def withdrawn_of(message: BaseMessage) -> list[WithdrawnClaim]:
    """What the grounding check withdrew from an answer message."""
    return [WithdrawnClaim.model_validate(w)
            for w in message.additional_kwargs.get(WITHDRAWN_KEY, []) or []]

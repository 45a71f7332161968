"""LangChain wrappers of the tools.

Each tool is the plain function of its module behind a LangChain ``BaseTool`` with the
function's pydantic input model as its argument schema and
``response_format="content_and_artifact"``: the LLM reads a short text (the output's
``summary()``), the caller gets a :class:`ToolArtifact` (the full pydantic result, a table of its
rows, figures). The current patient, library and index reach the tools through the runtime
context (a :class:`~tools.context.ToolContext`, ``agent.invoke(..., context=ctx)``); the LLM
never writes a file path or a patient id for them. A specific sleeplm error (empty query, time
outside the night, unknown patient, ...) comes back to the LLM as the error's message.
"""


from collections.abc import Callable
from typing import Any

from langchain.tools import ToolRuntime, tool
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.errors import SleepLMError
from tools.caption import CaptionInput, caption
from tools.classify import ClassifyInput, classify
from tools.context import ToolContext
from tools.facts import EventsInput, FactsInput, events_in_range, report_facts
from tools.figures import (
    FigureOutput,
    HypnogramInput,
    SignalsInput,
    TimelineInput,
    event_timeline_figure,
    hypnogram_figure,
    signals_figure,
)
from tools.localize import LocalizeInput, localize
from tools.retrieve import RetrieveInput, retrieve

__all__ = ["TOOL_NAMES", "ToolArtifact", "make_tools"]


class ToolArtifact(BaseModel):
    """What a LangChain tool hands back besides its text.

    Attributes
    ----------
    tool : str
    result : BaseModel
        The plain function's full output.
    table : list of dict
        Its main rows (intervals, hits, scores, events, measures), one dict per row.
    figures : list of FigureOutput
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool: str
    result: Any
    table: list[dict[str, Any]] = Field(default_factory=list)
    figures: list[FigureOutput] = Field(default_factory=list)


def _rows(name: str, out: Any) -> list[dict[str, Any]]:
    if name == "localize":
        return [{"first_epoch": iv.span.first_epoch, "last_epoch": iv.span.last_epoch,
                 "start_s": iv.span.start_s, "end_s": iv.span.end_s,
                 "start_clock": iv.span.start_clock, "end_clock": iv.span.end_clock,
                 "stage": iv.span.main_stage, "score": iv.score, "mean_score": iv.mean_score,
                 "peak_epoch": iv.peak_epoch, "unit": iv.unit} for iv in out.intervals]
    if name == "retrieve":
        return [h.model_dump() for h in out.hits]
    if name == "classify":
        return [s.model_dump() for s in out.scores]
    if name == "list_events":
        return [e.model_dump() for e in out.events]
    if name == "report_facts":
        return [{"section": k, "name": m.name, "label": m.label, "value": m.value,
                 "unit": m.unit, "epochs": m.evidence.epochs,
                 "event_ids": m.evidence.event_ids, "reason": m.reason}
                for k, ms in out.sections.items() for m in ms]
    if name == "caption":
        return ([{"kind": "generated", "epoch": g.epoch, "start_s": g.span.start_s,
                  "clock": g.span.start_clock, "text": g.text,
                  "withdrawn": "; ".join(g.withdrawn)} for g in out.generated]
                + [{"kind": f"fact-{c.level}", "system": c.system, "start_s": c.start,
                    "end_s": c.end, "text": c.text, "facts": c.facts} for c in out.facts])
    return []


def _wrap(name: str, schema: type[BaseModel], fn: Callable[[ToolContext, Any], Any],
          description: str) -> BaseTool:
    def _run(runtime: ToolRuntime[ToolContext], **kwargs: Any) -> tuple[str, ToolArtifact]:
        ctx = runtime.context
        if not isinstance(ctx, ToolContext):
            raise ToolException("the tools need a ToolContext as the runtime context "
                                "(agent.invoke(..., context=ToolContext(...)))")
        try:
            kwargs = {k: v.model_dump() if isinstance(v, BaseModel) else v
                      for k, v in kwargs.items()}
            out = fn(ctx, schema(**kwargs))
        except (SleepLMError, ValueError) as exc:
            raise ToolException(f"{type(exc).__name__}: {exc}") from exc
        figures = [out] if isinstance(out, FigureOutput) else []
        return out.summary(), ToolArtifact(tool=name, result=out, table=_rows(name, out),
                                           figures=figures)

    _run.__name__ = name
    _run.__doc__ = description
    # LangChain validates the call's arguments, the injected runtime included, against the
    # schema before it strips the runtime: a lenient copy of the input model lets it through;
    # the strict model validates again in _run.
    lenient = type(f"{schema.__name__}Args", (schema,),
                   {"model_config": ConfigDict(extra="ignore"), "__doc__": schema.__doc__})
    t = tool(name, args_schema=lenient, response_format="content_and_artifact",
             description=description)(_run)
    t.handle_tool_error = True
    return t


_SPECS: tuple[tuple[str, type[BaseModel], Callable[[ToolContext, Any], Any], str], ...] = (
    ("caption", CaptionInput, caption,
     "Describe an epoch, a time range or the whole night of the current patient in words, "
     "optionally for one system (brain, cardiac, respiration, somatic). Returns SleepLM's "
     "captions (model words) and the deterministic facts behind them (quotable numbers)."),
    ("localize", LocalizeInput, localize,
     "Find where in the current night something described in words happens (e.g. 'obstructive "
     "apnea', 'bursts of fast EEG', 'REM without atonia'). Returns intervals, best first, "
     "with score, stage and clock time; says so when the night lacks the needed signal or the "
     "evidence is weak."),
    ("retrieve", RetrieveInput, retrieve,
     "Find similar epochs or nights in the patient library, from a text, an epoch or interval "
     "of the current patient, or its whole night; filter by stage or profile."),
    ("classify", ClassifyInput, classify,
     "Probabilities of labels written in words (zero-shot) or learnt from example epochs "
     "(few-shot) for an epoch, a time range or the whole night of the current patient."),
    ("report_facts", FactsInput, report_facts,
     "Clinical numbers of the current night with units and evidence: sleep architecture, "
     "respiratory events (AHI), oximetry (ODI, T90, nadir), arousals, limb movements, heart "
     "rate. Sections the night cannot support are listed with the reason."),
    ("list_events", EventsInput, events_in_range,
     "Scored events of given types (e.g. obstructive_apnea, hypopnea, desaturation, arousal) "
     "in part of the current night, with onset, duration, clock time, epoch and stage."),
    ("plot_hypnogram", HypnogramInput, hypnogram_figure,
     "Draw the current night's hypnogram (PNG), optionally shading a part of the night."),
    ("plot_events", TimelineInput, event_timeline_figure,
     "Draw a timeline of scored events of the current night (PNG)."),
    ("plot_signals", SignalsInput, signals_figure,
     "Draw the raw signals around an epoch or time range of the current night, with the "
     "channels of a system or of a question (PNG)."),
)
#: Names of the tools :func:`make_tools` builds, in order.
TOOL_NAMES: tuple[str, ...] = tuple(s[0] for s in _SPECS)


def make_tools(names: list[str] | None = None) -> list[BaseTool]:
    """The LangChain tools (all, or those named), for ``create_agent(tools=...)``.

    Parameters
    ----------
    names : list of str, optional
        A subset of :data:`TOOL_NAMES`.

    Returns
    -------
    list of BaseTool
        Each expects a :class:`~tools.context.ToolContext` as the runtime context and answers
        ``(text, ToolArtifact)``.

    Raises
    ------
    KeyError
        An unknown tool name.
    """
    specs = {s[0]: s for s in _SPECS}
    chosen = list(TOOL_NAMES) if names is None else list(names)
    unknown = [n for n in chosen if n not in specs]
    if unknown:
        raise KeyError(f"unknown tool(s) {unknown}; known: {list(TOOL_NAMES)}")
    return [_wrap(*specs[n]) for n in chosen]

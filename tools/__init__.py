"""The assistant's tools: typed functions over the current patient, usable without an LLM.

Each tool is a plain function ``tool(ctx, request) -> output`` with pydantic input and output
models (every number with its unit and the epochs or times it came from), and a LangChain tool
built by :func:`tools.langchain_tools.make_tools` (imported lazily: plain use needs no
LangChain).

>>> from sleeplm.library.patients import PatientLibrary                      # doctest: +SKIP
>>> ctx = ToolContext(library=PatientLibrary("library/"), patient="sim-00012-osa_moderate")
>>> localize(ctx, LocalizeInput(query="obstructive apnea", limit=5)).summary()  # doctest: +SKIP
"""

from __future__ import annotations

from tools.caption import CaptionInput, CaptionOutput, caption
from tools.classify import ClassifyInput, ClassifyOutput, classify
from tools.common import Span, TimeSelection
from tools.context import ToolContext, index_library
from tools.errors import (
    EmptyQueryError,
    NoIndexError,
    NoPatientError,
    TimeRangeError,
    ToolError,
    UnknownEventTypeError,
    UnknownMeasureError,
)
from tools.facts import (
    EventsInput,
    EventsOutput,
    FactsInput,
    FactsOutput,
    events_in_range,
    report_facts,
    respiratory_summary,
    sleep_architecture,
)
from tools.figures import (
    FigureOutput,
    HypnogramInput,
    SignalsInput,
    TimelineInput,
    event_timeline_figure,
    hypnogram_figure,
    signals_figure,
)
from tools.localize import LocalizeInput, LocalizeOutput, epoch_margins, localize
from tools.retrieve import RetrieveInput, RetrieveOutput, retrieve

__all__ = [
    "CaptionInput", "CaptionOutput", "ClassifyInput", "ClassifyOutput", "EmptyQueryError",
    "EventsInput", "EventsOutput", "FactsInput", "FactsOutput", "FigureOutput", "HypnogramInput",
    "LocalizeInput", "LocalizeOutput", "NoIndexError", "NoPatientError", "RetrieveInput",
    "RetrieveOutput", "SignalsInput", "Span", "TimeRangeError", "TimeSelection",
    "TimelineInput", "ToolContext", "ToolError", "UnknownEventTypeError", "UnknownMeasureError",
    "caption",
    "classify", "epoch_margins", "event_timeline_figure", "events_in_range",
    "hypnogram_figure", "index_library", "localize", "make_tools", "report_facts",
    "respiratory_summary", "retrieve", "signals_figure", "sleep_architecture",
]


def make_tools(names: list[str] | None = None):
    """The LangChain tools (see :func:`tools.langchain_tools.make_tools`)."""
    from tools.langchain_tools import make_tools as _make

    return _make(names)

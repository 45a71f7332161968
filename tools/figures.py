"""Figures for the report and the chat: hypnogram, event timeline, raw signals around a time.

matplotlib with the Agg backend (no display); each figure is written as a PNG into the
patient's output folder (:meth:`tools.context.ToolContext.figures_dir`) and returned as bytes
too. Times on the axes are hours from the recording start with clock labels where known.
"""

from __future__ import annotations

import hashlib
import warnings as warnings_
import io
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.recording import STAGES
from tools.common import (
    SYSTEM_CHANNELS,
    Span,
    TimeSelection,
    clock_of,
    recording_start,
    requirements_for,
    resolve_selection,
)
from tools.context import ToolContext
from tools.facts import parse_event_types

__all__ = [
    "MAX_WINDOW_S",
    "TREND_CHANNELS",
    "STAGE_COLOURS",
    "FigureOutput",
    "HypnogramInput",
    "SignalsInput",
    "TimelineInput",
    "event_timeline_figure",
    "hypnogram_figure",
    "signals_figure",
]

#: Stage colours (AASM stages; UNS grey).
STAGE_COLOURS: dict[str, str] = {"W": "#f4a300", "N1": "#8fd3f4", "N2": "#3a86c8",
                                 "N3": "#1b3a6b", "R": "#d62839", "UNS": "#b0b0b0"}
#: SleepLM's measured real-EEG staging, said wherever its zero-shot stages are drawn.
MODEL_STAGING_REAL = ("SleepLM zero-shot stages are the model's reading, trained on simulated "
                      "nights only: on two real 30-min EEG excerpts its staging scored accuracy "
                      "0.12 and 0.55 (kappa -0.04 and 0.24; YASA 0.70, kappa 0.53 on the first)")
#: Longest raw-signal window drawn, seconds.
MAX_WINDOW_S = 600.0
#: Slow channels drawn as a trend over any window (SpO2 by its minimum, heart rate by its mean
#: and position by its value per bin), where raw signals are cut to :data:`MAX_WINDOW_S`.
TREND_CHANNELS: tuple[str, ...] = ("SPO2", "HR", "POSITION")
#: Bins of a trend plot (at most).
TREND_BINS = 4000
_EVENT_COLOURS = {"obstructive_apnea": "#d62839", "central_apnea": "#7b2cbf",
                  "mixed_apnea": "#9d4edd", "apnea": "#c9184a", "hypopnea": "#f77f00",
                  "desaturation": "#2a9d8f", "arousal": "#e9c46a", "limb_movement": "#6a994e",
                  "plm": "#386641"}


class FigureOutput(BaseModel):
    """A figure written to disk.

    Attributes
    ----------
    kind : str
        ``hypnogram``, ``event_timeline`` or ``signals``.
    path : pathlib.Path
        The PNG file.
    png : bytes
        The same PNG (left out of JSON dumps).
    title : str
    span : Span
        The part of the night drawn.
    channels : list of str
        Channels drawn (``signals``).
    warnings : list of str
    refusal : str or None
        Nothing could be drawn (e.g. none of the channels asked for exists).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: Literal["hypnogram", "event_timeline", "signals"]
    path: Path | None = None
    png: bytes = Field(default=b"", exclude=True, repr=False)
    title: str = ""
    span: Span | None = None
    channels: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    refusal: str | None = None

    def summary(self) -> str:
        """A short text for the LLM."""
        if self.refusal:
            return f"No {self.kind} figure: {self.refusal}"
        text = f"{self.title}: written to {self.path}"
        if self.channels:
            text += f" (channels {', '.join(self.channels)})"
        return "\n".join([text] + [f"Warning: {w}" for w in self.warnings])


class HypnogramInput(BaseModel):
    """Arguments of :func:`hypnogram_figure`.

    Attributes
    ----------
    highlight : TimeSelection or None
        A part of the night to shade (e.g. an interval found by localize).
    """

    model_config = ConfigDict(extra="forbid")

    highlight: TimeSelection | None = Field(default=None, description="part of the night to "
                                            "shade, e.g. an interval found by localize")
    model_reading: bool | None = Field(
        default=None, description="also draw SleepLM's zero-shot stage per epoch (the model's "
        "reading) under the hypnogram; default: when the stages are automatic or absent")


class TimelineInput(BaseModel):
    """Arguments of :func:`event_timeline_figure`.

    Attributes
    ----------
    types : list of str
        Event types (empty = all scored types).
    within : TimeSelection or None
        Part of the night (default: all).
    """

    model_config = ConfigDict(extra="forbid")

    types: list[str] = Field(default_factory=list, description="event types; empty = all")
    within: TimeSelection | None = Field(default=None, description="part of the night")


class SignalsInput(BaseModel):
    """Arguments of :func:`signals_figure`.

    Attributes
    ----------
    window : TimeSelection
        The epoch or interval to show.
    pad_s : float
        Seconds shown on either side.
    channels : list of str
        Canonical channels to draw; else chosen from ``system`` or ``query``, else all present.
    system : str or None
        brain, cardiac, respiration or somatic: that system's channels.
    query : str or None
        A question in words: the channels it needs (e.g. "desaturation" -> SpO2).
    """

    model_config = ConfigDict(extra="forbid")

    window: TimeSelection = Field(description="the epoch or interval to show")
    pad_s: float = Field(default=30.0, ge=0, le=300, description="seconds on either side")
    channels: list[str] = Field(default_factory=list, description="canonical channel names")
    system: Literal["brain", "cardiac", "respiration", "somatic"] | None = None
    query: str | None = Field(default=None, description="pick the channels this question needs")


def _save(ctx: ToolContext, fig: plt.Figure, name: str) -> tuple[Path, bytes]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = buf.getvalue()
    path = ctx.figures_dir() / name
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path, data


def _tag(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


def _hour_ticks(ax: plt.Axes, t0, s0: float, s1: float, unit: float) -> None:
    ticks = ax.get_xticks()
    ticks = [t for t in ticks if s0 / unit - 1e-9 <= t <= s1 / unit + 1e-9]
    if t0 is not None and ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([clock_of(t0, t * unit)[:5 if unit >= 60 else 8] for t in ticks],
                           fontsize=8)


def _model_stages(ctx: ToolContext, p) -> np.ndarray:
    """SleepLM's zero-shot stage of every epoch (argmax of the stage prompts' class vectors)."""
    from sleeplm.model import prompts as P
    from sleeplm.model.zeroshot import stage_scores

    classes = ctx.class_vectors(P.STAGE_PROMPTS, list(P.STAGES))
    return np.asarray(P.STAGES)[stage_scores(np.asarray(p.epoch_embeddings), classes).argmax(1)]


def _draw_stages(ax, x: np.ndarray, stages: np.ndarray, es: float, level: dict) -> None:
    y = np.array([level.get(str(s), 0) for s in stages])
    ax.step(np.r_[x, x[-1] + es / 3600.0], np.r_[y, y[-1]], where="post", color="#444", lw=0.8)
    for s in STAGES:
        m = np.asarray(stages).astype(str) == s
        if m.any():
            ax.bar(x[m], 0.8, width=es / 3600.0, bottom=y[m] - 0.4, align="edge",
                   color=STAGE_COLOURS[s], label=s, lw=0)


def hypnogram_figure(ctx: ToolContext, request: HypnogramInput | None = None) -> FigureOutput:
    """The current night's hypnogram, stages coloured (:data:`STAGE_COLOURS`), optionally with
    a part of the night shaded, and SleepLM's zero-shot stages under it as the model's reading
    (by default when the stages are automatic or absent; never in their place)."""
    from sklearn.metrics import cohen_kappa_score

    p = ctx.processed()
    sel = resolve_selection(p, None)
    hl = (resolve_selection(p, request.highlight) if request and request.highlight is not None
          else None)
    t0 = recording_start(p)
    order = ["UNS", "N3", "N2", "N1", "R", "W"]
    level = {s: i for i, s in enumerate(order)}
    es = float(p.meta.input_config.get("epoch_sec", 30.0))
    x = np.asarray(p.onsets_s, dtype=float) / 3600.0
    stages = np.asarray(p.stages).astype(str)
    automatic = (p.path / "auto_staging.json").is_file()
    scored = np.isin(stages, ("W", "N1", "N2", "N3", "R"))
    want = request.model_reading if request and request.model_reading is not None else (
        automatic or not scored.any())
    warnings: list[str] = []
    if want:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(10, 2.8))
    _draw_stages(ax, x, stages, es, level)
    if hl is not None:
        for a in (ax, ax2) if want else (ax,):
            a.axvspan(hl.span.start_s / 3600.0, hl.span.end_s / 3600.0, color="#ffe08a",
                      alpha=0.5, lw=0, zorder=0)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order)
    source = ("automatic staging (YASA), not scored by a person" if automatic else
              "scored" if scored.any() else "no stages (unscored; automatic staging could "
              "not run)")
    if want:
        lm = _model_stages(ctx, p)
        _draw_stages(ax2, x, lm, es, level)
        ax2.set_yticks(range(len(order)))
        ax2.set_yticklabels(order, fontsize=7)
        ax2.set_title("SleepLM zero-shot: the model's reading, not a scoring (trained on "
                      "simulated nights; on real EEG kappa -0.04 and 0.24)", fontsize=8)
        warnings.append(MODEL_STAGING_REAL)
        both = scored & np.isin(lm, ("W", "N1", "N2", "N3", "R"))
        if both.sum() >= 10:
            agree = float((lm[both] == stages[both]).mean())
            kappa = float(cohen_kappa_score(stages[both], lm[both]))
            warnings.append(f"SleepLM's reading agrees with the {source.split(',')[0]} on "
                            f"{agree:.0%} of {int(both.sum())} epochs (Cohen's kappa "
                            f"{kappa:.2f}); the {source.split(',')[0]} is what the numbers use")
        axis = ax2
    else:
        axis = ax
    axis.set_xlabel("clock time" if t0 else "hours from recording start")
    _hour_ticks(axis, t0, 0.0, float(x[-1] * 3600 + es), 3600.0)
    title = f"Hypnogram ({source}), {p.patient}" + (" (SIMULATED)" if p.study.simulated else "")
    if hl is not None:
        title += f", {hl.span.describe()} shaded"
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=6, fontsize=7, loc="upper right", frameon=False)
    fig.tight_layout()
    name = "hypnogram" + ("-model" if want else "")
    name += ".png" if hl is None else f"-{_tag(hl.span.first_epoch, hl.span.last_epoch)}.png"
    path, data = _save(ctx, fig, name)
    return FigureOutput(kind="hypnogram", path=path, png=data, title=title, span=sel.span,
                        warnings=warnings)


def event_timeline_figure(ctx: ToolContext, request: TimelineInput | None = None
                          ) -> FigureOutput:
    """Scored events on a time line (one row per type) above the hypnogram's stage band."""
    request = request or TimelineInput()
    p = ctx.processed()
    types = parse_event_types(request.types)
    sel = resolve_selection(p, request.within)
    rec = ctx.recording()
    t0 = recording_start(p)
    s0, s1 = sel.span.start_s, sel.span.end_s
    ev = rec.events_of(*types) if types else rec.events
    ev = ev[(ev["onset"] + ev["duration"] > s0) & (ev["onset"] < s1)]
    rows = list(dict.fromkeys(types or sorted(set(ev["type"]))))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * max(len(rows), 1)))
    es = float(p.meta.input_config.get("epoch_sec", 30.0))
    a, b = sel.span.first_epoch, sel.span.last_epoch
    for i in range(a, b + 1):
        ax.axvspan(p.onsets_s[i] / 60, (p.onsets_s[i] + es) / 60, ymin=0, ymax=0.08,
                   color=STAGE_COLOURS.get(str(p.stages[i]), "#b0b0b0"), lw=0)
    for r, t in enumerate(rows):
        e = ev[ev["type"] == t]
        ax.broken_barh(list(zip(e["onset"] / 60, np.maximum(e["duration"], 1.0) / 60)),
                       (r + 0.6, 0.8), color=_EVENT_COLOURS.get(t, "#555"))
    ax.set_yticks([r + 1 for r in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_ylim(0, len(rows) + 1)
    ax.set_xlim(s0 / 60, s1 / 60)
    ax.set_xlabel("clock time" if t0 else "minutes from recording start")
    _hour_ticks(ax, t0, s0, s1, 60.0)
    title = f"Scored events, {p.patient}, {sel.span.describe()}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    warnings = [] if len(ev) else ["no scored events of these types in this part of the night"]
    path, data = _save(ctx, fig, f"events-{_tag(types, a, b)}.png")
    return FigureOutput(kind="event_timeline", path=path, png=data, title=title, span=sel.span,
                        channels=[], warnings=warnings)


def _trend(t: np.ndarray, y: np.ndarray, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """``(t, y)`` in :data:`TREND_BINS` bins: the minimum of SpO2 (a desaturation's nadir
    survives), the mean of heart rate, the first value of position; NaN bins stay NaN."""
    n = y.size // TREND_BINS * TREND_BINS
    yb = np.asarray(y[:n], dtype=float).reshape(TREND_BINS, -1)
    tb = t[:n].reshape(TREND_BINS, -1)[:, 0]
    with np.errstate(all="ignore"), warnings_.catch_warnings():
        warnings_.simplefilter("ignore", RuntimeWarning)
        if channel == "SPO2":
            v = np.nanmin(yb, axis=1)
        elif channel == "HR":
            v = np.nanmean(yb, axis=1)
        else:
            v = yb[:, 0]
    return tb, v


def signals_figure(ctx: ToolContext, request: SignalsInput) -> FigureOutput:
    """Raw signals (native rates, physical units) around an epoch or interval; SpO2, heart
    rate and position alone as a trend over any window (:data:`TREND_CHANNELS`).

    Channels: ``request.channels``, else the ``system``'s, else those the ``query`` needs, else
    every channel the recording has. The interval is shaded; scored events in view are marked.
    Refused (``refusal``) when none of the wanted channels exists in the recording.
    """
    p = ctx.processed()
    sel = resolve_selection(p, request.window)
    rec = ctx.recording()
    t0 = recording_start(p)
    if request.channels:
        wanted = list(request.channels)
    elif request.system:
        wanted = list(SYSTEM_CHANNELS[request.system])
    elif request.query:
        wanted = [c for _, chans in requirements_for(request.query) for c in chans]
    else:
        wanted = []
    if not wanted:
        wanted = [c for c in rec.signals]
    chans = [c for c in dict.fromkeys(wanted) if c in rec.signals]
    out = FigureOutput(kind="signals", span=sel.span, title="")
    missing = [c for c in dict.fromkeys(wanted) if c not in rec.signals]
    if not chans:
        out.refusal = (f"the recording has none of the channels {', '.join(wanted)} "
                       f"(it has {', '.join(rec.signals) or 'none'})")
        return out
    if missing:
        out.warnings.append(f"not in this recording: {', '.join(missing)}")
    s0 = max(0.0, sel.span.start_s - request.pad_s)
    s1 = min(rec.duration, sel.span.end_s + request.pad_s)
    trend = s1 - s0 > MAX_WINDOW_S and all(c in TREND_CHANNELS for c in chans)
    if s1 - s0 > MAX_WINDOW_S and not trend:
        s1 = s0 + MAX_WINDOW_S
        out.warnings.append(f"window cut to {MAX_WINDOW_S:.0f} s from {s0:.0f} s (raw signals "
                            "are drawn 10 minutes at a time; SpO2, heart rate and position "
                            "alone are drawn as a trend over any part of the night)")
    elif trend:
        out.warnings.append(f"trend over {(s1 - s0) / 3600:.1f} h: SpO2 as its lowest value, "
                            "heart rate as its mean and position as its value per "
                            f"{(s1 - s0) / TREND_BINS:.0f}-s bin")
    chans = chans[:12]
    fig, axes = plt.subplots(len(chans), 1, figsize=(10, 0.9 + 1.0 * len(chans)), sharex=True,
                             squeeze=False)
    ev = rec.events[(rec.events["onset"] + rec.events["duration"] > s0)
                    & (rec.events["onset"] < s1)]
    for ax, c in zip(axes[:, 0], chans):
        sig = rec.signals[c]
        y = sig.segment(s0, s1)
        t = s0 + np.arange(y.size) / sig.sfreq
        if trend and y.size > TREND_BINS:
            t, y = _trend(t, y, c)
        ax.plot(t, y, lw=0.5, color="#222")
        ax.set_ylabel(f"{c}\n[{sig.unit}]", fontsize=7, rotation=0, ha="right", va="center")
        ax.axvspan(sel.span.start_s, sel.span.end_s, color="#ffe08a", alpha=0.35, lw=0)
        for _, e in ev.iterrows():
            ax.axvspan(e["onset"], e["onset"] + max(e["duration"], 0.5),
                       color=_EVENT_COLOURS.get(e["type"], "#999"), alpha=0.15, lw=0)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlim(s0, s1)
    axes[-1, 0].set_xlabel("clock time" if t0 else "seconds from recording start")
    _hour_ticks(axes[-1, 0], t0, s0, s1, 1.0)
    title = f"{p.patient}, {sel.span.describe()}"
    if len(ev):
        title += "; scored: " + ", ".join(sorted(set(ev["type"])))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path, data = _save(ctx, fig, f"signals-{_tag(chans, s0, s1)}.png")
    out.path, out.png, out.title, out.channels = path, data, title, chans
    return out

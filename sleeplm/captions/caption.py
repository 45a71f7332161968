"""Captions and the facts behind them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Caption", "CaptionClause", "EpochCaptions", "NightCaptions", "LEVELS", "SYSTEMS"]

LEVELS = ("epoch", "event", "segment", "night")
#: Physiological systems of targeted captions, plus the holistic one.
SYSTEMS = ("brain", "cardiac", "respiration", "somatic", "holistic")


class CaptionClause(BaseModel):
    """One clause of a caption as written (e.g. "an obstructive apnea scored") and the facts
    it states; the unit of the clause-level contrastive pairs in training."""

    model_config = ConfigDict(frozen=True)

    text: str
    facts: dict[str, Any] = Field(default_factory=dict)


class Caption(BaseModel):
    """One caption: text written from measurements, and those measurements.

    Attributes
    ----------
    level : str
        "epoch", "event", "segment" or "night".
    system : str
        "brain", "cardiac", "respiration", "somatic" or "holistic".
    text : str
        The caption.
    facts : dict
        The structured facts the text was written from (JSON-serialisable: numbers with their
        units in the key names, e.g. ``{"stage": "N2", "spindles": 3, "hr_bpm": 61.2}``).
    start, end : float
        The time span the caption describes, seconds from the recording start.
    clauses : list of CaptionClause
        The caption's clauses in the order written (epoch captions; empty for the others).
    """

    model_config = ConfigDict(frozen=True)

    level: Literal["epoch", "event", "segment", "night"]
    system: Literal["brain", "cardiac", "respiration", "somatic", "holistic"]
    text: str
    facts: dict[str, Any] = Field(default_factory=dict)
    start: float
    end: float
    clauses: list[CaptionClause] = Field(default_factory=list)


class EpochCaptions(BaseModel):
    """The captions of one 30-s epoch."""

    epoch: int
    stage: str
    captions: list[Caption]


class NightCaptions(BaseModel):
    """Every caption of a night, by level.

    ``missing`` names what could not be captioned and why (e.g. no EEG: no brain captions).
    """

    patient_id: str
    epochs: list[EpochCaptions]
    events: list[Caption] = Field(default_factory=list)
    segments: list[Caption] = Field(default_factory=list)
    night: list[Caption] = Field(default_factory=list)
    missing: dict[str, str] = Field(default_factory=dict)

"""Decision rules of a checkpoint's zero-shot scores, chosen on held-out validation nights.

SleepLM's zero-shot scores are margins in cosine units (:mod:`sleeplm.model.zeroshot`): how much
closer an epoch is to a query's prompts than to the query's absence. Turning margins into
events needs a rule: a margin above which an epoch counts, and how many quiet epochs may
separate two positive runs before they are two events rather than one. A rule is a property
of a checkpoint (another checkpoint's margins have another scale), so it lives next to the
weights as ``calibration.json``, written by ``python -m training.calibrate`` from the
corpus's **validation** split (never the test split), and read by the held-out evaluation
(:mod:`training.evaluate`) and the ``localize`` tool alike.

A checkpoint without ``calibration.json`` (or with one written for other weights) uses the
plain rule: margin > 0, only consecutive epochs form a run, one run is one event.

Nothing here is trained as a label: the rule's few numbers are chosen by a grid search of
event-level F1 (localisation) and of severity accuracy (the night-level event index) on the
validation nights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, Field

from sleeplm._logging import logger

__all__ = ["CALIBRATION_NAME", "GENERATIVE_PREFIX", "IntervalRule", "EventIndexRule", "Calibration",
           "weights_digest", "load_calibration", "save_calibration"]

CALIBRATION_NAME = "calibration.json"
#: Key prefix of the caption decoder's (generative) localisation rules: ``generative:<query>``.
GENERATIVE_PREFIX = "generative:"


class IntervalRule(BaseModel):
    """How one query's per-epoch margins become intervals."""

    threshold: float = Field(0.0, description="an epoch is positive when its margin is above "
                                              "this (cosine units)")
    max_gap: int = Field(0, ge=0, description="positive runs separated by at most this many "
                                              "epochs merge into one interval")


class EventIndexRule(IntervalRule):
    """How a night's respiratory-event margins become an event index (events per hour of
    sleep): intervals by the :class:`IntervalRule` part, and each interval counts
    ``max(1, round(epochs / epochs_per_event))`` events (a long run in a severe night holds
    back-to-back events; 0 counts every interval once)."""

    epochs_per_event: float = Field(0.0, ge=0.0, description="epochs one event spans on "
                                                             "average (0: one per interval)")


class Calibration(BaseModel):
    """A checkpoint's decision rules and where they were chosen."""

    weights_sha256: str | None = Field(None, description="digest of the model.safetensors "
                                                          "the rules were chosen for")
    corpus: str = ""
    split: str = "validation"
    n_nights: int = 0
    n_epochs: int = 0
    localisation: dict[str, IntervalRule] = Field(default_factory=dict)
    event_index: EventIndexRule = Field(default_factory=EventIndexRule)
    captions: dict[str, float] = Field(default_factory=dict, description=(
        "caption check (sleeplm.model.captioning): generative query -> margin threshold (nats) "
        "below which a greedy caption's mention of the query's event is withdrawn"))
    validation: dict = Field(default_factory=dict, description="figures on the calibration "
                                                               "nights, plain rule and chosen")

    def interval_rule(self, query: str) -> IntervalRule:
        """The rule of a known query (the plain rule when the query was not calibrated)."""
        return self.localisation.get(query, IntervalRule())

    @property
    def is_plain(self) -> bool:
        """True when no rule was chosen (margin > 0, consecutive epochs, one per run)."""
        return not self.localisation and self.event_index == EventIndexRule()


def weights_digest(checkpoint: str | os.PathLike) -> str | None:
    """SHA-256 of a checkpoint folder's ``model.safetensors`` (None when there is none)."""
    from sleeplm.model.network import WEIGHTS_NAME

    path = Path(checkpoint) / WEIGHTS_NAME
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_calibration(checkpoint: str | os.PathLike | None) -> Calibration:
    """The checkpoint's ``calibration.json``, or the plain rule when it has none.

    A file written for other weights (its ``weights_sha256`` differs from the folder's
    ``model.safetensors``) or one that does not parse is ignored with a warning: its numbers
    belong to another model's margins.
    """
    if checkpoint is None:
        return Calibration()
    path = Path(checkpoint) / CALIBRATION_NAME
    if not path.is_file():
        return Calibration()
    try:
        cal = Calibration.model_validate(json.loads(path.read_text()))
    except (ValueError, OSError) as exc:
        logger.warning("ignoring %s (%s): using the plain rule (margin > 0); rewrite it with "
                       "python -m training.calibrate", path, exc)
        return Calibration()
    digest = weights_digest(checkpoint)
    if cal.weights_sha256 and digest and cal.weights_sha256 != digest:
        logger.warning("ignoring %s: it was chosen for other weights (sha256 %s..., these are "
                       "%s...); using the plain rule; rerun python -m training.calibrate",
                       path, cal.weights_sha256[:12], digest[:12])
        return Calibration()
    return cal


def save_calibration(cal: Calibration, checkpoint: str | os.PathLike) -> Path:
    """Write ``calibration.json`` into the checkpoint folder (atomically); returns its path."""
    path = Path(checkpoint) / CALIBRATION_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(cal.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path

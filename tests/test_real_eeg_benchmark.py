"""benchmarks/real_eeg.py on files written the way Sleep-EDF Expanded ships them: a cassette
``SC4xx1E0-PSG.edf`` (100 Hz Fpz-Cz / Pz-Oz EEG and horizontal EOG, 1-Hz respiration, chin EMG
envelope, rectal temperature and event marker) with its ``SC4xx1Ex-Hypnogram.edf`` (EDF+
annotations "Sleep stage W/1/2/3/4/R/?", "Movement time"). The signals are simulated; the
benchmark itself is for the real files users download."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import edfio
import numpy as np
import pytest
from conftest import TINY_HYPNOGRAM

ROOT = Path(__file__).resolve().parents[1]
_R_AND_K = {"W": "Sleep stage W", "N1": "Sleep stage 1", "N2": "Sleep stage 2",
            "N3": "Sleep stage 3", "R": "Sleep stage R"}


def _bench():
    spec = importlib.util.spec_from_file_location("real_eeg", ROOT / "benchmarks" / "real_eeg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _at(signal, rate: float) -> np.ndarray:
    from scipy.signal import resample_poly

    frac = Fraction(rate / signal.sfreq).limit_denominator(1000)
    return resample_poly(np.asarray(signal.data, float), frac.numerator, frac.denominator)


def write_sleep_edf_pair(folder: Path, subject: str, seed: int) -> int:
    """Write the pair; return how many of its epochs are scored (W, N1, N2, N3 or R)."""
    from sleeplm.simulate import simulate_night

    rec = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="healthy_young", seed=seed,
                         patient_id=subject).recording
    secs = int(rec.duration)
    chans = [("EEG Fpz-Cz", "uV", 100, _at(rec.signals["EEG_F"], 100)),
             ("EEG Pz-Oz", "uV", 100, _at(rec.signals["EEG_O"], 100)),
             ("EOG horizontal", "uV", 100, _at(rec.signals["EOG_L"], 100)),
             ("Resp oro-nasal", "", 1, _at(rec.signals["AIRFLOW"], 1)),
             ("EMG submental", "uV", 1, np.abs(_at(rec.signals["EMG_CHIN"], 1)) + 1),
             ("Temp rectal", "DegC", 1, np.linspace(36.5, 36.9, secs)),
             ("Event marker", "", 1, np.zeros(secs))]
    signals = [edfio.EdfSignal(x[:secs * r], sampling_frequency=r, label=lab,
                               physical_dimension=unit,
                               physical_range=(float(x.min()) - 1, float(x.max()) + 1))
               for lab, unit, r, x in chans]
    edfio.Edf(signals, data_record_duration=1).write(folder / f"{subject}0-PSG.edf")
    stages = list(rec.stages)
    stages[5] = "UNS"  # a "Sleep stage ?" epoch: never scored
    ann = []
    for i, s in enumerate(stages):
        text = _R_AND_K.get(s, "Sleep stage ?")
        ann.append(edfio.EdfAnnotation(rec.stage_onset + 30 * i, 30, text))
    edfio.Edf([edfio.EdfSignal(np.zeros(secs), sampling_frequency=1, label="dummy")],
              annotations=ann).write(folder / f"{subject}C-Hypnogram.edf")
    return sum(s in _R_AND_K for s in stages)


@pytest.mark.slow
def test_benchmark_scores_sleeplm_and_yasa_on_the_same_epochs(tmp_path):
    data = tmp_path / "sleep-edf"
    data.mkdir()
    scored = {"SC4001E0-PSG": write_sleep_edf_pair(data, "SC4001E", seed=5),
              "SC4011E0-PSG": write_sleep_edf_pair(data, "SC4011E", seed=6)}
    bench = _bench()
    report = bench.run(data, tmp_path / "out", wake_margin_min=None)
    assert json.loads((tmp_path / "out" / "real_eeg.json").read_text()) == report
    assert sorted(report["nights"]) == ["SC4001E0-PSG", "SC4011E0-PSG"]
    for pid, row in report["nights"].items():
        n = row["epochs_scored"]
        assert n == scored[pid]  # the "?" epoch left out
        for name in ("sleeplm", "yasa"):
            m = row[name]
            assert m["n_epochs"] == n and 0 <= m["accuracy"] <= 1 and -1 <= m["kappa"] <= 1
            assert set(m["f1"]) == {"W", "N1", "N2", "N3", "R"}
        assert row["yasa"]["channels"].startswith("EEG EEG_F")  # Fpz-Cz; no 1-Hz EMG
        assert "EMG" not in row["yasa"]["channels"]
    pooled = report["pooled"]
    assert pooled["sleeplm"]["n_epochs"] == pooled["yasa"]["n_epochs"] == sum(scored.values())
    assert pooled["yasa_nights"] == 2
    text = bench.table(report)
    assert "pooled" in text and "SleepLM acc" in text and "trained on simulated" in text


def test_scored_epochs_and_metrics():
    bench = _bench()
    truth = np.array(["W"] * 70 + ["N2"] * 10 + ["UNS"] + ["R"] * 5 + ["W"] * 70)
    idx = bench.scored_epochs(truth, wake_margin_epochs=60)
    assert idx[0] == 10 and idx[-1] == 85 + 60 and 80 not in idx
    assert bench.scored_epochs(truth, None).size == truth.size - 1
    m = bench.metrics(["W", "N2", "R", "R"], ["W", "N2", "R", "N2"])
    assert m["accuracy"] == 0.75 and m["f1"]["W"] == 1.0 and set(m["f1"]) == {"W", "N2", "R"}
    assert bench.metrics([], []) == {"n_epochs": 0}


_DREAMS_CODE = {"W": 5, "R": 4, "N1": 3, "N2": 2, "N3": 1}


def write_dreams_excerpt(folder: Path, n: int, seed: int) -> dict:
    """Write a DREAMS Spindles excerpt as the database ships it: ``excerptN.edf`` (C3-A1 and
    CZ-A1 at 100 Hz), ``excerptN.txt`` (the signal as text, which must never be taken for a
    hypnogram), ``Hypnogram_excerptN.txt`` (``[hypnogram]``, one R&K code per 5 s, S4 and
    movement codes included) and two experts' ``Visual_scoringK_excerptN.txt``."""
    from sleeplm.simulate import simulate_night

    night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="healthy_young", seed=seed,
                           patient_id=f"excerpt{n}")
    rec = night.recording
    secs = int(rec.duration)
    c3 = _at(rec.signals["EEG_C3"], 100)[: secs * 100]
    cz = _at(rec.signals["EEG_C4"], 100)[: secs * 100]
    signals = [edfio.EdfSignal(x, sampling_frequency=100, label=lab, physical_dimension="uV",
                               physical_range=(float(x.min()) - 1, float(x.max()) + 1))
               for lab, x in (("C3-A1", c3), ("CZ-A1", cz))]
    edfio.Edf(signals, data_record_duration=1).write(folder / f"excerpt{n}.edf")
    (folder / f"excerpt{n}.txt").write_text("[C3-A1]\n" + "\n".join(f"{v:.2f}" for v in c3[:500]))
    codes = []
    for k, s in enumerate(rec.stages):
        code = _DREAMS_CODE[str(s)]
        block = [code] * 6
        if s == "N3" and k % 2:
            block = [0] * 6  # R&K S4 -> N3
        codes += block
    codes[6:12] = [-1, -1, -1, -1, 5, 5]  # a mostly-movement epoch -> unscored
    (folder / f"Hypnogram_excerpt{n}.txt").write_text(
        "[hypnogram]\n" + "\n".join(str(c) for c in codes) + "\n")
    sp = night.truth[night.truth["type"] == "spindle"]
    for k, rows in ((1, sp), (2, sp.iloc[::2])):
        (folder / f"Visual_scoring{k}_excerpt{n}.txt").write_text(
            f"[vis{k}_Spindles_excerpt{n}]\n"
            + "".join(f"{r.onset:.3f} {r.duration:.3f}\n" for r in rows.itertuples()))
    return {"epochs": len(rec.stages), "spindles": len(sp)}


def test_dreams_readers():
    import tempfile

    from sleeplm.errors import AnnotationError, UnknownStageError
    from sleeplm.io.annotations import find_annotation_file, read_annotations
    from sleeplm.io.dreams import read_dreams_events

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "excerpt1.edf").write_bytes(b"")
        (folder / "excerpt1.txt").write_text("[C3-A1]\n1.0\n2.0\n")
        hyp = folder / "Hypnogram_excerpt1.txt"
        hyp.write_text("[hypnogram]\n" + "\n".join(["5"] * 6 + ["2"] * 4 + ["3"] * 2 + ["0"] * 6
                                                   + ["4"] * 3 + ["-2"] * 3 + ["1"]) + "\n")
        assert find_annotation_file(folder / "excerpt1.edf") == hyp
        ann = read_annotations(hyp)
        assert ann.source == "dreams-hypnogram"
        assert ann.stages.tolist() == ["W", "N2", "N3", "R"]  # R vs unknown tie: the earlier
        assert "2 epoch(s) held more than one stage" in ann.notes[0]
        assert "the last 1 value(s)" in ann.notes[1]
        bad = folder / "bad.txt"
        bad.write_text("[hypnogram]\n5\n7\n")
        with pytest.raises(UnknownStageError, match="line 3.*code 7"):
            read_annotations(bad)
        vis = folder / "Visual_scoring1_excerpt1.txt"
        vis.write_text("[vis1_Spindles_excerpt1]\n10.5 0.8\n300.25 1.2\n")
        ev = read_dreams_events(vis)
        assert ev["onset"].tolist() == [10.5, 300.25] and set(ev["type"]) == {"spindle"}
        assert set(ev["label"]) == {"vis1_Spindles_excerpt1"}
        vis.write_text("[vis1]\n10.5\n")
        with pytest.raises(AnnotationError, match="line 2"):
            read_dreams_events(vis)


@pytest.mark.slow
def test_benchmark_on_dreams_excerpts(tmp_path):
    data = tmp_path / "dreams"
    data.mkdir()
    made = {f"excerpt{n}": write_dreams_excerpt(data, n, seed=10 + n) for n in (1, 2)}
    bench = _bench()
    report = bench.run(data, tmp_path / "out", wake_margin_min=None, dataset="dreams")
    assert sorted(report["nights"]) == ["excerpt1", "excerpt2"]
    for pid, row in report["nights"].items():
        assert row["epochs_scored"] == made[pid]["epochs"] - 1  # the movement epoch left out
        sp = row["spindles"]
        assert sp["eeg"] == "EEG_C3"
        for expert in ("expert1", "expert2"):
            every = sp[expert]["every_epoch"]
            assert every["recall"] == 1.0 and every["flagged"] == every["epochs"]
            assert every["truth_epochs"] > 0
            for method in ("sleeplm", "yasa"):
                m = sp[expert][method]
                assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
        # expert 2 marked every other spindle of expert 1: never more spindle epochs
        assert sp["expert2"]["every_epoch"]["truth_epochs"] <= \
            sp["expert1"]["every_epoch"]["truth_epochs"]
    pooled = report["pooled"]["spindles"]
    assert set(pooled) == {"expert1", "expert2"}
    assert pooled["expert1"]["yasa"]["f1"] > 0  # YASA finds the simulated spindles
    text = bench.table(report)
    assert "spindle epochs vs expert1" in text and "every_epoch" in text

"""Absent channels are never described or scored (issue: SleepLM on real EEG and EOG).

Recordings with one modality only (EEG-only, EOG-only, SpO2-only, HR-only), cut from a simulated
night and written to real EDF+ files, go through the patient library and the tools with the
shipped SleepLM checkpoint: no generated caption part that reaches the answer describes a
modality the file lacks (the parts withdrawn are listed), and classify / localize refuse what
the file cannot support (a sleep stage without EEG or EOG, spindles without EEG, eye movements
without EOG, desaturations without SpO2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_HYPNOGRAM

from sleeplm.captions.modalities import MODALITIES, modalities_of, withdraw_absent
from sleeplm.model.network import DEFAULT_CHECKPOINT

EEG = ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O")
SUBSETS = {
    "eeg_only": EEG,
    "eog_only": ("EOG_L", "EOG_R"),
    "spo2_only": ("SPO2",),
    "hr_only": ("HR",),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from sleeplm.io.edf_writer import write_edf
    from sleeplm.library.patients import PatientLibrary
    from sleeplm.recording import Recording
    from sleeplm.simulate import simulate_night

    root = tmp_path_factory.mktemp("absent")
    lib_dir = root / "lib"
    lib_dir.mkdir()
    night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="osa_moderate", seed=31,
                           patient_id="full")
    full = night.recording
    rows = []
    for name, keep in SUBSETS.items():
        signals = {k: s for k, s in full.signals.items() if k in keep}
        assert signals, f"the simulated night has none of {keep}"
        rec = Recording(signals=signals, stages=full.stages, events=full.events.copy(),
                        info=full.info.model_copy(update={"patient_id": name}),
                        stage_onset=full.stage_onset)
        write_edf(rec, lib_dir / f"{name}.edf", equipment="sleeplm-simulator")
        rows.append({"patient_id": name, "edf": f"{name}.edf", "annotations": ""})
    pd.DataFrame(rows).to_csv(lib_dir / "manifest.csv", index=False)
    return PatientLibrary(lib_dir, model_dir=Path(DEFAULT_CHECKPOINT)), root / "out"


def _ctx(env, patient: str):
    from tools import ToolContext

    lib, out = env
    return ToolContext(library=lib, patient=patient, output_dir=out)


def _present_modalities(channels) -> set[str]:
    have = set(channels)
    return {name for name, (_, chans) in MODALITIES.items() if have & set(chans)}


@pytest.mark.slow
@pytest.mark.parametrize("patient", sorted(SUBSETS))
def test_captions_never_describe_an_absent_modality(env, patient):
    from tools import CaptionInput, caption

    ctx = _ctx(env, patient)
    p = ctx.processed()
    present = [c for c, m in zip(p.channels, np.asarray(p.mask, bool)) if m]
    assert set(present) <= set(SUBSETS[patient])  # the model saw only this modality
    ok = _present_modalities(present)
    out = caption(ctx, CaptionInput(max_epochs=8))
    assert out.refusal is None and out.generated
    for g in out.generated:
        said = set(modalities_of(g.text))
        assert said <= ok, (patient, g.text, said - ok)
    withdrawn = [w for g in out.generated for w in g.withdrawn]
    # the checkpoint was trained on full PSG: it does describe what is not there, and those
    # parts are listed as withdrawn with the modality they needed
    assert any("which this recording does not have" in w for w in withdrawn), withdrawn
    assert "withdrawn:" in out.summary()


@pytest.mark.slow
@pytest.mark.parametrize("patient, labels, refused", [
    ("spo2_only", ["REM sleep", "N2 sleep"], True),
    ("hr_only", ["wake", "N3"], True),
    ("eog_only", ["REM sleep", "N2 sleep"], False),
    ("eeg_only", ["REM sleep", "N2 sleep"], False),
])
def test_classify_refuses_a_stage_without_eeg_or_eog(env, patient, labels, refused):
    from tools import ClassifyInput, classify

    out = classify(_ctx(env, patient), ClassifyInput(labels=labels))
    assert (out.refusal is not None) == refused, out.summary()
    if refused:
        assert "EEG or EOG" in out.refusal and not out.scores


@pytest.mark.slow
@pytest.mark.parametrize("patient, query", [
    ("eog_only", "sleep spindles"), ("eeg_only", "rapid eye movements"),
    ("hr_only", "desaturation"), ("spo2_only", "obstructive apnea"),
    ("hr_only", "REM periods"),
])
def test_localize_refuses_what_the_file_cannot_show(env, patient, query):
    from tools import LocalizeInput, localize

    out = localize(_ctx(env, patient), LocalizeInput(query=query))
    assert out.refusal is not None and not out.intervals, out.summary()
    assert "lacks what the question needs" in out.refusal


@pytest.mark.parametrize("present, text, kept, gone", [
    (EEG, "Stage N2 sleep; 1 spindle detected; SpO2 97% (min 96%); heart rate 65 bpm; slow eye "
          "movements on the EOG; no respiratory events.",
     "Stage N2 sleep; 1 spindle detected.", ["SpO2", "heart rate", "EOG", "respiratory"]),
    (("EOG_L", "EOG_R"), "REM sleep (R); rapid eye movements (4); low chin tone; 2 spindles.",
     "REM sleep (R); rapid eye movements (4).", ["chin", "spindles"]),
    (("SPO2",), "Stage N2 sleep. SpO2 97% (min 96%). Heart rate 65 bpm.", "SpO2 97% (min 96%).",
     ["Stage N2", "Heart rate"]),
    (("HR",), "wake (W), heart rate 80 bpm and a hypopnea", "Heart rate 80 bpm.",
     ["wake", "hypopnea"]),
])
def test_withdraw_absent_keeps_only_what_the_channels_support(present, text, kept, gone):
    new, withdrawn = withdraw_absent(text, present)
    assert new.lower() == kept.lower()
    assert len(withdrawn) == len(gone)
    for part, word in zip(withdrawn, gone):
        assert word.lower() in part.lower() and "does not have" in part


def test_withdraw_absent_changes_nothing_on_a_full_recording():
    text = "Stage N2 sleep; 1 spindle detected; SpO2 97%; heart rate 65 bpm; supine."
    every = [c for _, chans in MODALITIES.values() for c in chans]
    assert withdraw_absent(text, every) == (text, [])

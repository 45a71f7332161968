"""A study without a scored hypnogram is staged automatically by YASA's SleepStaging, labelled
as automatic everywhere, and every stage-dependent number and tool works on it; where YASA
cannot run (no EEG, EEG below 100 Hz) the reason is given and nothing is made up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_HYPNOGRAM

from sleeplm.clinical.staging import (
    PUBLISHED_ACCURACY,
    StagingUnavailable,
    apply_auto_staging,
    auto_stage,
)
from sleeplm.model.network import DEFAULT_CHECKPOINT
from sleeplm.recording import Recording, Signal


@pytest.fixture(scope="module")
def night():
    from sleeplm.simulate import simulate_night

    return simulate_night(hypnogram=TINY_HYPNOGRAM, profile="healthy_young", seed=3,
                          patient_id="unscored").recording


def _unscored(rec: Recording, keep=None) -> Recording:
    signals = {k: s for k, s in rec.signals.items() if keep is None or k in keep}
    return Recording(signals=signals, info=rec.info.model_copy())


def test_auto_stage_agrees_with_the_simulated_truth(night):
    staging = auto_stage(_unscored(night))
    assert staging.channels == {"EEG": "EEG_C4", "EOG": "EOG_L", "EMG": "EMG_CHIN"}
    n = min(len(staging.stages), len(night.stages))
    assert n >= len(night.stages) - 1
    agreement = float(np.mean(np.asarray(staging.stages[:n]) == night.stages[:n]))
    assert agreement > 0.8, agreement  # measured 0.96 on this night
    assert len(staging.confidence) == len(staging.stages)
    assert all(0 <= c <= 1 for c in staging.confidence)
    rec = apply_auto_staging(_unscored(night), staging)
    assert rec.n_epochs == len(staging.stages)
    assert "automatic staging by YASA SleepStaging" in rec.info.annotation_source
    assert "not scored by a person" in rec.notes[-1] and PUBLISHED_ACCURACY in rec.notes[-1]
    scored = apply_auto_staging(night, staging)  # scored stages are never replaced
    assert scored.stages is night.stages


def test_eeg_alone_is_enough(night):
    staging = auto_stage(_unscored(night, keep={"EEG_C3"}))
    assert staging.channels == {"EEG": "EEG_C3"}
    assert set(staging.stages) <= {"W", "N1", "N2", "N3", "R"}


@pytest.mark.parametrize("keep, rate, message", [
    ({"EOG_L", "SPO2"}, None, "needs an EEG channel"),
    ({"EEG_C4"}, 50.0, r"at 100 Hz or more; EEG_C4 is at \d+(\.\d+)? Hz"),
])
def test_staging_unavailable_says_why(night, keep, rate, message):
    rec = _unscored(night, keep=keep)
    if rate is not None:
        s = rec.signals["EEG_C4"]
        step = int(np.ceil(s.sfreq / rate))  # at or below 50 Hz
        rec.signals["EEG_C4"] = Signal(name=s.name, data=s.data[::step], sfreq=s.sfreq / step,
                                       unit=s.unit, label=s.label)
    with pytest.raises(StagingUnavailable, match=message):
        auto_stage(rec)


@pytest.fixture(scope="module")
def library(night, tmp_path_factory):
    from sleeplm.io.edf_writer import write_edf
    from sleeplm.library.patients import PatientLibrary

    folder = tmp_path_factory.mktemp("unscored_lib")
    rows = []
    for pid, keep in (("psg", None), ("eog_only", {"EOG_L", "EOG_R", "SPO2"})):
        rec = _unscored(night, keep=keep)
        rec.info = rec.info.model_copy(update={"patient_id": pid})
        write_edf(rec, folder / f"{pid}.edf", annotations=False, equipment="sleeplm-simulator")
        rows.append({"patient_id": pid, "edf": f"{pid}.edf", "annotations": ""})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return PatientLibrary(folder, model_dir=Path(DEFAULT_CHECKPOINT))


@pytest.mark.slow
def test_unscored_study_gets_automatic_stages_in_the_library_and_tools(library, tmp_path):
    from tools import ClassifyInput, ToolContext, classify, report_facts

    p = library.open("psg", progress=False)
    assert (p.path / "auto_staging.json").is_file()
    assert set(p.stages) <= {"W", "N1", "N2", "N3", "R"} and (p.stages != "W").any()
    assert "architecture" in p.facts.sections and "architecture" not in p.facts.unavailable
    assert any("automatic staging by YASA" in n for n in p.facts.notes)
    rec = p.recording()  # read again: the cached automatic stages, not a second staging
    assert list(rec.stages) == list(p.stages)[:rec.n_epochs]
    assert "not scored by a person" in rec.info.annotation_source
    ctx = ToolContext(library=library, patient="psg", output_dir=tmp_path)
    facts = report_facts(ctx)
    assert any("automatic staging" in n for n in facts.notes)
    tst = {m.name: m for ms in facts.sections.values() for m in ms}["tst_min"]
    assert tst.value is not None and tst.value > 0
    out = classify(ctx, ClassifyInput(labels=["REM sleep", "N2 sleep"]))
    assert out.refusal is None and out.scores  # SleepLM's reading, beside the automatic stages
    from assistant.app import patient_summary

    card = patient_summary(ctx).markdown()
    assert "| Sleep stages | automatic (YASA SleepStaging), not scored by a person |" in card
    from tools import HypnogramInput, hypnogram_figure
    from tools.figures import MODEL_STAGING_REAL

    fig = hypnogram_figure(ctx)  # automatic stages: SleepLM's reading drawn beside, labelled
    assert fig.path.name == "hypnogram-model.png" and fig.png.startswith(b"\x89PNG")
    assert "automatic staging (YASA), not scored by a person" in fig.title
    assert MODEL_STAGING_REAL in fig.warnings
    agree = next(w for w in fig.warnings if w.startswith("SleepLM's reading agrees"))
    assert "is what the numbers use" in agree
    plain = hypnogram_figure(ctx, HypnogramInput(model_reading=False))
    assert plain.path.name == "hypnogram.png" and not plain.warnings


@pytest.mark.slow
def test_unscored_study_without_eeg_says_so(library):
    p = library.open("eog_only", progress=False)
    assert not (p.path / "auto_staging.json").exists()
    assert (p.stages == "UNS").all()
    assert "architecture" in p.facts.unavailable
    assert any("no automatic staging: automatic staging needs an EEG channel" in n
               for n in p.facts.notes)
    from assistant.app import patient_summary
    from tools import ToolContext

    ctx = ToolContext(library=library, patient="eog_only")
    card = patient_summary(ctx).markdown()
    assert "| Sleep stages | none: unscored, and automatic staging could not run" in card
    from tools import hypnogram_figure

    fig = hypnogram_figure(ctx)  # no stages: only the model's reading, labelled as such
    assert "no stages" in fig.title and len(fig.warnings) == 1

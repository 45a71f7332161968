"""Transforms of what real recordings vary in, and the invariance benchmark that uses them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_HYPNOGRAM, tiny_checkpoint
from scipy import signal as sps

from sleeplm.simulate import simulate_night
from sleeplm.simulate.augment import BRAIN_CHANNELS, TRANSFORMS, apply_transform

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rec():
    return simulate_night(hypnogram=TINY_HYPNOGRAM, profile="healthy_young", seed=4,
                          patient_id="aug").recording


def _band(sig, lo, hi) -> float:
    f, p = sps.welch(np.nan_to_num(sig.data), fs=sig.sfreq, nperseg=int(4 * sig.sfreq))
    return float(p[(f >= lo) & (f < hi)].sum())


def test_every_transform_keeps_stages_events_and_other_channels(rec):
    for name in TRANSFORMS:
        out = apply_transform(rec, name, seed=1)
        assert out is not rec and out.stages is rec.stages and out.events is rec.events
        for ch in set(rec.signals) - set(BRAIN_CHANNELS):
            assert out.signals[ch] is rec.signals[ch], (name, ch)
        assert out.notes[-1].startswith("transformed:"), name
        assert len(rec.notes) == len(out.notes) - 1  # the input is left alone
        for ch, sig in out.signals.items():
            assert abs(sig.duration - rec.duration) < 1.0, (name, ch)


def test_transforms_do_what_they_say(rec):
    c3 = rec.signals["EEG_C3"]
    x2 = apply_transform(rec, "amplitude x2").signals["EEG_C3"]
    assert np.allclose(x2.data, 2 * c3.data)
    dc = apply_transform(rec, "DC offset 250 uV").signals["EEG_C3"]
    assert np.allclose(dc.data - c3.data, 250.0)
    r50 = apply_transform(rec, "50 Hz sampling").signals["EEG_C3"]
    assert r50.sfreq == 50.0 and abs(r50.data.size - c3.data.size * 50 / c3.sfreq) <= 1
    bp = apply_transform(rec, "band-pass 0.3-35 Hz").signals["EEG_C3"]
    assert _band(bp, 40, 60) < 0.2 * _band(c3, 40, 60)
    line = apply_transform(rec, "line noise 50 Hz 20 uV").signals["EEG_C3"]
    assert _band(line, 49, 51) > 10 * _band(c3, 49, 51)
    sweat = apply_transform(rec, "sweat 60 uV").signals["EEG_C3"]
    assert _band(sweat, 0.05, 0.5) > 2 * _band(c3, 0.05, 0.5)
    one = apply_transform(rec, "one derivation (C4)")
    assert [c for c in one.signals if c.startswith("EEG")] == ["EEG_C4"]
    fr = apply_transform(rec, "frontal as central")
    assert "EEG_F" not in fr.signals and "EEG_C3" not in fr.signals
    assert np.array_equal(fr.signals["EEG_C4"].data, rec.signals["EEG_F"].data)


def test_random_transforms_are_seeded(rec):
    a = apply_transform(rec, "movement bursts 20/h", seed=3).signals["EEG_C3"].data
    b = apply_transform(rec, "movement bursts 20/h", seed=3).signals["EEG_C3"].data
    c = apply_transform(rec, "movement bursts 20/h", seed=4).signals["EEG_C3"].data
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(KeyError, match="unknown transform"):
        apply_transform(rec, "gamma rays")


@pytest.mark.slow
def test_invariance_benchmark_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("invariance", ROOT / "benchmarks" / "invariance.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ck = tiny_checkpoint(tmp_path)
    report = bench.run(tmp_path / "out", ck, nights=1, hours=0.25, caption_every=5,
                       transforms=["amplitude x2", "one derivation (C4)"])
    rows = report["transforms"]
    assert list(rows) == ["none", "amplitude x2", "one derivation (C4)"]
    assert rows["none"]["agreement"] == 1.0 and rows["none"]["caption_clauses_kept"] == 1.0
    assert rows["none"]["epochs"] == 30 and rows["none"]["captions"] == 6
    # a per-recording input normalisation makes a pure gain change invisible to the model
    assert rows["amplitude x2"]["agreement"] == 1.0
    assert "| one derivation (C4) |" in bench.table(report)
    assert (tmp_path / "out" / "invariance.json").is_file()

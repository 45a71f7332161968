"""Model input (sleeplm.corpus.preprocess) and the pre-training corpus (sleeplm.corpus.build)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_HYPNOGRAM, write_tiny_library
from sleeplm.corpus.preprocess import DEFAULT_CHANNELS, ModelInputConfig, epoch_tensor
from sleeplm.simulate import simulate_night


HYP = TINY_HYPNOGRAM
#: (profile, seed, Sleep-EDF source): the first two share subject SC401.
PLAN = (("healthy_young", 11, "SC4011E0"), ("osa_moderate", 12, "SC4012E0"),
        ("healthy_young", 13, "SC4021E0"))


@pytest.fixture(scope="module")
def short_night():
    return simulate_night(hypnogram=HYP, profile="osa_moderate", seed=5)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return write_tiny_library(tmp_path_factory.mktemp("library"), PLAN)


# ------------------------------------------------------------------------------ preprocess
def test_config_json_roundtrip():
    cfg = ModelInputConfig(sfreq=32.0)
    assert ModelInputConfig.from_json(cfg.to_json()) == cfg
    assert ModelInputConfig().channels == DEFAULT_CHANNELS
    assert ModelInputConfig().samples_per_epoch == 1920
    with pytest.raises(ValueError):
        ModelInputConfig(channels=("EEG_C3", "EEG_C3"))


def test_epoch_tensor_shapes_and_normalisation(short_night):
    rec = short_night.recording
    mi = epoch_tensor(rec)
    C = len(DEFAULT_CHANNELS)
    assert mi.x.shape == (rec.n_epochs, C, 1920) and mi.x.dtype == np.float16
    assert mi.mask.dtype == bool and mi.mask.shape == (C,) and mi.mask.all()
    assert list(mi.stages) == list(rec.stages)
    assert np.allclose(mi.onsets, rec.stage_onset + 30.0 * np.arange(rec.n_epochs))
    assert np.isfinite(mi.x.astype(np.float32)).all() and np.abs(mi.x).max() <= 20
    for name in ("EEG_C3", "EOG_L", "THORAX", "EMG_CHIN"):
        v = mi.x[:, mi.channels.index(name)].astype(np.float32).ravel()
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        assert abs(med) < 0.05 and 1.2 < q3 - q1 < 1.5, name  # robust z-scores
    spo2 = mi.x[:, mi.channels.index("SPO2")].astype(np.float32)
    valid = mi.invalid[:, mi.channels.index("SPO2")] == 0
    assert np.all(np.abs(spo2[valid] * 10 + 90 - 93) < 12)  # back in %, plausible
    pos = mi.x[:, mi.channels.index("POSITION")].astype(np.float32)
    assert set(np.unique(pos)) <= {-1.0, 0.0, 1.0, 2.0, 3.0, 4.0}  # SleepLM's integer codes
    # the simulated night starts supine: SleepLM code 2 (0 right, 1 left, 2 supine, ...)
    assert pos[0, 0] == 2.0
    # EMG is an envelope: chin tone is lower in REM than in wake
    chin = mi.x[:, mi.channels.index("EMG_CHIN")].astype(np.float32).mean(axis=1)
    assert chin[mi.stages == "R"].mean() < chin[mi.stages == "W"].mean()


def test_epoch_tensor_missing_and_invalid(short_night):
    rec = short_night.recording
    signals = {k: v for k, v in rec.signals.items() if k != "ECG"}
    spo2 = signals["SPO2"]
    bad = spo2.data.copy()
    bad[100:160] = 0.0  # probe off
    signals["SPO2"] = replace(spo2, data=bad)
    flat = signals["THORAX"]
    signals["THORAX"] = replace(flat, data=np.zeros_like(flat.data))
    mi = epoch_tensor(replace(rec, signals=signals))
    base = epoch_tensor(rec)  # the simulator's own SpO2 drop-outs
    ecg, thx, sp = (mi.channels.index(n) for n in ("ECG", "THORAX", "SPO2"))
    assert not mi.mask[ecg] and not mi.x[:, ecg].any()
    assert not mi.mask[thx] and not mi.x[:, thx].any()
    assert mi.mask[sp]
    assert mi.invalid[3:5, sp].max() > 0.9  # seconds 100-160 are epochs 3-5
    assert np.all(mi.x[4, sp] == 0)
    assert np.array_equal(mi.invalid[6:, sp], base.invalid[6:, sp])
    assert any("ECG" in note for note in mi.notes)


def test_epoch_tensor_without_hypnogram(short_night):
    rec = replace(short_night.recording, stages=None)
    mi = epoch_tensor(rec, ModelInputConfig(channels=("EEG_C3", "HR"), sfreq=32))
    assert mi.x.shape == (int(rec.duration // 30), 2, 960)
    assert set(mi.stages) == {"UNS"}


# ------------------------------------------------------------------------------ corpus
def _shard_samples(folder: Path) -> dict[str, dict]:
    samples: dict[str, dict] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                assert m.mtime == 0 and m.uid == 0 and m.gid == 0
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                entry = samples.setdefault(key, {"shard": shard.name})
                if ext == "json":
                    entry["json"] = json.loads(data)
                else:
                    entry[ext] = np.load(io.BytesIO(data))
    return samples


def _digests(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for kind in ("epochs", "nights") for p in sorted((out / kind).glob("*.tar"))}


def test_build_corpus_end_to_end_and_resume(library: Path, tmp_path: Path):
    from sleeplm.corpus.build import build_corpus
    from sleeplm.io import read_recording

    (library / "x.edf").write_text("this is not an EDF file\n")  # a corrupt study
    out = tmp_path / "corpus"
    try:
        report = build_corpus(library, out, workers=2, shard_size=50, progress=False)
    finally:
        (library / "x.edf").unlink()
    assert report.nights == 3 and report.nights_failed == 1
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest.columns) >= {"night", "subject", "split", "epochs", "status"}
    failed = manifest[manifest["status"] != "ok"]
    assert list(failed["night"]) == ["x"] and "EDF" in failed["error"].iloc[0]
    ok = manifest[manifest["status"] == "ok"].set_index("night")
    # subject-wise split: SC4011E0 and SC4012E0 are one subject, so one side
    assert ok.loc["sim-00011-healthy_young", "subject"] == "SC401"
    assert ok.loc["sim-00012-osa_moderate", "subject"] == "SC401"
    assert manifest.groupby("subject")["split"].nunique().max() == 1

    samples = _shard_samples(out / "epochs")
    for night in ok.index:
        rec = read_recording(library / f"{night}.edf")
        keys = sorted(k for k in samples if k.startswith(night + "_e"))
        assert len(keys) == rec.n_epochs == ok.loc[night, "epochs"]
        for i, key in enumerate(keys):
            s = samples[key]
            meta = s["json"]
            assert meta["epoch"] == i and meta["stage"] == rec.stages[i]
            assert meta["split"] == ok.loc[night, "split"] and meta["night"] == night
            assert s["x.npy"].shape == (16, 1920) and s["x.npy"].dtype == np.float16
            assert len(meta["mask"]) == 16
            assert meta["onset_s"] == pytest.approx(rec.stage_onset + 30 * i)
        assert any(c["text"] for k in keys for c in samples[k]["json"]["captions"])
    nights = _shard_samples(out / "nights")
    assert set(nights) == set(ok.index)
    for night, v in nights.items():
        meta = v["json"]
        assert meta["night"] == night and len(meta["stages"]) == ok.loc[night, "epochs"]
        assert set(meta["captions"]) == {"night", "segments", "events"}
        assert meta["captions"]["night"] and meta["captions"]["segments"]
    assert report.captions_per_level_system and report.vocabulary > 0
    assert report.bytes_per_epoch > 16 * 1920 * 2
    assert json.loads((out / "report.json").read_text())["nights"] == 3

    # crash: one night's work tar and one shard are lost; the rerun rebuilds the same bytes
    before = _digests(out)
    work = out / "work"
    lost = "sim-00013-healthy_young"
    mtimes = {p.name: p.stat().st_mtime_ns for p in work.glob("*.tar")}
    (work / f"{lost}.tar").unlink()
    sorted((out / "epochs").glob("*.tar"))[0].unlink()
    report2 = build_corpus(library, out, workers=1, shard_size=50, progress=False)
    assert report2.nights == 3 and report2.nights_recomputed == 1
    assert _digests(out) == before
    for p in work.glob("*.tar"):
        if p.stem != lost:
            assert p.stat().st_mtime_ns == mtimes[p.name], p.name  # not recomputed
    assert not list(work.glob("*.tmp*"))


def test_build_corpus_from_manifest_and_list(library: Path, tmp_path: Path):
    from sleeplm.corpus.build import build_corpus

    rep = build_corpus(library / "manifest.csv", tmp_path / "a", shard_size=1000, progress=False)
    assert rep.nights == 3 and rep.nights_failed == 0
    assert len(list((tmp_path / "a" / "epochs").glob("*.tar"))) == len(rep.nights_per_split)
    one = sorted(library.glob("*.edf"))[:1]
    rep = build_corpus(one, tmp_path / "b", progress=False)
    assert rep.nights == 1


def test_corpus_settings_and_ray(tmp_path: Path):
    from sleeplm.corpus.build import build_corpus, split_of, subject_for

    assert subject_for(hypnogram_source="SC4012E0", patient_id="p1") == "SC401"
    assert subject_for(hypnogram_source="markov", patient_id="p1") == "p1"
    assert split_of("SC401") == split_of("SC401")
    splits = [split_of(f"s{i}") for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(ImportError, match="ray"):
            build_corpus([], tmp_path / "r", backend="ray", progress=False)
    os.makedirs(tmp_path / "c", exist_ok=True)
    build_corpus([], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        build_corpus([], tmp_path / "c", seed=1, progress=False)


def test_cli_build_corpus(library: Path, tmp_path: Path, capsys):
    from sleeplm.cli import main

    out = tmp_path / "cli"
    rc = main(["build-corpus", "--input", str(library / "manifest.csv"), "--out", str(out),
               "--workers", "1", "--shard-size", "200"])
    text = capsys.readouterr().out
    assert rc == 0 and "3 ok, 0 failed" in text and "KiB per epoch" in text
    assert (out / "report.json").exists() and (out / "manifest.csv").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.edf").write_text("junk")
    assert main(["build-corpus", "--input", str(bad), "--out", str(tmp_path / "cli2")]) == 1


def test_killed_build_resumes_to_identical_shards(library: Path, tmp_path: Path):
    """A real crash: the build process is killed after its first night; the rerun finishes the
    job and packs the same bytes as a build that was never interrupted."""
    import signal
    import subprocess
    import sys
    import time

    from sleeplm.corpus.build import build_corpus

    clean = tmp_path / "clean"
    build_corpus(library / "manifest.csv", clean, workers=1, shard_size=50, progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sleeplm.cli", "build-corpus", "--input",
                             str(library / "manifest.csv"), "--out", str(out), "--workers", "1",
                             "--shard-size", "50"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "work").glob("*.tar"))) >= 1:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the build finished before it could be killed"
    assert len(list((out / "work").glob("*.tar"))) < 3  # it really stopped midway
    report = build_corpus(library / "manifest.csv", out, workers=1, shard_size=50,
                          progress=False)
    assert report.nights == 3 and report.nights_failed == 0
    assert _digests(out) == _digests(clean)

"""sleeplm.library.patients: discovery, id validation, processing once, cache hits and invalidation.

Two short simulated nights (conftest.TINY_HYPNOGRAM, about an hour each) written as real EDF +
NSRR XML files, and an untrained tiny SleepLM at 16 Hz on conftest.TINY_CHANNELS.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CHANNELS, write_tiny_library
from sleeplm.clinical.summary import ClinicalSummary
from sleeplm.errors import RecordingFileError, SleepLMError
from sleeplm.library.patients import (
    DEFAULT_CACHE_NAME, InvalidPatientIdError, PatientLibrary, PatientProcessingError,
    UnknownPatientError, embed_epochs, patient_id_from_name, validate_patient_id,
)
from sleeplm.model.network import SleepLM, SleepLMConfig, save_model

PLAN = (("healthy_young", 11, "SC4011E0"), ("osa_moderate", 12, "SC4031E0"))
IDS = ["sim-00011-healthy_young", "sim-00012-osa_moderate"]
HOSTILE = ["../x", "a/b", "", ".hidden", "x" * 200, "nul\x00", "..", "a\\b", "a..b", "tab\tid",
           "con", "x y", "trailing_", "ünï"]


def _checkpoint(folder: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    cfg = SleepLMConfig.tiny(channels=TINY_CHANNELS, sfreq=16, **overrides)
    return save_model(SleepLM(cfg), folder, tokenizer_path=None)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_tiny_library(tmp_path_factory.mktemp("library_src"), PLAN)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("library_ck"))


@pytest.fixture
def lib_copy(source, tmp_path) -> Path:
    """A private copy of the library, for tests that change or break its files."""
    return Path(shutil.copytree(source, tmp_path / "lib"))


@pytest.fixture(scope="module")
def processed(source, checkpoint, tmp_path_factory):
    """The first patient opened once (processed), with its cache folder and timing."""
    cache = tmp_path_factory.mktemp("library_cache")
    lib = PatientLibrary(source, model_dir=checkpoint, cache_dir=cache)
    t = time.perf_counter()
    p = lib.open(IDS[0], progress=False)
    return p, cache, time.perf_counter() - t


def _key_dirs(cache: Path, pid: str) -> list[Path]:
    folder = cache / pid
    return sorted(d for d in folder.iterdir() if d.is_dir()) if folder.exists() else []


# ------------------------------------------------------------------------------- discovery


def test_discovery_from_manifest(source, checkpoint):
    lib = PatientLibrary(source, model_dir=checkpoint)
    assert lib.patients() == IDS and len(lib) == 2 and IDS[0] in lib and "nope" not in lib
    st = lib.study(IDS[1])
    assert st.patient == IDS[1] and st.profile == "osa_moderate" and st.simulated is True
    assert st.signal_path == source / f"{IDS[1]}.edf"
    assert st.annotation_path == source / f"{IDS[1]}-nsrr.xml"
    assert lib.cache_dir == source / DEFAULT_CACHE_NAME and not lib.skipped


def test_discovery_by_scan_without_manifest(lib_copy, checkpoint):
    (lib_copy / "manifest.csv").unlink()
    sub = lib_copy / "site b"
    sub.mkdir()
    shutil.copy(lib_copy / f"{IDS[0]}.edf", sub / "night..1.edf")
    (lib_copy / ".hidden").mkdir()
    shutil.copy(lib_copy / f"{IDS[0]}.edf", lib_copy / ".hidden" / "ignored.edf")
    lib = PatientLibrary(lib_copy, model_dir=checkpoint)
    assert lib.patients() == sorted(IDS + ["site_b_night.1"])
    st = lib.study(IDS[0])
    assert st.annotation_path is not None and st.annotation_path.name.endswith("-nsrr.xml")
    assert st.profile == "" and st.simulated is None
    assert lib.study("site_b_night.1").annotation_path is None
    for pid in lib.patients():
        assert validate_patient_id(pid) == pid


def test_manifest_rows_outside_or_invalid_are_skipped(lib_copy, checkpoint):
    text = (lib_copy / "manifest.csv").read_text()
    (lib_copy.parent / "outside.edf").write_bytes(b"0")
    rows = [text.rstrip("\n"),
            "evil,x,,,,,,../outside.edf,,ok",
            "../up,x,,,,,,sim-00011-healthy_young.edf,,ok",
            "failed-one,x,,,,,,,,failed: boom"]
    (lib_copy / "manifest.csv").write_text("\n".join(rows) + "\n")
    lib = PatientLibrary(lib_copy, model_dir=checkpoint)
    assert lib.patients() == IDS
    assert "outside" in lib.skipped["evil"] and "failed-one" in lib.skipped
    assert "path separator" in lib.skipped["row 5"]
    with pytest.raises(UnknownPatientError, match="left out: signal file '../outside.edf'"):
        lib.open("evil", progress=False)


# ------------------------------------------------------------------------------ patient ids


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_are_refused(bad, source, checkpoint, tmp_path):
    lib = PatientLibrary(source, model_dir=checkpoint, cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidPatientIdError) as info:
        lib.open(bad, progress=False)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SleepLMError)
    with pytest.raises(InvalidPatientIdError):
        lib.study(bad)
    assert not (tmp_path / "cache").exists()  # refused before anything is hashed or written


def test_valid_ids_and_ids_from_names():
    for ok in ["sim-00011-healthy_young", "SC4001E0-PSG", "p1", "a.b", "x" * 64]:
        assert validate_patient_id(ok) == ok
    with pytest.raises(InvalidPatientIdError):
        validate_patient_id(None)  # type: ignore[arg-type]
    for name in ["../../etc/passwd", "night 1", "..a..b..", "CON", "é" * 100, ""]:
        assert validate_patient_id(patient_id_from_name(name))


def test_unknown_patient_lists_close_matches(source, checkpoint):
    lib = PatientLibrary(source, model_dir=checkpoint)
    with pytest.raises(UnknownPatientError) as info:
        lib.study("sim-00011-healthy_yung")
    msg = str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, LookupError)
    assert "2 patients" in msg and IDS[0] in msg and not msg.startswith("'")
    with pytest.raises(UnknownPatientError, match="no close match"):
        lib.open("zzz", progress=False)


# --------------------------------------------------------------------- processing and cache


def test_first_open_processes_and_caches(processed, source):
    p, cache, _ = processed
    assert not p.from_cache and p.patient == IDS[0] and p.study.simulated is True
    n, C, T = p.x.shape
    assert (C, T) == (len(TINY_CHANNELS), 16 * 30) and p.x.dtype == np.float16
    assert isinstance(p.x, np.memmap) and not p.x.flags.writeable
    assert n == len(p.stages) == len(p.onsets_s) == len(p.epoch_embeddings) > 60
    assert p.mask.dtype == bool and p.mask.all() and p.invalid.shape == (n, C)
    assert set(p.stages) <= {"W", "N1", "N2", "N3", "R", "UNS"}
    assert np.allclose(np.diff(p.onsets_s), 30.0)
    assert p.epoch_embeddings.dtype == np.float32 and p.epoch_embeddings.shape[1] == 16
    assert np.allclose(np.linalg.norm(p.epoch_embeddings, axis=1), 1, atol=1e-4)
    assert np.isclose(np.linalg.norm(p.night_embedding), 1, atol=1e-5)
    mean = p.epoch_embeddings.mean(0)
    assert np.allclose(p.night_embedding, mean / np.linalg.norm(mean), atol=1e-6)
    assert isinstance(p.facts, ClinicalSummary) and p.facts.sections
    assert set(p.timings) == {"read", "clinical", "tensor", "embed", "write"}
    assert len(p.model_version) == 64 and p.meta.simulated is True
    assert p.path.parent == cache / IDS[0] and (p.path / "meta.json").is_file()
    assert p.captions_dir == p.path / "captions" and p.captions_dir.is_dir()
    meta = json.loads((p.path / "meta.json").read_text())
    assert meta["key"].startswith(p.path.name) and meta["n_epochs"] == n
    assert not list((cache / IDS[0]).glob(".tmp-*"))
    # the library's files are untouched, and only the opened patient was processed
    assert not (source / DEFAULT_CACHE_NAME).exists() and not (cache / IDS[1]).exists()


def test_reopen_loads_from_cache_without_model_or_reader(processed, source, checkpoint,
                                                         monkeypatch, capsys):
    p1, cache, first_s = processed

    def boom(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(SleepLM, "encode_signal", boom)
    monkeypatch.setattr("sleeplm.model.network.load_model", boom)
    monkeypatch.setattr("sleeplm.io.reader.read_recording", boom)
    monkeypatch.setattr("sleeplm.clinical.summary.clinical_summary", boom)
    t = time.perf_counter()
    lib = PatientLibrary(source, model_dir=checkpoint, cache_dir=cache)
    p2 = lib.open(IDS[0], progress=False)
    reopen_s = time.perf_counter() - t
    assert p2.from_cache and p2.path == p1.path and reopen_s < 1.0
    assert np.array_equal(p2.epoch_embeddings, p1.epoch_embeddings)
    assert np.array_equal(p2.night_embedding, p1.night_embedding)
    assert np.array_equal(p2.x, p1.x) and np.array_equal(p2.stages, p1.stages)
    assert p2.facts == p1.facts and p2.timings == p1.timings and lib.is_cached(IDS[0])
    with capsys.disabled():
        print(f"\n[library] first open (process) {first_s:.2f} s "
              f"({', '.join(f'{k} {v:.2f}' for k, v in p1.timings.items())}); "
              f"cached reopen in a new PatientLibrary {reopen_s * 1000:.0f} ms")


def test_content_hashes_are_remembered_by_file_stats(processed, source, checkpoint,
                                                      monkeypatch):
    _, cache, _ = processed
    monkeypatch.setattr("sleeplm.library.patients.RACY_SECONDS", 0.0)  # files were written just now
    assert PatientLibrary(source, model_dir=checkpoint, cache_dir=cache).open(
        IDS[0], progress=False).from_cache
    assert (cache / "hashes.json").is_file()

    def no_hashing(*a, **k):
        raise AssertionError("hashed again although size, inode and times are unchanged")

    monkeypatch.setattr("sleeplm.library.patients.file_sha256", no_hashing)
    p = PatientLibrary(source, model_dir=checkpoint, cache_dir=cache).open(IDS[0],
                                                                            progress=False)
    assert p.from_cache
    with pytest.raises(AssertionError, match="hashed again"):  # opted out: always hashes
        PatientLibrary(source, model_dir=checkpoint, cache_dir=cache,
                       trust_file_stats=False).open(IDS[0], progress=False)


def test_recording_is_read_lazily_once(processed, monkeypatch):
    p, _, _ = processed
    rec = p.recording()
    assert rec.n_epochs == p.n_epochs and "EEG_C3" in rec
    monkeypatch.setattr("sleeplm.io.reader.read_recording",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("read twice")))
    assert p.recording() is rec


def test_changed_edf_reprocesses_and_removes_old_key(lib_copy, checkpoint, tmp_path):
    cache = tmp_path / "cache"
    lib = PatientLibrary(lib_copy, model_dir=checkpoint, cache_dir=cache)
    first = lib.open(IDS[1], progress=False)
    edf = lib_copy / f"{IDS[1]}.edf"
    os.utime(edf)  # touched, same bytes: same content hash, still cached
    again = PatientLibrary(lib_copy, model_dir=checkpoint, cache_dir=cache).open(IDS[1],
                                                                                  progress=False)
    assert again.from_cache and again.path == first.path
    data = bytearray(edf.read_bytes())
    data[-100] ^= 0x01  # one bit of one sample
    edf.write_bytes(bytes(data))
    lib2 = PatientLibrary(lib_copy, model_dir=checkpoint, cache_dir=cache)
    changed = lib2.open(IDS[1], progress=False)
    assert not changed.from_cache and changed.path != first.path
    assert changed.meta.signal_sha256 != first.meta.signal_sha256
    assert _key_dirs(cache, IDS[1]) == [changed.path]
    # annotation edits count too
    xml = lib_copy / f"{IDS[1]}-nsrr.xml"
    xml.write_text(xml.read_text() + "\n")
    assert PatientLibrary(lib_copy, model_dir=checkpoint, cache_dir=cache).cache_key(IDS[1]) \
        != changed.meta.key


def test_changed_model_reprocesses(source, tmp_path):
    ck = _checkpoint(tmp_path / "ck", seed=0)
    cache = tmp_path / "cache"
    first = PatientLibrary(source, model_dir=ck, cache_dir=cache).open(IDS[0], progress=False)
    _checkpoint(ck, seed=1)  # new weights, same config
    lib = PatientLibrary(source, model_dir=ck, cache_dir=cache)
    assert lib.model_version != first.model_version
    second = lib.open(IDS[0], progress=False)
    assert not second.from_cache and second.path != first.path
    assert not np.allclose(second.epoch_embeddings, first.epoch_embeddings)
    assert _key_dirs(cache, IDS[0]) == [second.path]


def test_half_written_or_foreign_cache_is_not_used(source, checkpoint, tmp_path):
    cache = tmp_path / "cache"
    lib = PatientLibrary(source, model_dir=checkpoint, cache_dir=cache)
    target = lib.cache_path(IDS[0])
    target.mkdir(parents=True)
    (target / "x.npy").write_bytes(b"garbage")  # no meta.json: never complete
    stale = cache / IDS[0] / ".tmp-deadbeef-1-0"
    stale.mkdir()
    p = lib.open(IDS[0], progress=False)
    assert not p.from_cache and p.path == target and p.x.shape[0] > 0
    (target / "epoch_embeddings.npy").unlink()  # damaged later: processed again
    q = PatientLibrary(source, model_dir=checkpoint, cache_dir=cache).open(IDS[0],
                                                                            progress=False)
    assert not q.from_cache and np.array_equal(q.epoch_embeddings, p.epoch_embeddings)
    assert stale.exists()  # a recent temporary folder may be another writer's: kept


def test_crash_while_processing_leaves_nothing(source, checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    lib = PatientLibrary(source, model_dir=checkpoint, cache_dir=cache)

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr("sleeplm.library.patients.np.save", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        lib.open(IDS[0], progress=False)
    assert _key_dirs(cache, IDS[0]) == [] and not list((cache / IDS[0]).iterdir())
    assert not lib.is_cached(IDS[0])


def test_truncated_edf_raises_with_patient_and_caches_nothing(lib_copy, checkpoint, tmp_path):
    edf = lib_copy / f"{IDS[0]}.edf"
    data = edf.read_bytes()
    edf.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    lib = PatientLibrary(lib_copy, model_dir=checkpoint, cache_dir=cache)
    with pytest.raises(RecordingFileError) as info:
        lib.open(IDS[0], progress=False)
    assert type(info.value).__name__ == "TruncatedFileError"
    assert f"patient '{IDS[0]}'" in str(info.value) and info.value.__cause__ is not None
    assert _key_dirs(cache, IDS[0]) == []
    edf.write_bytes(b"not an edf at all")
    with pytest.raises(RecordingFileError, match=IDS[0]):
        PatientLibrary(lib_copy, model_dir=checkpoint, cache_dir=cache).open(IDS[0],
                                                                              progress=False)
    assert _key_dirs(cache, IDS[0]) == []


def test_missing_checkpoint_is_a_clear_error(source, tmp_path):
    lib = PatientLibrary(source, model_dir=tmp_path / "nowhere", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not a SleepLM checkpoint"):
        lib.open(IDS[0], progress=False)
    with pytest.raises(FileNotFoundError):
        PatientLibrary(tmp_path / "no-library")


def test_context_epochs_model(source, tmp_path):
    ck = _checkpoint(tmp_path / "ck", context_epochs=1)
    lib = PatientLibrary(source, model_dir=ck, cache_dir=tmp_path / "cache")
    p = lib.open(IDS[1], progress=False)
    assert p.meta.context_epochs == 1 and p.epoch_embeddings.shape == (p.n_epochs, 16)
    assert np.isfinite(p.epoch_embeddings).all()
    # epoch 0 by hand: its left neighbour lies before the night, zeros with every channel masked
    x = torch.from_numpy(np.asarray(p.x[:2], dtype=np.float32))
    window = torch.cat([torch.zeros_like(x[:1]), x])[None]  # [1, 3, C, T]
    m = torch.from_numpy(p.mask)[None, None].repeat(1, 3, 1)
    m[:, 0] = False
    with torch.inference_mode():
        e0 = lib.model.encode_signal(window, m)[0][0].numpy()
    assert np.allclose(e0, p.epoch_embeddings[0], atol=1e-5)
    # batching does not change anything (windows cross batch edges)
    small = embed_epochs(lib.model, p.x, p.mask, batch_size=7)
    assert np.allclose(small, p.epoch_embeddings, atol=1e-5)


def test_processing_error_type_exists():
    assert issubclass(PatientProcessingError, SleepLMError)


def test_checkpoint_file_names_match_the_model_module():
    from sleeplm.library import patients
    from sleeplm.model import network

    assert (patients._CONFIG_NAME, patients._WEIGHTS_NAME) == (network.CONFIG_NAME,
                                                                network.WEIGHTS_NAME)

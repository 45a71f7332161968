"""assistant.app: the Gradio app driven through gradio_client on loopback.

A tiny simulated library (one short night) with an untrained tiny SleepLM and the offline
planner; the app is launched with ``prevent_thread_lock=True`` on 127.0.0.1 and a free port.
The client picks a patient, asks, gets an answer with tool-call steps, drafts a report and
receives its files; bad uploads (a text file renamed .edf, a file over the limit, an EDF with
no usable channel, a patient id with ``../``) each give a readable message and the app keeps
answering afterwards.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import (
    TINY_HYPNOGRAM,
    tiny_checkpoint,
    write_mixed_rate_edf,
    write_tiny_library,
)

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file

from assistant.agent import Assistant
from assistant.app import (
    UploadError,
    check_signal_file,
    patient_summary,
    serve,
)
from assistant.config import AssistantConfig
from assistant.planner import OfflinePlanner
from sleeplm.library.patients import PatientLibrary

PLAN = (("osa_moderate", 51, "SC4031E0"),)
OSA = "sim-00051-osa_moderate"
KEY = f"library:{OSA}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_library(root: Path) -> PatientLibrary:
    """One short simulated night and an untrained tiny SleepLM (with its tokenizer)."""
    lib_dir = root / "lib"
    lib_dir.mkdir()
    write_tiny_library(lib_dir, PLAN)
    ck = tiny_checkpoint(root)
    return PatientLibrary(lib_dir, model_dir=ck)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    library = tiny_library(root)
    config = AssistantConfig.load(env={}, state_dir=root / "state")
    bot = Assistant(config, library=library, index=None, chat_model=OfflinePlanner())
    limit_mb = 1.2 * (root / "lib" / f"{OSA}.edf").stat().st_size / 1e6  # a tiny limit
    app, url = serve(bot, host="127.0.0.1", port=free_port(), prevent_thread_lock=True,
                     quiet=True, max_upload_mb=limit_mb)
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    yield SimpleNamespace(client=client, bot=bot, root=root, limit_mb=limit_mb)
    client.close()
    app.close()
    bot.close()


def text(message: dict) -> str:
    """The text of a chat message (Gradio 6 sends content as a list of typed parts)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def test_patient_question_and_report(running):
    client, bot, _root = running.client, running.bot, running.root
    card, chat, status = client.predict(KEY, api_name="/select_patient")
    assert OSA in card and "SIMULATED" in card
    facts = patient_summary(bot.context(OSA))
    for label in ("TST", "Sleep efficiency", "AHI (3 %/arousal)", "ODI (3 %)"):
        assert f"| {label} | {facts.values[label]} |" in card
    assert "SPO2" in card and chat == []

    chat, box, _figure, _overview, report_view, report_files, status = client.predict(
        "What is the AHI?", KEY, api_name="/ask")
    assert status == "" and box == ""
    assert chat[0]["role"] == "user" and text(chat[0]) == "What is the AHI?"
    steps = [m for m in chat if m.get("metadata") and m["metadata"].get("title")]
    assert steps, "the answer shows its tool calls"
    assert all(s["metadata"]["status"] == "done" for s in steps)
    assert any("report_facts" in s["metadata"]["title"] for s in steps)
    assert all("arguments" in text(s) and "result" in text(s) for s in steps)
    answer = text(chat[-1])
    ahi = next(m for ms in bot.context(OSA).processed().facts.sections.values() for m in ms
           if m.name == "ahi_3a")
    assert ahi.format().split()[0] in answer

    chat, _, _, _, report_view, report_files, status = client.predict(
        "", KEY, api_name="/draft_report")
    assert status == ""
    assert any("draft_report" in (m.get("metadata") or {}).get("title", "") for m in chat)
    assert "SIMULATED" in report_view and "medical device" in report_view.lower()
    suffixes = sorted(Path(f).suffix for f in report_files)
    assert suffixes == [".html", ".json", ".md", ".pdf"]
    assert all(Path(f).stat().st_size > 0 for f in report_files)
    assert Path(next(f for f in report_files if f.endswith(".pdf"))).read_bytes()[:5] == b"%PDF-"


def test_revise_the_report_through_the_chat(running):
    client = running.client
    client.predict(KEY, api_name="/select_patient")
    client.predict("", KEY, api_name="/draft_report")
    chat, _, _, _, revised, files, status = client.predict(
        "shorten the impression", KEY, api_name="/revise_report")
    steps = [m for m in chat if "revise_report" in (m.get("metadata") or {}).get("title", "")]
    assert status == "" and steps and "failed" not in steps[-1]["metadata"]["title"], text(steps[-1])
    assert "SIMULATED" in revised and len(files) == 4


def test_plots_localize_and_signals(running):
    client, bot, _root = running.client, running.bot, running.root
    client.predict(KEY, api_name="/select_patient")
    overview, _event, signals, note, found = client.predict(KEY, api_name="/load_plots")
    assert Path(overview).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert signals is None
    shaded, found = client.predict("obstructive apnea", KEY, api_name="/localize")
    assert Path(shaded).read_bytes()[:4] == b"\x89PNG" and found
    if "interval(s)" in found:  # the intervals found are shaded: another picture
        assert Path(shaded).name != Path(overview).name
    ev = bot.context(OSA).recording().events
    first = str(int(ev.index[ev["type"] == "obstructive_apnea"][0]))
    picture, note = client.predict(first, KEY, api_name="/show_event")
    assert Path(picture).read_bytes()[:4] == b"\x89PNG"
    picture, note = client.predict("999999", KEY, api_name="/show_event")
    assert picture is None and "not in this night" in note


def test_history_follows_the_patient(running, tmp_path):
    client, bot, _root = running.client, running.bot, running.root
    fresh = Client(client.src, verbose=False, download_files=str(tmp_path))
    try:
        _, chat, _ = fresh.predict(KEY, api_name="/select_patient")
        assert [text(m) for m in chat if m["role"] == "user"] == [
            q for role, q in bot.history(OSA) if role == "user"]
    finally:
        fresh.close()


def _upload(client, files, pid=""):
    return client.predict([handle_file(str(f)) for f in files], pid, api_name="/add_study")


def test_bad_uploads_give_messages_and_the_app_keeps_working(running, tmp_path):
    client, _bot, root = running.client, running.bot, running.root
    fake = tmp_path / "notes.edf"
    fake.write_text("hello, this is not a recording\n" * 20)
    *_, status, _ = _upload(client, [fake])
    assert "not an EDF/BDF recording" in status and "hello" in status

    big = tmp_path / "big.edf"
    big.write_bytes(b"0       " + b" " * int(running.limit_mb * 1e6 + 1000))
    *_, status, _ = _upload(client, [big])
    assert "over the upload limit" in status

    nochan = tmp_path / "nochan.edf"
    write_mixed_rate_edf(nochan, seconds=120, labels={"Temp rectal": (1.0, "degC")})
    *_, status, _ = _upload(client, [nochan])
    assert "no usable channel" in status

    sim = root / "lib" / f"{OSA}.edf"
    *_, status, _ = _upload(client, [sim], "../../etc/passwd")
    assert "path separator" in status or "'..'" in status

    card, chat, status = client.predict("library:../../etc", api_name="/select_patient")
    assert card == "" and "patient id" in status
    card, chat, status = client.predict("library:nobody", api_name="/select_patient")
    assert card == "" and "nobody" in status

    *_, status = client.predict("   ", KEY, api_name="/ask")
    assert "empty question" in status
    assert not (root / "state" / "uploads" / "nochan").exists()
    chat, *_, status = client.predict("What is the ODI?", KEY, api_name="/ask")
    assert status == "" and chat[-1]["role"] == "assistant" and text(chat[-1])


def test_check_signal_file(tmp_path):
    f = tmp_path / "a.edf"
    f.write_bytes(b"\xffBIOSEMI" + b" " * 176 + b"768     " + b" " * 64)
    assert check_signal_file(f, max_bytes=10_000) == "bdf"
    with pytest.raises(UploadError, match="over the upload limit"):
        check_signal_file(f, max_bytes=10)
    f.write_bytes(b"0       short")
    with pytest.raises(UploadError, match="not an EDF/BDF"):
        check_signal_file(f, max_bytes=10_000)


def test_upload_of_a_beat_file_gets_the_heart_rate_screening(running, tmp_path):
    """A Holter export (real Apnea-ECG beats, first 90 min) uploaded alone: a heart-rate study
    whose card and answers carry the screening, never an AHI."""
    import numpy as np

    from sleeplm.data import apnea_ecg_path

    client = running.client
    with np.load(apnea_ecg_path("a02")) as z:
        t, lab = z["beat_time_s"], z["apnea_minute"]
    beats = tmp_path / "holter-a02.csv"
    beats.write_text("beat_time_s\n" + "\n".join(f"{v:.3f}" for v in t[t < 5400]) + "\n")
    patient, card, chat, status, upload = _upload(client, [beats])
    assert status.startswith("**Added:** holter-a02 added"), status
    assert "only the deterministic measurements apply" in status  # the tiny model reads no HR
    stored = running.root / "state" / "uploads" / "holter-a02"
    assert [p.suffix for p in stored.iterdir()] == [".csv"]
    assert "| Heart-rate screening | " in card and "not an AHI" in card
    chat, *_, status = client.predict("Summarise this night", "uploads:holter-a02",
                                      api_name="/ask")
    assert status == ""
    bad = tmp_path / "bad.csv"
    bad.write_text("rr_ms\n900\n800\n950\n")
    *_, status, _ = _upload(client, [bad])
    assert "cannot be read as a heart-beat series" in status and "usable heart rate" in status


def test_upload_of_a_simulated_study(running, tmp_path):
    from sleeplm.simulate import simulate_night, write_study

    client = running.client
    night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="osa_severe", seed=61,
                           patient_id="upload-61")
    files = write_study(night, tmp_path / "study")
    patient, card, chat, status, upload = _upload(client, [files.edf, files.annotations],
                                                  "night-61")
    assert status.startswith("**Added:** night-61 added")
    assert patient["value"] == "uploads:night-61" and "night-61" in card and "SIMULATED" in card
    assert upload is None and chat == []
    stored = running.root / "state" / "uploads" / "night-61"
    assert sorted(p.suffix for p in stored.iterdir()) == [".edf", ".xml"]
    *_, status, _ = _upload(client, [files.edf], "night-61")
    assert "already in the upload library" in status
    chat, *_, status = client.predict("What is the AHI?", "uploads:night-61", api_name="/ask")
    assert status == "" and "AHI" in text(chat[-1])


def test_uploaded_files_leave_gradios_cache_when_the_app_stops(running, tmp_path, monkeypatch):
    """Gradio keeps its own copy of every upload in its cache (the system's temporary folder
    by default): patient recordings stayed there after the app had copied them into its
    upload library. They go when the app stops (and after a day while it runs)."""
    from sleeplm.simulate import simulate_night, write_study

    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    app, url = serve(running.bot, host="127.0.0.1", port=free_port(),
                     prevent_thread_lock=True, quiet=True, upload_dir=tmp_path / "uploads")
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    try:
        night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="healthy_young", seed=62,
                               patient_id="upload-62")
        files = write_study(night, tmp_path / "study")
        *_, status, _ = _upload(client, [files.edf], "night-62")
        assert status.startswith("**Added:** night-62 added")
        cached = [p for p in cache.rglob("*") if p.is_file()]
        assert any(p.name == files.edf.name for p in cached)  # Gradio's copy while it runs
        assert (tmp_path / "uploads" / "night-62" / "night-62.edf").exists()
    finally:
        client.close()
        app.close()
    # (Gradio's upload parser leaves an empty temporary file of its own: no data in it)
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size]
    assert (tmp_path / "uploads" / "night-62" / "night-62.edf").exists()  # the library's stays

"""tools/: the agent's typed tools on a tiny library with an untrained tiny SleepLM.

An untrained model's scores are random, so these tests check the mechanics: shapes, units and
evidence, sorting, threshold and limit, refusals for missing channels, weak-score warnings,
specific errors, valid PNG figures, LangChain tools invoked with a runtime context, and that the
tools score exactly like training/evaluate.py. Behaviour with the shipped checkpoint is in
tests/test_tools_default.py.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from conftest import TINY_HYPNOGRAM, tiny_checkpoint, write_tiny_library

from sleeplm.model import prompts as P
from sleeplm.model.captioning import read_facts
from sleeplm.library.index import EmbeddingIndex, IndexConfig
from sleeplm.library.patients import PatientLibrary, UnknownPatientError
from sleeplm.model.network import SleepLM, SleepLMConfig, save_model
from sleeplm.model.zeroshot import localisation_margins
from tools import (
    CaptionInput,
    ClassifyInput,
    EmptyQueryError,
    EventsInput,
    FactsInput,
    HypnogramInput,
    LocalizeInput,
    NoIndexError,
    NoPatientError,
    RetrieveInput,
    SignalsInput,
    TimelineInput,
    TimeRangeError,
    TimeSelection,
    ToolContext,
    UnknownEventTypeError,
    caption,
    classify,
    epoch_margins,
    event_timeline_figure,
    events_in_range,
    hypnogram_figure,
    index_library,
    localize,
    report_facts,
    respiratory_summary,
    retrieve,
    signals_figure,
    sleep_architecture,
)
from tools.common import parse_time, requirements_for, resolve_selection

# tools/__init__ exports the functions under their modules' names: reach the modules this way
tclassify = importlib.import_module("tools.classify")
tlocalize = importlib.import_module("tools.localize")

PLAN = (("healthy_young", 21, "SC4011E0"), ("osa_moderate", 22, "SC4031E0"))
HEALTHY, OSA = "sim-00021-healthy_young", "sim-00022-osa_moderate"
#: A third study without SpO2 and without EEG (a home-test-like montage).
BARE = "sim-00023-bare"
PNG = b"\x89PNG\r\n\x1a\n"


def _add_bare_study(folder: Path) -> None:
    from sleeplm.simulate import simulate_night, write_study
    from sleeplm.simulate.library import MANIFEST_COLUMNS

    night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="osa_moderate", seed=23,
                           patient_id=BARE)
    for name in [n for n in night.recording.signals if n == "SPO2" or n.startswith("EEG")]:
        del night.recording.signals[name]
    files = write_study(night, folder)
    man = pd.read_csv(folder / "manifest.csv")
    row = {c: "" for c in MANIFEST_COLUMNS}
    row.update(patient_id=BARE, profile="osa_moderate", seed=23, hypnogram_source="SC4021E0",
               edf=files.edf.name, annotations=files.annotations.name, status="ok")
    pd.concat([man, pd.DataFrame([row])]).to_csv(folder / "manifest.csv", index=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(library, index, checkpoint, output folder) shared by the module."""
    root = tmp_path_factory.mktemp("tools")
    lib_dir = root / "lib"
    lib_dir.mkdir()
    write_tiny_library(lib_dir, PLAN)
    _add_bare_study(lib_dir)
    ck = tiny_checkpoint(root)
    lib = PatientLibrary(lib_dir, model_dir=ck)
    index = EmbeddingIndex(IndexConfig(path=root / "index", model_version=lib.model_version))
    assert index_library(lib, index) == 3
    assert index_library(lib, index) == 0  # already there
    return lib, index, ck, root / "out"


@pytest.fixture
def ctx(env) -> ToolContext:
    lib, index, _, out = env
    return ToolContext(library=lib, patient=OSA, index=index, output_dir=out)


@pytest.fixture
def bare(env) -> ToolContext:
    lib, index, _, out = env
    return ToolContext(library=lib, patient=BARE, index=index, output_dir=out)


# --------------------------------------------------------------------------------- times


def test_time_selection_resolution(ctx):
    p = ctx.processed()
    t0 = p.recording().info.start_time
    assert t0 is not None
    n = p.n_epochs
    sel = resolve_selection(p, None)
    assert sel.scope == "night" and (sel.span.first_epoch, sel.span.last_epoch) == (0, n - 1)
    assert sel.span.start_clock == t0.strftime("%H:%M:%S")
    assert sum(sel.span.stages.values()) == n
    one = resolve_selection(p, TimeSelection(epoch=5))
    assert one.scope == "epoch" and one.span.n_epochs == 1 and one.span.start_s == p.onsets_s[5]
    clock = (t0 + pd.Timedelta(seconds=p.onsets_s[10])).strftime("%H:%M:%S")
    by_clock = resolve_selection(p, TimeSelection(start=clock, end=float(p.onsets_s[14])))
    assert (by_clock.span.first_epoch, by_clock.span.last_epoch) == (10, 13)
    assert by_clock.scope == "range" and by_clock.span.start_clock == clock
    hhmm = resolve_selection(p, TimeSelection(start=clock[:5]))
    assert hhmm.span.last_epoch == n - 1 and hhmm.span.start_s <= p.onsets_s[10]
    assert resolve_selection(p, TimeSelection(epochs=(3, 7))).span.n_epochs == 5
    assert parse_time("epoch 4", t0) == 120.0 and parse_time("90s", t0) == 90.0
    # a clock time before the start is on the next day: after this short night
    before = (t0 - pd.Timedelta(minutes=30)).strftime("%H:%M")
    for bad in (TimeSelection(epoch=n), TimeSelection(epochs=(5, 3)),
                TimeSelection(epochs=(0, n)), TimeSelection(start=before),
                TimeSelection(start=1e6), TimeSelection(start=60, end=30),
                TimeSelection(start="25:99"), TimeSelection(start="soon")):
        with pytest.raises(TimeRangeError):
            resolve_selection(p, bad)


def test_clock_times_after_midnight():
    import datetime as dt

    start = dt.datetime(2026, 1, 1, 23, 30)
    assert parse_time("00:10", start) == 40 * 60
    assert parse_time("23:45:30", start) == 15.5 * 60
    assert parse_time("23:30", start) == 0.0
    with pytest.raises(TimeRangeError, match="no start time"):
        parse_time("01:00", None)
    assert parse_time(75, None) == 75.0


def test_requirements_from_words():
    needs = dict(requirements_for("snoring with paradoxical breathing and desaturation"))
    assert "SPO2" in needs["SpO2"] and "THORAX" in needs["respiratory effort or airflow"]
    assert "chin EMG" in dict(requirements_for("REM without atonia"))
    assert "EEG" in dict(requirements_for("bursts of fast EEG"))
    assert requirements_for("something unusual") == []


# -------------------------------------------------------------------------------- errors


def test_errors_for_patient_and_query(env, ctx):
    lib = env[0]
    with pytest.raises(UnknownPatientError):
        localize(ToolContext(library=lib, patient="nobody-here"),
                 LocalizeInput(query="obstructive apnea"))
    with pytest.raises(NoPatientError):
        localize(ToolContext(library=lib), LocalizeInput(query="obstructive apnea"))
    for q in ("", "   "):
        with pytest.raises(EmptyQueryError):
            localize(ctx, LocalizeInput(query=q))
        with pytest.raises(EmptyQueryError):
            retrieve(ctx, RetrieveInput(source="text", text=q))
    with pytest.raises(EmptyQueryError):
        classify(ctx, ClassifyInput(labels=["REM sleep", " "]))
    with pytest.raises(TimeRangeError):
        localize(ctx, LocalizeInput(query="hypopnea", within=TimeSelection(epoch=10_000)))
    with pytest.raises(NoIndexError):
        retrieve(ToolContext(library=lib, patient=OSA), RetrieveInput(source="night"))


# ------------------------------------------------------------------------------ localize


def test_localize_uses_the_checkpoints_calibrated_rule(env):
    # calibration.json next to the weights sets a known query's default threshold and gap;
    # free-text queries and other known queries keep their own defaults
    from sleeplm.model.calibration import (CALIBRATION_NAME, Calibration, IntervalRule,
                                     save_calibration, weights_digest)
    from sleeplm.model.zeroshot import to_intervals

    lib, index, ck, out_dir = env
    rule = IntervalRule(threshold=-0.02, max_gap=2)
    save_calibration(Calibration(weights_sha256=weights_digest(ck), n_nights=4,
                                 localisation={"obstructive_apnea": rule}), ck)
    try:
        c = ToolContext(library=lib, patient=OSA, index=index, output_dir=out_dir)
        out = localize(c, LocalizeInput(query="obstructive apnea", limit=200))
        assert out.threshold == rule.threshold and out.max_gap == 2
        assert "validation nights" in out.rule_source
        em = np.asarray(epoch_margins(c, "obstructive apnea").margins)
        want = to_intervals(np.arange(em.size), em > rule.threshold, max_gap=2)
        got = sorted((iv.span.first_epoch, iv.span.last_epoch) for iv in out.intervals)
        assert got == want and out.n_intervals_total == len(want)
        if any(b - a > 0 for a, b in want):
            assert "quiet epochs apart merged" in out.summary()
        other = localize(c, LocalizeInput(query="hypopnea"))
        assert other.threshold == 0.0 and other.max_gap == 0 and "plain rule" in other.rule_source
        given = localize(c, LocalizeInput(query="obstructive apnea", threshold=0.5))
        assert given.threshold == 0.5 and given.max_gap == 2
        assert given.rule_source.startswith("threshold given by the caller")
    finally:
        (ck / CALIBRATION_NAME).unlink()


def test_localize_generative_scorer(env):
    # scorer="generative": the caption decoder's evidence (nats) with the checkpoint's
    # generative rule, the same numbers as sleeplm.model.zeroshot.generative_query_scores; the
    # contrastive answer points to it when it did materially better on validation nights
    from sleeplm.model.calibration import (CALIBRATION_NAME, Calibration, IntervalRule,
                                     save_calibration, weights_digest)
    from sleeplm.model.zeroshot import generative_query_scores, stage_scores
    from tools.caption import _model_inputs
    from tools.errors import UnsupportedScorerError

    lib, index, ck, out_dir = env
    save_calibration(Calibration(
        weights_sha256=weights_digest(ck), n_nights=3,
        localisation={"generative:hypopnea": IntervalRule(threshold=-1.0, max_gap=1)},
        validation={"hypopnea": {"chosen": {"f1": 0.40}},
                    "generative:hypopnea": {"chosen": {"f1": 0.70}}}), ck)
    try:
        c = ToolContext(library=lib, patient=OSA, index=index, output_dir=out_dir)
        out = localize(c, LocalizeInput(query="hypopnea", scorer="generative", limit=200))
        assert out.scorer == "generative" and out.unit == "nats"
        assert out.threshold == -1.0 and out.max_gap == 1 and "generative rule" in out.rule_source
        assert all(iv.unit == "nats" for iv in out.intervals)
        em = np.asarray(epoch_margins(c, "hypopnea", "generative").margins)
        p = c.processed()
        assert em.shape == (p.n_epochs,) and (p.captions_dir / "generative-hypopnea.npy").is_file()
        emb = np.asarray(p.epoch_embeddings, dtype=np.float32)
        stages = np.asarray(P.STAGES)[stage_scores(emb, c.class_vectors(
            P.STAGE_PROMPTS, list(P.STAGES))).argmax(1)]
        idx = np.array([0, 5, p.n_epochs - 1])
        x, m = _model_inputs(p, idx, int(c.model.cfg.context_epochs))
        with torch.no_grad():
            _, tokens, valid = c.model.encode_signal(torch.from_numpy(x), torch.from_numpy(m))
        want = generative_query_scores(c.model, c.tokenizer, tokens, valid,
                                       list(stages[idx]), ["hypopnea"])[:, 0]
        assert np.allclose(em[idx], want, atol=1e-4)
        got = sorted((iv.span.first_epoch, iv.span.last_epoch) for iv in out.intervals)
        from sleeplm.model.zeroshot import to_intervals
        assert got == to_intervals(np.arange(em.size), em > -1.0, max_gap=1)
        fast = localize(c, LocalizeInput(query="hypopnea"))
        assert fast.scorer == "contrastive" and any("scorer='generative'" in w
                                                      for w in fast.warnings)
        with pytest.raises(UnsupportedScorerError, match="generative scorer knows"):
            localize(c, LocalizeInput(query="bursts of fast EEG", scorer="generative"))
    finally:
        (ck / CALIBRATION_NAME).unlink()


def test_localize_known_query(ctx):
    out = localize(ctx, LocalizeInput(query="Obstructive apneas", limit=3))
    assert out.known_query == "obstructive_apnea" and out.threshold == 0.0 and not out.refusal
    assert "LOCALISATION_BACKGROUND" in out.background
    assert len(out.intervals) <= 3 and out.n_intervals_total >= len(out.intervals)
    scores = [iv.score for iv in out.intervals]
    assert scores == sorted(scores, reverse=True)
    em = np.asarray(epoch_margins(ctx, "obstructive apnea").margins)
    for iv in out.intervals:
        s = iv.span
        seg = em[s.first_epoch:s.last_epoch + 1]
        assert (seg > 0).all() and iv.score == pytest.approx(seg.max())
        assert iv.unit == "cosine margin" and s.start_clock
        assert s.end_s - s.start_s == 30 * s.n_epochs
        assert sum(s.stages.values()) == s.n_epochs and s.main_stage in s.stages
    full = localize(ctx, LocalizeInput(query="obstructive apnea", limit=200))
    assert full.n_intervals_total == len(full.intervals) == out.n_intervals_total
    assert full.intervals[:3] == out.intervals
    none = localize(ctx, LocalizeInput(query="obstructive apnea", threshold=5.0))
    assert none.intervals == [] and any("exceeds the threshold" in w for w in none.warnings)
    part = localize(ctx, LocalizeInput(query="hypopnea", limit=50,
                                       within=TimeSelection(epochs=(20, 40))))
    assert part.n_epochs_searched == 21
    assert all(20 <= iv.span.first_epoch and iv.span.last_epoch <= 40 for iv in part.intervals)


def test_localize_free_text_and_weak_scores(ctx, monkeypatch):
    out = localize(ctx, LocalizeInput(query="bursts of fast EEG", limit=100))
    assert out.known_query is None and "median" in out.background
    margins = np.asarray(epoch_margins(ctx, "bursts of fast EEG").margins)
    assert np.median(margins) == pytest.approx(0.0, abs=1e-6)
    assert out.threshold > 0 and all(iv.score > out.threshold for iv in out.intervals)
    assert any("free-text" in w for w in out.warnings)
    assert out.weak == (out.best_score < tlocalize.WEAK_MARGIN)
    monkeypatch.setattr(tlocalize, "WEAK_MARGIN", 10.0)
    weak = localize(ctx, LocalizeInput(query="obstructive apnea"))
    assert weak.weak and any("weak evidence" in w for w in weak.warnings)
    assert "weak evidence" in weak.summary()


def test_localize_refuses_without_the_needed_signal(bare):
    p = bare.processed()
    present = {c for c, m in zip(p.channels, p.mask) if m}
    assert "SPO2" not in present and "EEG_C3" not in present
    for q, need in (("oxygen desaturation", "SpO2"), ("desaturation", "SpO2"),
                    ("spindles", "EEG"), ("bursts of fast EEG", "EEG")):
        out = localize(bare, LocalizeInput(query=q))
        assert out.refusal and need in out.refusal and out.intervals == []
        assert any(not r.met for r in out.requirements)
        assert out.summary().startswith("Cannot localise")
    ok = localize(bare, LocalizeInput(query="obstructive apnea"))
    assert ok.refusal is None


# ---------------------------------------------------------------------- agreement with eval


def test_tools_and_evaluation_agree(env, ctx):
    """Same embeddings -> the same zero-shot stage predictions and localisation margins as
    training/evaluate.py."""
    from training import evaluate as ev

    lib = env[0]
    p = ctx.processed()
    model, tok = lib.model, ctx.tokenizer
    emb = np.asarray(p.epoch_embeddings)
    names = list(P.LOCALISATION_QUERIES)
    q = ev.class_embeddings(model, tok, P.LOCALISATION_QUERIES, names)
    bg = ev.class_embeddings(model, tok, P.LOCALISATION_BACKGROUND, names)
    ref = localisation_margins(emb, q, bg)
    for i, name in enumerate(names):  # by hand: absence and rivals, the highest one wins
        for r in P.LOCALISATION_RIVALS.get(name, ()):
            ref[:, i] = np.minimum(ref[:, i], emb @ q[i] - emb @ q[names.index(r)])
    assert ref.shape[1] == 5 and P.LOCALISATION_RIVALS
    for i, name in enumerate(names):
        mine = np.asarray(epoch_margins(ctx, name.replace("_", " ")).margins)
        np.testing.assert_allclose(mine, ref[:, i], rtol=0, atol=1e-5)
    stage_ids = np.array([P.STAGES.index(s) if s in P.STAGES else -1 for s in p.stages])
    _, pred, _ = ev._zero_shot(model, tok, emb, {"stage_id": stage_ids})
    out = classify(ctx, ClassifyInput(labels=list(P.STAGES)))
    assert out.scope == "night" and len(out.per_epoch) == p.n_epochs
    assert list(out.per_epoch) == [str(s) for s in pred]
    assert all(s.class_source.startswith("STAGE_PROMPTS") for s in out.scores)


# ------------------------------------------------------------------------------- classify


def test_classify_zero_shot(ctx, monkeypatch):
    out = classify(ctx, ClassifyInput(labels=["REM sleep", "N2 sleep", "a snoring sound"],
                                      target=TimeSelection(epochs=(50, 60))))
    probs = [s.probability for s in out.scores]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    assert all(0 <= s.probability <= 1 and s.unit == "probability" for s in out.scores)
    assert out.scope == "range" and out.span.n_epochs == 11 and len(out.per_epoch) == 11
    assert sum(s.epochs_won for s in out.scores) == 11 and out.logit_scale > 0
    assert f"the top label of {out.scores[0].epochs_won} of 11 epochs" in out.summary()
    src = {s.label: s.class_source for s in out.scores}
    assert src["REM sleep"] == "STAGE_PROMPTS[R]" and src["a snoring sound"] == "label text"
    # softmax of logit_scale * cosine
    cos = np.array([s.cosine for s in out.scores])
    z = np.exp(out.logit_scale * (cos - cos.max()))
    np.testing.assert_allclose(probs, z / z.sum(), atol=1e-6)
    one = classify(ctx, ClassifyInput(labels=["wake", "deep sleep"], target=TimeSelection(epoch=3)))
    assert one.scope == "epoch" and one.span.first_epoch == 3
    monkeypatch.setattr(tclassify, "WEAK_GAP", 10.0)
    weak = classify(ctx, ClassifyInput(labels=["wake", "deep sleep"]))
    assert weak.weak and any("weak decision" in w for w in weak.warnings)


def test_classify_few_shot_and_refusal(ctx, bare):
    out = classify(ctx, ClassifyInput(examples={"early": [5], "late": [60]},
                                      target=TimeSelection(epoch=60)))
    assert out.mode == "few-shot" and out.scores[0].label == "late"
    assert out.scores[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert any("example epochs" in w for w in out.warnings)
    assert out.scores[0].class_source == "prototype of epochs [60]"
    with pytest.raises(TimeRangeError):
        classify(ctx, ClassifyInput(examples={"a": [1], "b": [10_000]}))
    with pytest.raises(EmptyQueryError):
        classify(ctx, ClassifyInput(examples={"a": [1]}))
    ref = classify(bare, ClassifyInput(labels=["oxygen desaturation", "normal saturation"]))
    assert ref.refusal and "SpO2" in ref.refusal and ref.scores == []


# ------------------------------------------------------------------------------- retrieve


def test_retrieve(ctx):
    nights = retrieve(ctx, RetrieveInput(source="night", level="night", k=5,
                                         exclude_current_patient=False))
    assert OSA not in {h.patient for h in nights.hits} and len(nights.hits) == 2
    assert [h.score for h in nights.hits] == sorted((h.score for h in nights.hits), reverse=True)
    assert all(h.unit == "centred cosine" and h.kind == "night" and h.n_epochs
               for h in nights.hits)
    # night to night is the cosine of deviations from the library's mean night
    from sleeplm.library.flat_index import centred_scores

    lib = ctx.library
    vecs = {pid: np.asarray(lib.open(pid, progress=False).night_embedding)
            for pid in lib.patients()}
    ids = sorted(vecs)
    want = dict(zip(ids, centred_scores(np.stack([vecs[i] for i in ids]), vecs[OSA])))
    assert [h.score for h in nights.hits] == pytest.approx([want[h.patient]
                                                            for h in nights.hits], abs=1e-4)
    ep = retrieve(ctx, RetrieveInput(source="epoch", selection=TimeSelection(epoch=25), k=4,
                                     stage="N2"))
    assert len(ep.hits) == 4 and all(h.stage == "N2" and h.patient != OSA for h in ep.hits)
    assert ep.query_span.first_epoch == 25 and all(h.clock for h in ep.hits)
    own = retrieve(ctx, RetrieveInput(source="interval", selection=TimeSelection(epochs=(20, 22)),
                                      k=5, exclude_current_patient=False))
    assert not any(h.patient == OSA and h.epoch in (20, 21, 22) for h in own.hits)
    assert len(own.hits) == 5
    prof = retrieve(ctx, RetrieveInput(source="text", text="REM sleep", k=3,
                                       profile="healthy_young", stage="R"))
    assert prof.hits and all(h.profile == "healthy_young" and h.stage == "R" for h in prof.hits)
    nothing = retrieve(ctx, RetrieveInput(source="text", text="REM sleep", profile="no-such"))
    assert nothing.hits == [] and nothing.weak and nothing.warnings
    with pytest.raises(TimeRangeError):
        retrieve(ctx, RetrieveInput(source="epoch"))
    with pytest.raises(ValueError, match="unknown stage"):
        retrieve(ctx, RetrieveInput(source="night", stage="deep"))


# ---------------------------------------------------------------------------------- facts


def test_facts_with_units_and_evidence(ctx, bare):
    arch = sleep_architecture(ctx)
    ms = {m.name: m for m in arch.sections["architecture"]}
    assert ms["tst_min"].unit == "min" and ms["tst_min"].value > 0
    assert ms["tst_min"].evidence.epochs and sum(arch.stage_epochs.values()) == \
        ctx.processed().n_epochs
    assert arch.simulated is True and "SIMULATED" in arch.summary()
    resp = respiratory_summary(ctx)
    assert set(resp.sections) == {"respiratory", "oximetry"} and resp.findings
    assert all(m.unit for ms_ in resp.sections.values() for m in ms_)
    nox = respiratory_summary(bare)
    assert "oximetry" in nox.unavailable and "oximetry" not in nox.sections
    assert "not available" in nox.summary()
    every = report_facts(ctx, FactsInput())
    assert set(every.sections) | set(every.unavailable) >= {"architecture", "respiratory"}


def test_events_in_range(ctx):
    rec = ctx.recording()
    out = events_in_range(ctx, EventsInput(types=["apneas", "Hypopnea"]))
    assert "obstructive_apnea" in out.types and "hypopnea" in out.types
    want = rec.events_of(*out.types)
    assert out.n_total == len(want) > 0 and sum(out.counts.values()) == out.n_total
    onsets = [e.onset_s for e in out.events]
    assert onsets == sorted(onsets)
    e = out.events[0]
    assert e.clock and e.epoch >= 0 and e.end_s == pytest.approx(e.onset_s + e.duration_s)
    assert e.stage == str(rec.stage_at(e.onset_s)[0])
    part = events_in_range(ctx, EventsInput(types=["hypopnea"], limit=1,
                                            within=TimeSelection(epochs=(e.epoch, e.epoch + 40))))
    assert len(part.events) <= 1 and all(
        ev.onset_s < part.span.end_s and ev.end_s > part.span.start_s for ev in part.events)
    if part.n_total > 1:
        assert any("listed" in w for w in part.warnings)
    with pytest.raises(UnknownEventTypeError):
        events_in_range(ctx, EventsInput(types=["sneezes"]))


def test_events_in_range_finds_the_densest_window(ctx):
    """"the densest cluster of back-to-back desaturations" was answered with the first
    desaturation of the night: the window with the most onsets is found over every event."""
    from tools.facts import densest_window

    assert densest_window(np.array([0.0, 100, 700, 710, 720, 1500]), 600.0) == (2, 5)
    assert densest_window(np.array([0.0, 10, 700, 710]), 600.0) == (0, 2)  # the earliest tie
    assert densest_window(np.array([]), 600.0) == (0, 0)
    every = events_in_range(ctx, EventsInput(types=["apnea", "hypopnea"], limit=5000)).events
    onsets = np.array(sorted(e.onset_s for e in every))
    brute = max(int(((onsets >= t) & (onsets < t + 600.0)).sum()) for t in onsets)
    out = events_in_range(ctx, EventsInput(types=["apnea", "hypopnea"], limit=3,
                                           densest_window_min=10))
    d = out.densest
    assert d is not None and d.n_events == brute == len(d.event_ids)
    assert d.end_s - d.start_s == 600.0 and d.first_epoch <= d.last_epoch
    inside = [e for e in every if e.id in set(d.event_ids)]
    assert all(d.start_s <= e.onset_s < d.end_s for e in inside)
    assert d.describe() in out.summary() and d.describe().startswith(
        f"Densest 10-min window: {brute} events from ")
    assert events_in_range(ctx, EventsInput(types=["apnea"])).densest is None


def test_events_in_range_lists_the_longest_shortest_or_deepest_first(ctx):
    every = events_in_range(ctx, EventsInput(types=["apnea", "hypopnea"], limit=5000)).events
    durations = sorted(e.duration_s for e in every)
    assert len(every) > 3 and durations[0] < durations[-1]
    top = events_in_range(ctx, EventsInput(types=["apnea", "hypopnea"], limit=3,
                                           order="longest"))
    # ranked over all the events matched, not only those listed
    assert [e.duration_s for e in top.events] == durations[::-1][:3]
    assert top.order == "longest" and top.n_total == len(every)
    assert "Listed longest first." in top.summary()
    assert f"{len(every)} events match; the longest 3 are listed" in top.warnings
    low = events_in_range(ctx, EventsInput(types=["apnea", "hypopnea"], limit=2,
                                           order="shortest"))
    assert [e.duration_s for e in low.events] == durations[:2]
    desats = events_in_range(ctx, EventsInput(types=["desaturation"], limit=5000)).events
    nadirs = sorted(e.attributes["spo2_nadir"] for e in desats)
    deep = events_in_range(ctx, EventsInput(types=["desaturation"], limit=2, order="deepest"))
    assert [e.attributes["spo2_nadir"] for e in deep.events] == nadirs[:2]
    with pytest.raises(ValidationError):
        EventsInput(order="loudest")


# -------------------------------------------------------------------------------- caption


def test_caption_checks_holistic_captions_with_the_calibrated_thresholds(env, monkeypatch):
    # a checkpoint calibrated to withdraw every hypopnea and arousal the decoder names: the
    # tool's holistic captions carry none, and say what was withdrawn
    from sleeplm.model import captioning
    from sleeplm.model.calibration import (CALIBRATION_NAME, Calibration, save_calibration,
                                     weights_digest)

    lib, index, ck, out_dir = env
    save_calibration(Calibration(weights_sha256=weights_digest(ck), n_nights=1,
                                 captions={"hypopnea": 1e9, "arousal": 1e9}), ck)
    real = captioning.check_captions

    def on_named(model, tok, tokens, valid, texts, thresholds, stages=None):
        # the tiny test model rarely names an event: name one in every other caption
        texts = [t if i % 2 else t.rstrip(".") + "; a hypopnea; 1 arousal."
                 for i, t in enumerate(texts)]
        return real(model, tok, tokens, valid, texts, thresholds, stages)

    monkeypatch.setattr(captioning, "check_captions", on_named)
    try:
        c = ToolContext(library=lib, patient=OSA, index=index, output_dir=out_dir)
        out = caption(c, CaptionInput(target=TimeSelection(epochs=(10, 13)), max_epochs=4))
        assert len(out.generated) == 4
        for g in out.generated:
            assert "hypopnea" not in read_facts(g.text)["events"]
            assert "arousal" not in read_facts(g.text)["events"]
        staged = [g for g in out.generated if g.withdrawn]
        assert staged and all(g.withdrawn == ["a hypopnea", "1 arousal"] for g in staged)
        again = caption(c, CaptionInput(target=TimeSelection(epochs=(10, 13)), max_epochs=4))
        assert again.generated == out.generated  # from the cache, withdrawals kept
    finally:
        (ck / CALIBRATION_NAME).unlink()


def test_caption_epoch_range_night(ctx, bare):
    one = caption(ctx, CaptionInput(target=TimeSelection(epoch=30), system="respiration"))
    assert one.scope == "epoch" and len(one.generated) == 1
    assert isinstance(one.generated[0].text, str) and one.generated[0].epoch == 30
    assert one.facts and all(c.system in ("respiration", "holistic") for c in one.facts
                             if c.level == "epoch")
    s = one.span
    assert all(c.start < s.end_s and c.end > s.start_s for c in one.facts)
    assert one.model_version == ctx.processed().model_version
    folder = ctx.processed().captions_dir
    assert (folder / "deterministic-seed0.json").is_file()
    assert list(folder.glob("generated-respiration-*.json"))
    again = caption(ctx, CaptionInput(target=TimeSelection(epoch=30), system="respiration"))
    assert again.generated == one.generated
    rng = caption(ctx, CaptionInput(target=TimeSelection(epochs=(20, 29)), max_epochs=3))
    eps = [g.epoch for g in rng.generated]
    assert len(eps) == 3 and eps[0] == 20 and eps[-1] == 29 and eps == sorted(eps)
    assert any("captioned 3 of the 10" in w for w in rng.warnings)
    night = caption(ctx, CaptionInput())
    assert night.scope == "night" and night.measures and all(m.unit for m in night.measures)
    assert any(c.level == "night" for c in night.facts)
    refused = caption(bare, CaptionInput(system="brain", target=TimeSelection(epoch=30)))
    # the bare night still has EOG, which the brain system reads: not refused
    assert refused.refusal is None


def test_caption_refuses_a_system_without_channels(env, tmp_path):
    lib = env[0]
    ck = tmp_path / "ck"
    shutil.copytree(env[2], ck)
    # a checkpoint whose input has no cardiac channel at all
    torch.manual_seed(1)
    cfg = SleepLMConfig.tiny(channels=("EEG_C3", "THORAX"), sfreq=16,
                             vocab_size=SleepLMConfig.from_json(
                                 (ck / "config.json").read_text()).vocab_size)
    save_model(SleepLM(cfg), ck)
    other = PatientLibrary(lib.root, model_dir=ck, cache_dir=tmp_path / "cache")
    c = ToolContext(library=other, patient=HEALTHY, output_dir=tmp_path / "out")
    out = caption(c, CaptionInput(system="cardiac", target=TimeSelection(epoch=3)))
    assert out.refusal and "ECG" in out.refusal and out.generated == []


# -------------------------------------------------------------------------------- figures


def test_figures_are_pngs(ctx, bare, env):
    out_dir = env[3]
    h = hypnogram_figure(ctx)
    assert h.png.startswith(PNG) and h.path.read_bytes() == h.png
    assert h.path.parent == out_dir / OSA
    hl = hypnogram_figure(ctx, HypnogramInput(highlight=TimeSelection(epochs=(20, 30))))
    assert hl.png.startswith(PNG) and hl.path != h.path and "epochs 20-30" in hl.title
    t = event_timeline_figure(ctx, TimelineInput(types=["apnea", "desaturation"]))
    assert t.png.startswith(PNG) and t.path.is_file()
    sig = signals_figure(ctx, SignalsInput(window=TimeSelection(epoch=30), query="desaturation"))
    assert sig.png.startswith(PNG) and sig.channels == ["SPO2"]
    sysf = signals_figure(ctx, SignalsInput(window=TimeSelection(epochs=(30, 31)),
                                            system="respiration", pad_s=10))
    assert "THORAX" in sysf.channels and sysf.span.n_epochs == 2
    assert "png" not in sysf.model_dump()
    no = signals_figure(bare, SignalsInput(window=TimeSelection(epoch=30), query="desaturation"))
    assert no.refusal and no.path is None and "SPO2" in no.refusal


# ------------------------------------------------------------------------------ langchain


def _runtime(ctx):
    from langchain.tools import ToolRuntime

    return ToolRuntime(state={}, context=ctx, config={}, stream_writer=lambda _: None,
                       tool_call_id="call-1", store=None)


def _call(t, ctx, **args):
    return t.invoke({"type": "tool_call", "id": "call-1", "name": t.name,
                     "args": {**args, "runtime": _runtime(ctx)}})


def test_langchain_tools_with_runtime_context(ctx):
    from langchain_core.messages import ToolMessage

    from tools import make_tools
    from tools.langchain_tools import TOOL_NAMES, ToolArtifact
    from tools.localize import LocalizeOutput

    tools = {t.name: t for t in make_tools()}
    assert list(tools) == list(TOOL_NAMES)
    for t in tools.values():
        schema = t.tool_call_schema.model_json_schema()
        assert "runtime" not in schema.get("properties", {}) and t.description
        assert t.response_format == "content_and_artifact"
    msg = _call(tools["localize"], ctx, query="hypopnea", limit=2)
    assert isinstance(msg, ToolMessage) and isinstance(msg.content, str)
    assert "hypopnea" in msg.content
    art = msg.artifact
    assert isinstance(art, ToolArtifact) and isinstance(art.result, LocalizeOutput)
    assert len(art.table) == len(art.result.intervals) <= 2
    if art.table:
        assert {"start_clock", "score", "unit", "stage"} <= set(art.table[0])
    onsets = ctx.processed().onsets_s
    msg = _call(tools["classify"], ctx, labels=["REM sleep", "wake"],
                target={"start": onsets[10], "end": onsets[20]})
    assert msg.artifact.result.scope == "range" and len(msg.artifact.table) == 2
    fig = _call(tools["plot_hypnogram"], ctx, highlight={"epochs": [3, 9]})
    shown = fig.artifact.figures[0]
    assert shown.png.startswith(PNG) and str(shown.path) in fig.content
    assert "epochs 3-9" in shown.title
    facts = _call(tools["report_facts"], ctx, sections=["architecture"])
    assert any(r["name"] == "tst_min" and r["unit"] == "min" for r in facts.artifact.table)
    err = _call(tools["localize"], ctx, query="  ")
    assert err.status == "error" and "EmptyQueryError" in err.content
    err = _call(tools["list_events"], ctx, types=["hypopnea"], within={"epoch": 10_000})
    assert err.status == "error" and "outside the night" in err.content
    gone = ToolContext(library=ctx.library, patient="nobody-here")
    err = _call(tools["report_facts"], gone)
    assert err.status == "error" and "nobody-here" in err.content


def test_agent_passes_the_current_patient_as_runtime_context(ctx):
    """A LangChain agent (scripted fake model) calls a tool; the patient comes from context."""
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from tools import make_tools
    from tools.localize import LocalizeOutput

    class ScriptedModel(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):  # the script already knows the tool calls
            return self

    script = iter([AIMessage(content="", tool_calls=[{
        "name": "localize", "args": {"query": "hypopnea", "limit": 2}, "id": "c1",
        "type": "tool_call"}]), AIMessage(content="Here they are.")])
    agent = create_agent(model=ScriptedModel(messages=script), tools=make_tools(),
                         context_schema=ToolContext)
    res = agent.invoke({"messages": [HumanMessage("Where are the hypopneas?")]}, context=ctx)
    tool_msgs = [m for m in res["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1 and tool_msgs[0].status != "error"
    result = tool_msgs[0].artifact.result
    assert isinstance(result, LocalizeOutput) and result.patient == OSA
    assert res["messages"][-1].content == "Here they are."


def test_retrieve_nights_like_another_patient(ctx):
    from tools import RetrieveInput, retrieve

    out = retrieve(ctx, RetrieveInput(source="night", level="night", k=5, like_patient=HEALTHY))
    assert out.query == f"the night of {HEALTHY}"
    assert all(h.patient not in (HEALTHY, OSA) for h in out.hits)  # neither query nor current
    with pytest.raises(UnknownPatientError):
        retrieve(ctx, RetrieveInput(source="night", level="night", like_patient="sim-99999-x"))


def test_retrieve_ranks_the_librarys_nights_by_a_measure(ctx, bare):
    """"nights in the library with lots of leg kicks" was answered with the nights most like
    the current one: ranking by a measure reads each study's facts, with no embedding."""
    from tools import RetrieveInput, UnknownMeasureError, retrieve

    lib = ctx.library
    values = {}
    for pid in lib.patients():
        try:
            m = ctx.processed(pid).facts.measure("ahi_3a")
        except KeyError:
            continue
        if m.value is not None:
            values[pid] = m.value
    assert len(values) >= 2
    out = retrieve(ctx, RetrieveInput(source="measure", level="night", measure="ahi_3a",
                                      exclude_current_patient=False, k=100))
    assert [h.patient for h in out.hits] == sorted(values, key=lambda p: -values[p])
    assert [h.score for h in out.hits] == sorted(values.values(), reverse=True)
    assert out.hits[0].unit == "events/h" and out.source == "measure"
    text = out.summary()
    assert text.startswith(f"{len(values)} night(s) of the library ranked by AHI")
    assert f"{OSA} (" in text and "; the current patient)" in text
    low = retrieve(ctx, RetrieveInput(source="measure", measure="ahi_3a", lowest_first=True,
                                      k=1))
    assert [h.patient for h in low.hits] == [min((p for p in values if p != OSA),
                                                 key=lambda p: values[p])]
    with pytest.raises(UnknownMeasureError, match="no measure named 'bogus'.*ahi_3a"):
        retrieve(ctx, RetrieveInput(source="measure", measure="bogus"))
    with pytest.raises(EmptyQueryError):
        retrieve(ctx, RetrieveInput(source="measure"))
    # no index needed: the facts are the studies' own
    noindex = ToolContext(library=lib, patient=OSA)
    assert retrieve(noindex, RetrieveInput(source="measure", measure="ahi_3a")).hits


# ---------------------------------------------------------------------- parts of the night
def test_parts_of_the_night_in_words(ctx):
    from tools.common import find_night_part, night_part_bounds

    assert find_night_part("plot the oxygen for the second half of the night") == "second half"
    assert find_night_part("apneas in the last 2 hours?") == "last 2 hours"
    assert find_night_part("the final hour") == "last 1 hour"
    assert find_night_part("first 90 minutes of the recording") == "first 90 minutes"
    assert find_night_part("the middle third") == "middle third"
    assert find_night_part("the second apnea") is None and find_night_part("at 2 am") is None
    assert night_part_bounds("second half", 0, 100) == (50, 100)
    assert night_part_bounds("last third", 0, 90) == (60, 90)
    assert night_part_bounds("middle third", 0, 90) == (30, 60)
    assert night_part_bounds("third quarter", 0, 80) == (40, 60)
    assert night_part_bounds("first 2 hours", 100, 10000) == (100, 7300)
    assert night_part_bounds("last 3 hours", 0, 3600) == (0, 3600)  # clipped to the night
    for bad in ("middle quarter", "second hour", "whenever", "fourth third"):
        with pytest.raises(TimeRangeError, match="part"):
            night_part_bounds(bad, 0, 100)
    p = ctx.processed()
    n = p.n_epochs
    first, second = (resolve_selection(p, TimeSelection(part=w)).span
                     for w in ("first half", "second half"))
    assert first.first_epoch == 0 and second.last_epoch == n - 1
    assert first.last_epoch + 1 == second.first_epoch
    assert abs(first.n_epochs - second.n_epochs) <= 1
    with pytest.raises(TimeRangeError, match="not both"):
        resolve_selection(p, TimeSelection(part="first half", start=60))
    assert not TimeSelection(part="first half").is_night


def test_spindles_and_eye_movements_are_detected_when_none_is_scored(ctx, bare):
    from sleeplm.clinical.detectors import detect_spindles

    rec = ctx.recording()
    assert rec.events_of("spindle").empty  # the simulated study scores none
    out = events_in_range(ctx, EventsInput(types=["spindle"], limit=5))
    found = detect_spindles(rec)
    assert out.n_total == len(found) > 20
    assert [e.onset_s for e in out.events] == sorted(found["onset"])[:5]
    assert all(e.automatic and e.attributes["frequency_hz"] > 9 for e in out.events)
    assert all(e.id >= len(rec.events) for e in out.events)  # not rows of the events table
    scored = events_in_range(ctx, EventsInput(limit=3)).events
    assert scored and not any(e.automatic for e in scored)  # the study's own events
    from sleeplm.clinical.detectors import is_automatic
    assert not is_automatic(None) and not is_automatic("arousal, not automatic: scorer 2")
    assert any("YASA spindles_detect" in w and "not scored by a person" in w
               for w in out.warnings)
    half = events_in_range(ctx, EventsInput(types=["spindle"], within=TimeSelection(
        part="second half")))
    assert 0 < half.n_total < out.n_total
    rem = events_in_range(ctx, EventsInput(types=["rapid_eye_movement"], limit=3))
    assert rem.n_total > 0 and all(e.stage in ("R", "W") for e in rem.events)
    # the bare study has no EEG: the reason is given, nothing is invented
    none = events_in_range(bare, EventsInput(types=["spindle"]))
    assert none.n_total == 0 and any("could not run" in w and "EEG" in w for w in none.warnings)


def test_slow_channels_are_drawn_as_a_trend_over_a_long_window(ctx):
    half = signals_figure(ctx, SignalsInput(window=TimeSelection(part="second half"),
                                            channels=["SPO2"]))
    assert half.png.startswith(PNG) and half.channels == ["SPO2"]
    assert any(w.startswith("trend over") for w in half.warnings)
    assert half.span.n_epochs > 20
    raw = signals_figure(ctx, SignalsInput(window=TimeSelection(part="second half"),
                                           channels=["SPO2", "EEG_C3"]))
    assert any("window cut to 600 s" in w for w in raw.warnings)

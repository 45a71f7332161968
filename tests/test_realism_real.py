"""Real statistics drive the simulator: the empirical tables read the real files right, and
simulated plans (no signals) have UCDDB's event durations and gaps and Dreem's stage sequences.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from sleeplm.clinical.consensus import stages_from_codes
from sleeplm.data import (
    apnea_ecg_ids,
    apnea_ecg_path,
    dreem_night_ids,
    dreem_scorings,
    ucddb_events,
)
from sleeplm.recording import SLEEP_STAGES
from sleeplm.simulate import get_profile, simulate_night
from sleeplm.simulate.events import plan_night
from sleeplm.simulate.hypnograms import night_hypnogram, source_pool
from sleeplm.simulate.real_stats import (
    CLUSTER_GAP_S,
    EVENT_TYPES,
    clustering_for_ahi,
    dreem_hypnogram,
    event_durations,
    event_gaps,
    event_type_mix,
    CYCLIC_BAND_HZ,
    band_share,
    hr_per_second,
    hr_rises,
    hr_segment_spectra,
    scorer_disagreement,
    stage_rate_ratios,
    ucddb_nights,
)
from sleeplm.simulate.realism import ambiguous_stages


# --------------------------------------------------------------------------- the real tables
def test_ucddb_tables_read_the_real_events():
    ev = ucddb_events()
    nights = ucddb_nights()
    assert len(nights) == 25
    assert sum(n.onsets.size for n in nights) == len(ev) == 3121
    durs = event_durations()
    assert sum(d.size for d in durs.values()) == len(ev)
    assert all(d.min() >= 8 for d in durs.values())  # AASM >= 10 s, a few scored shorter
    # mixed apneas are the longest events, hypopneas dominate the mix (UCDDB, 2000s scoring)
    assert np.median(durs["mixed_apnea"]) > np.median(durs["hypopnea"])
    mix = event_type_mix()
    assert set(mix) == set(EVENT_TYPES) and sum(mix.values()) == pytest.approx(1.0)
    assert mix["hypopnea"] > 0.7
    ratios = stage_rate_ratios()
    assert set(ratios) == {"N1", "N2", "N3", "R"} and all(v > 0 for v in ratios.values())
    # no wake-onset event counts in a stage rate, and the AHI is per hour of sleep
    n = nights[0]
    assert n.ahi == pytest.approx(np.isin(n.stages, SLEEP_STAGES).sum()
                                  / sum(n.sleep_hours.values()))


def test_runs_are_split_at_the_cluster_gap():
    runs, within = clustering_for_ahi(30.0)
    assert runs and within.size
    assert within.max() <= CLUSTER_GAP_S and within.min() >= 0
    assert sum(r.size for r in runs) == within.size


def test_dreem_stage_sources_are_the_scorers_consensus():
    for nid in dreem_night_ids("dodo")[:2] + dreem_night_ids("dodh")[:1]:
        codes = dreem_scorings(nid)
        hyp = dreem_hypnogram(nid)
        assert hyp.shape == (codes.shape[1],) and set(hyp) <= {"W", "N1", "N2", "N3", "R", "UNS"}
        assert ((hyp == "UNS") == (codes < 0).all(axis=0)).all()  # unscored only by all five
        unanimous = (codes == codes[0]).all(axis=0) & (codes[0] >= 0)
        want = np.asarray(stages_from_codes(codes[:1]))[0]
        assert (hyp[unanimous] == want[unanimous]).all()
        assert dreem_hypnogram(nid) is hyp  # read once per night


def test_scorer_disagreement_is_larger_next_to_stage_changes():
    table = scorer_disagreement()
    for stage in ("W", "N2", "N3", "R"):
        assert table[(stage, True)][0] > table[(stage, False)][0]
    assert 0.2 < table[("N1", False)][0] < 0.6  # N1 is the stage scorers disagree on most


# --------------------------------------------------------------------------- simulated plans
@pytest.fixture(scope="module")
def matched_plans():
    """One plan per real UCDDB night, with its AHI, on a real OSA (DOD-O) stage sequence."""
    plans = []
    for k, night in enumerate(ucddb_nights()):
        prof = get_profile("osa_moderate").model_copy(
            update={"ahi": (night.ahi, night.ahi), "event_mix": None})
        rng = np.random.default_rng(k)
        source = str(rng.choice(dreem_night_ids("dodo")))
        stages, _ = night_hypnogram(prof, rng, source)
        plans.append(plan_night(stages, prof, rng, statistics="real"))
    return plans


def test_event_durations_and_gaps_match_ucddb(matched_plans):
    real = ucddb_nights()
    real_dur = np.concatenate([n.durations for n in real])
    sim_dur = np.concatenate([p.respiratory["duration"].to_numpy() for p in matched_plans])
    assert ks_2samp(real_dur, np.floor(sim_dur)).statistic <= 0.1
    real_gap = np.concatenate([n.gaps for n in real])
    sim_gap = np.concatenate([event_gaps(p.respiratory["onset"].to_numpy(),
                                         p.respiratory["duration"].to_numpy())
                              for p in matched_plans])
    assert ks_2samp(real_gap, sim_gap).statistic <= 0.12
    types = np.concatenate([p.respiratory["type"].to_numpy(str) for p in matched_plans])
    assert np.mean(types == "hypopnea") == pytest.approx(event_type_mix()["hypopnea"], abs=0.05)


def test_events_never_overlap_and_count_in_sleep(matched_plans):
    for plan, night in zip(matched_plans, ucddb_nights()):
        r = plan.respiratory
        assert (event_gaps(r["onset"].to_numpy(), r["duration"].to_numpy()) > 0).all()
        in_sleep = np.isin(plan.stage_at(r["onset"].to_numpy()), SLEEP_STAGES)
        tst_h = np.isin(plan.stages, SLEEP_STAGES).sum() * 30 / 3600
        assert in_sleep.sum() / tst_h == pytest.approx(night.ahi, rel=0.15, abs=1.0)


def test_profiles_without_a_mix_get_the_real_one():
    stages = np.array(["W"] * 20 + ["N2"] * 500 + ["R"] * 100 + ["W"] * 10)
    prof = get_profile("healthy_young").model_copy(update={"ahi": (40.0, 40.0)})
    r = plan_night(stages, prof, np.random.default_rng(1), statistics="real").respiratory
    assert (r["type"] == "hypopnea").mean() == pytest.approx(event_type_mix()["hypopnea"],
                                                             abs=0.1)
    r = plan_night(stages, get_profile("osa_severe"), np.random.default_rng(1),
                   statistics="real").respiratory
    assert (r["type"] == "obstructive_apnea").mean() > 0.2  # OSA profiles keep their mix


def test_profiles_keep_their_own_character():
    csa = get_profile("csa_cheyne_stokes")
    stages = np.array(["W"] * 20 + ["N2"] * 600 + ["R"] * 100 + ["W"] * 10)
    plan = plan_night(stages, csa, np.random.default_rng(3), statistics="real")
    r = plan.respiratory
    assert (r["type"] == "central_apnea").mean() > 0.5 and r["periodic"].any()
    assert r["duration"].between(*csa.event_duration).all()


def test_dreem_sources_by_profile_and_deterministic():
    osa, healthy = get_profile("osa_severe"), get_profile("healthy_young")
    assert set(source_pool(osa, "dreem")) == set(dreem_night_ids("dodo"))
    assert set(source_pool(healthy, "dreem")) == set(dreem_night_ids("dodh"))
    a = night_hypnogram(osa, np.random.default_rng(5), "dreem")
    b = night_hypnogram(osa, np.random.default_rng(5), "dreem")
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    nid = dreem_night_ids("dodh")[0]
    st, src = night_hypnogram(healthy, np.random.default_rng(0), nid)
    assert src == nid and set(np.unique(st)) <= {"W", "N1", "N2", "N3", "R"}
    st, src = night_hypnogram(healthy, np.random.default_rng(0), "SC4001E0")  # still works
    assert src == "SC4001E0"


def test_hr_rises_measure_a_known_rise():
    hr = np.full(600, 60.0)
    hr[300:320] = 60 + np.linspace(0, 12, 20)
    hr[320:340] = 72 - np.linspace(0, 12, 20)
    size, ttp = hr_rises(hr, np.ones(600, bool))
    assert size.size == 1 and size[0] == pytest.approx(12, abs=1.5) and 15 <= ttp[0] <= 25


def test_apnea_ecg_heart_rate_swings_in_apnea_minutes():
    """The real statistic the simulated heart is compared with: on a real apnea night, heart-rate
    rises are larger and the 25-120 s band stronger in apnea than in normal minutes."""
    rid = apnea_ecg_ids("a")[0]
    with np.load(apnea_ecg_path(rid)) as z:
        hr = hr_per_second(z["beat_time_s"], z["hr_bpm"])
        lab = z["apnea_minute"].astype(int)
    assert 40 < np.median(hr) < 100 and hr.min() > 25
    lab_s = np.repeat(lab, 60)[: hr.size]
    rise_apnea, _ = hr_rises(hr[: lab_s.size], lab_s == 1)
    rise_normal, _ = hr_rises(hr[: lab_s.size], lab_s == 0)
    assert np.median(rise_apnea) > np.median(rise_normal)
    f, spectra, labels = hr_segment_spectra(hr, lab)
    share = band_share(f, spectra, CYCLIC_BAND_HZ)
    assert np.median(share[labels == 1]) > np.median(share[labels == 0])


def test_ambiguous_epochs_follow_the_real_disagreement():
    stages = np.array((["N2"] * 40 + ["R"] * 20 + ["N1"] * 4) * 30)
    other, weight = ambiguous_stages(stages, np.random.default_rng(0))
    share = (weight > 0).mean()
    assert 0.05 < share < 0.35
    assert ((other != stages) == (weight > 0)).all()
    assert weight[weight > 0].min() >= 0.3 and weight.max() <= 0.7


def test_realistic_noise_is_opt_in_and_deterministic():
    hyp = np.array(["W"] * 4 + ["N2"] * 20 + ["N3"] * 10 + ["R"] * 10 + ["W"] * 2)
    clean = simulate_night(hyp, "healthy_young", seed=2)
    real = simulate_night(hyp, "healthy_young", seed=2, noise="real")
    again = simulate_night(hyp, "healthy_young", seed=2, noise="real")
    c4 = "EEG_C4"
    assert not np.array_equal(clean.recording.signals[c4].data, real.recording.signals[c4].data)
    np.testing.assert_array_equal(real.recording.signals[c4].data,
                                  again.recording.signals[c4].data)
    # only the brain channels change; the plan and the truth of events are the same
    np.testing.assert_array_equal(clean.recording.signals["SPO2"].data,
                                  real.recording.signals["SPO2"].data)
    with pytest.raises(ValueError, match="noise"):
        simulate_night(hyp, "healthy_young", seed=2, noise="loud")


def test_v1_statistics_stay_the_default_until_the_checkpoint_is_retrained():
    """The shipped SleepLM checkpoint learned "v1" nights: the default plan places events one by
    one with uniform durations (no runs, v1 durations and REM weight), the "real" one in runs."""
    from sleeplm.simulate.profiles import v1_profile

    stages = np.array(["W"] * 20 + ["N2"] * 600 + ["R"] * 200 + ["W"] * 10)
    prof = get_profile("osa_severe")
    v1 = plan_night(stages, prof, np.random.default_rng(5))
    real = plan_night(stages, prof, np.random.default_rng(5), statistics="real")
    assert v1.statistics == "v1" and real.statistics == "real"
    assert v1.respiratory["duration"].between(15.0, 40.0).all()  # osa_severe's v1 range
    assert v1_profile(prof).rem_factor == 1.5 and v1_profile(prof).event_duration == (15, 40)
    assert not real.respiratory["duration"].between(15.0, 40.0).all()  # real durations
    gaps = lambda r: (r["onset"].to_numpy()[1:] - (r["onset"] + r["duration"]).to_numpy()[:-1])
    assert np.median(gaps(real.respiratory)) < np.median(gaps(v1.respiratory))  # runs
    with pytest.raises(ValueError, match="statistics"):
        plan_night(stages, prof, np.random.default_rng(5), statistics="new")
    night = simulate_night(stages[:200], "osa_moderate", seed=1, statistics="real")
    assert night.plan.statistics == "real" and "real event statistics" in night.recording.info.source


# --------------------------------------------------------------------------- fitted subsets
def test_fit_records_fits_on_a_subset_and_leaves_the_default_alone():
    """Held-out comparisons fit the statistics on some records only; outside a fit_records
    block (and with all records named) everything is as before."""
    from pandas.testing import assert_frame_equal

    from sleeplm.data import ucddb_record_ids
    from sleeplm.simulate.real_stats import current_fit, fit_records

    ids = ucddb_record_ids()
    ev = ucddb_events()
    default = event_durations()
    for t in EVENT_TYPES:  # the default is still all 25 nights pooled, as first written
        np.testing.assert_array_equal(
            default[t], np.sort(ev.loc[ev["type"] == t, "duration"].to_numpy(dtype=float)))
    sub = ids[:5]
    durs = event_durations(sub)
    assert sum(d.size for d in durs.values()) == int(ev["record_id"].isin(sub).sum())
    assert sum(d.size for d in durs.values()) < sum(d.size for d in default.values())
    assert stage_rate_ratios(sub) != stage_rate_ratios()
    assert event_type_mix(sub) != event_type_mix()

    stages = np.array(["W"] * 20 + ["N2"] * 500 + ["N3"] * 100 + ["R"] * 150 + ["W"] * 10)
    prof = get_profile("osa_severe")
    before = plan_night(stages, prof, np.random.default_rng(5), statistics="real").respiratory
    with fit_records(ucddb=sub) as fit:
        assert fit.ucddb == tuple(sub) and current_fit().ucddb == tuple(sub)
        assert [n.record_id for n in ucddb_nights()] == sub
        assert event_durations() is durs  # cached by the subset
        assert clustering_for_ahi(30.0)[1].size != clustering_for_ahi(30.0, records=ids)[1].size
        inside = plan_night(stages, prof, np.random.default_rng(5), statistics="real").respiratory
    assert not inside.equals(before)
    assert current_fit().ucddb == tuple(ids) and len(ucddb_nights()) == 25
    for t in EVENT_TYPES:
        np.testing.assert_array_equal(event_durations()[t], default[t])
    with fit_records(ucddb=reversed(ids)):  # all records, in any order: the default night
        every = plan_night(stages, prof, np.random.default_rng(5), statistics="real").respiratory
    after = plan_night(stages, prof, np.random.default_rng(5), statistics="real").respiratory
    assert_frame_equal(after, before)
    assert_frame_equal(every, before)


def test_fit_records_restricts_dreem_sources_and_checks_its_ids():
    from sleeplm.simulate.real_stats import fit_records

    dodh, dodo = dreem_night_ids("dodh"), dreem_night_ids("dodo")
    osa = get_profile("osa_severe")
    with fit_records(dreem=dodh[:2] + dodo[:3]):
        assert source_pool(osa, "dreem") == dodo[:3]
        _, src = night_hypnogram(osa, np.random.default_rng(0), "dreem")
        assert src in dodo[:3]
        with fit_records(ucddb=["ucddb002", "ucddb003"]) as inner:  # dreem kept from outside
            assert inner.dreem == tuple(i for i in dreem_night_ids() if i in dodh[:2] + dodo[:3])
    assert source_pool(osa, "dreem") == dodo
    with fit_records(dreem=dodh[:2]), pytest.raises(ValueError, match="dodo"):
        source_pool(osa, "dreem")
    with pytest.raises(KeyError, match="ucddb999"), fit_records(ucddb=["ucddb002", "ucddb999"]):
        pass
    with pytest.raises(ValueError, match="empty"), fit_records(ucddb=[]):
        pass
    with pytest.raises(TypeError, match="collection"), fit_records(ucddb="ucddb002"):
        pass

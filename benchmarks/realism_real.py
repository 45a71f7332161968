"""Simulated next to real: do simulated nights have the statistics of real ones?

Puts the simulator's nights side by side with the real data bundled in :mod:`sleeplm.data`
(quantiles 10/25/50/75/90 and the two-sample Kolmogorov-Smirnov distance for each
distribution; target KS <= 0.1):

1. **Respiratory events** vs UCDDB (25 real nights): for each real night one simulated plan
   with the same AHI (profile osa_moderate with that night's AHI and the default, UCDDB, event
   mix; the old simulator: its own OSA mix) on a real OSA stage sequence (DOD-O); event
   durations (1-s resolution, as UCDDB scores them), inter-event gaps (end to next onset),
   events per hour in N1/N2/N3/R relative to the night's AHI (one value per night), type mix.
2. **Stage sequences** vs the real hypnograms of the same cohort: healthy profiles
   (healthy_young: young and middle-aged adults, as the Sleep-EDF and DOD-H nights) against
   Sleep-EDF + DOD-H, sleep-apnea profiles against DOD-O;
   bout lengths per stage (epochs) and the epoch-to-epoch transition matrix (max absolute
   difference of transition probabilities), both over the sleep period.
3. **Heart rate** vs Apnea-ECG (52 real nights): the simulated heart rate (1 Hz, a pulse
   oximeter's trailing 4-s average; the real one put through the same average) of the
   UCDDB-matched plans plus healthy nights, labelled per minute as Apnea-ECG is (1 = the minute
   holds part of an apnea or hypopnea); share of heart-rate power in the cyclic band (25-120 s
   periods) and in the high-frequency band (0.15-0.4 Hz) per 5-min segment, in normal and in
   apnea minutes; size and rise time of heart-rate rises (trough to peak) in apnea and normal
   minutes; and the mean spectra (figure; mean |log10(sim/real)| over 1/300-0.2 Hz).
4. **Staging** (``--staging N``): YASA's accuracy and kappa on N simulated nights (real
   stage sequences, clean and realistic ``noise="real"`` signals).

**Held out** (default, ``--holdout``): each real set is split by record, deterministically
(``--split-seed``), into a half the simulator's statistics are fitted on
(:func:`sleeplm.simulate.real_stats.fit_records`, and the stage sequences drawn from) and a
half it is compared with: UCDDB by record (13 fit / 12 compare), Dreem per cohort (DOD-H 13 /
12, DOD-O 28 / 27), Sleep-EDF by subject (10 / 10 subjects), Apnea-ECG by its split
(:func:`sleeplm.data.apnea_ecg_split`: compare on validation + test). The simulator fits nothing
to Apnea-ECG at run time, but its heart-rate constants were set by hand against all 52 nights,
so the heart-rate rows are not strictly held out. ``--in-sample`` compares with the same records
the statistics come from (all of them; the in-sample table of docs/REALISM.md).

KS has sampling noise: for each statistic the table also gives the median KS between two random
halves of the compared real data (``real/2``), the smallest KS one can hope to see at that sample
size, and, held out, the KS between the fit and the compare halves of the real data
(``real fit/compare``): how far the two halves of real records are apart.

Run ``python benchmarks/realism_real.py [--in-sample] [--staging 6] [--docs]``; writes
``benchmarks/results/realism_real/realism_real[_holdout].json``, ``table[_holdout].md`` and
``realism_real[_holdout].png`` (``--docs`` also copies the figure to
``docs/figures/realism_real.png``). In-sample, works on an older simulator too (no Dreem
sources, no ``noise``): that is how the "before" column of docs/REALISM.md was measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.stats import ks_2samp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from sleeplm.data import (  # noqa: E402
    apnea_ecg_ids,
    apnea_ecg_path,
    apnea_ecg_split,
    dreem_night_ids,
    hypnogram_ids,
    subject_of,
    ucddb_record_ids,
)
from sleeplm.simulate import hypnograms as hyp_mod  # noqa: E402
from sleeplm.simulate.cardiorespiratory import simulate_cardiorespiratory  # noqa: E402
from sleeplm.simulate.events import plan_night  # noqa: E402
from sleeplm.simulate.profiles import Profile, get_profile  # noqa: E402
from sleeplm.simulate.real_stats import (  # noqa: E402
    CYCLIC_BAND_HZ,
    band_share,
    dreem_hypnogram,
    event_gaps,
    hr_per_second,
    hr_rises,
    hr_segment_spectra,
    ucddb_nights,
)

try:  # simulators before the held-out split have no fit_records (in-sample runs only)
    from sleeplm.simulate.real_stats import fit_records  # noqa: E402
except ImportError:  # pragma: no cover - older simulator
    fit_records = None

QUANTILES = (10, 25, 50, 75, 90)
STAGES = ("W", "N1", "N2", "N3", "R")
SLEEP = ("N1", "N2", "N3", "R")
NEW = hasattr(hyp_mod, "source_pool")  # this simulator can draw Dreem nights
BANDS = {"cyclic": CYCLIC_BAND_HZ, "hf": (0.15, 0.4)}
SEG = 300


# --------------------------------------------------------------------------- split
@dataclass(frozen=True)
class Split:
    """The real records the simulator is fitted on and those it is compared with.

    In-sample, both are all bundled records; held out, they are disjoint halves.
    """

    holdout: bool
    ucddb_fit: tuple[str, ...]
    ucddb_compare: tuple[str, ...]
    dreem_fit: tuple[str, ...]
    dreem_compare: tuple[str, ...]
    sleep_edf_fit: tuple[str, ...]
    sleep_edf_compare: tuple[str, ...]
    apnea_ecg_fit: tuple[str, ...]
    apnea_ecg_compare: tuple[str, ...]

    def fitted(self) -> AbstractContextManager:
        """Context in which the simulator's statistics come from the fit half only."""
        if not self.holdout:
            return nullcontext()
        if fit_records is None:
            raise RuntimeError("this simulator has no real_stats.fit_records: run --in-sample")
        return fit_records(ucddb=self.ucddb_fit, dreem=self.dreem_fit)

    def describe(self) -> str:
        """One line saying what is compared with what."""
        if not self.holdout:
            return ("In-sample: simulator fitted on all bundled records and compared with the same "
                    f"records (UCDDB {len(self.ucddb_fit)} nights, Dreem {len(self.dreem_fit)}, "
                    f"Sleep-EDF {len(self.sleep_edf_fit)}, Apnea-ECG {len(self.apnea_ecg_fit)}).")
        n = lambda ids, c: sum(dreem_night_ids(c).count(i) for i in ids)  # noqa: E731
        subj = lambda ids: len({subject_of(i) for i in ids})  # noqa: E731
        return (f"Held out: simulator fitted on UCDDB {len(self.ucddb_fit)} nights, Dreem "
                f"{n(self.dreem_fit, 'dodh')} DOD-H + {n(self.dreem_fit, 'dodo')} DOD-O nights, "
                f"Sleep-EDF {len(self.sleep_edf_fit)} nights of {subj(self.sleep_edf_fit)} "
                f"subjects; compared with the other UCDDB {len(self.ucddb_compare)}, Dreem "
                f"{n(self.dreem_compare, 'dodh')} DOD-H + {n(self.dreem_compare, 'dodo')} DOD-O, "
                f"Sleep-EDF {len(self.sleep_edf_compare)} nights of "
                f"{subj(self.sleep_edf_compare)} subjects, and Apnea-ECG validation + test "
                f"({len(self.apnea_ecg_compare)} nights; the heart's constants were set by hand "
                "on all 52, so its rows are not strictly held out).")


def _halves(ids: list[str], rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A random split of ``ids`` into a first half (the larger one when odd) and the rest,
    each in the order of ``ids``."""
    order = rng.permutation(len(ids))
    first = {ids[i] for i in order[: (len(ids) + 1) // 2]}
    return (tuple(i for i in ids if i in first), tuple(i for i in ids if i not in first))


def make_split(holdout: bool, seed: int = 0) -> Split:
    """Fit and compare halves of the real data (all records twice when not ``holdout``).

    Parameters
    ----------
    holdout : bool
    seed : int
        Seed of the random halves (UCDDB by record, Dreem per cohort, Sleep-EDF by subject);
        Apnea-ECG follows :func:`sleeplm.data.apnea_ecg_split` (fit: train; compare:
        validation + test).
    """
    ucddb, sedf, aecg = ucddb_record_ids(), hypnogram_ids(), apnea_ecg_ids()
    dreem = dreem_night_ids()
    if not holdout:
        a, b, c, d = tuple(ucddb), tuple(dreem), tuple(sedf), tuple(aecg)
        return Split(False, a, a, b, b, c, c, d, d)
    rng = np.random.default_rng(seed)
    u_fit, u_cmp = _halves(ucddb, rng)
    d_fit: set[str] = set()
    for cohort in ("dodh", "dodo"):  # both cohorts on both sides
        d_fit.update(_halves(dreem_night_ids(cohort), rng)[0])
    subjects = sorted({subject_of(i) for i in sedf})
    s_fit = set(_halves(subjects, rng)[0])
    return Split(
        True, u_fit, u_cmp,
        tuple(i for i in dreem if i in d_fit), tuple(i for i in dreem if i not in d_fit),
        tuple(i for i in sedf if subject_of(i) in s_fit),
        tuple(i for i in sedf if subject_of(i) not in s_fit),
        tuple(i for i in aecg if apnea_ecg_split(i) == "train"),
        tuple(i for i in aecg if apnea_ecg_split(i) != "train"))


def _stage_source(profile: Profile, rng: np.random.Generator, split: Split) -> str | None:
    """A real stage sequence of the profile's pool (Dreem cohort, plus Sleep-EDF for the
    healthy profiles) from the fit half; in-sample the same draw as ``source="real"``."""
    if not NEW:
        return None
    allowed = set(split.dreem_fit) | set(split.sleep_edf_fit)
    return str(rng.choice([i for i in hyp_mod.source_pool(profile, "real") if i in allowed]))


def _ucddb_compare_nights(split: Split) -> tuple:
    """The UCDDB nights the simulated ones are compared with."""
    return ucddb_nights(split.ucddb_compare) if split.holdout else ucddb_nights()


# --------------------------------------------------------------------------- helpers
def _ks(a, b) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return round(float(ks_2samp(a, b).statistic), 3) if a.size and b.size else None


def _row(name: str, real, sim, unit: str = "", floor: float | None = None,
         fit_real=None) -> dict:
    """One table row: ``real`` (the compared records) vs ``sim``; ``floor``: KS between random
    halves of ``real``; ``fit_real``: the real values of the fit half (held out only)."""
    real, sim = np.asarray(real, float), np.asarray(sim, float)
    return {"statistic": name, "unit": unit, "n_real": int(real.size), "n_sim": int(sim.size),
            "real_q": np.percentile(real, QUANTILES).round(2).tolist() if real.size else [],
            "sim_q": np.percentile(sim, QUANTILES).round(2).tolist() if sim.size else [],
            "ks": _ks(real, sim),
            "ks_real_halves": floor,
            "ks_real_fit_vs_compare": None if fit_real is None else _ks(fit_real, real)}


def _split_floor(groups: list[np.ndarray], rng: np.random.Generator, reps: int = 20) -> float:
    """Median KS between two random halves of the real units (nights or segments)."""
    out = []
    for _ in range(reps):
        idx = rng.permutation(len(groups))
        a = np.concatenate([np.atleast_1d(groups[i]) for i in idx[: len(idx) // 2]])
        b = np.concatenate([np.atleast_1d(groups[i]) for i in idx[len(idx) // 2:]])
        if a.size and b.size:
            out.append(ks_2samp(a, b).statistic)
    return round(float(np.median(out)), 3) if out else None


def _sleep_period(stages: np.ndarray) -> np.ndarray:
    st = np.asarray(stages).astype(str)
    sl = np.flatnonzero(np.isin(st, SLEEP))
    return st[sl[0]: sl[-1] + 1] if sl.size else st[:0]


def _bouts(stages: np.ndarray) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {s: [] for s in STAGES}
    st = _sleep_period(stages)
    if not st.size:
        return out
    edges = np.flatnonzero(st[1:] != st[:-1]) + 1
    for a, b in zip(np.r_[0, edges], np.r_[edges, st.size]):
        if st[a] in out:
            out[st[a]].append(int(b - a))
    return out


def _transitions(nights: list[np.ndarray]) -> np.ndarray:
    m = np.zeros((5, 5))
    code = {s: i for i, s in enumerate(STAGES)}
    for st in nights:
        st = _sleep_period(st)
        for a, b in zip(st[:-1], st[1:]):
            if a in code and b in code:
                m[code[a], code[b]] += 1
    return m / np.maximum(m.sum(axis=1, keepdims=True), 1)


def _fill_uns(st: np.ndarray) -> np.ndarray:
    st = np.asarray(st).astype("<U3").copy()
    for i in range(st.size):
        if st[i] == "UNS":
            st[i] = st[i - 1] if i else "W"
    return st


def _hr_night(hr: np.ndarray, lab: np.ndarray) -> dict:
    lab_s = np.repeat(np.asarray(lab, int), 60)[: hr.size]
    hr = hr[: lab_s.size]
    rise_a, ttp_a = hr_rises(hr, lab_s == 1)
    rise_n, _ = hr_rises(hr, lab_s == 0)
    f, spec, slab = hr_segment_spectra(hr, lab)
    out = {"rise_apnea": rise_a, "rise_time_apnea": ttp_a, "rise_normal": rise_n,
           "spec": spec, "spec_label": slab, "freqs": f}
    for band, limits in BANDS.items():
        out[band] = band_share(f, spec, limits) if f is not None else np.zeros(0)
    return out


# --------------------------------------------------------------------------- sections
def matched_plans(seed: int, split: Split, per_night: int = 1):
    """``per_night`` simulated plans per compared UCDDB night, with that night's AHI, planned
    with the statistics of the fit half (in-sample: one plan per night of all 25)."""
    plans = []
    with split.fitted():
        for rep_ in range(per_night):
            for k, x in enumerate(_ucddb_compare_nights(split)):
                # UCDDB-like patient: the night's AHI and the simulator's default (UCDDB) mix
                update = ({"ahi": (x.ahi, x.ahi), "event_mix": None} if NEW
                          else {"ahi": (x.ahi, x.ahi)})
                prof = get_profile("osa_moderate").model_copy(update=update)
                rng = np.random.default_rng(seed + k + 100 * rep_)
                # UCDDB patients were all referred for sleep apnea: a DOD-O (OSA) stage sequence
                dodo = [i for i in dreem_night_ids("dodo") if i in set(split.dreem_fit)]
                source = str(rng.choice(dodo)) if NEW else None
                stages, _ = hyp_mod.night_hypnogram(prof, rng, source)
                plans.append(plan_night(stages, prof, rng, statistics="real"))
    return plans


def _stage_ratios(nights) -> dict[str, list[float]]:
    """Events per hour in each sleep stage over the night's AHI, per real night (stages with
    more than 6 min)."""
    return {s: [((x.stages == s).sum() / x.sleep_hours[s]) / x.ahi for x in nights
                if x.sleep_hours[s] > 0.1 and x.ahi > 0] for s in SLEEP}


def events_section(plans, rng, split: Split) -> tuple[list[dict], dict]:
    real = _ucddb_compare_nights(split)
    fit = ucddb_nights(split.ucddb_fit) if split.holdout else None
    rows = []
    r_dur = [x.durations for x in real]
    s_dur = [np.floor(p.respiratory["duration"].to_numpy(float)) for p in plans]
    rows.append(_row("event duration", np.concatenate(r_dur), np.concatenate(s_dur), "s",
                     _split_floor(r_dur, rng),
                     np.concatenate([x.durations for x in fit]) if fit else None))
    r_gap = [x.gaps for x in real]
    s_gap = [event_gaps(p.respiratory["onset"].to_numpy(float),
                        p.respiratory["duration"].to_numpy(float)) for p in plans]
    rows.append(_row("inter-event gap (end to next onset)", np.concatenate(r_gap),
                     np.concatenate(s_gap), "s", _split_floor(r_gap, rng),
                     np.concatenate([x.gaps for x in fit]) if fit else None))
    real_ratios = _stage_ratios(real)
    fit_ratios = _stage_ratios(fit) if fit else None
    for s in SLEEP:
        rr = real_ratios[s]
        ss = []
        for p in plans:
            hours = {t: (p.stages == t).sum() * p.epoch_sec / 3600 for t in SLEEP}
            st = p.stage_at(p.respiratory["onset"].to_numpy(float))
            ahi = np.isin(st, SLEEP).sum() / sum(hours.values())
            if hours[s] > 0.1 and ahi > 0:
                ss.append(((st == s).sum() / hours[s]) / ahi)
        rows.append(_row(f"events/h in {s} / AHI (per night)", rr, ss, "ratio",
                         _split_floor([np.array([v]) for v in rr], rng),
                         fit_ratios[s] if fit_ratios else None))
    types = ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea")
    mix_real = {t: float(np.mean(np.concatenate([x.types for x in real]) == t)) for t in types}
    types_sim = np.concatenate([p.respiratory["type"].to_numpy(str) for p in plans])
    mix_sim = {t: float(np.mean(types_sim == t)) for t in mix_real}
    mix_fit = ({t: float(np.mean(np.concatenate([x.types for x in fit]) == t)) for t in types}
               if fit else None)
    return rows, {"type_mix_real": mix_real, "type_mix_sim": mix_sim, "type_mix_fit": mix_fit,
                  "gaps": (np.concatenate(r_gap), np.concatenate(s_gap)),
                  "durations": (np.concatenate(r_dur), np.concatenate(s_dur))}


def _cohort_nights(dreem_ids: tuple[str, ...], sleep_edf_ids: tuple[str, ...], rng
                   ) -> dict[str, list[np.ndarray]]:
    """Real hypnograms (UNS filled) of the healthy (DOD-H + Sleep-EDF) and OSA (DOD-O) cohorts."""
    keep = set(dreem_ids)
    return {
        "healthy": [_fill_uns(dreem_hypnogram(i)) for i in dreem_night_ids("dodh") if i in keep]
        + [_fill_uns(hyp_mod.load_hypnogram(i, rng)) for i in sleep_edf_ids],
        "OSA": [_fill_uns(dreem_hypnogram(i)) for i in dreem_night_ids("dodo") if i in keep],
    }


def stages_section(n_per_cohort: int, seed: int, rng, split: Split) -> tuple[list[dict], dict]:
    rows, extra = [], {}
    profiles = {"healthy": ("healthy_young",), "OSA": ("osa_mild", "osa_moderate", "osa_severe")}
    compare = _cohort_nights(split.dreem_compare, split.sleep_edf_compare, rng)
    fit = _cohort_nights(split.dreem_fit, split.sleep_edf_fit, rng) if split.holdout else None
    for cohort, real_nights in compare.items():
        sim_nights = []
        with split.fitted():
            for k in range(n_per_cohort):
                prof = get_profile(profiles[cohort][k % len(profiles[cohort])])
                r = np.random.default_rng(seed + 1000 + k)
                st, _ = hyp_mod.night_hypnogram(prof, r, _stage_source(prof, r, split))
                sim_nights.append(st)
        rb = [_bouts(n) for n in real_nights]
        sb = [_bouts(n) for n in sim_nights]
        fb = [_bouts(n) for n in fit[cohort]] if fit else None
        for s in STAGES:
            groups = [np.asarray(b[s]) for b in rb]
            rows.append(_row(f"{cohort}: {s} bout length", np.concatenate(groups),
                             np.concatenate([np.asarray(b[s]) for b in sb]), "epochs",
                             _split_floor(groups, rng),
                             np.concatenate([np.asarray(b[s]) for b in fb]) if fb else None))
        tr, ts = _transitions(real_nights), _transitions(sim_nights)
        halves = []
        for _ in range(20):
            idx = rng.permutation(len(real_nights))
            a = _transitions([real_nights[i] for i in idx[: len(idx) // 2]])
            b = _transitions([real_nights[i] for i in idx[len(idx) // 2:]])
            halves.append(np.abs(a - b).max())
        rows.append({"statistic": f"{cohort}: transition matrix, max |P_real - P_sim|",
                     "unit": "probability", "n_real": len(real_nights), "n_sim": len(sim_nights),
                     "real_q": [], "sim_q": [], "ks": round(float(np.abs(tr - ts).max()), 3),
                     "ks_real_halves": round(float(np.median(halves)), 3),
                     "ks_real_fit_vs_compare": round(float(np.abs(
                         _transitions(fit[cohort]) - tr).max()), 3) if fit else None})
        extra[cohort] = {"transitions_real": tr.round(3).tolist(),
                         "transitions_sim": ts.round(3).tolist()}
    return rows, extra


def _apnea_ecg_nights(ids: tuple[str, ...]) -> list[dict]:
    """Heart-rate measures of real Apnea-ECG nights (through the oximeter's 4-s average)."""
    out = []
    for rid in ids:
        with np.load(apnea_ecg_path(rid)) as z:
            hr = hr_per_second(z["beat_time_s"], z["hr_bpm"])
            lab = z["apnea_minute"]
        out.append(_hr_night(uniform_filter1d(hr, 4, origin=1), lab))
    return out


def hr_section(plans, n_healthy: int, seed: int, rng, split: Split) -> tuple[list[dict], dict]:
    real = _apnea_ecg_nights(split.apnea_ecg_compare)
    fit = _apnea_ecg_nights(split.apnea_ecg_fit) if split.holdout else None
    sim_plans = list(plans)
    with split.fitted():
        for k in range(n_healthy):
            prof = get_profile("healthy_young")
            r = np.random.default_rng(seed + 2000 + k)
            st, _ = hyp_mod.night_hypnogram(prof, r, _stage_source(prof, r, split))
            sim_plans.append(plan_night(st, prof, r, statistics="real"))
    sim = []
    for k, plan in enumerate(sim_plans):
        sig, _ = simulate_cardiorespiratory(plan, np.random.default_rng(seed + 3000 + k))
        hr = sig["HR"].astype(float)
        lab = np.zeros(int(np.ceil(hr.size / 60)), int)
        for a, d in zip(plan.respiratory["onset"], plan.respiratory["duration"]):
            lab[int(a // 60): int((a + d) // 60) + 1] = 1
        sim.append(_hr_night(hr, lab))
    rows = []
    for key, name, unit in (("rise_apnea", "HR rise in apnea minutes", "bpm"),
                            ("rise_time_apnea", "HR rise time in apnea minutes", "s"),
                            ("rise_normal", "HR rise in normal minutes", "bpm")):
        groups = [n[key] for n in real]
        rows.append(_row(name, np.concatenate(groups), np.concatenate([n[key] for n in sim]),
                         unit, _split_floor(groups, rng),
                         np.concatenate([n[key] for n in fit]) if fit else None))
    for band in BANDS:
        for lab_val, lab_name in ((0, "normal"), (1, "apnea")):
            groups = [n[band][n["spec_label"] == lab_val] for n in real]
            simv = np.concatenate([n[band][n["spec_label"] == lab_val] for n in sim])
            label = "25-120 s" if band == "cyclic" else "0.15-0.4 Hz"
            fitv = (np.concatenate([n[band][n["spec_label"] == lab_val] for n in fit])
                    if fit else None)
            rows.append(_row(f"HR power share {label}, {lab_name} 5-min segments",
                             np.concatenate(groups), simv, "fraction", _split_floor(groups, rng),
                             fitv))
    spectra = {}
    f = next(n["freqs"] for n in real if n["freqs"] is not None)
    for lab_val, lab_name in ((0, "normal"), (1, "apnea")):
        rs = np.concatenate([n["spec"][n["spec_label"] == lab_val] for n in real if n["spec"].size])
        ss = np.concatenate([n["spec"][n["spec_label"] == lab_val] for n in sim if n["spec"].size])
        mr, ms = rs.mean(axis=0), ss.mean(axis=0)
        band = (f >= 1 / SEG) & (f <= 0.2)  # below the 4-s average's notch at 0.25 Hz
        spectra[lab_name] = {"freqs": f.tolist(), "real": mr.tolist(), "sim": ms.tolist(),
                             "mean_abs_log10_ratio": round(float(np.mean(np.abs(
                                 np.log10(ms[band] / mr[band])))), 3)}
    return rows, {"spectra": spectra, "n_sim_nights": len(sim), "n_real_nights": len(real),
                  "rise_apnea": (np.concatenate([n["rise_apnea"] for n in real]),
                                 np.concatenate([n["rise_apnea"] for n in sim]))}


def staging_section(n: int, seed: int, split: Split) -> list[dict]:
    from realism_brain import staging_agreement

    from sleeplm.simulate import PROFILES, simulate_night

    by_subject: dict[str, str] = {}
    for rid in split.sleep_edf_compare:
        by_subject.setdefault(subject_of(rid), rid)
    sources = list(by_subject.values())[:n]
    profiles = list(PROFILES)
    out = []
    levels = ("clean", "real") if NEW else ("clean",)
    for k, src in enumerate(sources):
        for level in levels:
            kw = {"noise": level, "statistics": "real"} if NEW else {}
            with split.fitted():
                night = simulate_night(src, profiles[k % len(profiles)], seed=seed + k, **kw)
            rec, sig = night.recording, night.recording.signals
            r = staging_agreement(rec.stages, sig["EEG_C4"].data, sig["EOG_L"].data,
                                  sig["EMG_CHIN"].data, sig["EEG_C4"].sfreq, night.plan.age,
                                  night.plan.sex == "M", emg_sf=sig["EMG_CHIN"].sfreq)
            out.append({"source": src, "profile": night.profile, "noise": level,
                        "accuracy": round(float(r["accuracy"]), 3),
                        "kappa": round(float(r["kappa"]), 3)})
            print(f"  staging {src} {night.profile:18s} {level:5s} acc {r['accuracy']:.3f} "
                  f"kappa {r['kappa']:.3f}", flush=True)
    return out


# --------------------------------------------------------------------------- output
def table(rows: list[dict], split: Split) -> str:
    """The markdown table, headed by what is compared with what."""
    fmt = lambda q: " / ".join(f"{v:g}" for v in q) if q else "-"  # noqa: E731
    real = "real (compare half)" if split.holdout else "real"
    head = (f"| statistic | unit | {real} q10/25/50/75/90 | simulated q10/25/50/75/90 | KS | "
            "KS real/2 |")
    if split.holdout:
        head += " KS real fit/compare |"
    lines = [split.describe(), "", head, "|---" * head.count(" | ") + "|---|"]
    for r in rows:
        line = (f"| {r['statistic']} | {r['unit']} | {fmt(r['real_q'])} | {fmt(r['sim_q'])} | "
                f"{r['ks']} | {r['ks_real_halves']} |")
        if split.holdout:
            line += f" {r['ks_real_fit_vs_compare']} |"
        lines.append(line)
    return "\n".join(lines)


def figure(path: Path, ev: dict, hr: dict, st: dict, split: Split) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 8.5))
    for a, (key, title, unit) in zip(ax[0, :2], (("durations", "Event duration", "s"),
                                                 ("gaps", "Inter-event gap", "s"))):
        r, s = ev[key]
        bins = np.linspace(0, np.percentile(r, 97), 40) if key == "durations" else \
            np.logspace(0, np.log10(max(np.percentile(r, 99), 10)), 40)
        a.hist(r, bins, density=True, alpha=0.5,
               label=f"UCDDB{' compare half' if split.holdout else ''} (n={r.size})")
        a.hist(s, bins, density=True, alpha=0.5, label=f"simulated (n={s.size})")
        a.set(title=title, xlabel=unit)
        if key == "gaps":
            a.set_xscale("log")
        a.legend()
    a = ax[0, 2]
    for cohort, ls in (("OSA", "-"), ("healthy", "--")):
        tr = np.asarray(st[cohort]["transitions_real"])
        ts = np.asarray(st[cohort]["transitions_sim"])
        a.scatter(tr.ravel(), ts.ravel(), marker="o" if ls == "-" else "x", label=cohort)
    a.plot([0, 1], [0, 1], "k:", lw=1)
    a.set(title="Stage transition probabilities", xlabel="real", ylabel="simulated",
          xscale="symlog", yscale="symlog")
    a.legend()
    for a, name in zip(ax[1, :2], ("normal", "apnea")):
        sp = hr["spectra"][name]
        f = np.asarray(sp["freqs"])
        m = (f > 0) & (f <= 0.5)
        a.loglog(f[m], np.asarray(sp["real"])[m], label="Apnea-ECG")
        a.loglog(f[m], np.asarray(sp["sim"])[m], label="simulated")
        a.axvspan(1 / 120, 1 / 25, color="0.9")
        a.set(title=f"HR spectrum, {name} minutes (grey: 25-120 s)", xlabel="Hz",
              ylabel="bpm²/Hz")
        a.legend()
    a = ax[1, 2]
    r, s = hr["rise_apnea"]
    bins = np.linspace(0, 40, 41)
    a.hist(r, bins, density=True, alpha=0.5, label="Apnea-ECG apnea minutes")
    a.hist(s, bins, density=True, alpha=0.5, label="simulated apnea minutes")
    a.set(title="Heart-rate rise (trough to peak)", xlabel="bpm")
    a.legend()
    mode = ("held out: fitted on one half of the real records, compared with the other"
            if split.holdout else "in-sample: fitted on and compared with the same records")
    fig.suptitle("Simulated vs real (UCDDB events, Dreem/Sleep-EDF stages, Apnea-ECG heart rate)"
                 f"; {mode}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--holdout", dest="holdout", action="store_true", default=True,
                      help="fit on one half of each real set, compare with the other (default)")
    mode.add_argument("--in-sample", dest="holdout", action="store_false",
                      help="fit on and compare with all records (the old comparison)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the held-out halves (UCDDB, Dreem, Sleep-EDF)")
    parser.add_argument("--plans-per-night", type=int, default=None,
                        help="simulated plans per compared UCDDB night (default: 2 held out, "
                             "where half the nights are compared, else 1)")
    parser.add_argument("--stage-nights", type=int, default=60,
                        help="simulated hypnograms per cohort (healthy, OSA)")
    parser.add_argument("--healthy-hr", type=int, default=10,
                        help="healthy nights added to the UCDDB-matched ones for heart rate")
    parser.add_argument("--staging", type=int, default=0, help="nights staged by YASA (0: skip)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results"
                        / "realism_real")
    parser.add_argument("--docs", action="store_true",
                        help="copy the figure to docs/figures/realism_real.png")
    args = parser.parse_args()
    if args.holdout and fit_records is None:
        parser.error("this simulator has no real_stats.fit_records: run with --in-sample")
    per_night = args.plans_per_night or (2 if args.holdout else 1)
    if per_night < 1:
        parser.error(f"--plans-per-night must be >= 1, got {per_night}")
    split = make_split(args.holdout, args.split_seed)
    suffix = "_holdout" if args.holdout else ""
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    plans = matched_plans(args.seed, split, per_night)
    ev_rows, ev_extra = events_section(plans, rng, split)
    st_rows, st_extra = stages_section(args.stage_nights, args.seed, rng, split)
    hr_rows, hr_extra = hr_section(plans, args.healthy_hr, args.seed, rng, split)
    rows = ev_rows + st_rows + hr_rows
    staging = staging_section(args.staging, args.seed, split) if args.staging else []
    text = table(rows, split)
    print(f"simulator: {'new (Dreem sources)' if NEW else 'old'}; {time.perf_counter() - t0:.0f} s")
    print(text)
    for name in ("real", "sim", "fit"):
        if ev_extra[f"type_mix_{name}"] is not None:
            print(f"type mix {name}:", {k: round(v, 3)
                                        for k, v in ev_extra[f"type_mix_{name}"].items()})
    for name, sp in hr_extra["spectra"].items():
        print(f"HR spectrum {name}: mean |log10(sim/real)| = {sp['mean_abs_log10_ratio']}")
    if staging:
        for level in sorted({s["noise"] for s in staging}):
            sel = [s for s in staging if s["noise"] == level]
            print(f"YASA staging, noise={level}: accuracy "
                  f"{np.mean([s['accuracy'] for s in sel]):.3f}, kappa "
                  f"{np.mean([s['kappa'] for s in sel]):.3f} ({len(sel)} nights)")
    fig_path = args.out / f"realism_real{suffix}.png"
    try:
        figure(fig_path, ev_extra, hr_extra, st_extra, split)
    except Exception as exc:  # the table and JSON matter more than the picture
        print(f"figure not drawn: {exc}")
    payload = {"simulator": "new" if NEW else "old",
               "mode": "holdout" if args.holdout else "in-sample", "split": asdict(split),
               "plans_per_night": per_night, "comparison": split.describe(), "rows": rows,
               "type_mix_real": ev_extra["type_mix_real"], "type_mix_sim": ev_extra["type_mix_sim"],
               "type_mix_fit": ev_extra["type_mix_fit"],
               "stages": st_extra,
               "hr_spectrum_distance": {k: v["mean_abs_log10_ratio"]
                                        for k, v in hr_extra["spectra"].items()},
               "staging": staging}
    (args.out / f"realism_real{suffix}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"table{suffix}.md").write_text(text + "\n")
    if args.docs and fig_path.exists():
        (ROOT / "docs" / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copy(fig_path, ROOT / "docs" / "figures" / "realism_real.png")


if __name__ == "__main__":
    main()

"""Truth check of the captions: are they right about simulated nights whose truth is known?

For each simulated night (different profiles, real Sleep-EDF hypnograms) :func:`caption_night`
captions the recording **without its HR channel** (so heart rate must come from ECG R-peaks and
can be checked against the simulator's pulse-rate channel), then the captions' ``facts`` are
compared with ``SimulatedNight.truth``:

* **stage**: the stage stated in each epoch's brain/holistic caption vs the hypnogram (stages
  are stated as scored, so this checks bookkeeping, not staging).
* **annotated events, epoch level**: per epoch and type, the events a caption states
  (respiration: ``respiratory_events``, ``desaturations``; holistic: ``arousals``; somatic:
  ``plm``) vs the truth events overlapping the epoch (desaturations: starting in it).
  matched = sum over epochs and types of min(stated, true); precision = matched / stated,
  recall = matched / true. Targets >= 0.95.
* **annotated events, event level**: each truth apnea, hypopnea, desaturation, arousal, PLM and
  limb movement vs the event captions (same type, onset within 1 s). Targets >= 0.95.
* **micro-events, presence per epoch**: an epoch "has spindles" in the caption when its brain
  caption states spindles > 0, in the truth when a placed spindle starts in it; precision =
  epochs with both / epochs with caption presence, recall = epochs with both / epochs with
  truth presence. Spindles over N1-N3 epochs, slow waves (truth: slow waves and K-complexes)
  over N2-N3 epochs, rapid eye movements over R epochs (the simulator lists eye movements only
  in REM). Targets >= 0.7.
* **numbers**: SpO2 nadir of each truth desaturation vs its event caption (+-1 %), mean HR per
  epoch (ECG-derived in the caption vs the simulator's HR channel, +-3 bpm), event durations
  (+-2 s). Share within tolerance; target >= 0.95.

Usage: ``python benchmarks/caption_truth.py [--nights 8] [--out benchmarks/results]``. Prints
the table and the timing of an 8-h night, writes ``caption_truth.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("MNE_DONTWRITE_HOME", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NIGHTS = (("SC4001E0", "healthy_young", 11), ("SC4011E0", "osa_moderate", 12),
          ("SC4021E0", "osa_severe", 13), ("SC4031E0", "plm_disorder", 14),
          ("SC4041E0", "rbd", 15), ("SC4051E0", "csa_cheyne_stokes", 16),
          ("SC4061E0", "narcolepsy", 17), ("SC4071E0", "osa_mild", 18))
APNEAS = ("obstructive_apnea", "central_apnea", "mixed_apnea", "apnea")
EVENT_TYPES = APNEAS + ("hypopnea", "desaturation", "arousal", "plm", "limb_movement")
TARGETS = {"events": 0.95, "micro": 0.7, "numbers": 0.95}


def _by_system(ec) -> dict:
    return {c.system: c.facts for c in ec.captions}


def _overlap_epochs(onset: float, dur: float, n: int, es: float = 30.0) -> range:
    a = int(np.floor(onset / es))
    b = int(np.floor((onset + max(dur, 1e-6) - 1e-9) / es))
    return range(max(a, 0), min(b, n - 1) + 1)


def truth_check(night, nc, hr_truth_rec=None) -> dict:
    """Compare a NightCaptions with a SimulatedNight's truth; return the metrics."""
    rec = night.recording
    truth = night.truth
    n = rec.n_epochs
    stages = np.asarray(rec.stages)
    out: dict = {}

    # stage
    ok = tot = 0
    for ec in nc.epochs:
        for c in ec.captions:
            if "stage" in c.facts:
                tot += 1
                ok += c.facts["stage"] == stages[ec.epoch]
    out["stage_accuracy"] = ok / tot if tot else float("nan")

    # annotated events, epoch level
    true_cnt: dict[str, Counter] = {k: Counter() for k in ("apnea", "hypopnea", "desaturation",
                                                           "arousal", "plm")}
    for r in truth[truth["type"].isin(EVENT_TYPES)].itertuples():
        key = "apnea" if r.type in APNEAS else r.type
        if key not in true_cnt:
            continue
        if key == "desaturation":
            e = int(np.floor(r.onset / 30.0))
            if 0 <= e < n:
                true_cnt[key][e] += 1
        else:
            for e in _overlap_epochs(r.onset, r.duration, n):
                true_cnt[key][e] += 1
    cap_cnt: dict[str, Counter] = {k: Counter() for k in true_cnt}
    for ec in nc.epochs:
        f = _by_system(ec)
        for t in f.get("respiration", {}).get("respiratory_events", []) or []:
            cap_cnt["apnea" if t in APNEAS else t][ec.epoch] += 1
        cap_cnt["desaturation"][ec.epoch] += len(f.get("respiration", {}).get("desaturations", []) or [])
        cap_cnt["arousal"][ec.epoch] += int(f.get("holistic", {}).get("arousals", 0) or 0)
        cap_cnt["plm"][ec.epoch] += int(f.get("somatic", {}).get("plm", 0) or 0)
    ep_level = {}
    for k in true_cnt:
        matched = sum(min(true_cnt[k][e], cap_cnt[k][e]) for e in set(true_cnt[k]) | set(cap_cnt[k]))
        ns, nt = sum(cap_cnt[k].values()), sum(true_cnt[k].values())
        ep_level[k] = {"precision": matched / ns if ns else float("nan"),
                       "recall": matched / nt if nt else float("nan"), "n_true": nt, "n_stated": ns}
    out["epoch_events"] = ep_level

    # annotated events, event level + durations + nadir
    ev_caps = [c for c in nc.events if c.facts.get("event") in EVENT_TYPES]
    used = set()
    ev_level: dict[str, dict] = {}
    dur_ok = dur_n = nadir_ok = nadir_n = nadir_signal = 0
    for key in ("apnea", "hypopnea", "desaturation", "arousal", "plm", "limb_movement"):
        types = APNEAS if key == "apnea" else (key,)
        tr = truth[truth["type"].isin(types)]
        caps = [(i, c) for i, c in enumerate(ev_caps) if c.facts["event"] in types]
        starts = np.array([c.start for _, c in caps]) if caps else np.zeros(0)
        m = 0
        for r in tr.itertuples():
            if not starts.size:
                break
            j = int(np.argmin(np.abs(starts - r.onset)))
            i, c = caps[j]
            if abs(starts[j] - r.onset) <= 1.0 and i not in used and c.facts["event"] == r.type:
                used.add(i)
                m += 1
                dur_n += 1
                dur_ok += abs(float(c.facts["duration_s"]) - r.duration) <= 2.0
                if key == "desaturation" and "spo2_nadir" in (r.attributes or {}):
                    if c.facts.get("desat_nadir_pct") is not None:
                        nadir_n += 1
                        nadir_ok += abs(c.facts["desat_nadir_pct"] - r.attributes["spo2_nadir"]) <= 1.0
                        nadir_signal += c.facts.get("measured_from") == "SpO2 signal"
        ev_level[key] = {"precision": m / len(caps) if caps else float("nan"),
                         "recall": m / len(tr) if len(tr) else float("nan"),
                         "n_true": int(len(tr)), "n_captions": len(caps)}
    out["event_captions"] = ev_level
    out["duration_within_2s"] = dur_ok / dur_n if dur_n else float("nan")
    out["nadir_within_1pct"] = nadir_ok / nadir_n if nadir_n else float("nan")
    out["nadir_measured_share"] = nadir_signal / nadir_n if nadir_n else float("nan")
    out["n_nadirs"] = nadir_n

    # micro-events, presence per epoch
    ep_of = lambda t: np.floor(np.asarray(t, float) / 30.0).astype(int)  # noqa: E731
    micro = {}
    for key, ttypes, fact, allowed in (("spindles", ("spindle",), "spindles", ("N1", "N2", "N3")),
                                       ("slow_waves", ("slow_wave", "k_complex"), "slow_waves", ("N2", "N3")),
                                       ("rapid_eye_movements", ("rapid_eye_movement",),
                                        "rapid_eye_movements", ("R",))):
        tr = truth[truth["type"].isin(ttypes)]
        t_ep = set(int(e) for e in ep_of(tr["onset"]) if 0 <= e < n)
        c_ep = set()
        for ec in nc.epochs:
            v = _by_system(ec).get("brain", {}).get(fact)
            if v:
                c_ep.add(ec.epoch)
        mask = set(int(e) for e in np.flatnonzero(np.isin(stages, allowed)))
        t_ep &= mask
        c_ep &= mask
        both = len(t_ep & c_ep)
        micro[key] = {"precision": both / len(c_ep) if c_ep else float("nan"),
                      "recall": both / len(t_ep) if t_ep else float("nan"),
                      "epochs_true": len(t_ep), "epochs_stated": len(c_ep)}
    out["micro"] = micro

    # heart rate vs the simulator's pulse-rate channel
    hr_sig = (hr_truth_rec or rec).signals.get("HR")
    if hr_sig is not None:
        hr = np.asarray(hr_sig.data, float)
        per = int(30 * hr_sig.sfreq)
        hr_ep = hr[: n * per].reshape(n, per).mean(axis=1)
        okk = tot = 0
        for ec in nc.epochs:
            v = _by_system(ec).get("cardiac", {}).get("hr_bpm")
            if v is not None and np.isfinite(hr_ep[ec.epoch]):
                tot += 1
                okk += abs(v - hr_ep[ec.epoch]) <= 3.0
        out["hr_within_3bpm"] = okk / tot if tot else float("nan")
        out["hr_epochs"] = tot
    return out


def run_night(hyp: str, profile: str, seed: int) -> dict:
    from sleeplm.captions import caption_night
    from sleeplm.captions.features import epoch_features
    from sleeplm.simulate import simulate_night

    night = simulate_night(hyp, profile, seed=seed)
    rec = night.recording
    no_hr = dataclasses.replace(rec, signals={k: v for k, v in rec.signals.items() if k != "HR"})
    t0 = time.perf_counter()
    feats = epoch_features(no_hr)
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    nc = caption_night(no_hr, seed=seed)
    t_cap = time.perf_counter() - t0
    res = truth_check(night, nc, hr_truth_rec=rec)
    res.update(night=f"{hyp}/{profile}/{seed}", hours=round(rec.duration / 3600, 2),
               features_s=round(t_feat, 2), caption_night_s=round(t_cap, 2),
               n_event_captions=len(nc.events),
               night_facts={c.system: c.facts for c in nc.night},
               feature_timings={k: round(v, 2) for k, v in feats.timings.items()})
    return res


def eight_hour_timing() -> dict:
    from sleeplm.captions import caption_night
    from sleeplm.captions.features import epoch_features
    from sleeplm.simulate import simulate_night
    from sleeplm.simulate.hypnograms import night_hypnogram  # noqa: F401  (documented source)

    base = simulate_night("SC4001E0", "osa_moderate", seed=3).recording.stages
    stages = np.resize(base, 960)  # 8 h of 30-s epochs from a real sequence
    night = simulate_night(stages, "osa_moderate", seed=3)
    rec = night.recording
    t0 = time.perf_counter()
    feats = epoch_features(rec)
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    caption_night(rec)
    t_all = time.perf_counter() - t0
    return {"hours": round(rec.duration / 3600, 2), "features_s": round(t_feat, 2),
            "caption_night_s": round(t_all, 2),
            "feature_steps_s": {k: round(v, 2) for k, v in feats.timings.items()}}


def _pooled(rows: list[dict]) -> dict:
    def mean(path):
        vals = []
        for r in rows:
            x = r
            for p in path:
                x = x.get(p, {}) if isinstance(x, dict) else float("nan")
            if isinstance(x, (int, float)) and np.isfinite(x):
                vals.append(float(x))
        return float(np.mean(vals)) if vals else float("nan")

    def pool_pr(section, key, num_key_true, num_key_stated):
        # pooled over nights: weights by counts
        tp_p = st = tp_r = tt = 0.0
        for r in rows:
            d = r[section][key]
            p, rc = d["precision"], d["recall"]
            ns, nt = d[num_key_stated], d[num_key_true]
            if ns and np.isfinite(p):
                tp_p += p * ns
                st += ns
            if nt and np.isfinite(rc):
                tp_r += rc * nt
                tt += nt
        return {"precision": tp_p / st if st else float("nan"), "recall": tp_r / tt if tt else float("nan"),
                "n_true": int(tt), "n_stated": int(st)}

    out = {"stage_accuracy": mean(("stage_accuracy",)),
           "epoch_events": {k: pool_pr("epoch_events", k, "n_true", "n_stated")
                            for k in rows[0]["epoch_events"]},
           "event_captions": {k: pool_pr("event_captions", k, "n_true", "n_captions")
                              for k in rows[0]["event_captions"]},
           "micro": {k: pool_pr("micro", k, "epochs_true", "epochs_stated") for k in rows[0]["micro"]},
           "nadir_within_1pct": mean(("nadir_within_1pct",)),
           "nadir_measured_share": mean(("nadir_measured_share",)),
           "hr_within_3bpm": mean(("hr_within_3bpm",)),
           "duration_within_2s": mean(("duration_within_2s",))}
    return out


def table(pooled: dict) -> str:
    lines = [f"{'check':<44}{'precision':>10}{'recall':>9}{'n true':>9}{'target':>8}"]
    for sec, label in (("epoch_events", "epoch captions"), ("event_captions", "event captions")):
        for k, d in pooled[sec].items():
            lines.append(f"{label + ': ' + k:<44}{d['precision']:>10.3f}{d['recall']:>9.3f}"
                         f"{d['n_true']:>9}{'>=0.95':>8}")
    for k, d in pooled["micro"].items():
        lines.append(f"{'micro-events (epoch presence): ' + k:<44}{d['precision']:>10.3f}"
                     f"{d['recall']:>9.3f}{d['n_true']:>9}{'>=0.7':>8}")
    lines.append(f"{'stage stated = scored (accuracy)':<44}{pooled['stage_accuracy']:>10.3f}")
    lines.append(f"{'SpO2 nadir within 1% (share)':<44}{pooled['nadir_within_1pct']:>10.3f}"
                 f"   (measured from SpO2: {pooled['nadir_measured_share']:.3f})")
    lines.append(f"{'HR from ECG within 3 bpm (share of epochs)':<44}{pooled['hr_within_3bpm']:>10.3f}")
    lines.append(f"{'event durations within 2 s (share)':<44}{pooled['duration_within_2s']:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nights", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rows = []
    for hyp, prof, seed in NIGHTS[: args.nights]:
        r = run_night(hyp, prof, seed)
        rows.append(r)
        pats = {k: v for k, v in r["night_facts"].get("holistic", {}).items() if isinstance(v, bool)}
        sev = r["night_facts"].get("respiration", {}).get("severity")
        print(f"{r['night']:<36} {r['hours']:.2f} h  features {r['features_s']:.1f} s  "
              f"caption_night {r['caption_night_s']:.1f} s  severity: {sev}; patterns {pats}",
              flush=True)
    pooled = _pooled(rows)
    print()
    print(table(pooled))
    t8 = eight_hour_timing()
    print(f"\n8-h night ({t8['hours']} h): features {t8['features_s']} s, caption_night "
          f"{t8['caption_night_s']} s; steps {t8['feature_steps_s']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "caption_truth.json").write_text(json.dumps(
        {"pooled": pooled, "nights": rows, "eight_hour_timing": t8, "targets": TARGETS},
        indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

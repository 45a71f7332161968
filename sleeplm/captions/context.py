"""Event, segment and night captions: events in their context, 5-min windows, the whole night.

* **Event captions**: every scored apnea, hypopnea, desaturation, arousal, PLM and limb
  movement, with its duration, stage, position and consequences ("a 24-s obstructive apnea in
  supine N2, effort continuing, followed by a 5% desaturation to 89% and an arousal"). The
  desaturation depth and arousal come from :func:`respiratory_events` (the same association
  rules as the AHI); the nadir from the detected desaturation of that depth. "Effort
  continuing" / "no effort" / "effort resuming" follows from the scored type (obstructive /
  central / mixed), not from the effort channels.
* **Segment captions**: windows of ``segment_min`` minutes: stage mix, event counts, SpO2
  range, heart-rate trend.
* **Night captions**: architecture, AHI with its rule, ODI, nadir, PLMI, severity and notable
  patterns, from :func:`clinical_summary` and the epoch features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sleeplm.captions.caption import Caption
from sleeplm.captions.features import RESP_TYPES, EpochFeatures
from sleeplm.captions.phrasing import (EVENT_NAMES, Clause, article, compose, jsonable,
                                       make_rng, num, pick, plural)
from sleeplm.clinical.oximetry import desaturations_near
from sleeplm.clinical.position import position_at
from sleeplm.clinical.respiratory import DESAT_LAG_SEC, respiratory_events
from sleeplm.clinical.summary import ClinicalSummary
from sleeplm.recording import Recording

__all__ = ["event_captions", "segment_captions", "night_captions", "night_patterns"]

_EFFORT = {
    "obstructive_apnea": ["effort continuing", "with continued respiratory effort"],
    "central_apnea": ["without respiratory effort", "effort absent"],
    "mixed_apnea": ["effort absent at first, then resuming", "starting without effort, effort resuming"],
    "hypopnea": ["with reduced airflow", "airflow reduced"],
    "apnea": ["effort not classified", "type unspecified"],
}
_STAGE_WORD = {"W": "wake", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM", "UNS": "unscored time"}


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _context(stage: str, position: str) -> tuple[list[str], dict]:
    facts: dict[str, Any] = {}
    st = _STAGE_WORD.get(stage, stage)
    if stage != "UNS":
        facts["stage"] = stage
    if position and position != "unknown":
        facts["position"] = position
        if stage != "UNS":
            return [f"in {position} {st}", f"during {st}, {position}", f"in {st} while {position}"], facts
        return [f"while {position}", f"in the {position} position"], facts
    if stage != "UNS":
        return [f"in {st}", f"during {st}"], facts
    return [""], facts


def event_captions(rec: Recording, feats: EpochFeatures, desat_nums: dict[int, dict], *,
                   seed: int = 0) -> list[Caption]:
    """One caption per scored respiratory event, desaturation, arousal, PLM and limb movement."""
    out: list[Caption] = []
    ev = rec.events
    if ev.empty:
        return out
    resp = respiratory_events(rec)
    desats = feats.desaturations
    arousal_on = rec.events_of("arousal")["onset"].to_numpy(float)
    hr_t = hr_v = None
    for eid, row in ev.iterrows():
        etype = row["type"]
        if etype not in RESP_TYPES + ("desaturation", "arousal", "plm", "limb_movement"):
            continue
        onset, dur = float(row["onset"]), float(row["duration"])
        stage = str(rec.stage_at(onset)[0])
        pos = str(position_at(rec, onset)[0])
        rng = make_rng(seed, "event", int(eid))
        name = EVENT_NAMES[etype]
        d = num(dur)
        ctx, facts = _context(stage, pos)
        facts = {"event": etype, "duration_s": d, **facts}
        ctx_txt = pick(rng, ctx)
        head = article(f"{d}-s {name}") if dur >= 1 else article(name)
        if etype in ("plm", "limb_movement"):
            head = article(f"{num(dur, 1)}-s {name}")
            facts["duration_s"] = num(dur, 1)
        tail: list[str] = []
        system = "respiration"
        if etype in RESP_TYPES:
            tail.append(pick(rng, _EFFORT[etype]))
            facts["effort"] = {"obstructive_apnea": "continuing", "central_apnea": "absent",
                               "mixed_apnea": "absent then resuming", "hypopnea": "present",
                               "apnea": "unknown"}[etype]
            r = resp.loc[eid] if eid in resp.index else None
            conseq = []
            if r is not None and _ok(r["desat_depth"]):
                near = desaturations_near(desats, onset, onset + dur, lag=DESAT_LAG_SEC) \
                    if len(desats) else desats
                dep = num(r["desat_depth"])
                facts["desat_drop_pct"] = dep
                if len(near):
                    nad = num(near.sort_values("depth")["nadir"].iloc[-1])
                    facts["desat_nadir_pct"] = nad
                    conseq.append(article(f"{dep}% desaturation to {nad}%"))
                else:
                    conseq.append(article(f"{dep}% desaturation"))
            elif "spo2" not in feats.missing or len(rec.events_of("desaturation")):
                facts["desat_drop_pct"] = None
                conseq.append(pick(rng, ["no desaturation of 3% or more", "no significant desaturation"]))
            if r is not None:
                facts["arousal"] = bool(r["arousal"])
                conseq.append("an arousal" if r["arousal"] else "no arousal")
            if conseq:
                tail.append(pick(rng, ["followed by ", "then "]) + " and ".join(conseq))
        elif etype == "desaturation":
            dn = desat_nums.get(int(eid), {})
            if dn.get("drop") is not None and dn.get("nadir") is not None:
                head = article(f"{num(dn['drop'])}% desaturation to {num(dn['nadir'])}%")
                facts.update(desat_drop_pct=num(dn["drop"]), desat_nadir_pct=num(dn["nadir"]))
            elif dn.get("nadir") is not None:
                head = f"a desaturation to {num(dn['nadir'])}%"
                facts["desat_nadir_pct"] = num(dn["nadir"])
            else:
                head = "a desaturation"
            head += f" lasting {d} s"
            if dn.get("source"):
                facts["measured_from"] = dn["source"]
            near = resp[(resp["onset"] <= onset) & (resp["onset"] >= onset - 60.0 - 30.0)] \
                if len(resp) else resp
            near = near[near["onset"] + near["duration"] + DESAT_LAG_SEC >= onset] if len(near) else near
            if len(near):
                t = near["type"].iloc[-1]
                tail.append(pick(rng, ["after " + article(EVENT_NAMES[t]), "following " + article(EVENT_NAMES[t])]))
                facts["after_event"] = t
            else:
                tail.append(pick(rng, ["not after a scored apnea or hypopnea",
                                       "with no scored respiratory event before it"]))
                facts["after_event"] = None
        elif etype == "arousal":
            system = "brain"
            cause = (row["attributes"] or {}).get("cause")
            if cause:
                facts["cause"] = cause
                tail.append(pick(rng, [f"{cause} cause", f"attributed to a {cause} trigger"])
                            if cause != "spontaneous" else pick(rng, ["spontaneous", "without a scored trigger"]))
            if hr_t is None:
                try:
                    from sleeplm.clinical.heart_rate import heart_rate_series

                    hr_t, hr_v, _ = heart_rate_series(rec)
                except Exception:  # noqa: BLE001 - no heart rate: no HR clause
                    hr_t, hr_v = np.zeros(0), np.zeros(0)
            if hr_t.size:
                pre = hr_v[(hr_t >= onset - 10) & (hr_t < onset)]
                post = hr_v[(hr_t >= onset) & (hr_t < onset + dur + 5)]
                if pre.size >= 3 and post.size >= 3:
                    rise = num(post.max() - pre.mean())
                    facts["hr_rise_bpm"] = rise
                    tail.append(pick(rng, [f"heart rate rising {rise} bpm", f"HR up {rise} bpm"])
                                if rise > 0 else f"heart rate change {rise} bpm")
        else:
            system = "somatic"
            side = (row["attributes"] or {}).get("side") or row.get("channel")
            if side:
                facts["side"] = str(side)
                tail.append(f"{side} leg" if side in ("left", "right") else str(side))
            near_ar = arousal_on[(arousal_on >= onset - 0.5) & (arousal_on <= onset + dur + 0.5)]
            facts["arousal"] = bool(near_ar.size)
            tail.append("with an arousal" if near_ar.size else "no arousal")
        text = " ".join(x for x in [head, ctx_txt] if x)
        if tail:
            text += ", " + ", ".join(tail)
        text = text[:1].upper() + text[1:] + "."
        out.append(Caption(level="event", system=system, text=text, facts=jsonable(facts),
                           start=onset, end=onset + dur))
    return out


def segment_captions(rec: Recording, feats: EpochFeatures, *, seed: int = 0,
                     segment_min: float = 5.0) -> list[Caption]:
    """One holistic caption per window of ``segment_min`` minutes."""
    df = feats.table
    es = float(rec.epoch_sec)
    per = max(int(round(segment_min * 60 / es)), 1)
    staged = rec.has_stages
    out: list[Caption] = []
    resp_types = rec.events_of(*RESP_TYPES)["type"].to_dict()
    for k, s0 in enumerate(range(0, len(df), per)):
        w = df.iloc[s0:s0 + per]
        start, end = float(w["start_s"].iloc[0]), float(w["end_s"].iloc[-1])
        rng = make_rng(seed, "segment", k)
        cl: list[Clause] = []
        minutes = num(len(w) * es / 60, 1)
        lead = pick(rng, [f"{minutes} min from {start / 3600:.2f} h:", f"Window {k + 1} ({minutes} min):"])
        facts0 = {"minutes": minutes, "start_h": round(start / 3600, 2)}
        if staged:
            vc = w["stage"].value_counts()
            mix = {str(s): num(c * es / 60, 1) for s, c in vc.items()}
            parts = [f"{v:g} min {_STAGE_WORD.get(s, s)}" for s, v in mix.items()]
            cl.append(Clause([", ".join(parts), "stages " + ", ".join(parts)],
                             {"stage_minutes": mix}, first=True))
        ids = sorted({i for lst in w["resp_event_ids"] for i in lst})
        if ids:
            counts: dict[str, int] = {}
            for i in ids:
                counts[resp_types[i]] = counts.get(resp_types[i], 0) + 1
            txt = ", ".join(plural(c, EVENT_NAMES[t]) for t, c in sorted(counts.items()))
            cl.append(Clause([txt, f"respiratory events: {txt}"], {"respiratory_events": counts}))
        elif "breathing" not in feats.missing or "spo2" not in feats.missing:
            cl.append(Clause(["no respiratory events", "breathing without scored events"],
                             {"respiratory_events": {}}))
        n_ar = len({i for lst in w["arousal_ids"] for i in lst})
        if n_ar or rec.info.annotation_source is not None:
            cl.append(Clause([plural(n_ar, "arousal") if n_ar else "no arousals"], {"arousals": n_ar}))
        n_plm = len({i for lst in w["scored_plm_ids"] for i in lst})
        if n_plm:
            cl.append(Clause([plural(n_plm, "PLM"), plural(n_plm, "periodic leg movement")],
                             {"plm": n_plm}))
        n_ds = len({i for lst in w["scored_desat_ids"] for i in lst})
        if n_ds:
            cl.append(Clause([plural(n_ds, "desaturation")], {"desaturations": n_ds}))
        lo, hi = w["spo2_min"].min(), w["spo2_mean"].max()
        if _ok(lo) and _ok(hi) and np.isfinite(lo):
            a, b = num(lo), num(hi)
            cl.append(Clause([f"SpO2 {a}-{b}%", f"saturation between {a}% and {b}%"],
                             {"spo2_min_pct": a, "spo2_max_epoch_mean_pct": b}))
        hr = w["hr_bpm"].to_numpy(float)
        ok = np.isfinite(hr)
        if ok.sum() >= 2:
            half = max(ok.sum() // 2, 1)
            v = hr[ok]
            a, b = num(np.mean(v[:half])), num(np.mean(v[-half:]))
            trend = "rising" if b - a >= 3 else ("falling" if a - b >= 3 else "stable")
            cl.append(Clause([f"heart rate {trend} ({a} to {b} bpm)", f"HR {trend}, {a} then {b} bpm"],
                             {"hr_first_half_bpm": a, "hr_second_half_bpm": b, "hr_trend": trend}))
        text, facts = compose(rng, cl, lead=lead)
        out.append(Caption(level="segment", system="holistic", text=text,
                           facts=jsonable({**facts0, **facts}), start=start, end=end))
    return out


def night_patterns(rec: Recording, summary: ClinicalSummary, feats: EpochFeatures) -> dict[str, Any]:
    """Notable patterns by fixed rules (each with the numbers it was decided from)."""
    v = summary.value if summary else (lambda name: None)

    def val(name: str) -> float | None:
        try:
            x = v(name)
        except KeyError:
            return None
        return None if x is None or not np.isfinite(x) else float(x)

    p: dict[str, Any] = {}
    rem, nrem = val("ahi_rem"), val("ahi_nrem")
    if rem is not None and nrem is not None and rem >= 5:
        p["rem_dominant_apnea"] = bool(rem >= 2 * nrem)
    sup, non = val("ahi_supine"), val("ahi_nonsupine")
    if sup is not None and non is not None and sup >= 5:
        p["positional_apnea"] = bool(sup >= 2 * non)
    rl = val("rem_latency_min")
    if rl is not None:
        p["sleep_onset_rem"] = bool(rl <= 15)
    sol = val("sleep_onset_latency_min")
    if sol is not None:
        p["long_sleep_onset"] = bool(sol > 30)
    df = feats.table
    if "chin_rms_uv" in df and df["chin_rms_uv"].notna().any() and rec.has_stages:
        r = df.loc[df["stage"] == "R", "chin_rms_uv"].median()
        n2 = df.loc[df["stage"] == "N2", "chin_rms_uv"].median()
        if np.isfinite(r) and np.isfinite(n2):
            p["rem_without_atonia"] = bool(r >= n2)
            p["_chin_rem_uv"], p["_chin_n2_uv"] = round(float(r), 1), round(float(n2), 1)
    return p


def night_captions(rec: Recording, summary: ClinicalSummary | None, feats: EpochFeatures, *,
                   seed: int = 0) -> list[Caption]:
    """Night-level captions: architecture, breathing, oximetry, legs, heart, and the synthesis."""
    out: list[Caption] = []
    end = float(feats.table["end_s"].iloc[-1]) if len(feats.table) else rec.duration
    start = float(feats.table["start_s"].iloc[0]) if len(feats.table) else 0.0

    def val(name: str) -> float | None:
        if summary is None:
            return None
        try:
            x = summary.value(name)
        except KeyError:
            return None
        return None if x is None or not np.isfinite(x) else float(x)

    def add(system: str, clauses: list[Clause], key: str) -> None:
        if clauses:
            text, facts = compose(make_rng(seed, "night", key), clauses)
            out.append(Caption(level="night", system=system, text=text, facts=facts,
                               start=start, end=end))

    # architecture
    cl: list[Clause] = []
    tst, se, sol, rl = val("tst_min"), val("sleep_efficiency_pct"), val("sleep_onset_latency_min"), \
        val("rem_latency_min")
    if tst is not None:
        h = num(tst / 60, 1)
        cl.append(Clause([f"{h} h of sleep", f"total sleep time {h} h"], {"tst_h": h}, first=True))
    if se is not None:
        cl.append(Clause([f"sleep efficiency {num(se)}%", f"{num(se)}% efficiency"],
                         {"sleep_efficiency_pct": num(se)}))
    if sol is not None:
        cl.append(Clause([f"sleep onset after {num(sol)} min", f"sleep-onset latency {num(sol)} min"],
                         {"sleep_onset_latency_min": num(sol)}))
    if rl is not None:
        cl.append(Clause([f"first REM {num(rl)} min after sleep onset", f"REM latency {num(rl)} min"],
                         {"rem_latency_min": num(rl)}))
    pcts = {s: val(f"{s.lower()}_pct_tst") for s in ("N1", "N2", "N3", "R")}
    if all(x is not None for x in pcts.values()):
        p = {s: num(x) for s, x in pcts.items()}
        cl.append(Clause([f"N1 {p['N1']}%, N2 {p['N2']}%, N3 {p['N3']}%, REM {p['R']}% of sleep",
                          f"stage shares N1/N2/N3/REM {p['N1']}/{p['N2']}/{p['N3']}/{p['R']}%"],
                         {f"{s.lower()}_pct_tst": x for s, x in p.items()}))
    add("brain", cl, "architecture")

    # breathing
    cl = []
    ahi = val("ahi_3a")
    if ahi is not None:
        basis = "REI" if not rec.has_stages else "AHI"
        cl.append(Clause([f"{basis} {num(ahi, 1)}/h (AASM 3%/arousal rule)",
                          f"{num(ahi, 1)} events/h by the AASM 3%/arousal rule"],
                         {"ahi_3a_per_h": num(ahi, 1)}, first=True))
        ahi4 = val("ahi_4")
        if ahi4 is not None:
            cl.append(Clause([f"{num(ahi4, 1)}/h by the 4% rule", f"AHI 4% {num(ahi4, 1)}/h"],
                             {"ahi_4_per_h": num(ahi4, 1)}))
        sev = summary.findings.get("Sleep apnea severity", "") if summary else ""
        sev = sev.split(" (")[0]
        if sev:
            cl.append(Clause([f"severity: {sev}", f"{sev} sleep apnea" if "none" not in sev else
                              "no sleep apnea by AHI"], {"severity": sev}))
    odi, nadir = val("odi3"), val("spo2_nadir")
    if odi is not None:
        cl.append(Clause([f"ODI {num(odi, 1)}/h", f"{num(odi, 1)} desaturations (>=3%)/h"],
                         {"odi3_per_h": num(odi, 1)}))
    if nadir is not None:
        cl.append(Clause([f"SpO2 nadir {num(nadir)}%", f"lowest saturation {num(nadir)}%"],
                         {"spo2_nadir_pct": num(nadir)}))
    add("respiration", cl, "breathing")

    # legs and chin
    cl = []
    plmi = val("plmi")
    if plmi is not None:
        cl.append(Clause([f"PLMS index {num(plmi, 1)}/h", f"{num(plmi, 1)} periodic limb movements/h"],
                         {"plmi_per_h": num(plmi, 1)}))
    pats = night_patterns(rec, summary, feats) if summary is not None else {}
    if "rem_without_atonia" in pats:
        r, n2 = pats["_chin_rem_uv"], pats["_chin_n2_uv"]
        if pats["rem_without_atonia"]:
            cl.append(Clause([f"REM without atonia (chin {r} µV in REM vs {n2} µV in N2)"],
                             {"rem_without_atonia": True, "chin_rem_uv": r, "chin_n2_uv": n2}))
        else:
            cl.append(Clause([f"REM atonia preserved (chin {r} µV in REM vs {n2} µV in N2)"],
                             {"rem_without_atonia": False, "chin_rem_uv": r, "chin_n2_uv": n2}))
    add("somatic", cl, "legs")

    # heart
    cl = []
    hm, hlo, hhi = val("hr_mean"), val("hr_min"), val("hr_max")
    if hm is not None:
        cl.append(Clause([f"mean heart rate {num(hm)} bpm", f"HR averaging {num(hm)} bpm"],
                         {"hr_mean_bpm": num(hm)}, first=True))
        if hlo is not None and hhi is not None:
            cl.append(Clause([f"range {num(hlo)}-{num(hhi)} bpm"],
                             {"hr_min_bpm": num(hlo), "hr_max_bpm": num(hhi)}))
    add("cardiac", cl, "heart")

    # synthesis: patterns
    cl = []
    names = {"rem_dominant_apnea": ("REM-dominant apnea (AHI REM >= 2x NREM)",
                                    "no REM predominance of apnea"),
             "positional_apnea": ("positional apnea (supine AHI >= 2x non-supine)",
                                  "apnea not positional"),
             "sleep_onset_rem": ("a sleep-onset REM period (REM latency <= 15 min)", None),
             "long_sleep_onset": ("long sleep onset (> 30 min)", None),
             "rem_without_atonia": ("REM sleep without atonia", None)}
    found = {}
    for key, (yes, no) in names.items():
        if key not in pats:
            continue
        found[key] = pats[key]
        if pats[key]:
            cl.append(Clause([yes], {key: True}))
        elif no:
            cl.append(Clause([no], {key: False}))
    if ahi is not None:
        basis = "REI" if not rec.has_stages else "AHI"
        cl.append(Clause([f"{basis} {num(ahi, 1)}/h"], {"ahi_3a_per_h": num(ahi, 1)}, first=True))
    if not any(found.values()) and found:
        cl.append(Clause(["no other notable pattern", "otherwise unremarkable"], {}))
    add("holistic", cl, "patterns")
    return out

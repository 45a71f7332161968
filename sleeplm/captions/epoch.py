"""Epoch captions: one caption per physiological system and a holistic one, per 30-s epoch.

Every caption is written from the row of :func:`sleeplm.captions.features.epoch_features` for
its epoch (and the scored events overlapping it); its ``facts`` hold exactly what its text
states, rounded as stated.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sleeplm.captions.caption import Caption, EpochCaptions
from sleeplm.captions.features import EpochFeatures, RESP_TYPES
from sleeplm.captions.phrasing import (EVENT_NAMES, Clause, article, compose_clauses, make_rng, num,
                                       plural, stage_phrases)
from sleeplm.recording import Recording

__all__ = ["epoch_captions", "brain_clauses", "respiration_clauses"]


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n)


# ------------------------------------------------------------------------------ brain
def brain_clauses(r: dict, staged: bool) -> list[Clause]:
    """Clauses of the brain caption of one epoch row."""
    out: list[Clause] = []
    st = r["stage"]
    if staged:
        out.append(Clause(stage_phrases(st), {"stage": st}, first=True))
    band = r.get("dominant_band")
    if _ok(band):
        pct = num(100 * r[f"rel_{band}"])
        out.append(Clause([f"{band} dominates the EEG ({pct}% of 0.5-30 Hz power)",
                           f"EEG power mostly {band} ({pct}%)",
                           f"dominant {band} rhythm, {pct}% of EEG power"],
                          {"dominant_band": band, f"rel_{band}_pct": pct}))
    alpha = r.get("occipital_alpha_rel")
    if _ok(alpha) and st in ("W", "N1", "UNS") and alpha >= 0.2:
        pct = num(100 * alpha)
        out.append(Clause([f"occipital alpha {pct}%", f"alpha at O at {pct}% of power",
                           f"{pct}% alpha over the occiput"], {"occipital_alpha_pct": pct}))
    elif _ok(alpha) and st == "W" and alpha < 0.1:
        pct = num(100 * alpha)
        out.append(Clause([f"little occipital alpha ({pct}%)", f"only {pct}% alpha at O"],
                          {"occipital_alpha_pct": pct}))
    sp = r.get("spindles")
    if _ok(sp):
        n = int(sp)
        if n > 0:
            out.append(Clause([plural(n, "sleep spindle"), f"{plural(n, 'spindle')} detected",
                               f"spindle activity ({plural(n, 'spindle')})"], {"spindles": n}))
        elif st == "N2":
            out.append(Clause(["no spindles despite N2", "no spindle detected in this N2 epoch",
                               "no sleep spindles"], {"spindles": 0}))
    sw, swp = r.get("slow_waves"), r.get("slow_wave_pct")
    if _ok(sw):
        n, pct = int(sw), num(swp)
        if n > 0:
            out.append(Clause([f"{plural(n, 'slow wave')} covering {pct}% of the epoch",
                               f"{pct}% slow-wave activity ({plural(n, 'slow wave')})",
                               f"slow waves: {n}, {pct}% of the epoch"],
                              {"slow_waves": n, "slow_wave_pct": pct}))
        elif st == "N3":
            out.append(Clause(["no slow waves detected despite N3", "no detected slow waves"],
                              {"slow_waves": 0}))
    kc = r.get("k_complex_like")
    if _ok(kc) and int(kc) > 0:
        n = int(kc)
        out.append(Clause([f"{plural(n, 'isolated K-complex-like wave')}",
                           f"{n} isolated large slow wave{'s' if n != 1 else ''} (K-complex-like)"],
                          {"k_complex_like": n}))
    rem = r.get("rapid_eye_movements")
    if _ok(rem):
        n = int(rem)
        if n > 0:
            out.append(Clause([plural(n, "rapid eye movement"), f"{n} REMs on the EOG",
                               f"rapid eye movements ({n})"], {"rapid_eye_movements": n}))
        elif st == "R":
            out.append(Clause(["no rapid eye movements (tonic REM)",
                               "quiet eyes, no rapid eye movements"], {"rapid_eye_movements": 0}))
    sem = r.get("slow_eye_movements")
    if sem is True and st in ("W", "N1", "N2", "UNS") and not (_ok(rem) and int(rem) > 0):
        out.append(Clause(["slow rolling eye movements", "slow eye movements on the EOG"],
                          {"slow_eye_movements": True}))
    th = r.get("rem_theta_rel")
    if _ok(th) and st == "R" and th >= 0.2:
        pct = num(100 * th)
        out.append(Clause([f"theta-rich EEG ({pct}% theta, compatible with sawtooth waves)",
                           f"{pct}% relative theta (sawtooth-like activity)"],
                          {"rel_theta_pct": pct}))
    return out


# ------------------------------------------------------------------------------ respiration
def _event_list(types: list[str]) -> str:
    names = [EVENT_NAMES.get(t, t) for t in types]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    parts = [article(n) if c == 1 else f"{c} {n}s" for n, c in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def respiration_clauses(r: dict, resp_types: dict[int, str], desat_nums: dict[int, dict],
                        use_detected_desats: bool) -> list[Clause]:
    """Clauses of the respiration caption of one epoch row."""
    out: list[Clause] = []
    br = r.get("breath_rate_bpm")
    if _ok(br):
        n = num(br)
        out.append(Clause([f"breathing at {n}/min", f"{n} breaths per minute",
                           f"respiratory rate {n} breaths/min"], {"breath_rate_per_min": n}))
    amp = r.get("flow_amp_rel")
    if _ok(amp) and amp <= 0.7:
        pct = num(100 * amp)
        out.append(Clause([f"flow amplitude down to {pct}% of the preceding 2 min",
                           f"airflow reduced to {pct}% of its recent level"],
                          {"flow_amplitude_pct_of_recent": pct}))
    types = [resp_types[i] for i in r["resp_event_ids"]]
    if types:
        lst = _event_list(types)
        out.append(Clause([f"{lst} scored", f"scored: {lst}", f"{lst} in this epoch"],
                          {"respiratory_events": sorted(types)}))
    else:
        out.append(Clause(["no respiratory events", "no apnea or hypopnea scored",
                           "breathing without scored events"], {"respiratory_events": []}))
    mean, mn = r.get("spo2_mean"), r.get("spo2_min")
    if _ok(mean) and _ok(mn):
        a, b = num(mean), num(mn)
        out.append(Clause([f"SpO2 {a}% (min {b}%)", f"saturation averaging {a}%, lowest {b}%",
                           f"mean SpO2 {a}%, minimum {b}%"], {"spo2_mean_pct": a, "spo2_min_pct": b}))
    desats = []
    if use_detected_desats:
        if _ok(r.get("desat_depth")):
            desats.append({"drop_pct": num(r["desat_depth"]), "nadir_pct": num(r["desat_nadir"])})
    else:
        for eid in r["scored_desat_ids"]:
            d = desat_nums.get(eid, {})
            item: dict[str, Any] = {}
            if d.get("drop") is not None:
                item["drop_pct"] = num(d["drop"])
            if d.get("nadir") is not None:
                item["nadir_pct"] = num(d["nadir"])
            desats.append(item)
    if desats:
        texts = []
        for d in desats:
            if "drop_pct" in d and "nadir_pct" in d:
                texts.append(article(f"{d['drop_pct']}% desaturation to {d['nadir_pct']}%"))
            elif "nadir_pct" in d:
                texts.append(f"a desaturation to {d['nadir_pct']}%")
            elif "drop_pct" in d:
                texts.append(article(f"{d['drop_pct']}% desaturation"))
            else:
                texts.append("a desaturation")
        joined = " and ".join(texts)
        word = "detected on SpO2" if use_detected_desats else "starting"
        out.append(Clause([f"{joined} {word}", f"{joined} begins" if len(texts) == 1 else
                           f"{joined} begin"], {"desaturations": desats}))
    return out



# ------------------------------------------------------------------------------ heart, somatic
def cardiac_clauses(r: dict) -> list[Clause]:
    out: list[Clause] = []
    hr = r.get("hr_bpm")
    if not _ok(hr):
        return out
    h = num(hr)
    opts = [f"heart rate {h} bpm", f"pulse at {h}/min", f"HR averaging {h} bpm"]
    if h < 50:
        opts = [o + " (bradycardic range)" for o in opts]
    elif h > 100:
        opts = [o + " (tachycardic range)" for o in opts]
    out.append(Clause(opts, {"hr_bpm": h}, first=True))
    ch = r.get("hr_change_bpm")
    if _ok(ch):
        c = num(ch)
        if abs(c) >= 5:
            word = "up" if c > 0 else "down"
            out.append(Clause([f"{word} {abs(c)} bpm from the previous epoch",
                               f"{_signed(c)} bpm vs the preceding 30 s",
                               f"a {'rise' if c > 0 else 'fall'} of {abs(c)} bpm since the last epoch"],
                              {"hr_change_bpm": c}))
        else:
            out.append(Clause([f"steady ({_signed(c)} bpm vs the previous epoch)",
                               f"stable, {_signed(c)} bpm from the last epoch"],
                              {"hr_change_bpm": c}))
    return out


def somatic_clauses(r: dict, staged: bool, lm_source: str | None) -> list[Clause]:
    out: list[Clause] = []
    rms, rel = r.get("chin_rms_uv"), r.get("chin_rel_median")
    if _ok(rms):
        v, x = num(rms, 1), num(rel, 1)
        tone = "low" if rel < 0.7 else ("high" if rel > 1.5 else "average")
        out.append(Clause([f"{tone} chin tone ({v} µV RMS, {x}x the night's median)",
                           f"chin EMG {v} µV RMS ({x}x median, {tone} tone)",
                           f"{tone} submental tone at {v} µV, {x} times the median"],
                          {"chin_rms_uv": v, "chin_rms_rel_median": x, "chin_tone": tone}))
        tw = r.get("chin_twitches")
        if _ok(tw):
            n = int(tw)
            if n > 0:
                out.append(Clause([plural(n, "phasic chin twitch", "phasic chin twitches"),
                                   f"{n} short chin EMG burst{'s' if n != 1 else ''}"],
                                  {"chin_twitches": n}))
            elif r["stage"] == "R":
                out.append(Clause(["no phasic chin twitches", "no chin EMG bursts"],
                                  {"chin_twitches": 0}))
    plm, lm = int(r.get("scored_plm") or 0), int(r.get("scored_lm") or 0)
    if lm_source == "scored":
        if plm or lm:
            parts, facts = [], {}
            if plm:
                parts.append(plural(plm, "periodic limb movement"))
                facts["plm"] = plm
            if lm:
                parts.append(plural(lm, "isolated limb movement"))
                facts["limb_movements"] = lm
            s = " and ".join(parts)
            out.append(Clause([f"{s} scored", f"scored: {s}"], facts))
        else:
            out.append(Clause(["no leg movements", "legs quiet"], {"plm": 0, "limb_movements": 0}))
    elif lm_source == "detected":
        n = r.get("leg_movements")
        if _ok(n):
            n = int(n)
            out.append(Clause([f"{plural(n, 'leg movement')} on the leg EMG" if n else
                               "no leg movements on the leg EMG"], {"leg_movements_detected": n}))
    pos = r.get("position")
    if pos and pos != "unknown":
        out.append(Clause([f"lying {pos}" if pos not in ("upright",) else "sitting upright",
                           f"body position {pos}", f"{pos} position"], {"position": pos}))
    return out


# ------------------------------------------------------------------------------ main
def _caption(system: str, composed: tuple[str, dict, list[dict]], start: float, end: float
             ) -> Caption:
    text, facts, clauses = composed
    return Caption(level="epoch", system=system, text=text, facts=facts, start=start, end=end,
                   clauses=clauses)


def epoch_captions(rec: Recording, feats: EpochFeatures, desat_nums: dict[int, dict], *,
                   seed: int = 0) -> list[EpochCaptions]:
    """Captions of every epoch: brain, cardiac, respiration, somatic and holistic.

    Parameters
    ----------
    rec : Recording
    feats : EpochFeatures
        From :func:`sleeplm.captions.features.epoch_features`.
    desat_nums : dict
        Measured numbers of scored desaturations
        (:func:`sleeplm.captions.features.scored_desaturation_numbers`).
    seed : int
        Wording seed.
    """
    df: pd.DataFrame = feats.table
    staged = rec.has_stages
    has_eeg = "brain" not in feats.missing
    resp_types = {int(i): t for i, t in rec.events_of(*RESP_TYPES)["type"].items()}
    has_scored_desats = len(rec.events_of("desaturation")) > 0
    use_detected = not has_scored_desats and "spo2" not in feats.missing
    lm_source = None
    if len(rec.events_of("limb_movement", "plm")) or rec.info.annotation_source is not None:
        lm_source = "scored"
    if feats.sources.get("legs", "").startswith("leg EMG") and not len(rec.events_of("limb_movement", "plm")):
        lm_source = "detected"
    resp_available = not all(k in feats.missing for k in ("breathing", "spo2")) or len(resp_types) > 0
    out: list[EpochCaptions] = []
    for r in df.to_dict("records"):
        e = int(r["epoch"])
        start, end = float(r["start_s"]), float(r["end_s"])
        caps: list[Caption] = []
        stage = str(r["stage"])
        lead_stage = Clause(stage_phrases(stage), {"stage": stage}, first=True) if staged else None

        if has_eeg:
            composed = compose_clauses(make_rng(seed, e, "brain"), brain_clauses(r, staged))
            if composed[0]:
                caps.append(_caption("brain", composed, start, end))
        cl = cardiac_clauses(r)
        if cl:
            caps.append(_caption("cardiac", compose_clauses(make_rng(seed, e, "cardiac"), cl),
                                 start, end))
        if resp_available:
            cl = respiration_clauses(r, resp_types, desat_nums, use_detected)
            caps.append(_caption("respiration",
                                 compose_clauses(make_rng(seed, e, "respiration"), cl),
                                 start, end))
        cl = somatic_clauses(r, staged, lm_source)
        if cl:
            caps.append(_caption("somatic", compose_clauses(make_rng(seed, e, "somatic"), cl),
                                 start, end))

        # holistic: the key facts together
        rng = make_rng(seed, e, "holistic")
        hol: list[Clause] = [lead_stage] if lead_stage else []
        if _ok(r.get("hr_bpm")):
            h = num(r["hr_bpm"])
            hol.append(Clause([f"HR {h} bpm", f"heart at {h} bpm"], {"hr_bpm": h}))
        if _ok(r.get("spo2_min")):
            b = num(r["spo2_min"])
            hol.append(Clause([f"SpO2 down to {b}%", f"lowest SpO2 {b}%"], {"spo2_min_pct": b}))
        types = [resp_types[i] for i in r["resp_event_ids"]]
        if types:
            hol.append(Clause([f"{_event_list(types)}"], {"respiratory_events": sorted(types)}))
        elif resp_available:
            hol.append(Clause(["no respiratory events", "normal breathing events-wise"],
                              {"respiratory_events": []}))
        n_ar = len(r["arousal_ids"])
        if n_ar:
            hol.append(Clause([plural(n_ar, "arousal"), f"{plural(n_ar, 'scored arousal')}"],
                              {"arousals": n_ar}))
        elif rec.info.annotation_source is not None and staged and stage != "W":
            hol.append(Clause(["no arousal", "no arousals scored"], {"arousals": 0}))
        if lm_source == "scored" and (int(r.get("scored_plm") or 0) or int(r.get("scored_lm") or 0)):
            p, m = int(r.get("scored_plm") or 0), int(r.get("scored_lm") or 0)
            bits, f = [], {}
            if p:
                bits.append(plural(p, "PLM"))
                f["plm"] = p
            if m:
                bits.append(plural(m, "limb movement"))
                f["limb_movements"] = m
            hol.append(Clause([" and ".join(bits)], f))
        if has_eeg:
            sp = r.get("spindles")
            if _ok(sp) and int(sp) > 0:
                hol.append(Clause([plural(int(sp), "spindle")], {"spindles": int(sp)}))
            swp = r.get("slow_wave_pct")
            if _ok(swp) and _ok(r.get("slow_waves")) and int(r["slow_waves"]) > 0:
                hol.append(Clause([f"{num(swp)}% slow waves", f"slow-wave activity {num(swp)}%"],
                                  {"slow_wave_pct": num(swp)}))
            rem = r.get("rapid_eye_movements")
            if _ok(rem) and int(rem) > 0 and stage in ("R", "UNS"):
                hol.append(Clause([plural(int(rem), "rapid eye movement")],
                                  {"rapid_eye_movements": int(rem)}))
        if hol:
            caps.append(_caption("holistic", compose_clauses(rng, hol), start, end))
        out.append(EpochCaptions(epoch=e, stage=stage, captions=caps))
    return out

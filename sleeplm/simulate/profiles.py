"""Patient profiles of the simulator: who sleeps how, and which events they have.

Each profile draws its night's parameters from ranges, so that a "moderate OSA" night really has
an AHI of 15-30/h by :mod:`sleeplm.clinical`'s own AHI code (AASM severity cut-offs 5, 15, 30;
PLMS index > 15/h for PLM disorder; ICSD-3 sleep-onset REM period = REM within 15 min of sleep
onset; insomnia: sleep-onset latency > 30 min and/or WASO > 30 min; Ohayon 2004 for age norms:
N3 falls from ~20 % of TST in young adults to < 10 % after 60, WASO rises to 60+ min).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Profile", "PROFILES", "get_profile", "v1_profile"]

Range = tuple[float, float]


class Profile(BaseModel):
    """Parameters of one kind of patient; each range is drawn uniformly per night.

    Attributes
    ----------
    ahi : (float, float)
        Target AHI, events per hour of TST (AASM 3 %/arousal rule).
    event_mix : dict or None
        Share of obstructive_apnea, central_apnea, mixed_apnea and hypopnea; None (default):
        the real mix of the UCDDB nights (:func:`sleeplm.simulate.real_stats.event_type_mix`).
    supine_factor : float
        How much likelier respiratory events are supine than not.
    rem_factor : float or None
        Event rate in REM relative to N2; None (default): each stage's rate relative to all
        sleep as in UCDDB (:func:`sleeplm.simulate.real_stats.stage_rate_ratios`).
    event_duration : (float, float) or None
        Uniform range of event durations, s; None (default): drawn from UCDDB's real
        durations of each event type (:func:`sleeplm.simulate.real_stats.event_durations`).
    desat_depth : (float, float)
        Depth of event-related desaturations, %.
    plmi : (float, float)
        Target PLMS index, movements per hour of TST.
    extra_sol_min, extra_waso_min : (float, float)
        Wake added before sleep onset and inside the sleep period, minutes.
    n3_keep : (float, float)
        Fraction of the hypnogram's N3 epochs kept (the rest become N2).
    sorem : bool
        Move a REM period to sleep onset (REM latency < 15 min).
    rswa : bool
        REM sleep without atonia.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    age: Range
    male_share: float = Field(0.5, ge=0, le=1)
    ahi: Range = (0.0, 3.0)
    event_mix: dict[str, float] | None = None
    supine_factor: float = 1.5
    rem_factor: float | None = None
    cheyne_stokes: bool = False
    event_duration: Range | None = None
    desat_depth: Range = (3.2, 6.0)
    baseline_spo2: Range = (95.5, 97.5)
    supine_share: Range = (0.3, 0.6)
    plmi: Range = (0.0, 3.0)
    spontaneous_arousal_index: Range = (4.0, 10.0)
    extra_sol_min: Range = (0.0, 0.0)
    extra_waso_min: Range = (0.0, 0.0)
    n3_keep: Range = (1.0, 1.0)
    sorem: bool = False
    rswa: bool = False
    heart_rate: Range = (56.0, 66.0)
    breathing_rate: Range = (12.0, 16.0)


#: What a profile's unset event statistics were in the v1 planner (``statistics="v1"``, the
#: nights the shipped SleepLM checkpoint was trained on): the defaults, then per profile.
_V1_DEFAULTS: dict = {"event_mix": {"obstructive_apnea": 0.3, "central_apnea": 0.05,
                                    "mixed_apnea": 0.05, "hypopnea": 0.6},
                      "rem_factor": 1.3, "event_duration": (12.0, 30.0)}
_V1_PROFILE: dict[str, dict] = {"osa_mild": {"rem_factor": 2.0},
                                "osa_moderate": {"rem_factor": 2.0},
                                "osa_severe": {"rem_factor": 1.5,
                                               "event_duration": (15.0, 40.0)}}


def v1_profile(profile: "Profile") -> "Profile":
    """The profile with its unset event statistics as the v1 planner had them."""
    fill = {k: v for k, v in {**_V1_DEFAULTS, **_V1_PROFILE.get(profile.name, {})}.items()
            if getattr(profile, k) is None}
    return profile.model_copy(update=fill) if fill else profile


#: Event mix of the obstructive sleep apnea profiles: obstructive apneas outnumber central
#: ones, as the profiles' names promise. The UCDDB default
#: (:func:`~sleeplm.simulate.real_stats.event_type_mix`) is a mixed referral cohort in which
#: central apneas outnumber obstructive ones.
_OSA_MIX = {"obstructive_apnea": 0.35, "central_apnea": 0.03, "mixed_apnea": 0.07,
            "hypopnea": 0.55}

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="healthy_young", description="Healthy young adult", age=(20, 35),
                ahi=(0.0, 3.0), spontaneous_arousal_index=(4, 10)),
        Profile(name="healthy_older", description="Healthy older adult: less N3, more WASO",
                age=(62, 80), ahi=(1.0, 4.0), plmi=(0.0, 5.0), n3_keep=(0.2, 0.45),
                extra_waso_min=(30, 60), spontaneous_arousal_index=(10, 18),
                baseline_spo2=(94.5, 96.5), heart_rate=(58, 68)),
        Profile(name="osa_mild", description="Mild obstructive sleep apnea", age=(35, 65),
                male_share=0.65, ahi=(6.5, 13.5), event_mix=_OSA_MIX, supine_factor=2.5,
                desat_depth=(3.3, 6.0)),
        Profile(name="osa_moderate", description="Moderate obstructive sleep apnea",
                age=(40, 70), male_share=0.7, ahi=(17.0, 28.0), event_mix=_OSA_MIX,
                supine_factor=2.5, desat_depth=(3.5, 8.0),
                baseline_spo2=(94.5, 96.5), spontaneous_arousal_index=(6, 12)),
        Profile(name="osa_severe", description="Severe obstructive sleep apnea", age=(40, 70),
                male_share=0.75, ahi=(35.0, 55.0), event_mix=_OSA_MIX, supine_factor=2.0,
                desat_depth=(4.0, 14.0),
                baseline_spo2=(93.0, 95.5), spontaneous_arousal_index=(4, 8),
                heart_rate=(62, 72)),
        Profile(name="csa_cheyne_stokes", description="Central sleep apnea with Cheyne-Stokes "
                "breathing", age=(60, 80), male_share=0.8, ahi=(18.0, 35.0),
                event_mix={"central_apnea": 0.8, "hypopnea": 0.15, "obstructive_apnea": 0.05},
                supine_factor=1.3, rem_factor=0.4, cheyne_stokes=True, event_duration=(12, 25),
                desat_depth=(3.5, 7.0), baseline_spo2=(94.0, 96.0), n3_keep=(0.3, 0.6),
                heart_rate=(64, 74)),
        Profile(name="plm_disorder", description="Periodic limb movement disorder",
                age=(45, 70), ahi=(0.0, 4.0), plmi=(25.0, 50.0), extra_waso_min=(10, 30),
                spontaneous_arousal_index=(6, 12)),
        Profile(name="insomnia", description="Insomnia: long sleep onset, long WASO",
                age=(30, 60), male_share=0.35, ahi=(0.0, 3.0), extra_sol_min=(35, 60),
                extra_waso_min=(40, 80), spontaneous_arousal_index=(8, 14),
                heart_rate=(62, 72)),
        Profile(name="narcolepsy", description="Narcolepsy-like: sleep-onset REM period",
                age=(18, 35), ahi=(0.0, 3.0), sorem=True, extra_waso_min=(15, 40),
                spontaneous_arousal_index=(10, 18)),
        Profile(name="rbd", description="REM sleep without atonia (REM sleep behaviour "
                "disorder-like)", age=(55, 75), male_share=0.8, ahi=(0.0, 4.0), rswa=True,
                n3_keep=(0.5, 0.8), plmi=(0.0, 5.0)),
    )
}


def get_profile(name: str | Profile) -> Profile:
    """A profile by name (or the profile itself); KeyError lists the known names."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile '{name}'; choose from {sorted(PROFILES)}") from None

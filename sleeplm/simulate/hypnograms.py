"""Stage sequences of simulated nights: real Sleep-EDF and Dreem hypnograms, shaped by the profile.

Sources: the 39 Sleep-EDF cassette nights (ids "SC4001E0", ...) and the 80 Dreem Open Datasets
nights (their ids; consensus of five scorers, :func:`sleeplm.simulate.real_stats.dreem_hypnogram`;
DOD-H healthy adults, DOD-O patients with obstructive sleep apnea, whose sleep fragments
differently). ``source="dreem"`` picks a Dreem night of the profile's cohort (DOD-O for the
sleep-apnea profiles, DOD-H otherwise) and ``source="real"`` a night of the profile's pool
(Sleep-EDF and DOD-H for the others, DOD-O for sleep apnea); ``None`` keeps picking
Sleep-EDF nights, whose subject ids the corpus split relies on.

The 39 bundled Sleep-EDF hypnograms cover whole days (the cassette recorder ran ~22 h), so the
night is cut from some minutes before the first sleep epoch to some minutes after the last one,
as lights-off and lights-on would be. Profiles then change the night the way their disorder
does (longer sleep onset and WASO in insomnia, less N3 with age, a sleep-onset REM period in
narcolepsy). ``source="markov"`` draws a synthetic night from YASA's stage-transition model
instead, for variety.
"""

from __future__ import annotations

import numpy as np

from sleeplm.data import dreem_night_ids, hypnogram_ids, hypnogram_path
from sleeplm.recording import EPOCH_SEC, SLEEP_STAGES
from sleeplm.simulate.profiles import Profile
from sleeplm.simulate.real_stats import dreem_hypnogram, dreem_ids_for

__all__ = ["load_hypnogram", "night_hypnogram", "is_sleep_apnea_profile", "source_pool"]

_YASA = {"WAKE": "W", "N1": "N1", "N2": "N2", "N3": "N3", "REM": "R", "UNS": "W", "ART": "W"}


def is_sleep_apnea_profile(profile: Profile) -> bool:
    """True for profiles of sleep-disordered breathing (AHI range reaching 5/h or more)."""
    return profile.ahi[1] >= 5.0


def source_pool(profile: Profile, source: str = "real") -> list[str]:
    """Hypnogram ids a night of ``profile`` may draw from.

    Parameters
    ----------
    profile : Profile
    source : str
        "dreem": the Dreem cohort of the profile (DOD-O for sleep apnea, else DOD-H);
        "real": that cohort plus, for the other profiles, the Sleep-EDF nights;
        "sleep-edf": the Sleep-EDF nights.
    """
    osa = is_sleep_apnea_profile(profile)
    if source == "dreem":
        return dreem_ids_for(osa)
    if source == "real":
        return dreem_ids_for(osa) if osa else hypnogram_ids() + dreem_ids_for(False)
    if source == "sleep-edf":
        return hypnogram_ids()
    raise ValueError(f"source pool must be 'dreem', 'real' or 'sleep-edf', got {source!r}")


def load_hypnogram(source: str, rng: np.random.Generator) -> np.ndarray:
    """Stages (W, N1, N2, N3, R, UNS) of a bundled Sleep-EDF or Dreem night id, or of YASA's
    Markov model ("markov")."""
    if source in dreem_night_ids():
        return dreem_hypnogram(source).copy()
    if source == "markov":
        import yasa

        hyp = yasa.simulate_hypnogram(tib=int(rng.integers(420, 540)),
                                      seed=int(rng.integers(0, 2**31 - 1)))
        return np.array([_YASA[str(s)] for s in hyp.hypno], dtype="<U3")
    from sleeplm.io.annotations import read_hypnogram_text

    return read_hypnogram_text(hypnogram_path(source)).stages


def _fill_unscored(stages: np.ndarray) -> np.ndarray:
    """Unscored epochs take the stage before them (wake at the very start)."""
    out = stages.copy()
    for i in range(out.size):
        if out[i] == "UNS":
            out[i] = out[i - 1] if i else "W"
    return out


def night_hypnogram(
    profile: Profile,
    rng: np.random.Generator,
    source: str | np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """The stage sequence of one simulated night.

    Parameters
    ----------
    profile : Profile
    rng : numpy.random.Generator
    source : str, array or None
        A bundled Sleep-EDF id ("SC4001E0") or Dreem night id, "markov", "dreem" or "real" (a
        night drawn from :func:`source_pool` of the profile), an array of stages, or None to
        pick a bundled Sleep-EDF night at random.

    Returns
    -------
    stages : numpy.ndarray
        W, N1, N2, N3, R per 30-s epoch, from lights-off to lights-on.
    source_id : str
        Where the stage sequence came from.
    """
    if source is None:
        source = str(rng.choice(hypnogram_ids()))
    elif isinstance(source, str) and source in ("dreem", "real"):
        source = str(rng.choice(source_pool(profile, source)))
    if isinstance(source, str):
        raw, source_id = load_hypnogram(source, rng), source
    else:
        raw, source_id = np.asarray(source, dtype="<U3"), "given"
    stages = _fill_unscored(raw)
    sleep = np.flatnonzero(np.isin(stages, SLEEP_STAGES))
    if sleep.size == 0:
        raise ValueError(f"hypnogram {source_id} holds no sleep; cannot simulate a night from it")
    per_min = 60 / EPOCH_SEC
    pre = int((rng.uniform(5, 20) + rng.uniform(*profile.extra_sol_min)) * per_min)
    post = int(rng.uniform(5, 15) * per_min)
    night = stages[sleep[0] : sleep[-1] + 1]
    night = np.r_[np.full(pre, "W"), night, np.full(post, "W")].astype("<U3")
    onset = pre

    keep = rng.uniform(*profile.n3_keep)
    if keep < 1:  # lose N3 in 2-min blocks, as ageing does, rather than epoch by epoch
        n3 = np.flatnonzero(night == "N3")
        for block in np.array_split(n3, max(1, n3.size // 4)):
            if block.size and rng.random() > keep:
                night[block] = "N2"

    if profile.sorem:  # sleep-onset REM period: REM within ~1-5 min of sleep onset
        n1 = int(rng.integers(2, 8))
        rem = int(rng.integers(10, 25))
        night[onset : onset + n1] = "N1"
        night[onset + n1 : onset + n1 + rem] = "R"

    extra = rng.uniform(*profile.extra_waso_min)
    if extra > 0:  # wake bouts of 2-10 min inserted in NREM within the sleep period
        total = int(extra * per_min)
        while total > 0:
            bout = min(total, int(rng.integers(4, 21)))
            sleep_now = np.flatnonzero(np.isin(night, ("N1", "N2")))
            sleep_now = sleep_now[(sleep_now > onset + 20) & (sleep_now < night.size - post - 10)]
            if sleep_now.size == 0:
                break
            at = int(rng.choice(sleep_now))
            night = np.r_[night[:at], np.full(bout, "W"), ["N1"], night[at:]].astype("<U3")
            total -= bout
    return night, source_id

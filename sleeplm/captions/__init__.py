"""Multilevel captions of a night, each backed by the facts it was written from.

``caption_night(rec)`` measures every 30-s epoch (:mod:`sleeplm.captions.features`), writes
per-system and holistic epoch captions (:mod:`sleeplm.captions.epoch`), event, segment and night
captions (:mod:`sleeplm.captions.context`), with varied but truthful wording
(:mod:`sleeplm.captions.phrasing`). See docs/CAPTIONS.md.
"""

from __future__ import annotations

from sleeplm.captions.caption import LEVELS, SYSTEMS, Caption, EpochCaptions, NightCaptions
from sleeplm.recording import Recording

__all__ = ["caption_night", "Caption", "EpochCaptions", "NightCaptions", "LEVELS", "SYSTEMS"]


def caption_night(rec: Recording, *, seed: int = 0, segment_min: float = 5.0) -> NightCaptions:
    """Caption a night at every level.

    Parameters
    ----------
    rec : Recording
        Any recording; missing channels leave their systems out (see ``missing``).
    seed : int
        Wording seed: the same seed gives the same text; another seed other wording of the
        same facts.
    segment_min : float
        Length of the segment windows, minutes.

    Returns
    -------
    NightCaptions
    """
    from sleeplm.captions.context import event_captions, night_captions, segment_captions
    from sleeplm.captions.epoch import epoch_captions
    from sleeplm.captions.features import epoch_features, scored_desaturation_numbers
    from sleeplm.clinical.summary import clinical_summary

    feats = epoch_features(rec)
    desat_nums = scored_desaturation_numbers(rec, feats.desaturations)
    epochs = epoch_captions(rec, feats, desat_nums, seed=seed)
    events = event_captions(rec, feats, desat_nums, seed=seed)
    segments = segment_captions(rec, feats, seed=seed, segment_min=segment_min)
    try:
        summary = clinical_summary(rec)
    except Exception as exc:  # noqa: BLE001 - night captions are optional, say why
        summary = None
        feats.missing["night_summary"] = f"clinical summary failed: {exc}"
    night = night_captions(rec, summary, feats, seed=seed) if len(feats.table) else []
    missing = {k: v for k, v in feats.missing.items()}
    if summary is not None:
        for k, why in summary.unavailable.items():
            missing.setdefault(f"night_{k}", why.split(". ")[0])
    return NightCaptions(patient_id=rec.info.patient_id, epochs=epochs, events=events,
                         segments=segments, night=night, missing=missing)

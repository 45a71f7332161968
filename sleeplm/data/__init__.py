"""Real data shipped with sleeplm (labels and one real overnight signal; no PSG signals).

Keep each folder's attribution (its README) wherever these files are shipped.

``sleep-edf-hypnograms/``
    39 expert-scored hypnograms of the Sleep-EDF Expanded database (sleep-cassette), scored
    with the Rechtschaffen & Kales rules. Kemp et al., IEEE-BME 47(9):1185-1194 (2000);
    Goldberger et al., PhysioNet (2000); ODC Attribution License.
``dreem-5-scorer-hypnograms/``
    80 nights of the Dreem Open Datasets (DOD-H: 25 healthy adults; DOD-O: 55 patients with
    obstructive sleep apnea), each scored by five experts. Guillot et al., IEEE TNSRE
    28(9):1955-1965 (2020); files from Dreem-Organization/dreem-learning-evaluation (MIT
    License, Copyright (c) 2018 Dreem).
``ucddb-stages-events/``
    Stages and every apnea and hypopnea (type, start, duration) of the 25 nights of the St.
    Vincent's University Hospital / University College Dublin Sleep Apnea Database (PhysioNet,
    ODC Attribution License), per-epoch table from suh4rev/ucddb-apnea.
``apnea-ecg-heart-rate/``
    52 nights of real overnight heart rate (R-peak times) with an expert's apnea label per
    minute: PhysioNet Apnea-ECG (Penzel et al., Computers in Cardiology 27:255-258, 2000; ODC
    Attribution License); beat times derived by ChiQiao/Apnea-ECG (MIT License).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "hypnogram_ids", "hypnogram_path", "subject_of",
    "dreem_night_ids", "dreem_cohort", "dreem_scorings", "DREEM_STAGES",
    "ucddb_record_ids", "ucddb_stages", "ucddb_events",
    "apnea_ecg_ids", "apnea_ecg_path", "apnea_ecg_group", "apnea_ecg_split",
]

_FOLDER = "sleep-edf-hypnograms"
_DREEM = "dreem-5-scorer-hypnograms"
_UCDDB = "ucddb-stages-events"
_APNEA_ECG = "apnea-ecg-heart-rate"

#: Stage of each Dreem code (-1 = not scored).
DREEM_STAGES: dict[int, str] = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "R", -1: "UNS"}
#: UCDDB R&K codes (0 W, 1 REM, 2 S1, 3 S2, 4 S3, 5 S4, 8 movement/other).
_UCDDB_STAGES: dict[int, str] = {0: "W", 1: "R", 2: "N1", 3: "N2", 4: "N3", 5: "N3", 8: "UNS"}
#: UCDDB event codes -> the project's respiratory event types.
_UCDDB_TYPES: dict[str, str] = {
    "APNEA-O": "obstructive_apnea", "APNEA-C": "central_apnea", "APNEA-M": "mixed_apnea",
    "HYP-O": "hypopnea", "HYP-C": "hypopnea", "HYP-M": "hypopnea",
}


def _root(folder: str) -> Path:
    return Path(str(resources.files("sleeplm.data") / folder))


def _folder() -> Path:
    return _root(_FOLDER)


# --------------------------------------------------------------------------- Sleep-EDF
def hypnogram_ids() -> list[str]:
    """Recording ids of the bundled Sleep-EDF hypnograms ("SC4001E0", ...)."""
    return sorted(p.stem for p in _folder().glob("*.txt"))


def hypnogram_path(recording_id: str = "SC4001E0") -> Path:
    """Path of a bundled hypnogram (one R&K stage per 30-s epoch)."""
    path = _folder() / f"{recording_id}.txt"
    if recording_id not in hypnogram_ids():
        raise KeyError(f"no bundled hypnogram '{recording_id}'; choose from {hypnogram_ids()}")
    return path


def subject_of(recording_id: str) -> str:
    """Subject of a Sleep-EDF recording id ("SC4012E0" -> "SC401"): split train/test on this."""
    return recording_id[:5]


# --------------------------------------------------------------------------- Dreem
@lru_cache(maxsize=1)
def _dreem_index() -> dict[str, str]:
    out: dict[str, str] = {}
    for cohort in ("dodh", "dodo"):
        for path in sorted((_root(_DREEM) / cohort / "scorer_1").glob("*.json")):
            out[path.stem] = cohort
    return out


def dreem_night_ids(cohort: str | None = None) -> list[str]:
    """Ids of the 80 Dreem nights, or of one cohort ("dodh" healthy, "dodo" OSA)."""
    if cohort not in (None, "dodh", "dodo"):
        raise ValueError(f"cohort must be 'dodh' (healthy), 'dodo' (OSA) or None, got {cohort!r}")
    return [k for k, c in _dreem_index().items() if cohort is None or c == cohort]


def dreem_cohort(night_id: str) -> str:
    """Cohort of a Dreem night: "dodh" (healthy) or "dodo" (obstructive sleep apnea)."""
    try:
        return _dreem_index()[night_id]
    except KeyError:
        raise KeyError(f"no bundled Dreem night {night_id!r}; see dreem_night_ids()") from None


def dreem_scorings(night_id: str) -> np.ndarray:
    """The five experts' hypnograms of one Dreem night.

    Returns
    -------
    numpy.ndarray
        Shape (5, n_epochs), int8 codes of :data:`DREEM_STAGES` per 30-s epoch (-1 = not
        scored). Scorers' lists of unequal length are padded with -1.
    """
    folder = _root(_DREEM) / dreem_cohort(night_id)
    rows = [json.loads((folder / f"scorer_{k}" / f"{night_id}.json").read_text())
            for k in range(1, 6)]
    n = max(len(r) for r in rows)
    out = np.full((5, n), -1, dtype=np.int8)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


# --------------------------------------------------------------------------- UCDDB
@lru_cache(maxsize=1)
def _ucddb_table() -> pd.DataFrame:
    return pd.read_csv(_root(_UCDDB) / "epochs.csv")


def ucddb_record_ids() -> list[str]:
    """Ids of the 25 UCDDB nights ("ucddb002", ...)."""
    return sorted(_ucddb_table()["record_id"].unique())


def ucddb_stages(record_id: str) -> np.ndarray:
    """Stages (W, N1, N2, N3, R, UNS) per 30-s epoch of one UCDDB night."""
    t = _ucddb_table()
    rows = t[t["record_id"] == record_id].sort_values("epoch_id")
    if rows.empty:
        raise KeyError(f"no UCDDB record {record_id!r}; see ucddb_record_ids()")
    n = int(rows["epoch_id"].max()) + 1
    out = np.full(n, "UNS", dtype="<U3")
    codes = rows["sleep_stage"].fillna(8).astype(int)
    out[rows["epoch_id"].to_numpy()] = [_UCDDB_STAGES.get(c, "UNS") for c in codes]
    return out


@lru_cache(maxsize=1)
def _ucddb_events() -> pd.DataFrame:
    t = _ucddb_table()
    t = t[t["n_events"] > 0]
    rows = []
    for r in t.itertuples(index=False):
        types = str(r.event_types).split(";")
        starts = str(r.event_start_sec).split(";")
        durs = str(r.event_duration_sec).split(";")
        for code, s, d in zip(types, starts, durs):
            code = code.strip()
            rows.append({"record_id": r.record_id, "code": code,
                         "type": _UCDDB_TYPES.get(code, "unknown"),
                         "onset": float(s), "duration": float(d)})
    ev = pd.DataFrame(rows).drop_duplicates(["record_id", "code", "onset"])
    ev = ev.sort_values(["record_id", "onset"], ignore_index=True)
    stage = np.empty(len(ev), dtype="<U3")
    for rid, idx in ev.groupby("record_id").groups.items():
        stages = ucddb_stages(rid)
        k = np.clip((ev.loc[idx, "onset"].to_numpy() // 30).astype(int), 0, stages.size - 1)
        stage[np.asarray([ev.index.get_loc(i) for i in idx])] = stages[k]
    ev["stage"] = stage
    return ev


def ucddb_events() -> pd.DataFrame:
    """Every scored apnea and hypopnea of the 25 UCDDB nights, deduplicated.

    Returns
    -------
    pandas.DataFrame
        Columns ``record_id``, ``code`` (UCDDB's, e.g. APNEA-O, HYP-C), ``type``
        (obstructive_apnea, central_apnea, mixed_apnea, hypopnea), ``onset`` and ``duration``
        (s from the recording start), ``stage`` (W, N1, N2, N3, R or UNS at the onset).
    """
    return _ucddb_events().copy()


# --------------------------------------------------------------------------- Apnea-ECG
def apnea_ecg_ids(group: str | None = None) -> list[str]:
    """Ids of the 52 Apnea-ECG nights, or of one group ("a" apnea, "b" borderline, "c" control)."""
    if group not in (None, "a", "b", "c"):
        raise ValueError(f"group must be 'a', 'b', 'c' or None, got {group!r}")
    ids = sorted(p.stem for p in _root(_APNEA_ECG).glob("*.npz"))
    return [i for i in ids if group is None or i.startswith(group)]


def apnea_ecg_group(record_id: str) -> str:
    """Group of an Apnea-ECG record: "a" (apnea), "b" (borderline) or "c" (control)."""
    return record_id[0]


def apnea_ecg_path(record_id: str) -> Path:
    """Path of one Apnea-ECG night's ``.npz`` (beat_time_s, hr_bpm, apnea_minute)."""
    if record_id not in apnea_ecg_ids():
        raise KeyError(f"no bundled Apnea-ECG record {record_id!r}; see apnea_ecg_ids()")
    return _root(_APNEA_ECG) / f"{record_id}.npz"


#: Validation records of the Apnea-ECG split (the rest of the challenge's learning set trains).
_APNEA_ECG_VALIDATION = frozenset(
    [f"a{k:02d}" for k in range(13, 21)] + ["b04", "b05"] + [f"c{k:02d}" for k in range(7, 11)])


def apnea_ecg_split(record_id: str) -> str:
    """The record's split: "train", "validation" or "test".

    Test: the records that come from the challenge's test set (renamed here a21-a32, b06,
    c11-c14). Validation: a13-a20, b04-b05, c07-c10. Train: the rest of the learning set
    (a01-a12, b01-b03, c01-c06). The bundled copy carries no subject identity per record, so
    the split follows the challenge's own learning/test division and cannot prove that no
    person has a night on both sides.
    """
    group, num = record_id[0], int(record_id[1:])
    if record_id not in apnea_ecg_ids():
        raise KeyError(f"no bundled Apnea-ECG record {record_id!r}; see apnea_ecg_ids()")
    if (group == "a" and num > 20) or (group == "b" and num > 5) or (group == "c" and num > 10):
        return "test"
    return "validation" if record_id in _APNEA_ECG_VALIDATION else "train"

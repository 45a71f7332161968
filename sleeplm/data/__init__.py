"""Data shipped with sleeplm.

``sleep-edf-hypnograms/``: 39 expert-scored hypnograms of the Sleep-EDF Expanded database
(sleep-cassette), scored with the Rechtschaffen & Kales rules. Kemp et al., IEEE-BME
47(9):1185-1194 (2000); Goldberger et al., PhysioNet (2000); ODC Attribution License. See the
README in that folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["hypnogram_ids", "hypnogram_path", "subject_of"]

_FOLDER = "sleep-edf-hypnograms"


def _folder() -> Path:
    return Path(str(resources.files("sleeplm.data") / _FOLDER))


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

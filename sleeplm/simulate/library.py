"""Patient libraries of simulated nights, and the demo's example patients.

A library is a folder of studies (EDF+, NSRR XML, hypnogram, truth) plus ``manifest.csv``
(patient id, profile, age, sex, seed, stage source, status). A patient that fails is logged and
marked in the manifest, and the run carries on with the next one.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from sleeplm._logging import logger
from sleeplm.simulate.night import simulate_night
from sleeplm.simulate.profiles import PROFILES
from sleeplm.simulate.study import write_study

__all__ = ["simulate_library", "example_library", "default_example_folder", "EXAMPLE_PATIENTS", "MANIFEST_COLUMNS"]

MANIFEST_COLUMNS = ("patient_id", "profile", "age", "sex", "seed", "hypnogram_source",
                    "hours", "edf", "annotations", "status")

#: The demo's patients: one night per profile, fixed seeds (regenerated identically anywhere).
EXAMPLE_PATIENTS: tuple[tuple[str, int], ...] = tuple(
    (name, 1000 + i) for i, name in enumerate(PROFILES)
)


def _one(profile: str, seed: int, folder: str, hypnogram: str | None,
         statistics: str = "v1", noise: str = "clean") -> dict:
    pid = f"sim-{seed:05d}-{profile}"
    row = {"patient_id": pid, "profile": profile, "seed": seed}
    try:
        night = simulate_night(hypnogram=hypnogram, profile=profile, seed=seed, patient_id=pid,
                               statistics=statistics, noise=noise)
        files = write_study(night, folder)
        info = night.recording.info
        row.update(age=info.age, sex=info.sex, hypnogram_source=night.hypnogram_source,
                   hours=round(night.recording.duration / 3600, 2), edf=files.edf.name,
                   annotations=files.annotations.name, status="ok")
    except Exception as exc:  # batch boundary: report and carry on with the next patient
        logger.error("simulating %s failed: %s", pid, exc)
        row["status"] = f"failed: {type(exc).__name__}: {exc}"
    return row


def _merge_manifest(path: Path, new: pd.DataFrame) -> None:
    """Write ``new`` to ``path``, keeping rows of other patients already listed there."""
    if path.exists():
        try:
            old = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            logger.warning("%s unreadable (%s); writing this run's patients only", path, exc)
            old = pd.DataFrame(columns=list(MANIFEST_COLUMNS))
        if "patient_id" in old.columns:
            old = old[~old["patient_id"].isin(set(new["patient_id"]))]
            if len(old):
                new = pd.concat([old.reindex(columns=list(MANIFEST_COLUMNS)), new],
                                ignore_index=True).sort_values("seed", ignore_index=True)
    tmp = path.with_name(f".{path.name}.tmp")
    new.to_csv(tmp, index=False)
    os.replace(tmp, path)


def simulate_library(
    n: int,
    out: str | os.PathLike,
    *,
    profiles: Sequence[str] | None = None,
    seed: int = 0,
    workers: int = 1,
    hypnogram: str | None = None,
    progress: bool = True,
    plan: Iterable[tuple[str, int] | tuple[str, int, str]] | None = None,
    statistics: str = "v1",
    noise: str = "clean",
) -> pd.DataFrame:
    """Simulate ``n`` nights into ``out`` and write its ``manifest.csv``.

    A folder that already has a manifest keeps its other patients' rows: runs with different
    seeds (e.g. one per stage source) add up to one library; a patient simulated again
    replaces its row.

    Parameters
    ----------
    n : int
        Number of patients; profiles are used in turn.
    out : path-like
        Library folder (created; existing studies of the same id are overwritten).
    profiles : sequence of str, optional
        Profiles to use in turn (default: all).
    seed : int
        Seed of the first patient; patient k gets ``seed + k``.
    workers : int
        Processes to use.
    hypnogram : str, optional
        Stage source for every night (default: a bundled night picked by each seed).
    progress : bool
        Show a progress bar.
    plan : iterable of (profile, seed) or (profile, seed, hypnogram), optional
        Exact patients to make instead of ``n``/``profiles``/``seed``; a third item is that
        night's stage source, overriding ``hypnogram``.
    statistics, noise : str
        As :func:`sleeplm.simulate.simulate_night` ("real", "real" for a realistic corpus).

    Returns
    -------
    pandas.DataFrame
        The manifest rows of this run's patients.
    """
    names = list(profiles or PROFILES)
    for name in names:
        if name not in PROFILES:
            raise KeyError(f"unknown profile '{name}'; choose from {sorted(PROFILES)}")
    jobs = ([(job[0], job[1], job[2] if len(job) > 2 else hypnogram) for job in plan]
            if plan is not None else [(names[k % len(names)], seed + k, hypnogram)
                                      for k in range(n)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    rows: list[dict] = []
    bar = tqdm(total=len(jobs), unit="night", desc="simulating", disable=not progress)
    if workers <= 1:
        for profile, s, source in jobs:
            rows.append(_one(profile, s, str(out), source, statistics, noise))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_one, p, s, str(out), h, statistics, noise)
                       for p, s, h in jobs]
            for fut in as_completed(futures):
                rows.append(fut.result())
                bar.update()
    bar.close()
    manifest = pd.DataFrame(rows).reindex(columns=list(MANIFEST_COLUMNS))
    manifest = manifest.sort_values("seed", ignore_index=True)
    _merge_manifest(out / "manifest.csv", manifest)
    failed = manifest[manifest["status"] != "ok"]
    if len(failed):
        logger.warning("%d of %d nights failed; see manifest.csv", len(failed), len(manifest))
    return manifest


def default_example_folder() -> Path:
    """``$SLEEPLM_HOME/examples``, by default ``~/.cache/sleeplm/examples``."""
    home = Path(os.environ.get("SLEEPLM_HOME", Path.home() / ".cache" / "sleeplm"))
    return home / "examples"


def example_library(folder: str | os.PathLike | None = None, *, workers: int = 2,
                    progress: bool = True) -> Path:
    """The demo's example patients, generated on first use (deterministic, ~1 min) and cached.

    Parameters
    ----------
    folder : path-like, optional
        Defaults to ``$SLEEPLM_HOME/examples`` (``~/.cache/sleeplm/examples``).
    """
    folder = Path(folder) if folder is not None else default_example_folder()
    manifest = folder / "manifest.csv"
    if manifest.exists():
        done = pd.read_csv(manifest)
        if len(done) == len(EXAMPLE_PATIENTS) and (done["status"] == "ok").all():
            return folder
    logger.info("generating the %d example patients in %s", len(EXAMPLE_PATIENTS), folder)
    simulate_library(len(EXAMPLE_PATIENTS), folder, plan=EXAMPLE_PATIENTS, workers=workers,
                     progress=progress)
    return folder

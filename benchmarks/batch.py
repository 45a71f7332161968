"""Benchmark: batch reports with the offline writer, and a first answer on a cached patient.

In one run:

* simulates ``--n`` nights (default 20, one profile after another) into a temporary library,
  full nights by default or ``--hours`` long for a quick check;
* runs :func:`assistant.batch.run_batch` over them with ``--workers`` processes (default 2) and
  the offline (template) narrative writer, every report in md, html, pdf and json: reports per
  hour and the time split per stage (processing the study with SleepLM, the deterministic
  tools, drafting, rendering), summed over the patients;
* runs the batch again: every patient is skipped (the resume pass);
* asks one question of a processed (cached) patient through
  :class:`assistant.agent.Assistant` with the offline planner: the first answer's latency
  (target < 2 s), not counting the assistant's construction, which is timed apart.

Prints a table and writes ``benchmarks/results/batch.json``. The machine is shared and noisy:
read the ratios, not the seconds. The nights are SIMULATED.

Usage: ``python benchmarks/batch.py [--n 20] [--hours H] [--workers 2] [--checkpoint DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# run from a checkout: the repository root holds assistant/ and tools/ next to sleeplm/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "Summarise this night."


def _simulate(folder: Path, n: int, hours: float | None, seed: int, workers: int) -> list[str]:
    """``n`` simulated nights and their manifest.csv in ``folder``; returns the patient ids."""
    import numpy as np
    import pandas as pd

    from sleeplm.simulate import PROFILES, simulate_library, simulate_night, write_study
    from sleeplm.simulate.hypnograms import night_hypnogram
    from sleeplm.simulate.library import MANIFEST_COLUMNS
    from sleeplm.simulate.profiles import get_profile

    if hours is None:
        manifest = simulate_library(n, folder, seed=seed, workers=workers, progress=False)
        return [str(p) for p in manifest.loc[manifest["status"] == "ok", "patient_id"]]
    names = list(PROFILES)
    rows = []
    for k in range(n):
        profile, s = names[k % len(names)], seed + k
        pid = f"sim-{s:05d}-{profile}"
        stages, source = night_hypnogram(get_profile(profile), np.random.default_rng(s))
        night = simulate_night(hypnogram=stages[: max(20, int(hours * 120))], profile=profile,
                               seed=s, patient_id=pid)
        files = write_study(night, folder)
        info = night.recording.info
        rows.append({"patient_id": pid, "profile": profile, "age": info.age, "sex": info.sex,
                     "seed": s, "hypnogram_source": source,
                     "hours": round(night.recording.duration / 3600, 2), "edf": files.edf.name,
                     "annotations": files.annotations.name, "status": "ok"})
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(folder / "manifest.csv",
                                                              index=False)
    return [r["patient_id"] for r in rows]


def _first_answer(library: Path, state: Path, patient: str) -> dict:
    """Latency of the agent's first answer on a cached patient, or why it was not measured."""
    try:
        from assistant.agent import Assistant
        from assistant.config import AssistantConfig
    except ImportError as exc:
        return {"measured": False, "reason": f"assistant.agent is not available ({exc})"}
    try:
        t0 = time.perf_counter()
        assistant = Assistant(AssistantConfig.load(backend="offline", library=library,
                                                   state_dir=state))
        construct = time.perf_counter() - t0
        # what an app does at start-up (demo.py warms up before serving): load the question
        # embedder and open the patient from its cache
        warm = assistant.warm_up(patient)
        t0 = time.perf_counter()
        answer = assistant.ask(patient, QUESTION)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        assistant.ask(patient, "What is the AHI?")
        second = time.perf_counter() - t0
        assistant.close()
    except Exception as exc:  # keep the batch numbers; say why the latency is missing
        return {"measured": False, "reason": f"the assistant failed: {type(exc).__name__}: "
                                             f"{exc}"}
    return {"measured": True, "question": QUESTION, "patient": patient,
            "construct_s": construct, "warm_up_s": warm, "first_answer_s": first,
            "second_answer_s": second,
            "tool_calls": len(answer.tool_calls), "answer_chars": len(answer.text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="simulated nights (default 20)")
    parser.add_argument("--hours", type=float, default=None,
                        help="night length, hours (default: full simulated nights)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pandas as pd

    if args.checkpoint is not None:
        os.environ["SLEEPLM_MODEL"] = str(args.checkpoint.resolve())
    from assistant.batch import STAGES, run_batch
    from sleeplm.model.network import default_checkpoint

    ck = args.checkpoint or default_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        lib, out = Path(tmp) / "library", Path(tmp) / "reports"
        lib.mkdir()
        t0 = time.perf_counter()
        patients = _simulate(lib, args.n, args.hours, args.seed, args.workers)
        t_sim = time.perf_counter() - t0
        hours = float(pd.read_csv(lib / "manifest.csv")["hours"].dropna().sum())
        summary = run_batch(lib, out, workers=args.workers, progress=False, model_dir=ck)
        again = run_batch(lib, out, workers=args.workers, progress=False, model_dir=ck)
        ok = [r.patient for r in summary.rows if r.status == "ok"]
        answer = (_first_answer(lib, Path(tmp) / "state", ok[0]) if ok
                  else {"measured": False, "reason": "no patient was processed"})
        out_mib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20

    split = summary.stage_seconds
    total = sum(split.values()) or 1.0
    print(f"\n{len(patients)} simulated nights ({hours:.1f} h of recording), "
          f"{args.workers} workers, checkpoint {ck}; simulation took {t_sim:.1f} s")
    print(f"{'step':<44}{'seconds':>10}{'share':>8}")
    print(f"{'batch, cold (all patients)':<44}{summary.seconds:>10.1f}")
    for s in STAGES:
        print(f"{'  ' + s + ' (sum over patients)':<44}{split[s]:>10.1f}"
              f"{100 * split[s] / total:>7.0f}%")
    print(f"{'batch again, all skipped (resume pass)':<44}{again.seconds:>10.2f}")
    if answer["measured"]:
        print(f"{'assistant construction (offline planner)':<44}{answer['construct_s']:>10.2f}")
        print(f"{'warm-up (question embedder, patient cache)':<44}{answer['warm_up_s']:>10.2f}")
        print(f"{'first answer, cached patient (target < 2 s)':<44}"
              f"{answer['first_answer_s']:>10.2f}")
        print(f"{'second answer, same patient':<44}{answer['second_answer_s']:>10.2f}")
    else:
        print(f"first answer latency: not measured ({answer['reason']})")
    rate = summary.reports_per_hour or 0.0
    print(f"reports per hour: {rate:.0f}  ({summary.n_ok} ok, {summary.n_error} errors; "
          f"rerun: {again.n_skipped} skipped); outputs {out_mib:.1f} MiB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps({
        "nights": len(patients), "recording_hours": round(hours, 2), "night_hours": args.hours,
        "workers": args.workers, "checkpoint": str(ck), "simulated": True,
        "reports_per_hour": summary.reports_per_hour, "batch_seconds": summary.seconds,
        "stage_seconds": split, "n_ok": summary.n_ok, "n_error": summary.n_error,
        "errors": {r.patient: f"{r.error_type}: {r.error}" for r in summary.rows
                   if r.status == "error"},
        "resume_seconds": again.seconds, "resume_skipped": again.n_skipped,
        "first_answer": answer, "outputs_mib": out_mib, "simulation_seconds": t_sim},
        indent=2) + "\n")


if __name__ == "__main__":
    main()

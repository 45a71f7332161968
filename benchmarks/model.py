"""Benchmark: SleepLM on a whole night on this machine's CPU, against YASA staging the same night.

Times, in one run on the same simulated 8-hour night:

* reading + model input (``sleeplm.corpus.preprocess.epoch_tensor``),
* embedding every epoch with the SleepLM signal encoder (batched),
* YASA's ``SleepStaging`` of the same night (EEG + EOG + EMG), the peer,
* caption generation for a batch of epochs (time per epoch), greedy and, with a calibrated
  checkpoint, checked as the caption tool makes them (:mod:`sleeplm.model.captioning`),
* training throughput (epochs/s, forward + backward) on CPU,

and the peak resident memory of the inference steps and then including the training steps
(simulating the test night is excluded). Prints a table and writes
``benchmarks/results/model.json``. The machine is shared and noisy: read the ratio, not the
seconds.

Usage: ``python benchmarks/model.py [--checkpoint DIR] [--hours 8]`` (without a checkpoint an
untrained model of the default configuration is timed: the cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def _reset_peak() -> None:
    """Reset the process's high-water mark (Linux), so the peak excludes simulating the night."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from sleeplm.model.network import SleepLM, SleepLMConfig, load_model
    from sleeplm.corpus.preprocess import ModelInputConfig, epoch_tensor
    from sleeplm.simulate import simulate_night

    if args.checkpoint:
        model = load_model(args.checkpoint)
    else:
        model = SleepLM(SleepLMConfig()).eval()
    cfg = model.cfg
    n_epochs = int(args.hours * 120)
    hyp = np.array((["W"] * 20 + ["N1"] * 10 + ["N2"] * 60 + ["N3"] * 40 + ["N2"] * 40
                    + ["R"] * 30) * (n_epochs // 200 + 1))[:n_epochs]
    night = simulate_night(hyp, "osa_moderate", seed=1)
    rec = night.recording
    del night
    _reset_peak()  # what follows is what a user of the model pays for
    rows = {}

    t0 = time.perf_counter()
    mi = epoch_tensor(rec, ModelInputConfig(channels=tuple(cfg.channels), sfreq=cfg.sfreq))
    rows["model input (epoch_tensor)"] = time.perf_counter() - t0

    x = torch.from_numpy(mi.x)
    mask = torch.from_numpy(mi.mask)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, x.shape[0], args.batch):
            model.encode_signal(x[i : i + args.batch].float(), mask)
    rows["SleepLM embedding, all epochs"] = time.perf_counter() - t0

    import mne
    import yasa

    sig = rec.signals
    t0 = time.perf_counter()
    emg = np.interp(np.arange(sig["EEG_C4"].data.size) / sig["EEG_C4"].sfreq,
                    np.arange(sig["EMG_CHIN"].data.size) / sig["EMG_CHIN"].sfreq,
                    sig["EMG_CHIN"].data)
    data = np.vstack([sig["EEG_C4"].data, sig["EOG_L"].data, emg]).astype(float) * 1e-6
    raw = mne.io.RawArray(data, mne.create_info(["C4", "EOG", "EMG"], sig["EEG_C4"].sfreq,
                                                ["eeg", "eog", "emg"]), verbose=False)
    yasa.SleepStaging(raw, eeg_name="C4", eog_name="EOG", emg_name="EMG",
                      metadata={"age": 50, "male": True}).predict()
    rows["YASA SleepStaging, same night"] = time.perf_counter() - t0

    n_cap = min(64, x.shape[0])
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(x[:n_cap].float(), mask, system=4, max_len=48)
    cap_per_epoch = (time.perf_counter() - t0) / n_cap
    checked_per_epoch, n_checked = None, 0
    if args.checkpoint and (Path(args.checkpoint) / "tokenizer.json").is_file():
        # the caption tool's path: greedy, then the check of event clauses (sleeplm.model.captioning)
        from sleeplm.model.calibration import load_calibration
        from sleeplm.model.captioning import caption_epochs
        from sleeplm.model.tokenizer import CaptionTokenizer

        tok = CaptionTokenizer.load(Path(args.checkpoint) / "tokenizer.json")
        thresholds = load_calibration(args.checkpoint).captions
        if thresholds:
            t0 = time.perf_counter()
            caps = caption_epochs(model, tok, x[:n_cap].float(), mask, "holistic", 48,
                                  thresholds)
            checked_per_epoch = (time.perf_counter() - t0) / n_cap
            n_checked = sum(bool(c.margins) for c in caps)
    peak_inference = _peak_mib()  # reading, model input, embedding, YASA, captions

    train_model = SleepLM(cfg).train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    ids = torch.randint(4, cfg.vocab_size, (32, 40))
    ids[:, 0] = cfg.bos_id
    ids[:, -1] = cfg.eos_id
    xb = x[:32].float()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = train_model(xb, mask, ids, torch.full((32,), 4))
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    train_eps = 32 / min(times)

    ratio = rows["SleepLM embedding, all epochs"] / rows["YASA SleepStaging, same night"]
    print(f"\nnight: {rec.duration / 3600:.1f} h, {x.shape[0]} epochs, "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'untrained default config'}")
    print(f"{'step':<34}{'seconds':>10}")
    for k, v in rows.items():
        print(f"{k:<34}{v:>10.2f}")
    print(f"{'ratio SleepLM embed / YASA staging':<34}{ratio:>10.2f}   (target <= 1)")
    print(f"caption generation: {cap_per_epoch * 1000:.0f} ms per epoch (batch {n_cap}, "
          "greedy, 48 tokens)")
    if checked_per_epoch is not None:
        print(f"checked captions (greedy + event check, the caption tool): "
              f"{checked_per_epoch * 1000:.0f} ms per epoch ({n_checked} of {n_cap} named an "
              f"event and were scored; ratio to greedy {checked_per_epoch / cap_per_epoch:.2f})")
    print(f"training throughput (CPU, batch 32, fwd+bwd+step): {train_eps:.1f} epochs/s")
    print(f"peak resident memory, inference (input, embedding, YASA, captions): "
          f"{peak_inference:.0f} MiB (target < 2048)")
    print(f"peak resident memory, including the training steps: {_peak_mib():.0f} MiB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.json").write_text(json.dumps({
        "epochs": int(x.shape[0]), "seconds": rows, "ratio_embed_vs_yasa": ratio,
        "caption_ms_per_epoch": cap_per_epoch * 1000,
        "checked_caption_ms_per_epoch": (None if checked_per_epoch is None
                                         else checked_per_epoch * 1000),
        "n_checked_captions_scored": n_checked, "train_epochs_per_s_cpu": train_eps,
        "peak_mib_inference": peak_inference, "peak_mib_with_training": _peak_mib(),
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
    }, indent=2))


if __name__ == "__main__":
    main()

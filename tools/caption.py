"""caption: SleepLM's words for an epoch, a time range or a night, with the facts behind them.

Two parts, kept apart on purpose:

* ``generated``: greedy captions from SleepLM's decoder (``SleepLM.generate``) for the target
  epochs (a range or night: up to ``max_epochs`` epochs evenly spread over it), optionally
  targeted at one system (brain, cardiac, respiration, somatic; default holistic). Holistic
  captions are checked (:mod:`sleeplm.model.captioning`): a hypopnea, obstructive apnea or arousal
  the decoder's own evidence does not carry, by the checkpoint's calibrated thresholds, is
  withdrawn, and the caption lists what was taken out. They are the model's reading of the
  signals, not measurements: numbers in them must not be quoted;
* ``facts``: the deterministic captions of :mod:`sleeplm.captions` for the same epochs
  (epoch captions; for a range also the 5-min segment captions; for a night the night captions
  and the clinical summary's measures), each with its facts (units in the key names) and time
  span. These are what the agent may quote. The deterministic captions of a night are made once
  and kept in the patient's ``captions/`` cache folder (the generated captions too).

A system whose channels the night lacks (e.g. ``brain`` without EEG/EOG) is refused, and no
generated part that describes a modality the night lacks reaches the answer: it is withdrawn
deterministically (:func:`sleeplm.captions.modalities.withdraw_absent`) and listed as withdrawn.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.model.captioning import CheckedCaption
from sleeplm.captions.caption import Caption, NightCaptions
from sleeplm.clinical.measure import Measure
from sleeplm.library.patients import ProcessedPatient
from tools.common import (
    SYSTEM_CHANNELS,
    Requirement,
    Span,
    TimeSelection,
    check_requirements,
    recording_start,
    resolve_selection,
    span_of,
)
from tools.context import ToolContext

__all__ = [
    "CaptionInput",
    "CaptionOutput",
    "GeneratedCaption",
    "System",
    "caption",
    "deterministic_captions",
    "generate_captions",
]

System = Literal["holistic", "brain", "cardiac", "respiration", "somatic"]
_CACHE_NAME = "deterministic-seed0.json"
#: Epoch captions listed as facts at most (a longer range lists its segment captions).
MAX_FACT_EPOCHS = 40


class CaptionInput(BaseModel):
    """Arguments of :func:`caption`.

    Attributes
    ----------
    target : TimeSelection or None
        An epoch, a range, or (default) the whole night.
    system : str
        ``holistic`` (default), ``brain``, ``cardiac``, ``respiration`` or ``somatic``.
    max_epochs : int
        Epochs decoded for a range or a night (evenly spread).
    max_len : int
        Longest generated caption, tokens.
    """

    model_config = ConfigDict(extra="forbid")

    target: TimeSelection | None = Field(default=None, description="epoch, range or night")
    system: System = Field(default="holistic", description="which physiological system")
    max_epochs: int = Field(default=6, ge=1, le=64, description="epochs decoded at most")
    max_len: int = Field(default=64, ge=4, le=256, description="tokens per caption at most")


class GeneratedCaption(BaseModel):
    """One caption from SleepLM's decoder.

    Attributes
    ----------
    epoch : int
    span : Span
    text : str
        The caption after the check (holistic captions with a calibrated checkpoint).
    withdrawn : list of str
    """

    epoch: int
    span: Span
    text: str
    withdrawn: list[str] = Field(default_factory=list, description=(
        "parts of the greedy caption withdrawn: weak decoder evidence for the event, a clause "
        "contradicting a confirmed one, or a part describing a channel the night lacks"))


class CaptionOutput(BaseModel):
    """Result of :func:`caption`.

    Attributes
    ----------
    patient : str
    scope : {"epoch", "range", "night"}
    system : str
    span : Span
    generated : list of GeneratedCaption
        SleepLM's captions (model output: do not quote numbers from them).
    facts : list of Caption
        Deterministic captions with their facts and time spans (quotable).
    measures : list of Measure
        Clinical numbers (night scope), each with unit and evidence.
    missing : dict of str to str
        What the deterministic captioner could not measure, and why.
    warnings : list of str
    refusal : str or None
    requirements : list of Requirement
    model_version : str
    """

    patient: str
    scope: Literal["epoch", "range", "night"]
    system: str
    span: Span | None = None
    generated: list[GeneratedCaption] = Field(default_factory=list)
    facts: list[Caption] = Field(default_factory=list)
    measures: list[Measure] = Field(default_factory=list)
    missing: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    refusal: str | None = None
    requirements: list[Requirement] = Field(default_factory=list)
    model_version: str = ""

    def summary(self) -> str:
        """A short text for the LLM."""
        if self.refusal:
            return f"Cannot caption the {self.system} system: {self.refusal}"
        where = self.span.describe() if self.span else self.scope
        lines = [f"SleepLM {self.system} caption(s) of {where} (model words, not measurements):"]
        lines += [f"- epoch {g.epoch}: {g.text or '(every part withdrawn)'}"
                  + (f" [withdrawn: {'; '.join(g.withdrawn)}]"
                                                    if g.withdrawn else "")
                  for g in self.generated]
        lines.append("Deterministic facts (quotable):")
        for c in self.facts[:12]:
            lines.append(f"- [{c.level} {c.system} {c.start:.0f}-{c.end:.0f} s] {c.text}")
        if len(self.facts) > 12:
            lines.append(f"... {len(self.facts) - 12} more in the artifact")
        lines += [f"- {m.label}: {m.format()}" for m in self.measures]
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def deterministic_captions(ctx: ToolContext) -> NightCaptions:
    """The current night's deterministic captions (:func:`sleeplm.captions.caption_night`,
    seed 0), made once and kept in the patient's ``captions/`` cache folder."""
    p = ctx.processed()

    def make() -> NightCaptions:
        path = p.captions_dir / _CACHE_NAME
        if path.is_file():
            try:
                return NightCaptions.model_validate_json(path.read_text())
            except ValueError:
                pass  # unreadable: make it again
        from sleeplm.captions import caption_night

        caps = caption_night(ctx.recording(), seed=0)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_text(caps.model_dump_json())
        os.replace(tmp, path)
        return caps

    return ctx.memo(("night_captions", p.patient), make)


def _model_inputs(p: ProcessedPatient, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``mask`` of epochs ``idx`` (``[B, C, T]``, or ``[B, 2k+1, C, T]`` windows with
    absent neighbours zeroed and masked, as :func:`sleeplm.library.patients.embed_epochs` feeds them)."""
    n, C = p.n_epochs, len(p.channels)
    mask = np.asarray(p.mask, dtype=bool)
    if k == 0:
        return (np.asarray(p.x[idx], dtype=np.float32),
                np.broadcast_to(mask, (len(idx), C)).copy())
    nb = idx[:, None] + np.arange(-k, k + 1)[None, :]
    ok = (nb >= 0) & (nb < n)
    xs = np.asarray(p.x[np.clip(nb, 0, n - 1).ravel()], dtype=np.float32)
    xs = xs.reshape(nb.shape + xs.shape[1:])
    xs[~ok] = 0.0
    return xs, ok[:, :, None] & mask[None, None, :]


def generate_captions(ctx: ToolContext, epochs: list[int], system: System = "holistic",
                      max_len: int = 64) -> list[CheckedCaption]:
    """SleepLM's captions of ``epochs`` of the current patient (one per epoch): greedy, and for
    holistic captions checked with the checkpoint's calibrated thresholds
    (:func:`sleeplm.model.captioning.caption_epochs`; ``captions`` in ``calibration.json``).
    Whatever the system, a part that describes a modality the night does not have (SpO2 on an
    EEG-only file, a sleep stage without EEG or EOG) is withdrawn and listed.

    Kept in the patient's ``captions/`` cache folder (``generated-<system>-<hash>.json``), so
    asking again is instant; the folder goes away with the cache when the study or model
    changes, and other thresholds make another cache entry.
    """
    import torch

    from sleeplm.model.captioning import caption_epochs

    p = ctx.processed()
    thresholds = dict(ctx.calibration.captions) if system == "holistic" else {}
    key = hashlib.sha256(json.dumps([system, int(max_len), [int(e) for e in epochs],
                                     sorted(thresholds.items()), "absent-modalities-1"]
                                    ).encode()).hexdigest()[:16]
    path = p.captions_dir / f"generated-{system}-{key}.json"
    if path.is_file():  # same request, same cache key (patient files and model): reuse
        try:
            cached = [CheckedCaption.model_validate(c) for c in json.loads(path.read_text())]
            if len(cached) == len(epochs):
                return cached
        except (ValueError, TypeError):
            pass  # unreadable or an older format: caption again
    model, tok = ctx.model, ctx.tokenizer
    idx = np.asarray(epochs, dtype=int)
    out: list[CheckedCaption] = []
    dev = model.logit_scale.device
    for s in range(0, len(idx), 32):
        x, m = _model_inputs(p, idx[s:s + 32], int(model.cfg.context_epochs))
        with torch.inference_mode():
            out += caption_epochs(model, tok, torch.from_numpy(x).to(dev),
                                  torch.from_numpy(m).to(dev), system, max_len,
                                  thresholds or None, channels=list(p.channels))
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps([c.model_dump() for c in out]))
    os.replace(tmp, path)
    return out


def caption(ctx: ToolContext, request: CaptionInput | None = None) -> CaptionOutput:
    """Caption an epoch, a range or the night: SleepLM's words plus the deterministic facts.

    Parameters
    ----------
    ctx : ToolContext
    request : CaptionInput, optional

    Returns
    -------
    CaptionOutput
        ``refusal`` set when the night lacks every channel of the asked system.

    Raises
    ------
    TimeRangeError
        The target lies outside the night.
    """
    request = request or CaptionInput()
    p = ctx.processed()
    sel = resolve_selection(p, request.target)
    out = CaptionOutput(patient=p.patient, scope=sel.scope, system=request.system,
                        span=sel.span, model_version=p.model_version)
    chans = (SYSTEM_CHANNELS[request.system] if request.system != "holistic"
             else tuple(c for v in SYSTEM_CHANNELS.values() for c in v))
    out.requirements, refusal = check_requirements(
        p, [(f"{request.system} signals", chans)])
    if refusal:
        out.refusal = refusal
        return out
    a, b = sel.span.first_epoch, sel.span.last_epoch
    n_dec = min(request.max_epochs, b - a + 1)
    chosen = sorted(set(np.linspace(a, b, n_dec).round().astype(int).tolist()))
    t0 = recording_start(p)
    checked = generate_captions(ctx, chosen, request.system, request.max_len)
    out.generated = [GeneratedCaption(epoch=e, span=span_of(p, e, e, t0), text=c.text,
                                      withdrawn=c.withdrawn) for e, c in zip(chosen, checked)]
    if len(chosen) < b - a + 1:
        out.warnings.append(f"SleepLM captioned {len(chosen)} of the {b - a + 1} epochs "
                            "(evenly spread); ask for a shorter range for every epoch")
    out.warnings.append("generated captions are the model's reading of the signals: quote "
                        "numbers only from the deterministic facts and measures")
    caps = deterministic_captions(ctx)
    out.missing = dict(caps.missing)
    wanted = {request.system, "holistic"}
    s0, s1 = sel.span.start_s, sel.span.end_s
    if sel.scope == "night":
        out.facts = [c for c in caps.night if c.system in wanted]
        keys = ("architecture", "respiratory", "oximetry") if request.system in (
            "holistic", "respiration") else ("architecture",)
        for key in keys:
            out.measures += list(p.facts.sections.get(key, []))
            if key in p.facts.unavailable:
                out.warnings.append(f"{key} not available: {p.facts.unavailable[key]}")
    else:
        ep = [c for e in caps.epochs for c in e.captions
              if c.system in wanted and c.start < s1 - 1e-6 and c.end > s0 + 1e-6]
        if (b - a + 1) > MAX_FACT_EPOCHS:
            seg = [c for c in caps.segments if c.system in wanted and c.start < s1 and c.end > s0]
            out.facts = seg
            out.warnings.append(f"{b - a + 1} epochs: the facts are the 5-min segment captions "
                                "(ask for a shorter range for epoch-level facts)")
        else:
            out.facts = ep
        out.facts += [c for c in caps.events if c.start < s1 and c.end > s0][:50]
    sys_missing = {k: v for k, v in caps.missing.items() if k == request.system}
    if sys_missing:
        out.warnings.append(f"the deterministic captioner could not describe {request.system}: "
                            f"{json.dumps(sys_missing)}")
    return out

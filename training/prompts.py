"""Text prompts for zero-shot evaluation of SleepLM (:mod:`training.evaluate`).

The prompts are written in the style of the training captions (:mod:`sleeplm.captions`): they
lead with the AASM stage phrase the captioner uses ("stage N2 sleep", "REM sleep (R)"), then
name the features a caption of that stage typically carries (spindles, slow waves, rapid eye
movements, chin tone, ...). Each class is the L2-normalised mean of its prompts' text
embeddings. None of these prompts is a training label; severity and PLM prompts describe tasks
the model was never trained on.
"""

from __future__ import annotations

__all__ = ["STAGE_PROMPTS", "STAGES", "LOCALISATION_QUERIES", "OSA_SEVERITY_PROMPTS",
           "OSA_SEVERITY_CLASSES", "PLM_PROMPTS", "PLM_CLASSES"]

#: Stage labels in the order of :data:`sleeplm.shards.STAGE_IDS` (W=0 ... R=4).
STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "R")

STAGE_PROMPTS: dict[str, list[str]] = {
    "W": [
        "Wake (W).",
        "Awake, stage W; dominant alpha rhythm; rapid eye movements.",
        "Scored as wake (W); high chin tone; no spindles.",
        "Wake (W), HR 70 bpm, no respiratory events.",
    ],
    "N1": [
        "Light sleep (N1).",
        "Stage N1; slow eye movements; theta activity.",
        "N1, the lightest sleep stage; no spindles, no slow waves.",
        "Light sleep (N1); HR 62 bpm; no respiratory events.",
    ],
    "N2": [
        "Stage N2 sleep.",
        "N2 sleep with spindles.",
        "Stage N2 sleep; 2 spindles; 1 isolated large slow wave (K-complex-like).",
        "Light-to-intermediate sleep (N2); 3 spindles; slow-wave activity 8%.",
    ],
    "N3": [
        "Deep slow-wave sleep (N3).",
        "Stage N3; 45% slow waves; dominant delta rhythm.",
        "N3, deep sleep; slow-wave activity 40%; no spindles.",
        "Deep slow-wave sleep (N3); EEG power mostly delta (90%).",
    ],
    "R": [
        "REM sleep (R).",
        "Stage R (REM); 8 rapid eye movements; low chin tone.",
        "Rapid-eye-movement sleep (R); atonia, low chin tone.",
        "REM sleep (R); rapid eye movements; no slow waves.",
    ],
}

#: Localisation queries: event name -> prompts (averaged, like the stage classes).
LOCALISATION_QUERIES: dict[str, list[str]] = {
    "obstructive_apnea": ["obstructive apnea", "An obstructive apnea scored.",
                          "an obstructive apnea with continued respiratory effort"],
    "hypopnea": ["hypopnea", "A hypopnea scored.", "airflow reduced, a hypopnea"],
    "desaturation": ["oxygen desaturation", "A 4% desaturation to 90% starting.",
                     "SpO2 down to 88%, a desaturation"],
    "spindles": ["sleep spindles", "3 spindles", "spindle activity (2 spindles)"],
    "arousal": ["arousal", "1 arousal", "an arousal, heart rate rising"],
}

OSA_SEVERITY_CLASSES: tuple[str, ...] = ("none", "mild", "moderate", "severe")
OSA_SEVERITY_PROMPTS: dict[str, list[str]] = {
    "none": ["no sleep apnea by AHI; breathing without scored events",
             "AHI 1.0/h, no respiratory events, normal oxygen saturation"],
    "mild": ["mild obstructive sleep apnea with occasional hypopneas",
             "AHI 8.0/h, severity: mild, a few hypopneas"],
    "moderate": ["moderate obstructive sleep apnea with repeated apneas and hypopneas",
                 "AHI 22.0/h, severity: moderate, desaturations"],
    "severe": ["severe obstructive sleep apnea with frequent apneas and desaturations",
               "AHI 45.0/h, severity: severe, many obstructive apneas and desaturations to 80%"],
}

PLM_CLASSES: tuple[str, ...] = ("no", "yes")
PLM_PROMPTS: dict[str, list[str]] = {
    "no": ["no leg movements; legs quiet", "0.0 periodic limb movements/h"],
    "yes": ["frequent periodic limb movements of the legs",
            "periodic limb movement disorder, 30.0 periodic limb movements/h"],
}

"""Text prompts for zero-shot use of SleepLM: the evaluation (:mod:`training.evaluate`) and the
assistant's tools score with the same prompts.

The prompts are written in the style of the training captions (:mod:`sleeplm.captions`): they
lead with the AASM stage phrase the captioner uses ("stage N2 sleep", "REM sleep (R)"), then
name the features a caption of that stage typically carries (spindles, slow waves, rapid eye
movements, chin tone, ...). Each class is the L2-normalised mean of its prompts' text
embeddings. None of these prompts is a training label; severity and PLM prompts describe tasks
the model was never trained on.

The stage prompts are the stage phrases the captioner writes (:func:`sleeplm.captions.phrasing.
stage_phrases`, capitalised, as a caption's first clause): the clauses recipe pairs each epoch
with its stage clause alone, so those are the words the signal is aligned with. They were
chosen on the corpus's **validation** split only, with the clauses checkpoint, against the
earlier set that added each stage's typical findings (accuracy 0.941 -> 0.967, macro-F1 0.914
-> 0.947); the test split reported in the model card was not used to pick them.
"""

from __future__ import annotations

from sleeplm.captions.phrasing import stage_phrases

__all__ = ["STAGE_PROMPTS", "STAGES", "LOCALISATION_QUERIES", "LOCALISATION_BACKGROUND",
           "LOCALISATION_ALIASES", "LOCALISATION_RIVALS",
           "RESPIRATORY_EVENT_PROMPTS", "OSA_SEVERITY_PROMPTS", "GENERATIVE_QUERIES",
           "OSA_SEVERITY_CLASSES", "PLM_PROMPTS", "PLM_CLASSES"]

#: Stage labels in the order of :data:`sleeplm.corpus.shards.STAGE_IDS` (W=0 ... R=4).
STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "R")

#: Stage -> prompts: the captioner's own stage phrases as a caption's first clause
#: ("Stage N2 sleep.", "REM sleep (R)."), so they follow any change to the captioner.
STAGE_PROMPTS: dict[str, list[str]] = {
    stage: [p[:1].upper() + p[1:] + "." for p in stage_phrases(stage)] for stage in STAGES
}

#: Localisation queries: event name -> prompts (averaged, like the stage classes). The
#: respiratory, desaturation and arousal prompts are the clauses the captioner writes
#: ("an obstructive apnea scored", "a 4% desaturation to 91% starting", "1 arousal"): the
#: clause-pair recipe aligns the signal with exactly those. They were chosen against the
#: earlier, free-worded set on the corpus's **validation** split with the clauses checkpoint
#: (run-level F1 at margin 0: apnea 0.36 -> 0.81 with the rival below, hypopnea 0.27 -> 0.44,
#: desaturation 0.58 -> 0.64, arousal 0.69 -> 0.76, then 0.48 -> 0.81 with the final
#: clauses checkpoint after dropping "2 arousals", which pulled towards absence; spindles
#: unchanged, so kept); the test split was not used to pick them.
LOCALISATION_QUERIES: dict[str, list[str]] = {
    "obstructive_apnea": ["an obstructive apnea scored", "scored: an obstructive apnea",
                          "an obstructive apnea in this epoch", "an obstructive apnea"],
    "hypopnea": ["a hypopnea scored", "scored: a hypopnea", "a hypopnea in this epoch",
                 "a hypopnea"],
    "desaturation": ["a 4% desaturation to 91% starting", "a 5% desaturation to 90% begins",
                     "a 3% desaturation to 93% starting", "a desaturation to 89% starting"],
    "spindles": ["sleep spindles", "3 spindles", "spindle activity (2 spindles)"],
    "arousal": ["1 arousal", "an arousal", "arousals scored"],
}

#: Other wordings that name a known query (the tools match them too): the free-worded prompts
#: of the earlier set, and everyday words.
LOCALISATION_ALIASES: dict[str, list[str]] = {
    "obstructive_apnea": ["obstructive apnea", "An obstructive apnea scored.",
                          "an obstructive apnea with continued respiratory effort", "OSA event"],
    "hypopnea": ["hypopnea", "A hypopnea scored.", "airflow reduced, a hypopnea"],
    "desaturation": ["oxygen desaturation", "A 4% desaturation to 90% starting.",
                     "SpO2 down to 88%, a desaturation", "desaturation", "oxygen drop"],
    "spindles": ["sleep spindle", "spindles", "spindle"],
    "arousal": ["arousal", "an arousal, heart rate rising", "arousals", "1 scored arousal"],
}

#: What each localisation query is contrasted with: an epoch is positive for a query when its
#: embedding is closer to the query's prompts than to these (the same wording the captions use
#: to say the event is absent) and than to every rival query's prompts
#: (:data:`LOCALISATION_RIVALS`). Zero-shot: none of these was ever a training label.
LOCALISATION_BACKGROUND: dict[str, list[str]] = {
    "obstructive_apnea": ["no respiratory events", "no apnea or hypopnea scored",
                          "breathing without scored events", "normal breathing events-wise"],
    "hypopnea": ["no respiratory events", "no apnea or hypopnea scored",
                 "breathing without scored events", "normal breathing events-wise"],
    "desaturation": ["lowest SpO2 96%", "SpO2 96% (min 95%)", "Saturation averaging 96%"],
    "spindles": ["no sleep spindles", "no spindle detected", "no spindles"],
    "arousal": ["no arousal", "no arousals scored"],
}

#: Known queries that compete with a query: an obstructive-apnea epoch must read more like an
#: apnea than like a hypopnea too, and the other way round.
LOCALISATION_RIVALS: dict[str, list[str]] = {
    "obstructive_apnea": ["hypopnea"],
    "hypopnea": ["obstructive_apnea"],
}

#: Night-level OSA severity from epoch prompts: one prompt class per kind of respiratory
#: event; an epoch is a respiratory-event epoch when one of the kinds reads more like it than
#: its absence (``LOCALISATION_BACKGROUND["hypopnea"]``; :func:`sleeplm.model.zeroshot.any_margins`).
RESPIRATORY_EVENT_PROMPTS: dict[str, list[str]] = {
    "obstructive_apnea": ["obstructive apnea", "An obstructive apnea scored.",
                          "an obstructive apnea in this epoch"],
    "central_apnea": ["central apnea", "A central apnea scored.",
                      "a central apnea in this epoch"],
    "mixed_apnea": ["mixed apnea", "A mixed apnea scored.", "a mixed apnea in this epoch"],
    "hypopnea": ["hypopnea", "A hypopnea scored.", "a hypopnea in this epoch"],
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

#: Generative (caption-decoder) localisation: query -> (clauses that mention the event,
#: rival clauses in the same slot of a holistic caption). An epoch's evidence is
#: ``log sum p(mention) - log sum p(rival)`` under the caption decoder, each clause scored as
#: the holistic caption's second clause after the epoch's (zero-shot) stage phrase
#: (:func:`sleeplm.model.zeroshot.generative_margins`). The clauses are the captioner's own
#: wordings (:mod:`sleeplm.captions.epoch`); chosen on the validation split (8 nights:
#: hypopnea epoch AUROC 0.904 contrastive -> 0.967 generative), never on the test split.
GENERATIVE_QUERIES: dict[str, tuple[list[str], list[str]]] = {
    "hypopnea": (["a hypopnea", "2 hypopneas"],
                 ["an obstructive apnea", "2 obstructive apneas", "a central apnea",
                  "a mixed apnea", "no respiratory events", "normal breathing events-wise"]),
    "obstructive_apnea": (["an obstructive apnea", "2 obstructive apneas"],
                          ["a hypopnea", "2 hypopneas", "a central apnea", "a mixed apnea",
                           "no respiratory events", "normal breathing events-wise"]),
    "arousal": (["1 arousal", "1 scored arousal", "2 arousals"],
                ["no arousal", "no arousals scored"]),
}

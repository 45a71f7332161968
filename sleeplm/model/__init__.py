"""SleepLM, the sleep-signal / language model, and everything that scores with it.

Modules:

* :mod:`~sleeplm.model.network` -- the model itself (config, signal and text encoders, caption
  decoder), save / load, the default checkpoint;
* :mod:`~sleeplm.model.losses` -- the training losses (contrastive, captioning, reconstruction);
* :mod:`~sleeplm.model.tokenizer` -- the caption tokenizer (byte-level BPE);
* :mod:`~sleeplm.model.prompts` -- the zero-shot prompt tables;
* :mod:`~sleeplm.model.zeroshot` -- prompt scoring, margins, intervals, night event indices;
* :mod:`~sleeplm.model.calibration` -- a checkpoint's decision rules (``calibration.json``);
* :mod:`~sleeplm.model.captioning` -- greedy captions with the decoder's own event check.

May import: :mod:`sleeplm.captions` (caption systems and phrases the model writes) and the base
modules (:mod:`sleeplm.recording`, :mod:`sleeplm.errors`). Not the corpus, the library, the
readers or the simulator: the model sees tensors and text, never files.
"""

"""SleepLM pre-training (imports :mod:`sleeplm`; ``sleeplm`` never imports this package).

* :mod:`training.config` -- :class:`TrainConfig` (JSON file + ``--set key=value`` overrides).
* :mod:`training.train` -- ``python -m training.train --config training/configs/tiny.json``
  (or under ``torchrun``): DDP, AdamW + cosine warmup, grad accumulation, checkpoints and
  exact resume.
"""

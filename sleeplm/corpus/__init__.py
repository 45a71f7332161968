"""The pre-training corpus: nights of PSG turned into model input and captions, in shards.

Modules:

* :mod:`~sleeplm.corpus.preprocess` -- the model's input contract: a Recording cut into 30-s
  epochs of a fixed channel list at one rate, with a presence mask;
* :mod:`~sleeplm.corpus.build` -- reads nights, preprocesses and captions them, writes
  WebDataset shards split by subject (local processes or Ray);
* :mod:`~sleeplm.corpus.shards` -- streams the shards back for training and evaluation.

May import: :mod:`sleeplm.io`, :mod:`sleeplm.captions` (and through it
:mod:`sleeplm.clinical`), :mod:`sleeplm.data` and the base modules. Not the model or the
library: the corpus is built without a model.
"""

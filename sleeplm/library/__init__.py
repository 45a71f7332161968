"""The patient library and its search: studies processed once, cached, embedded and indexed.

Modules:

* :mod:`~sleeplm.library.patients` -- :class:`~sleeplm.library.patients.PatientLibrary`: a folder
  of studies, each read, measured (:mod:`sleeplm.clinical`), preprocessed and embedded with
  SleepLM once, cached under its files' content hashes and the model version;
* :mod:`~sleeplm.library.index` -- the embedding store (chromadb collections of epoch and night
  vectors) and similarity search;
* :mod:`~sleeplm.library.flat_index` -- exact cosine search over a mirror of that store.

May import: :mod:`sleeplm.model`, :mod:`sleeplm.corpus` (the input contract,
:mod:`sleeplm.corpus.preprocess`), :mod:`sleeplm.io`, :mod:`sleeplm.clinical` and the base
modules. It is the top of ``sleeplm``: only :mod:`sleeplm.cli` and the packages outside
``sleeplm`` (``tools``, ``assistant``, ``training``) import it.
"""

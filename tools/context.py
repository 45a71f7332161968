"""The runtime context every tool receives: the library, the index, the current patient.

The LLM never names a file: the agent (or plain Python) builds one :class:`ToolContext` per
conversation and passes it as LangChain's runtime context (``agent.invoke(...,
context=ctx)``); each tool reads the current patient from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sleeplm._logging import logger
from sleeplm.library.patients import PatientLibrary, ProcessedPatient, validate_patient_id
from tools.common import clock_of
from tools.errors import NoIndexError, NoPatientError

if TYPE_CHECKING:  # torch-heavy imports only when a tool needs the model
    from sleeplm.library.index import EmbeddingIndex
    from sleeplm.model.network import SleepLM
    from sleeplm.recording import Recording
    from sleeplm.model.calibration import Calibration
    from sleeplm.model.tokenizer import CaptionTokenizer

__all__ = ["ToolContext", "index_library"]


@dataclasses.dataclass(eq=False)
class ToolContext:
    """What the tools share during one conversation.

    Attributes
    ----------
    library : PatientLibrary
        The patient library (its checkpoint is the model the tools use).
    patient : str or None
        The current patient id (validated; unknown ids raise the library's
        :class:`~sleeplm.library.patients.UnknownPatientError` when first used).
    index : EmbeddingIndex or None
        The embedding store for retrieval across the library (see :func:`index_library`).
    output_dir : pathlib.Path or None
        Where figures are written, one sub-folder per patient; default
        ``<library cache>/<patient>/figures``.
    tokenizer_path : pathlib.Path or None
        The caption tokenizer; default ``tokenizer.json`` of the library's checkpoint.
    """

    library: PatientLibrary
    patient: str | None = None
    index: EmbeddingIndex | None = None
    output_dir: Path | None = None
    tokenizer_path: Path | None = None
    _patients: dict[str, ProcessedPatient] = dataclasses.field(default_factory=dict, repr=False)
    _tokenizer: Any = dataclasses.field(default=None, repr=False)
    _text_memo: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    _memo: dict[tuple, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.patient is not None:
            validate_patient_id(self.patient)
        if self.output_dir is not None:
            self.output_dir = Path(self.output_dir)

    # -- patient ------------------------------------------------------------------------------
    def require_patient(self) -> str:
        """The current patient id.

        Raises
        ------
        NoPatientError
            No patient is selected.
        """
        if not self.patient:
            raise NoPatientError("no patient is selected: pick a patient first (the tools work "
                                 "on the current patient of the conversation)")
        return self.patient

    def processed(self, patient: str | None = None) -> ProcessedPatient:
        """The processed current (or given) patient, opened once per context.

        Raises
        ------
        NoPatientError, InvalidPatientIdError, UnknownPatientError
        """
        pid = patient if patient is not None else self.require_patient()
        if pid not in self._patients:
            self._patients[pid] = self.library.open(pid, progress=False)
        return self._patients[pid]

    def recording(self, patient: str | None = None) -> Recording:
        """The current patient's recording (raw signals, events), read once."""
        return self.processed(patient).recording()

    def memo(self, key: tuple, make: Any) -> Any:
        """A value computed once per context (``make()`` on the first call)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def figures_dir(self) -> Path:
        """The current patient's figure folder (created)."""
        pid = self.require_patient()
        folder = (self.output_dir / pid if self.output_dir is not None
                  else self.processed().path / "figures")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- model --------------------------------------------------------------------------------
    @property
    def model(self) -> SleepLM:
        """The library's SleepLM (loaded once)."""
        return self.library.model

    @property
    def tokenizer(self) -> CaptionTokenizer:
        """The checkpoint's caption tokenizer (loaded once).

        Raises
        ------
        FileNotFoundError
            The checkpoint has no ``tokenizer.json`` and none was given.
        """
        if self._tokenizer is None:
            from sleeplm.model.tokenizer import CaptionTokenizer

            path = self.tokenizer_path or self.library.model_dir / "tokenizer.json"
            if not Path(path).is_file():
                raise FileNotFoundError(f"no caption tokenizer at {path}: the checkpoint folder "
                                        "must hold tokenizer.json (save_model(tokenizer_path=))")
            self._tokenizer = CaptionTokenizer.load(path)
        return self._tokenizer

    @property
    def calibration(self) -> Calibration:
        """The checkpoint's decision rules (``calibration.json``, chosen on validation nights by
        ``python -m training.calibrate``; the plain rule when it has none), read once."""
        from sleeplm.model.calibration import load_calibration

        return self.memo(("calibration",), lambda: load_calibration(self.library.model_dir))

    def class_vectors(self, table: Mapping[str, Sequence[str]], classes: Sequence[str]
                      ) -> np.ndarray:
        """:func:`sleeplm.model.zeroshot.class_embeddings` of ``table``, memoised per context."""
        from sleeplm.model.zeroshot import class_embeddings

        key = tuple((c, tuple(table[c])) for c in classes)
        if key not in self._text_memo:
            self._text_memo[key] = class_embeddings(self.model, self.tokenizer, table, classes)
        return self._text_memo[key]

    def logit_scale(self) -> float:
        """The model's contrastive logit scale (the temperature of its CLIP loss)."""
        model = self.model
        value = getattr(model, "logit_scale_value", None)
        if value is None:
            value = model.logit_scale.exp()
        return float(value.detach()) if hasattr(value, "detach") else float(value)

    def require_index(self) -> EmbeddingIndex:
        """The embedding index.

        Raises
        ------
        NoIndexError
            The context has none.
        """
        if self.index is None:
            raise NoIndexError("no embedding index in the tool context: build one with "
                               "tools.index_library(library, index) to search across patients")
        return self.index


def index_library(library: PatientLibrary, index: EmbeddingIndex,
                  patients: Sequence[str] | None = None, *, replace: bool = False) -> int:
    """Add the library's processed nights (epoch and night embeddings) to ``index``.

    Parameters
    ----------
    library : PatientLibrary
    index : EmbeddingIndex
        Made for the library's ``model_version``.
    patients : sequence of str, optional
        Which patients; all by default. Each is opened (processed once, then cached).
    replace : bool
        Add nights the index already holds again (default: skip them).

    Returns
    -------
    int
        Nights added.
    """
    from sleeplm.library.index import EpochRecord, NightRecord

    added = 0
    for pid in patients if patients is not None else library.patients():
        night = "night1"
        if not replace and index.has_night(pid, night):
            continue
        p = library.open(pid, progress=False)
        if p.n_epochs == 0:
            logger.warning("patient %s has no epochs; not indexed", pid)
            continue
        try:
            t0 = p.recording().info.start_time
        except Exception:  # noqa: BLE001 - a clock is optional metadata
            t0 = None
        profile = p.study.profile
        records = [EpochRecord(patient=pid, night=night, epoch=i, start_s=float(p.onsets_s[i]),
                               clock=clock_of(t0, float(p.onsets_s[i])),
                               stage=str(p.stages[i]), profile=profile)
                   for i in range(p.n_epochs)]
        extra: dict[str, float] = {}
        for name in ("ahi_3a", "tst_min", "odi_3", "odi_4"):
            try:
                v = p.facts.value(name)
            except KeyError:
                v = None
            if v is not None and np.isfinite(v):
                extra[name] = float(v)
        index.add_night(NightRecord(patient=pid, night=night, profile=profile,
                                    n_epochs=p.n_epochs, extra=extra),
                        p.night_embedding, records, p.epoch_embeddings)
        added += 1
    return added

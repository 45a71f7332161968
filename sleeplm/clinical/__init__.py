"""Deterministic clinical measurements: the only source of numbers in a report."""

from sleeplm.clinical.consensus import (  # multi-scorer hypnograms
    AgreementReport,
    ConsensusResult,
    PooledAgreement,
    ScorerAgreement,
    consensus_hypnogram,
    pooled_agreement,
    read_scorings,
    scorer_agreement,
    stages_from_codes,
)
from sleeplm.clinical.measure import Evidence, Measure
from sleeplm.clinical.summary import DISCLAIMER, ClinicalSummary, clinical_summary

__all__ = ["Evidence", "Measure", "ClinicalSummary", "clinical_summary", "DISCLAIMER",
           "ConsensusResult", "AgreementReport", "ScorerAgreement", "PooledAgreement",
           "consensus_hypnogram", "scorer_agreement", "pooled_agreement", "stages_from_codes",
           "read_scorings"]

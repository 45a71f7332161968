"""Deterministic clinical measurements: the only source of numbers in a report."""

from sleeplm.clinical.measure import Evidence, Measure
from sleeplm.clinical.summary import DISCLAIMER, ClinicalSummary, clinical_summary

__all__ = ["Evidence", "Measure", "ClinicalSummary", "clinical_summary", "DISCLAIMER"]

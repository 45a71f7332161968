"""All the numbers of an AASM-style PSG report, section by section.

A section that cannot be computed (no hypnogram, no SpO2, a flat channel) is reported as
unavailable with the reason, so that, e.g., a respiratory-only home sleep apnea test still gets
every respiratory and oximetry number.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, Field

from sleeplm.clinical.architecture import sleep_architecture
from sleeplm.clinical.arousals import arousal_measures
from sleeplm.clinical.cvhr import cvhr_measures, screening_applies
from sleeplm.clinical.heart_rate import heart_rate_measures, respiratory_event_heart_rate
from sleeplm.clinical.limb_movements import plm_measures
from sleeplm.clinical.measure import Measure
from sleeplm.clinical.oximetry import oximetry_measures
from sleeplm.clinical.respiratory import ahi_severity, respiratory_measures
from sleeplm.clinical.sleep_time import sleep_time
from sleeplm.errors import MissingChannelError, SignalQualityError
from sleeplm.recording import Recording

__all__ = ["DISCLAIMER", "SECTIONS", "ClinicalSummary", "clinical_summary"]

DISCLAIMER = (
    "Draft for review by a qualified clinician. sleeplm is not a medical device; its numbers are "
    "computed by deterministic code from the scored events and signals given, and must be "
    "checked against the recording before any clinical use."
)

def _heart_rate_section(rec: Recording) -> list[Measure]:
    """Heart rate, its course around the scored apneas and hypopneas, plus the heart-rate
    apnea screening (CVHR) on heart-rate-only studies."""
    out = heart_rate_measures(rec)
    out += respiratory_event_heart_rate(rec)
    if screening_applies(rec):
        try:
            out += cvhr_measures(rec)
        except SignalQualityError as exc:
            out.append(Measure.missing("cvhr_index", "CVHR index (heart-rate apnea screening, "
                                       "not an AHI)", "/h", str(exc)))
    return out


SECTIONS: dict[str, tuple[str, Callable[[Recording], list[Measure]]]] = {
    "architecture": ("Sleep architecture", sleep_architecture),
    "respiratory": ("Respiratory events", respiratory_measures),
    "oximetry": ("Oximetry", oximetry_measures),
    "arousals": ("Arousals", arousal_measures),
    "limb_movements": ("Limb movements", plm_measures),
    "heart_rate": ("Heart rate", _heart_rate_section),
}


class ClinicalSummary(BaseModel):
    """The report's numbers for one recording.

    Attributes
    ----------
    sections : dict of str to list of Measure
        Computed sections, in report order.
    unavailable : dict of str to str
        Sections that could not be computed, with the reason.
    findings : dict of str to str
        Categorical conclusions derived by fixed rules (e.g. OSA severity from the AHI).
    """

    patient_id: str
    source: str | None = None
    index_basis: str
    sections: dict[str, list[Measure]] = Field(default_factory=dict)
    unavailable: dict[str, str] = Field(default_factory=dict)
    findings: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    disclaimer: str = DISCLAIMER

    def measure(self, name: str) -> Measure:
        """The measure called ``name`` from any section (KeyError when absent)."""
        for measures in self.sections.values():
            for m in measures:
                if m.name == name:
                    return m
        raise KeyError(f"no measure named '{name}' in this summary")

    def value(self, name: str) -> float | None:
        """The value of measure ``name`` (None when not computable)."""
        return self.measure(name).value

    def to_text(self) -> str:
        """A readable multi-section report for the terminal."""
        lines = [f"Patient {self.patient_id}" + (f"  ({self.source})" if self.source else ""),
                 f"Indices per hour of {self.index_basis}.", ""]
        for key, measures in self.sections.items():
            lines.append(SECTIONS[key][0])
            lines.append("-" * len(SECTIONS[key][0]))
            width = max(len(m.label) for m in measures) if measures else 0
            for m in measures:
                extra = f"   [{m.reason}]" if m.reason and m.value is not None else ""
                lines.append(f"  {m.label:<{width}}  {m.format()}{extra}")
            lines.append("")
        if self.findings:
            lines.append("Findings")
            lines.append("--------")
            lines += [f"  {k}: {v}" for k, v in self.findings.items()]
            lines.append("")
        if self.unavailable:
            lines.append("Not available")
            lines.append("-------------")
            lines += [f"  {SECTIONS[k][0]}: {v}" for k, v in self.unavailable.items()]
            lines.append("")
        if self.notes:
            lines.append("Reading notes")
            lines.append("-------------")
            lines += [f"  - {n}" for n in self.notes]
            lines.append("")
        lines.append(self.disclaimer)
        return "\n".join(lines)


def clinical_summary(rec: Recording, sections: tuple[str, ...] | None = None) -> ClinicalSummary:
    """Compute every report section that the recording supports.

    Parameters
    ----------
    rec : Recording
    sections : tuple of str, optional
        Subset of :data:`SECTIONS` keys; all by default.
    """
    st = sleep_time(rec)
    summary = ClinicalSummary(patient_id=rec.info.patient_id, source=rec.info.source,
                              index_basis=st.basis, notes=list(rec.notes))
    for key in sections or tuple(SECTIONS):
        _, compute = SECTIONS[key]
        try:
            summary.sections[key] = compute(rec)
        except (MissingChannelError, SignalQualityError) as exc:
            summary.unavailable[key] = str(exc)
    if "respiratory" in summary.sections:
        ahi = summary.value("ahi_3a")
        rule = "AASM recommended 3%/arousal rule" if st.staged else "REI, 3%/arousal rule"
        summary.findings["Sleep apnea severity"] = f"{ahi_severity(ahi)} (AHI by the {rule})"
    elif "heart_rate" in summary.sections:
        screen = [m for m in summary.sections["heart_rate"] if m.name == "cvhr_screen"]
        if screen and screen[0].value is not None:
            summary.findings["Heart-rate apnea screening"] = (
                f"{'positive' if screen[0].value else 'negative'} (CVHR index "
                f"{summary.value('cvhr_index'):.1f}/h); a screening estimate from heart rate "
                "alone, not an AHI")
    return summary

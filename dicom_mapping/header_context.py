"""Clinical context from DICOM headers, in the form training wrote it.

The model was trained on ``<context>`` text written by
:func:`medversa.inference.clinical_context.render_context` from dataset columns (age, sex, view,
indication). This module fills the same :class:`ClinicalContext` from a study's headers, so the
node asks in the words the model learned:

- age: Patient's Age (0010,1010, PS3.5 AS: ``046Y``), else whole years between Patient's Birth
  Date (0010,0030) and Study Date (0008,0020); the birth date itself never leaves this module;
- sex: Patient's Sex (0010,0040) M/F/O;
- view: View Position (0018,5101) as training names it (PA, AP, lateral), else the View Code
  Sequence (0054,0220, CID 4010 "DX View"), which DX and some CR senders fill instead; "AP supine"
  when the Patient Orientation Modifier (0054,0412) says supine (SNOMED CT 40199007);
- indication: Reason for the Requested Procedure (0040,1002, also inside the Request Attributes
  Sequence), Requested Procedure Description (0032,1060), Admitting Diagnoses Description
  (0008,1080), Additional Patient History (0010,21B0) — with the patient's name parts and IDs
  removed, since free text sometimes carries them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from pydicom.dataset import Dataset

from medversa.inference import ClinicalContext

from . import header as h
from .series import coded_projection

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_SEX = {"M": "male", "F": "female", "O": "other"}
#: View Position values as training names the projection. Not LLD/RLD: a lateral decubitus film is a
#: frontal projection of a patient lying on one side, a view training never named.
_VIEWS = {"PA": "PA", "AP": "AP", "LL": "lateral", "RL": "lateral", "LAT": "lateral", "LATERAL": "lateral"}
_SUPINE_CODES = frozenset({"40199007", "F-10450"})  # SNOMED CT / SRT "supine"
_INDICATION_KEYWORDS = ("ReasonForTheRequestedProcedure", "RequestedProcedureDescription",
                        "AdmittingDiagnosesDescription", "AdditionalPatientHistory")
#: Longest indication kept: a prompt is not a place for a whole history.
MAX_INDICATION_CHARS = 300


def patient_age(ds: Dataset) -> int | None:
    """Whole years from Patient's Age, else from birth and study dates; None when neither is usable."""
    match = _AGE.match(h.upper(ds, "PatientAge"))
    if match:
        number, unit = int(match[1]), match[2]
        years = {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}[unit]
        return years if years < 150 else None
    birth, study = _date(h.text(ds, "PatientBirthDate")), _date(h.text(ds, "StudyDate"))
    if birth is None or study is None or study < birth:
        return None
    years = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
    return years if years < 150 else None


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None


def projection(ds: Dataset) -> str | None:
    """The view as training names it ("PA", "AP", "AP supine", "lateral"), None when not stated."""
    view = _VIEWS.get(h.upper(ds, "ViewPosition")) or _coded_view(ds)
    if view == "AP" and _is_supine(ds):
        return "AP supine"
    return view


def _coded_view(ds: Dataset) -> str | None:
    """The View Code Sequence's projection as training names it (PA, AP, lateral), else None.

    A plain "frontal" says neither PA nor AP, so it gives no view: training never wrote "frontal".
    """
    for code, _, meaning in h.codes(ds, "ViewCodeSequence"):
        view = coded_projection(code, meaning)
        if view in ("PA", "AP", "lateral"):
            return view
    return None


def _is_supine(ds: Dataset) -> bool:
    for orientation in h.items(ds, "PatientOrientationCodeSequence"):
        for code, _, meaning in h.codes(orientation, "PatientOrientationModifierCodeSequence"):
            if code in _SUPINE_CODES or "supine" in meaning.lower():
                return True
    return False


def _identifiers(ds: Dataset) -> list[str]:
    """Name parts and IDs of the patient, longest first (what must never reach a prompt)."""
    found = []
    name = h.value(ds, "PatientName")
    if name is not None:
        found += [p for p in re.split(r"[\^=\s]+", str(name)) if len(p) >= 2]
    for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate"):
        found += [v for v in h.text(ds, keyword).split("\\") if len(v) >= 2]
    return sorted(set(found), key=len, reverse=True)


def _scrub(text: str, identifiers: Iterable[str]) -> str:
    for ident in identifiers:
        text = re.sub(re.escape(ident), "", text, flags=re.IGNORECASE)
    return " ".join(text.split()).strip(" ,;:")


def indication(ds: Dataset) -> str | None:
    """The study's indication from the request attributes, identifiers removed; None when absent."""
    texts: list[str] = []
    for source in [ds, *h.items(ds, "RequestAttributesSequence")]:
        for keyword in _INDICATION_KEYWORDS:
            value = h.text(source, keyword)
            if value and value not in texts:
                texts.append(value)
    if not texts:
        return None
    joined = _scrub(". ".join(t.rstrip(". ") for t in texts), _identifiers(ds))
    return joined[:MAX_INDICATION_CHARS].rstrip() or None


def clinical_context(ds: Dataset, views: Iterable[str | None] = ()) -> ClinicalContext:
    """The context of a request about ``ds``'s study; ``views`` are its images' projections, in order."""
    named = [v for v in views if v]
    return ClinicalContext(age=patient_age(ds), sex=_SEX.get(h.upper(ds, "PatientSex")),
                           view=", ".join(dict.fromkeys(named)) or None, indication=indication(ds))

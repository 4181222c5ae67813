"""MIMIC-CXR report generation: free-text reports with the frontal and lateral images of their study.

Layout (PhysioNet ``mimic-cxr`` 2.0.0 reports, ``mimic-cxr-jpg`` 2.0.0 images;
both use the same ``files/`` tree, so one folder may hold both)::

    <reports_root>/files/p10/p10000032/s50414267.txt      free text, "FINDINGS:" / "IMPRESSION:" headers
    <root>/mimic-cxr-2.0.0-split.csv(.gz), mimic-cxr-2.0.0-metadata.csv(.gz), files/...jpg  (see mimic_jpg)

Sections are found by keyword as in CXR-RePair / MIT-LCP's ``section_parser``
(paper, Methods: MIMIC-CXR): a header is a known section name (any case) or an
all-caps name, at the start of a line and followed by a colon; a section runs
to the next header; the last non-empty occurrence wins; whitespace is collapsed.
"FINDINGS AND IMPRESSION" counts as the impression, as in MIT-LCP's parser.
Studies with neither findings nor impression are dropped (paper). The sample
builder makes complete reports from records that have both sections.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from medversa.inference import ClinicalContext, Modality

from ..records import ImageFile, RecordError, ReportRecord
from . import mimic_jpg
from .common import check_split, clean

SOURCE = "mimic-cxr"

#: Header names (upper case, single spaces) -> the section they open; other all-caps headers only close one.
SECTION_NAMES = {
    "FINDINGS": "findings", "FINDING": "findings",
    "IMPRESSION": "impression", "IMPRESSIONS": "impression", "CONCLUSION": "impression",
    "CONCLUSIONS": "impression", "FINDINGS AND IMPRESSION": "impression", "IMPRESSION AND FINDINGS": "impression",
    "FINDINGS/IMPRESSION": "impression",
    "INDICATION": "indication", "INDICATIONS": "indication", "HISTORY": "indication",
    "CLINICAL HISTORY": "indication", "CLINICAL INDICATION": "indication", "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAM": "indication", "REASON FOR EXAMINATION": "indication",
    "COMPARISON": "comparison", "COMPARISONS": "comparison",
}

_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ,()/&-]*?)[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """``findings``, ``impression``, ``indication`` and ``comparison`` of a report ("" when absent)."""
    headers = []
    for match in _HEADER.finditer(text):
        raw = match.group(1)
        name = " ".join(raw.split()).upper()
        if name in SECTION_NAMES or raw == raw.upper():
            headers.append((match.start(), match.end(), SECTION_NAMES.get(name, name.lower())))
    sections = dict.fromkeys(("findings", "impression", "indication", "comparison"), "")
    for i, (_, end, name) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        body = clean(text[end:stop])
        if name in sections and body:
            sections[name] = body
    return sections


def report_context(sections: dict[str, str]) -> ClinicalContext:
    """Indication and comparison as the request's clinical context (the published model's <context>)."""
    return ClinicalContext(indication=sections["indication"] or None, comparison=sections["comparison"] or None)


def _view_order(image: mimic_jpg.MimicImage) -> tuple[int, str]:
    views = mimic_jpg.FRONTAL_VIEWS + mimic_jpg.LATERAL_VIEWS
    return views.index(image.view), image.dicom_id


def read_mimic_cxr(root: Path, split: str | None = None, reports_root: Path | None = None) -> list[ReportRecord]:
    """One record per study with a findings or impression section, its frontal then lateral images.

    ``split``: "train", "validate" or "test" (the official split; the paper
    trains on train + validate), None for all.
    """
    check_split(split, mimic_jpg.SPLITS, "MIMIC-CXR")
    root = Path(root)
    reports_root = Path(reports_root) if reports_root is not None else root
    images = mimic_jpg.read_images(root)
    studies: dict[str, list[mimic_jpg.MimicImage]] = defaultdict(list)
    for image in images.values():
        if split is None or image.split == split:
            studies[image.study_id].append(image)
    records = []
    for study_id in sorted(studies):
        views = [im for im in studies[study_id] if im.view in mimic_jpg.FRONTAL_VIEWS + mimic_jpg.LATERAL_VIEWS]
        if not views:
            continue
        first = views[0]
        report = reports_root / "files" / f"p{first.subject_id[:2]}" / f"p{first.subject_id}" / f"s{study_id}.txt"
        if not report.is_file():
            raise RecordError(report, None, f"the report of study {study_id} is missing")
        sections = report_sections(report.read_text(encoding="utf-8", errors="replace"))
        if not (sections["findings"] or sections["impression"]):
            continue
        files = []
        for image in sorted(views, key=_view_order):
            path = mimic_jpg.image_path(root, image.subject_id, study_id, image.dicom_id)
            if not path.is_file():
                raise RecordError(path, study_id, "an image of this study (in the split file) is missing")
            files.append(ImageFile(path))
        records.append(ReportRecord(SOURCE, study_id, Modality.CXR, first.split, files,
                                    findings=sections["findings"], impression=sections["impression"],
                                    context=report_context(sections)))
    return records

"""IU X-ray (Indiana University chest X-ray collection, Open-i): reports with their frontal and lateral images.

Layout, either release::

    Open-i (NLMCXR_reports.tgz, NLMCXR_png.tgz)
    <root>/ecgen-radiology/1.xml     <uId id="CXR1"/> ... <AbstractText Label="FINDINGS">...</AbstractText>
                                     (also COMPARISON, INDICATION, IMPRESSION) ...
                                     <parentImage id="CXR1_1_IM-0001-3001">
    <root>/NLMCXR_png/CXR1_1_IM-0001-3001.png

    Kaggle (raddar/chest-xrays-indiana-university)
    <root>/indiana_reports.csv       uid,MeSH,Problems,image,indication,comparison,findings,impression
    <root>/indiana_projections.csv   uid,filename,projection (Frontal / Lateral)
    <root>/images/images_normalized/1_IM-0001-4001.dcm.png

A report becomes a :class:`ReportRecord` when its images were downloaded (the
image folder exists), a :class:`TextRecord` otherwise. Ids are Open-i's
``CXR<uid>`` in both releases. The paper uses IU X-ray only for external
validation, so every record's split is "test"; which reports to score (both
sections present: 3,323 studies) is the evaluation's choice.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from medversa.inference import Modality

from ..records import ImageFile, Record, RecordError, ReportRecord, TextRecord
from .common import check_split, clean, find_file, read_table
from .mimic_cxr import report_context

SOURCE = "iu-xray"
SPLIT = "test"
_SECTIONS = {"FINDINGS": "findings", "IMPRESSION": "impression", "INDICATION": "indication",
             "COMPARISON": "comparison"}


def _has_text(sections: dict[str, str]) -> bool:
    return bool(sections["findings"] or sections["impression"])


def _record(record_id: str, sections: dict[str, str], images: list[Path]) -> Record:
    if images:
        return ReportRecord(SOURCE, record_id, Modality.CXR, SPLIT, [ImageFile(p) for p in images],
                            findings=sections["findings"], impression=sections["impression"],
                            context=report_context(sections))
    return TextRecord(SOURCE, record_id, Modality.CXR, SPLIT, sections["findings"], sections["impression"])


def _images(folder: Path, names: list[str], source: Path, record: str) -> list[Path]:
    if not folder.is_dir():
        return []
    paths = [folder / name for name in names]
    for path in paths:
        if not path.is_file():
            raise RecordError(source, record, f"image {path} is missing")
    return paths


def read_openi_report(path: Path, image_folder: Path) -> Record | None:
    """One ecgen-radiology XML report (None when it has neither findings nor impression)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise RecordError(path, None, f"not a readable XML report ({exc})") from exc
    uid = root.find(".//uId")
    if uid is None or not uid.get("id"):
        raise RecordError(path, None, "no <uId id=...>: not an Open-i ecgen-radiology report")
    record_id = uid.get("id", "")
    sections = dict.fromkeys(_SECTIONS.values(), "")
    for element in root.iter("AbstractText"):
        name = _SECTIONS.get((element.get("Label") or "").strip().upper())
        if name:
            sections[name] = clean("".join(element.itertext()))
    if not _has_text(sections):
        return None
    names = [f"{image.get('id')}.png" for image in root.iter("parentImage") if image.get("id")]
    return _record(record_id, sections, _images(image_folder, names, path, record_id))


def read_kaggle_reports(root: Path) -> list[Record]:
    """The Kaggle CSV release: reports, and each report's projections (frontal first)."""
    reports = find_file(root, ["indiana_reports.csv"], "IU X-ray reports")
    projections = find_file(root, ["indiana_projections.csv"], "IU X-ray projections")
    views: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for line, row in read_table(projections, ("uid", "filename", "projection")):
        if row["projection"] not in ("Frontal", "Lateral"):
            raise RecordError(projections, line, f"projection is {row['projection']!r}, not Frontal or Lateral")
        views[row["uid"].strip()].append((row["projection"] != "Frontal", row["filename"].strip()))
    folder = root / "images" / "images_normalized"
    records = []
    for line, row in read_table(reports, ("uid", "indication", "comparison", "findings", "impression")):
        uid = row["uid"].strip()
        if not uid.isdigit():
            raise RecordError(reports, line, f"uid {uid!r} is not a number")
        sections = {name: clean(row[name]) for name in ("findings", "impression", "indication", "comparison")}
        if _has_text(sections):
            names = [name for _, name in sorted(views.get(uid, []))]
            records.append(_record(f"CXR{uid}", sections, _images(folder, names, projections, f"uid {uid}")))
    return records


def read_iu_xray(root: Path, split: str | None = None) -> list[Record]:
    """Every IU X-ray report with findings or an impression (Open-i XML when present, else the Kaggle CSVs)."""
    check_split(split, (SPLIT,), "IU X-ray")
    root = Path(root)
    xml_folder = root / "ecgen-radiology"
    if not xml_folder.is_dir():
        return read_kaggle_reports(root)
    records = []
    for path in sorted(xml_folder.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
        record = read_openi_report(path, root / "NLMCXR_png")
        if record is not None:
            records.append(record)
    return records

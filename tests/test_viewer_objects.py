"""Every result object of a processed study, checked by the validators and readers radiology uses.

dciodvfy (dicom3tools) on every object, PixelMed's DicomSRValidator (the IHE Connectathon SR
validator) on every SR with zero errors, highdicom reading SR and SEG back, dcmtk's dcmp2pgm
rendering each presentation state on its image. Each passed check is recorded for the viewer
matrix (tests/viewer_results.py, tools/viewer_matrix.py).
"""

from __future__ import annotations

import re
import subprocess

import highdicom as hd
import pytest

from medversa.dicom_mapping import ObjectKind

from . import viewer_study
from .conftest import SHARED
from .dicom_tools import dciodvfy_errors, need_tool, pixelmed_sr_report
from .viewer_results import record

#: PixelMed (2022 build) warnings we keep, with the reason (docs/conformance-statement.md, viewers):
#: TID 4019 Algorithm Identification items in measurement groups (IHE AIR requires them; the current
#: TID 1410/1411 include TID 4019, PixelMed's edition of the templates does not).
#: A detection box's area NUM INFERRED FROM the box's SCOORD (and its source IMAGE): the TID 300 form beside
#: TID 1410's region, which OHIF 3 needs to load the box into its measurement panel (8.7).
EXPLAINED_WARNINGS = re.compile(r'(\((111001|111003|122405),DCM,"Algorithm (Name|Version|Manufacturer)"\)'
                                r'|NUM \(42798000,SCT,"Area"\)/SCOORD \(111030,DCM,"Image Region"\)'
                                r'(/IMAGE \(260753009,SCT,"Source"\))?): Content Item not in template')

RG1 = SHARED / "data" / "medinterp-mini" / "dicom" / "inputs" / "RG1_J2KI.dcm"


@pytest.fixture(scope="module")
def studies(tiny_analyzer):
    out = [viewer_study.chest_study(tiny_analyzer), viewer_study.ct_study(tiny_analyzer)]
    if RG1.exists():
        out.append(viewer_study.shared_radiograph_study(tiny_analyzer, RG1))
    return out


def _kind(ds) -> str:
    if ds.Modality == "SR":
        return "SR TID 1500" if ds.ContentSequence and ds.ConceptNameCodeSequence[0].CodeValue == "126000" \
            else "SR TID 2000 (text)"
    if ds.Modality == "SEG":
        return "SEG (CT)" if "FrameOfReferenceUID" in ds else "SEG (radiograph)"
    return {"PR": "GSPS", "OT": "Secondary Capture"}.get(ds.Modality, ds.Modality)


def test_every_object_is_valid_for_dciodvfy(studies, tmp_path):
    need_tool("dciodvfy")
    for study in studies:
        for i, (kind, ds) in enumerate(study.results):
            path = tmp_path / f"{study.name}_{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert not dciodvfy_errors(path), (study.name, kind)
    for kind in sorted({_kind(ds) for s in studies for _, ds in s.results}):
        record(kind, "dciodvfy", "pass", "no errors")


def test_every_sr_has_no_pixelmed_error_and_only_explained_warnings(studies, tmp_path):
    checked = set()
    for study in studies:
        for i, ds in enumerate(study.of_kind(ObjectKind.SR) + study.of_kind(ObjectKind.SR_TEXT)):
            path = tmp_path / f"{study.name}_sr{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            errors, warnings = pixelmed_sr_report(path)
            assert not errors, "\n".join(errors)
            unexplained = [w for w in warnings if not EXPLAINED_WARNINGS.search(w)]
            assert not unexplained, "\n".join(unexplained)
            checked.add((_kind(ds), len(warnings)))
    assert {k for k, _ in checked} == {"SR TID 1500", "SR TID 2000 (text)"}
    for kind in sorted({k for k, _ in checked}):
        explained = max(n for k, n in checked if k == kind)
        record(kind, "PixelMed DicomSRValidator", "pass",
               "0 errors" + (f"; {explained} explained warnings (TID 4019 items, box area sources)" if explained
                             else ", 0 warnings"))


def test_every_sr_variant_has_no_pixelmed_or_dciodvfy_error(tiny_analyzer, tmp_path):
    """Dermoscopy, answers without any measurement group, a comparison with a prior: every SR path."""
    need_tool("dciodvfy")
    variants = viewer_study.sr_variant_studies(tiny_analyzer)
    for study in variants:
        srs = study.of_kind(ObjectKind.SR) + study.of_kind(ObjectKind.SR_TEXT)
        assert len(srs) == 2, (study.name, [k for k, _ in study.results])
        for i, ds in enumerate(srs):
            path = tmp_path / f"{study.name}_sr{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert not dciodvfy_errors(path), study.name
            errors, warnings = pixelmed_sr_report(path)
            assert not errors, (study.name, errors)
            assert not [w for w in warnings if not EXPLAINED_WARNINGS.search(w)], (study.name, warnings)
    # The answers-only SR has an empty Imaging Measurements container (no group without coordinates).
    asked = next(s for s in variants if s.name == "asked").of_kind(ObjectKind.SR)[0]
    measurements = next(i for i in asked.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    assert "ContentSequence" not in measurements


def test_sr_and_seg_read_back_with_highdicom(studies, tmp_path):
    for study in studies:
        for i, (kind, ds) in enumerate(study.results):
            path = tmp_path / f"{study.name}_{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            if kind is ObjectKind.SEG:
                seg = hd.seg.segread(path)
                assert seg.number_of_segments >= 1
                for item in ds.get("SharedFunctionalGroupsSequence", []):  # never a zero spacing
                    for measures in item.get("PixelMeasuresSequence", []):
                        assert min(float(v) for v in measures.PixelSpacing) > 0
            elif kind in (ObjectKind.SR, ObjectKind.SR_TEXT):
                sr = hd.sr.srread(path)
                assert sr.VerificationFlag == "UNVERIFIED"
                if _kind(ds) == "SR TID 1500":
                    groups = sr.content.get_planar_roi_measurement_groups()
                    # Every planar group a viewer draws has coordinates (an outline or a box).
                    assert any(g.reference_type.value == "111030" for g in groups)
    read_back = (ObjectKind.SR, ObjectKind.SR_TEXT, ObjectKind.SEG)
    for kind in sorted({_kind(ds) for s in studies for k, ds in s.results if k in read_back}):
        record(kind, "highdicom read-back", "pass", "reads back (segread / srread)")


def test_presentation_states_render_with_dcmp2pgm(studies, tmp_path):
    dcmp2pgm = need_tool("dcmp2pgm")
    rendered = 0
    for study in studies:
        sources = {str(ds.SOPInstanceUID): ds for ds in study.sources}
        for i, pr in enumerate(study.of_kind(ObjectKind.PR)):
            ref = pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
            image, state, out = tmp_path / f"img{i}.dcm", tmp_path / f"pr{i}.dcm", tmp_path / f"out{i}.pgm"
            source = sources[ref]
            if source.file_meta.TransferSyntaxUID.is_compressed:  # dcmtk has no JPEG 2000 decoder
                source = source.copy()
                source.decompress()
            source.save_as(image, enforce_file_format=True)
            pr.save_as(state, enforce_file_format=True)
            result = subprocess.run([dcmp2pgm, "-p", str(state), str(image), str(out)], capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0 and out.stat().st_size > 0, result.stderr
            rendered += 1
    assert rendered >= 1
    record("GSPS", "dcmtk dcmp2pgm", "pass", f"{rendered} presentation states rendered on their images")


def _spacings(ds):
    for element in ds.iterall():
        if element.keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
            yield element.keyword, [float(v) for v in element.value]


def test_a_zero_pixel_spacing_is_never_copied(tiny_analyzer):
    """A source saying PixelSpacing 0\\0 (as the shared RG1_J2KI.dcm does): no result repeats it."""
    source = viewer_study.f.make_cr(128, 128, pixels=viewer_study._chest_pixels(128, 128), study_uid=hd.UID(),
                                    pixel_spacing=(0.0, 0.0))
    study = viewer_study._process("zero", [source], tiny_analyzer)
    assert {"SR", "SEG", "PR", "SC"} <= {k for k, _ in study.results}
    for kind, ds in study.results:
        for keyword, values in _spacings(ds):
            assert min(values) > 0, (kind, keyword, values)
    sr = study.of_kind(ObjectKind.SR)[0]
    units = [e.value[0].CodeValue for e in sr.iterall() if e.keyword == "MeasurementUnitsCodeSequence"]
    assert "mm2" not in units  # no area without a spacing
    assert any(e.keyword == "GraphicData" for e in sr.iterall())  # the outlines and boxes are still there

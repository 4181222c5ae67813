import pytest

from medversa.dicom_mapping import codes
from medversa.inference import SKIN_LESION_ABBREVIATIONS


def test_every_chest_pathology_and_skin_class_has_a_code():
    assert len(codes.CHEST_PATHOLOGIES) == 33
    assert len(codes.SKIN_LESION_CLASSES) == 7
    for table in (codes.CHEST_PATHOLOGIES, codes.SKIN_LESION_CLASSES):
        for name, code in table.items():
            assert code.value and code.meaning, name
            assert code.scheme_designator in ("SCT", "DCM", "99MEDVERSA"), name


def test_skin_classes_cover_the_ham10000_labels():
    assert set(SKIN_LESION_ABBREVIATIONS.values()) == set(codes.SKIN_LESION_CLASSES)
    assert all(c.scheme_designator == "SCT" for c in codes.SKIN_LESION_CLASSES.values())


def test_snomed_identifiers_have_valid_check_digits():
    concepts = [*codes.CHEST_PATHOLOGIES.values(), *codes.SKIN_LESION_CLASSES.values(),
                *(s.type for s in codes.SEGMENTED_STRUCTURES.values()), *codes.ANATOMY_FINDINGS.values(),
                codes.PROCEDURE_CHEST_XRAY, codes.PROCEDURE_CT_ABDOMEN, codes.IMAGING_PROCEDURE]
    bad = [(c.value, c.meaning) for c in concepts if c.scheme_designator == "SCT" and not codes.verhoeff_ok(c.value)]
    assert not bad


def test_verhoeff_catches_a_typo():
    assert codes.verhoeff_ok("60046008") and not codes.verhoeff_ok("60046009")


def test_codes_found_in_pydicoms_tables_have_the_same_meaning():
    import pydicom.sr._concepts_dict as cd

    known = {code: meaning for entry in cd.concepts["SCT"].values() for code, (meaning, _) in entry.items()}
    for code in codes.VERIFIED_IN_PYDICOM:
        assert code in known, code


@pytest.mark.parametrize("label, scheme", [("Pleural effusion", "SCT"), ("mel", "SCT"), ("left lung", "SCT"),
                                           ("a thing nobody coded", "99MEDVERSA")])
def test_finding_codes_for_model_phrases(label, scheme):
    assert codes.finding_code(label).scheme_designator == scheme


def test_every_segmented_structure_has_category_and_type():
    for name in ("left lung", "right lung", "heart", "liver", "kidney", "spleen", "pancreas", "skin lesion"):
        c = codes.segment_codes(name)
        assert c.category.scheme_designator == "SCT" and c.type.scheme_designator == "SCT"

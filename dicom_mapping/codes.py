"""Every coded concept the result objects use, in one place (PS3.16).

The model's class phrases (``medversa.inference``'s vocabulary: lower-case
phrases as the model writes them) map to SNOMED CT concepts: the 33 chest
pathologies MedVersa classifies and detects (Chest ImaGenome's finding labels),
the 7 HAM10000 / ISIC 2018 skin lesion classes, and the segmented structures
with their CID 7150 category and CID 7151/7159 type. Each table is keyed and
ordered by the vocabulary, and a phrase without a code fails at import. A label
the tables do not know is coded in our private scheme ``99MEDVERSA`` (a local
coding scheme, PS3.3 8.1) rather than dropped.

Codes in :data:`VERIFIED_IN_PYDICOM` also appear, with that meaning, in the
DICOM content-mapping tables pydicom ships; the other SNOMED CT identifiers
were checked against public terminology sources (value sets, code maps) and
their check digits are validated by the tests. A terminologist should review
the table before clinical deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from medversa.inference import CHEST_PATHOLOGIES as PATHOLOGY_PHRASES
from medversa.inference import SEGMENTED_STRUCTURES as STRUCTURE_PHRASES
from medversa.inference import SKIN_LESION_ABBREVIATIONS
from medversa.inference import SKIN_LESION_CLASSES as SKIN_LESION_PHRASES

SCT = "SCT"
DCM = "DCM"
LN = "LN"
PRIVATE = "99MEDVERSA"


def sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, SCT, meaning)


def private(label: str) -> CodedConcept:
    """A label outside our tables, in the private scheme (value derived from the label)."""
    value = "".join(ch if ch.isalnum() else "-" for ch in label.lower()).strip("-")[:16] or "unknown"
    return CodedConcept(value, PRIVATE, label[:64] or "unknown")


_V = TypeVar("_V")


def _by_phrase(phrases: Sequence[str], table: Mapping[str, _V], what: str) -> dict[str, _V]:
    """``table`` in vocabulary order; a phrase without a code, or a code for no phrase, is an error."""
    missing, extra = set(phrases) - set(table), set(table) - set(phrases)
    if missing or extra:
        raise ValueError(f"{what}: phrases without a code {sorted(missing)}, codes for no phrase {sorted(extra)}")
    return {phrase: table[phrase] for phrase in phrases}


#: The 33 chest pathologies (Chest ImaGenome findings used by MedVersa), model phrase -> code.
#: SNOMED CT where a code could be sourced here (public value sets such as the IPS free set, DICOM
#: and FHIR terminology, SNOMED release notes); DICOM (DCM) where PS3.16 has the concept; the rest
#: in the private scheme until a terminologist assigns SNOMED CT codes: no SNOMED browser is
#: reachable from this project's machines, and a guessed code would be worse than a private one.
CHEST_PATHOLOGIES: dict[str, CodedConcept] = _by_phrase(PATHOLOGY_PHRASES, {
    "lung opacity": CodedConcept("112033", DCM, "Abnormal opacity"),
    "pulmonary edema": sct("19242006", "Pulmonary edema"),
    "atelectasis": sct("46621007", "Atelectasis"),
    "pleural effusion": sct("60046008", "Pleural effusion"),
    "enlarged cardiac silhouette": sct("8186001", "Cardiomegaly"),
    "consolidation": sct("95436008", "Lung consolidation"),
    "pneumonia": sct("233604007", "Pneumonia"),
    "pneumothorax": sct("36118008", "Pneumothorax"),
    "hydropneumothorax": private("hydropneumothorax"),
    "pneumomediastinum": sct("16838000", "Pneumomediastinum"),
    "subcutaneous air": private("subcutaneous air"),
    "lung lesion": private("lung lesion"),
    "mass": sct("309529002", "Lung mass"),
    "nodule": sct("786838002", "Nodule of lung"),
    "calcified nodule": private("calcified nodule"),
    "hyperaeration": private("hyperaeration"),
    "bronchiectasis": sct("12295008", "Bronchiectasis"),
    "emphysema": sct("87433001", "Pulmonary emphysema"),
    "interstitial lung disease": sct("233703007", "Interstitial lung disease"),
    "aspiration": sct("14766002", "Aspiration"),
    "heart failure": sct("84114007", "Heart failure"),
    "vascular congestion": sct("67599009", "Pulmonary congestion"),
    "costophrenic angle blunting": private("costophrenic angle blunting"),
    "elevated hemidiaphragm": private("elevated hemidiaphragm"),
    "hernia": sct("84089009", "Hiatal hernia"),
    "mediastinal widening": private("mediastinal widening"),
    "enlarged hilum": private("enlarged hilum"),
    "tortuous aorta": private("tortuous aorta"),
    # Two independent sources: DICOM PS3.16 CIDs 3491, 3495-3497 and 7111 (vascular and plaque findings,
    # "Vascular Calcification"; CID 3712 uses it as the qualifier "Calcified" of a vessel) and the Human
    # Phenotype Ontology (HP:0004934 "Vascular calcification", xref SNOMEDCT_US:237897009). 129759000,
    # also "Vascular calcification" in pydicom's tables, is mammography's calcification type (CID 6010).
    "vascular calcification": sct("237897009", "Vascular calcification"),
    "rib fracture": sct("33737001", "Fracture of rib"),
    "spinal fracture": sct("50448004", "Fracture of vertebral column"),
    "scoliosis": sct("298382003", "Scoliosis deformity of spine"),
    "spinal degenerative changes": sct("8847002", "Spondylosis"),
}, "chest pathologies")

#: HAM10000 / ISIC 2018 task 3 diagnostic classes: model phrase -> SNOMED CT.
SKIN_LESION_CLASSES: dict[str, CodedConcept] = _by_phrase(SKIN_LESION_PHRASES, {
    "actinic keratosis": sct("201101007", "Actinic keratosis"),
    "basal cell carcinoma": sct("254701007", "Basal cell carcinoma of skin"),
    "benign keratosis": sct("69322001", "Seborrheic keratosis"),
    "dermatofibroma": sct("448015002", "Dermatofibroma"),
    "melanoma": sct("2092003", "Malignant melanoma"),
    "melanocytic nevus": sct("400096001", "Melanocytic nevus"),
    "vascular lesion": sct("400210000", "Hemangioma"),
}, "skin lesion classes")


@dataclass(frozen=True)
class SegmentCodes:
    """Segmented property category (CID 7150) and type (CID 7151 / 7159) of one structure."""

    category: CodedConcept
    type: CodedConcept
    #: 2D structures are areas (mm^2), 3D ones volumes (ml).
    anatomic: bool = True


_ANATOMY = CodedConcept(codes.SCT.AnatomicalStructure.value, SCT, codes.SCT.AnatomicalStructure.meaning)
_ABNORMAL = CodedConcept(codes.SCT.MorphologicallyAbnormalStructure.value, SCT,
                         codes.SCT.MorphologicallyAbnormalStructure.meaning)

SEGMENTED_STRUCTURES: dict[str, SegmentCodes] = _by_phrase(STRUCTURE_PHRASES, {
    "left lung": SegmentCodes(_ANATOMY, sct("44029006", "Left lung")),
    "right lung": SegmentCodes(_ANATOMY, sct("3341006", "Right lung")),
    "heart": SegmentCodes(_ANATOMY, sct("80891009", "Heart")),
    "liver": SegmentCodes(_ANATOMY, sct("10200004", "Liver")),
    "kidney": SegmentCodes(_ANATOMY, sct("64033007", "Kidney")),
    "spleen": SegmentCodes(_ANATOMY, sct("78961009", "Spleen")),
    "pancreas": SegmentCodes(_ANATOMY, sct("15776009", "Pancreas")),
    "skin lesion": SegmentCodes(_ABNORMAL, sct("95324001", "Skin lesion"), anatomic=False),
}, "segmented structures")

#: Anatomical structures the model detects that are not segmentation targets.
ANATOMY_FINDINGS: dict[str, CodedConcept] = {
    "left lung": sct("44029006", "Left lung"),
    "right lung": sct("3341006", "Right lung"),
    "lung": CodedConcept(codes.SCT.Lung.value, SCT, codes.SCT.Lung.meaning),
    "cardiac silhouette": sct("80891009", "Heart"),
    "heart": sct("80891009", "Heart"),
    "mediastinum": CodedConcept(codes.SCT.Mediastinum.value, SCT, codes.SCT.Mediastinum.meaning),
}

#: Codes that pydicom's DICOM tables list with the same meaning (checked by a test).
VERIFIED_IN_PYDICOM = {"19242006", "60046008", "36118008", "16838000", "14766002", "84114007", "201101007",
                       "2092003", "400210000", "80891009", "10200004", "64033007", "78961009", "15776009",
                       "95324001", "39607008", "72410000", "237897009"}

# Document and IHE AIR concepts.
FINDINGS = CodedConcept("59776-5", LN, "Findings")
IMPRESSION = CodedConcept("19005-8", LN, "Impression")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMPARISON = CodedConcept("18834-2", LN, "Radiology Comparison study")
FINDING = CodedConcept("121071", DCM, "Finding")
#: A note for the reader: an image of the study the algorithm was sent and did not analyse.
COMMENT = CodedConcept(codes.DCM.Comment.value, DCM, codes.DCM.Comment.meaning)
CLINICAL_FINDING = CodedConcept(codes.SCT.Finding.value, SCT, codes.SCT.Finding.meaning)
PRESENT = CodedConcept(codes.SCT.Present.value, SCT, codes.SCT.Present.meaning)
ABSENT = CodedConcept(codes.SCT.Absent.value, SCT, codes.SCT.Absent.meaning)
AREA = CodedConcept(codes.SCT.Area.value, SCT, codes.SCT.Area.meaning)
VOLUME = CodedConcept(codes.SCT.Volume.value, SCT, codes.SCT.Volume.meaning)
#: IHE AIR: Purpose of Reference of the algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
PROCESSING_EQUIPMENT = CodedConcept(codes.DCM.ProcessingEquipment.value, DCM, codes.DCM.ProcessingEquipment.meaning)
#: CID 7162 algorithm family of the SEG's Segment Algorithm Identification.
ALGORITHM_FAMILY_AI = CodedConcept(codes.cid7162.ArtificialIntelligence.value, DCM,
                                   codes.cid7162.ArtificialIntelligence.meaning)
#: Procedure reported (TID 1500 row 4: the imaging procedure, not the algorithm), from CID 100
#: "Quantitative Diagnostic Imaging Procedure". Only codes that both the current CID 100 and the
#: 2019 edition in Debian's PixelMed build (the IHE Connectathon SR validator) list: that edition
#: has no radiograph or dermoscopy procedure, so radiographs and dermoscopy report the generic
#: "Imaging procedure" and CT reports "CT unspecified body region". CID 100 is extensible, but a
#: code outside it fails PixelMed's DicomSRValidator (e.g. SCT 399208008 "Plain chest X-ray").
IMAGING_PROCEDURE = CodedConcept("363679005", SCT, "Imaging procedure")
PROCEDURE_CT = CodedConcept("25045-6", LN, "CT unspecified body region")
PROCEDURE_CHEST_XRAY = IMAGING_PROCEDURE
PROCEDURE_CT_ABDOMEN = PROCEDURE_CT
#: CID 100 as Debian's PixelMed 20220618 lists it (cid 100, version 20190121): the codes above must be in it.
CID_100_PIXELMED_2022 = frozenset({
    ("SCT", "363679005"), ("SCT", "258177008"), ("DCM", "126020"), ("DCM", "126021"), ("DCM", "126022"),
    ("SCT", "433139009"), ("SCT", "446315002"), ("LN", "25045-6"), ("LN", "25056-3"), ("LN", "49118-3"),
    ("LN", "44136-0"), ("LN", "44139-4"), ("SCT", "443271005"), ("SCT", "443844003"), ("LN", "39142-5"),
    ("LN", "39632-5"), ("RADLEX", "RPID5427"),
})


def finding_code(label: str) -> CodedConcept:
    """The coded concept for a class phrase the model wrote (pathology, skin class or anatomy)."""
    key = label.strip().lower()
    key = SKIN_LESION_ABBREVIATIONS.get(key, key)
    for table in (CHEST_PATHOLOGIES, SKIN_LESION_CLASSES, ANATOMY_FINDINGS):
        if key in table:
            return table[key]
    if key in SEGMENTED_STRUCTURES:
        return SEGMENTED_STRUCTURES[key].type
    return private(label)


def segment_codes(label: str) -> SegmentCodes:
    """Category and type for a segmented structure; unknown labels get a private type."""
    key = label.strip().lower()
    if key in SEGMENTED_STRUCTURES:
        return SEGMENTED_STRUCTURES[key]
    return SegmentCodes(_ANATOMY, private(label))


def verhoeff_ok(identifier: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit."""
    d = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
         (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
         (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
         (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
    p = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
         (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
         (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8))
    if not identifier.isdigit():
        return False
    c = 0
    for i, ch in enumerate(reversed(identifier)):
        c = d[c][p[i % 8][int(ch)]]
    return c == 0

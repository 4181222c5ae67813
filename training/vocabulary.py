"""Each source's labels mapped onto the model's class phrases.

The phrases themselves (chest anatomies and pathologies, skin lesion classes)
are ``medversa.inference``'s one vocabulary, re-exported here so the readers,
the sample builder and evaluation use the same strings; ``dicom_mapping.codes``
codes the same phrases.

Sources: Chest ImaGenome 1.0.0 scene graphs (``bbox_name``; ``category|yes|name``
attribute labels), ISIC 2018 task 3 / HAM10000 (``dx`` and one-hot columns),
CheXpert (14 observations), NIH ChestX-ray14 ``BBox_List_2017.csv``, MS-CXR
``category_name``, CheXmask columns and AbdomenCT-1K label values. Paper:
Methods, "Datasets" and Fig. 4a.
"""

from __future__ import annotations

from medversa.inference import CHEST_ANATOMIES, CHEST_PATHOLOGIES, SKIN_LESION_ABBREVIATIONS, SKIN_LESION_CLASSES

__all__ = [
    "ABDOMEN_ORGANS", "CHEST_ANATOMIES", "CHEST_PATHOLOGIES", "CHEXMASK_STRUCTURES", "CHEXPERT_OBSERVATIONS",
    "HAM10000_DX", "IMAGENOME_FINDINGS", "IMAGENOME_MASS_OR_NODULE", "ISIC2018_COLUMNS", "MS_CXR_CATEGORIES",
    "NIH_FINDINGS", "NIH_PAPER_FINDINGS", "SKIN_LESION_CLASSES", "mass_or_nodule",
]

#: Chest ImaGenome ``anatomicalfinding``/``disease`` label names -> our phrase. Labels named as ours map
#: to themselves; ImaGenome's combined names map to the phrase the paper lists.
IMAGENOME_FINDINGS: dict[str, str] = {
    **{name: name for name in CHEST_PATHOLOGIES},
    "pulmonary edema/hazy opacity": "pulmonary edema",
    "copd/emphysema": "emphysema",
    "fluid overload/heart failure": "heart failure",
}

#: ImaGenome labels that stand for a mass or a nodule; the phrase's own word decides which (see
#: :func:`mass_or_nodule`).
IMAGENOME_MASS_OR_NODULE = ("mass/nodule (not otherwise specified)", "multiple masses/nodules")


def mass_or_nodule(phrase: str) -> str:
    """'mass' when the report sentence says mass(es), else 'nodule' (ImaGenome lumps the two)."""
    words = phrase.lower().replace("/", " ").split()
    return "mass" if any(w.strip(".,;:()") in ("mass", "masses") for w in words) else "nodule"


#: HAM10000 ``dx`` values -> phrase (the vocabulary's abbreviations).
HAM10000_DX: dict[str, str] = SKIN_LESION_ABBREVIATIONS

#: ISIC 2018 task 3 ground-truth columns (one-hot) -> phrase.
ISIC2018_COLUMNS: dict[str, str] = {key.upper(): phrase for key, phrase in HAM10000_DX.items()}

#: CheXpert observations -> phrase; None where no pathology of ours means the same thing.
CHEXPERT_OBSERVATIONS: dict[str, str | None] = {
    "No Finding": None,
    "Enlarged Cardiomediastinum": None,
    "Cardiomegaly": "enlarged cardiac silhouette",
    "Lung Opacity": "lung opacity",
    "Lung Lesion": "lung lesion",
    "Edema": "pulmonary edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": None,
    "Fracture": None,
    "Support Devices": None,
}

#: NIH ChestX-ray14 box labels -> phrase (Infiltrate has no counterpart among the 33).
NIH_FINDINGS: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "enlarged cardiac silhouette",
    "Effusion": "pleural effusion",
    "Pneumothorax": "pneumothorax",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "pneumonia",
}

#: The four NIH box labels the paper evaluates pathology detection on (577 boxes).
NIH_PAPER_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax")

#: MS-CXR ``category_name`` -> phrase.
MS_CXR_CATEGORIES: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "enlarged cardiac silhouette",
    "Consolidation": "consolidation",
    "Edema": "pulmonary edema",
    "Lung Opacity": "lung opacity",
    "Pleural Effusion": "pleural effusion",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}

#: CheXmask RLE columns -> structure (the patient's left and right).
CHEXMASK_STRUCTURES: dict[str, str] = {"Left Lung": "left lung", "Right Lung": "right lung", "Heart": "heart"}

#: AbdomenCT-1K label values -> organ.
ABDOMEN_ORGANS: dict[str, tuple[int, ...]] = {"liver": (1,), "kidney": (2,), "spleen": (3,), "pancreas": (4,)}

"""The class phrases the model reads and writes, and each source's labels mapped onto them.

One place for the names keeps every reader, the sample builder and evaluation
on the same strings. The 33 chest pathologies and 7 skin lesion classes are the
keys of ``dicom_mapping.codes`` (CHEST_PATHOLOGIES, SKIN_LESION_CLASSES); a test
checks that they agree, since training may only depend on inference.

Sources: Chest ImaGenome 1.0.0 scene graphs (``bbox_name``; ``category|yes|name``
attribute labels), ISIC 2018 task 3 / HAM10000 (``dx`` and one-hot columns),
CheXpert (14 observations), NIH ChestX-ray14 ``BBox_List_2017.csv``, MS-CXR
``category_name``, CheXmask columns and AbdomenCT-1K label values. Paper:
Methods, "Datasets" and Fig. 4a.
"""

from __future__ import annotations

#: Chest ImaGenome's 36 anatomical ``bbox_name`` values (anatomy detection, region captioning).
CHEST_ANATOMIES: tuple[str, ...] = (
    "right lung", "right upper lung zone", "right mid lung zone", "right lower lung zone",
    "right hilar structures", "right apical zone", "right costophrenic angle", "right cardiophrenic angle",
    "right hemidiaphragm", "left lung", "left upper lung zone", "left mid lung zone", "left lower lung zone",
    "left hilar structures", "left apical zone", "left costophrenic angle", "left cardiophrenic angle",
    "left hemidiaphragm", "trachea", "spine", "right clavicle", "left clavicle", "aortic arch", "mediastinum",
    "upper mediastinum", "svc", "cardiac silhouette", "left cardiac silhouette", "right cardiac silhouette",
    "cavoatrial junction", "right atrium", "descending aorta", "carina", "left upper abdomen",
    "right upper abdomen", "abdomen",
)

#: The 33 chest pathologies MedVersa classifies and detects (Fig. 4a), in ``dicom_mapping.codes`` order.
CHEST_PATHOLOGIES: tuple[str, ...] = (
    "lung opacity", "pulmonary edema", "atelectasis", "pleural effusion", "enlarged cardiac silhouette",
    "consolidation", "pneumonia", "pneumothorax", "hydropneumothorax", "pneumomediastinum", "subcutaneous air",
    "lung lesion", "mass", "nodule", "calcified nodule", "hyperaeration", "bronchiectasis", "emphysema",
    "interstitial lung disease", "aspiration", "heart failure", "vascular congestion",
    "costophrenic angle blunting", "elevated hemidiaphragm", "hernia", "mediastinal widening", "enlarged hilum",
    "tortuous aorta", "vascular calcification", "rib fracture", "spinal fracture", "scoliosis",
    "spinal degenerative changes",
)

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


#: The 7 HAM10000 / ISIC 2018 task 3 classes, as ``dicom_mapping.codes.SKIN_LESION_CLASSES`` names them.
SKIN_LESION_CLASSES: tuple[str, ...] = (
    "actinic keratosis", "basal cell carcinoma", "benign keratosis", "dermatofibroma", "melanoma",
    "melanocytic nevus", "vascular lesion",
)

#: HAM10000 ``dx`` values -> phrase.
HAM10000_DX: dict[str, str] = {
    "akiec": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

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

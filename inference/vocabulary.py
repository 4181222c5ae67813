"""The class phrases the model reads and writes: one vocabulary for every room.

Training maps each dataset's labels onto these phrases (``training.vocabulary``),
inference asks for them (:data:`DEFAULT_TARGETS`) and reads them back from the
generated text, and ``dicom_mapping.codes`` gives each one its coded concept
(PS3.16). The phrases are the lower-case names the paper's data use: Chest
ImaGenome's anatomies and findings, the HAM10000 / ISIC 2018 task 3 classes, the
CheXmask and AbdomenCT-1K structures (paper: Methods, "Datasets", and Fig. 4a).
"""

from __future__ import annotations

from .tasks import Task

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

#: The 33 chest pathologies MedVersa classifies and detects (Fig. 4a).
CHEST_PATHOLOGIES: tuple[str, ...] = (
    "lung opacity", "pulmonary edema", "atelectasis", "pleural effusion", "enlarged cardiac silhouette",
    "consolidation", "pneumonia", "pneumothorax", "hydropneumothorax", "pneumomediastinum", "subcutaneous air",
    "lung lesion", "mass", "nodule", "calcified nodule", "hyperaeration", "bronchiectasis", "emphysema",
    "interstitial lung disease", "aspiration", "heart failure", "vascular congestion",
    "costophrenic angle blunting", "elevated hemidiaphragm", "hernia", "mediastinal widening", "enlarged hilum",
    "tortuous aorta", "vascular calcification", "rib fracture", "spinal fracture", "scoliosis",
    "spinal degenerative changes",
)

#: The 7 HAM10000 / ISIC 2018 task 3 diagnostic classes.
SKIN_LESION_CLASSES: tuple[str, ...] = (
    "actinic keratosis", "basal cell carcinoma", "benign keratosis", "dermatofibroma", "melanoma",
    "melanocytic nevus", "vascular lesion",
)

#: HAM10000's ``dx`` abbreviations of the skin classes (a model or a reader may write them).
SKIN_LESION_ABBREVIATIONS: dict[str, str] = {
    "akiec": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

#: Segmentation targets: the CheXmask chest organs, the AbdomenCT-1K organs and the skin lesion.
CHEST_ORGANS: tuple[str, ...] = ("left lung", "right lung", "heart")
ABDOMINAL_ORGANS: tuple[str, ...] = ("liver", "kidney", "spleen", "pancreas")
SKIN_LESION = "skin lesion"
SEGMENTED_STRUCTURES: tuple[str, ...] = (*CHEST_ORGANS, *ABDOMINAL_ORGANS, SKIN_LESION)

#: What a request asks for when it names no targets (paper, Methods: datasets).
DEFAULT_TARGETS: dict[Task, tuple[str, ...]] = {
    Task.CHEST_ORGAN_SEGMENTATION: CHEST_ORGANS,
    Task.SKIN_LESION_SEGMENTATION: (SKIN_LESION,),
    Task.ABDOMINAL_ORGAN_SEGMENTATION: ABDOMINAL_ORGANS,
    Task.ANATOMY_DETECTION: ("left lung", "right lung", "cardiac silhouette", "mediastinum"),
    Task.PATHOLOGY_DETECTION: (
        "lung opacity", "pleural effusion", "atelectasis", "pneumothorax",
        "consolidation", "enlarged cardiac silhouette", "lung lesion", "pulmonary edema", "pneumonia",
    ),
}

"""Key Object Selection (PS3.3 A.59): flags the images with positive findings, referencing the SR.

Optional (configurable): worklists that sort by key images then show the AI's
positives first. Document title (CID 7010) "Of Interest"; the algorithm is the
device observer; the description says the selection is AI-generated.
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from .identity import CHARACTER_SET, AlgorithmInfo, drop_invalid_copied_attributes

SERIES_DESCRIPTION = "MedVersa key images (AI-generated, unverified)"


def build_key_objects(
    positive_images: list[Dataset],
    sr: Dataset,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9704,
    instance_number: int = 1,
) -> hd.ko.KeyObjectSelectionDocument | None:
    """A KOS referencing ``positive_images`` and the SR; None when nothing is positive."""
    if not positive_images:
        return None
    content = hd.ko.KeyObjectSelection(
        document_title=codes.cid7010.OfInterest,
        referenced_objects=[*positive_images, sr],
        observer_device_context=algorithm.observer_context(),
        description=f"Images with findings by {algorithm.name} ({algorithm.ai_notice})"[:1024],
    )
    ko = hd.ko.KeyObjectSelectionDocument(
        evidence=[*positive_images, sr],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        contributing_equipment=[algorithm.contributing_equipment()],
        specific_character_set=CHARACTER_SET,
        series_description=SERIES_DESCRIPTION,
    )
    ko.ManufacturerModelName = algorithm.model_name
    ko.SoftwareVersions = list(algorithm.software_versions)
    drop_invalid_copied_attributes(ko)
    return ko

"""Key Object Selection (PS3.3 A.59): flags the images with positive findings, referencing the SR.

Optional (configurable): worklists that sort by key images then show the AI's
positives first. Document title (CID 7010) "Of Interest"; the algorithm is the
device observer; the description says the selection is AI-generated.
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from .identity import AlgorithmInfo
from .result_header import ResultHeader

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
    header = ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid, instance_number,
                          SERIES_DESCRIPTION)
    ko = hd.ko.KeyObjectSelectionDocument(evidence=[*positive_images, sr], content=content, **header.kwargs())
    return header.finish(ko)

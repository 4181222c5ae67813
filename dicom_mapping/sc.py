"""Derived Secondary Capture with the results burned in (PS3.3 A.8.1 SC Image IOD).

Many viewers show neither SR regions nor presentation states, so radiologists
see commercial AI results as a derived image: the source as displayed, with the
boxes, outlines and labels drawn in colour. Burned In Annotation is YES, the
source is referenced (Source Image Sequence, Derivation Description), and the
series says the content is AI-generated and unverified.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes

from medversa.inference import Answer

from . import header as h
from .identity import AlgorithmInfo
from .overlay import draw_shapes, shapes_for_image
from .references import ImageRef
from .result_header import ResultHeader

SERIES_DESCRIPTION = "MedVersa results image (AI-generated, unverified)"
_COLORS = {"box": (255, 64, 64), "outline": (64, 255, 64)}


def build_secondary_capture(
    source: Dataset,
    ref: ImageRef,
    display_pixels: np.ndarray,
    answers: list[Answer],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    image_index: int = 0,
    series_number: int = 9703,
    instance_number: int = 1,
) -> hd.sc.SCImage | None:
    """An RGB SC of ``display_pixels`` (uint8, as the model saw them) with the results drawn.

    None when there is nothing to draw.
    """
    shapes = shapes_for_image(answers, image_index)
    if not shapes:
        return None
    rgb = display_pixels if display_pixels.ndim == 3 else np.stack([display_pixels] * 3, axis=-1)
    image = Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8)), mode="RGB")
    for kind, color in _COLORS.items():
        draw_shapes(image, [s for s in shapes if s.kind == kind], fill=color)
    orientation = h.patient_orientation(source)
    header = ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid, instance_number,
                          SERIES_DESCRIPTION)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.asarray(image),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        pixel_spacing=ref.pixel_spacing if ref.pixel_spacing and min(ref.pixel_spacing) > 0 else None,
        # highdicom insists on an orientation for patient-based images; the real value
        # (or an empty one, Type 2C, when the source has none) is set just below.
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        **header.kwargs(),
    )
    sc.PatientOrientation = list(orientation or []) or ""
    if "Laterality" not in sc:
        sc.Laterality = ""  # General Series, Type 2C: unpaired or unknown body part
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = (f"{algorithm.name} {algorithm.version} results drawn on the source image "
                                f"({algorithm.ai_notice})")
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.frame:
        item.ReferencedFrameNumber = ref.frame
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
        "121322", "DCM", "Source image for image processing operation")
    item.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [item]
    derivation = Dataset()
    derivation.CodeValue, derivation.CodingSchemeDesignator, derivation.CodeMeaning = (
        codes.DCM.ImageProcessing.value, "DCM", codes.DCM.ImageProcessing.meaning)
    sc.DerivationCodeSequence = [derivation]
    return header.finish(sc)


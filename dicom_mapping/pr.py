"""Presentation states that draw the results on the source image (PS3.3 A.33).

A Grayscale Softcopy Presentation State (A.33.1) for radiographs and CT, a Color
Softcopy Presentation State (A.33.2) for colour images. Each detection box and each
2D mask outline is a POLYLINE graphic object in PIXEL units on its own layer, with
its label as a text object, referencing the image (and frame) the model saw.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset

from medversa.inference import Answer

from .identity import AlgorithmInfo
from .overlay import Shape, rasterize, shapes_for_image
from .references import ImageRef
from .result_header import ResultHeader

SERIES_DESCRIPTION = "MedVersa overlays (AI-generated, unverified)"

_LAYERS = {
    "box": hd.pr.GraphicLayer("MEDVERSA_BOXES", order=1, description="AI detection boxes",
                              display_color=hd.color.CIELabColor(60.0, 80.0, 60.0)),
    "outline": hd.pr.GraphicLayer("MEDVERSA_OUTLINE", order=2, description="AI segmentation outlines",
                                  display_color=hd.color.CIELabColor(85.0, -80.0, 80.0)),
}


def _objects(shapes: list[Shape], rows: int, cols: int) -> tuple[dict[str, list], dict[str, list]]:
    graphics: dict[str, list] = {k: [] for k in _LAYERS}
    texts: dict[str, list] = {k: [] for k in _LAYERS}
    for shape in shapes:
        points = np.clip(shape.points, [0, 0], [cols, rows])
        graphics[shape.kind].append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=points,
            units=hd.pr.AnnotationUnitsValues.PIXEL, is_filled=False))
        if shape.label:
            x, y = shape.label_anchor
            texts[shape.kind].append(hd.pr.TextObject(
                text_value=shape.label[:64], units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(min(max(x, 0), cols)), float(min(max(y, 0), rows))),
                anchor_point_visible=False))
    return graphics, texts


def build_presentation_state(
    source: Dataset,
    ref: ImageRef,
    answers: list[Answer],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    image_index: int = 0,
    series_number: int = 9702,
    instance_number: int = 1,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState | None:
    """A presentation state drawing ``answers``' boxes and outlines on ``source``; None if nothing to draw."""
    shapes = shapes_for_image(answers, image_index)
    if not shapes:
        return None
    graphics, texts = _objects(shapes, ref.rows, ref.cols)
    annotations = [
        hd.pr.GraphicAnnotation(
            referenced_images=[source], graphic_layer=_LAYERS[kind],
            referenced_frame_number=ref.frame,
            graphic_objects=graphics[kind] or None, text_objects=texts[kind] or None)
        for kind in _LAYERS if graphics[kind] or texts[kind]
    ]
    header = ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid, instance_number,
                          SERIES_DESCRIPTION)
    common = dict(
        referenced_images=[source],
        graphic_annotations=annotations,
        graphic_layers=[_LAYERS[k] for k in _LAYERS if graphics[k] or texts[k]],
        **header.content("results"),
        **header.kwargs(device_serial_number=True),
    )
    if str(source.get("PhotometricInterpretation", "")).startswith("MONOCHROME"):
        pr = hd.pr.GrayscaleSoftcopyPresentationState(**common)
        # Also as an activated overlay plane: viewers and renderers (dcmp2pgm) that draw no
        # graphic annotations still show the results (PS3.3 C.9.2, C.11.7).
        _add_overlay(pr, rasterize(shapes, ref.rows, ref.cols), _LAYERS["box"].GraphicLayer)
    else:
        pr = hd.pr.ColorSoftcopyPresentationState(**common, icc_profile=_srgb_profile(source))
    if "Laterality" not in pr:
        pr.Laterality = ""  # General Series, Type 2C: unpaired or unknown body part
    return header.finish(pr)


def _add_overlay(pr: Dataset, bitmap: np.ndarray, layer: str) -> None:
    from pydicom.pixels import pack_bits

    group = 0x6000
    rows, cols = bitmap.shape
    pr.add_new((group, 0x0010), "US", rows)
    pr.add_new((group, 0x0011), "US", cols)
    pr.add_new((group, 0x0022), "LO", "AI results: boxes, outlines and labels")
    pr.add_new((group, 0x0040), "CS", "G")
    pr.add_new((group, 0x0050), "SS", [1, 1])
    pr.add_new((group, 0x0100), "US", 1)
    pr.add_new((group, 0x0102), "US", 0)
    pr.add_new((group, 0x1001), "CS", layer)
    pr.add_new((group, 0x1500), "LO", "MEDVERSA")
    pr.add_new((group, 0x3000), "OW", pack_bits(bitmap.astype(np.uint8).ravel()))


def _srgb_profile(source: Dataset | None = None) -> bytes:
    """The source's ICC profile, else sRGB declared as a colour-space profile (class 'spac')."""
    if source is not None and "ICCProfile" in source:
        return bytes(source.ICCProfile)
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[12:16] = b"spac"  # highdicom accepts input ('scnr') or colour-space ('spac') profiles
    return bytes(profile)

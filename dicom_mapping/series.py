"""Recognise what an instance is from its header: chest radiograph, dermoscopy, CT or unusable.

Only header attributes are read (no pixel data), so classification works on data sets read with
``stop_before_pixels``. Recognition uses the SOP Class UID (PS3.4 B.5), Modality (PS3.3
C.7.3.1.1.1), Body Part Examined (PS3.3 C.7.3.1, defined terms in PS3.16 Annex L), Anatomic Region
Sequence (PS3.3 C.8.11.7 / C.8.19.6), View Position (PS3.3 C.8.11.5 / C.8.1.1), View Code Sequence
and the free-text descriptions (Study/Series Description, Protocol Name, Image Comments).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID

from . import header as h
from .orientation import AS_STORED, Reorientation, chest_reorientation
from .references import SeriesKind, View

LOGGER = logging.getLogger(__name__)

# --- SOP classes (PS3.4 Table B.5-1) -------------------------------------------------------
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Secondary Capture (single frame) and the four multi-frame Secondary Capture SOP classes.
SECONDARY_CAPTURE_FAMILY = frozenset({SECONDARY_CAPTURE} | {f"{SECONDARY_CAPTURE}.{i}" for i in (1, 2, 3, 4)})
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"

RADIOGRAPH_SOP_CLASSES = frozenset({CR_IMAGE, DX_PRESENTATION, DX_PROCESSING})
CT_SOP_CLASSES = frozenset({CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
#: XC external-camera photography, DMS dermoscopy, OT other (PS3.3 C.7.3.1.1.1).
PHOTO_MODALITIES = frozenset({"XC", "DMS", "OT"})

#: Modalities that never carry an image this node reads (structured/derived objects).
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "PR", "KO", "REG", "RWV", "DOC", "PLAN", "RTSTRUCT", "RTPLAN", "RTDOSE",
     "RTRECORD", "FID", "AU", "ECG", "HD", "BI", "OTHER"}
)
#: SOP class UID prefixes of non-image objects: SR (88.x), PR (11.x), raw/registration/SEG (66.x),
#: RWV (67), encapsulated documents (104.x), waveforms (9.x), RT (481.x).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.67",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.9.",
    "1.2.840.10008.5.1.4.1.1.481.",
)

# --- body parts ------------------------------------------------------------------------------
#: SNOMED CT chest, thoracic structure, lung, thoracic cavity, and their legacy SRT codes.
_CHEST_CODES = frozenset({"816094009", "51185008", "39607008", "43799004", "T-D3000", "T-28000", "T-D3200"})
_SKIN_CODES = frozenset({"39937001", "T-01000"})
_ABDOMEN_CODES = frozenset(
    {"818981001", "113345001", "818982008", "416550000", "416775004", "T-D4000"}
)
_CHEST_PREFIXES = ("chest", "thora", "torax", "cxr", "lung", "pulmo")
_SKIN_PREFIXES = ("skin", "derm", "lesion", "naev", "nev", "melano", "mole", "cutan")
_ABDOMEN_PREFIXES = ("abd", "liver", "hepat", "pancrea", "kidney", "renal", "splee", "splen")
#: Abdominal coverage from Body Part Examined (PS3.16 Annex L defined terms and common variants).
_ABDOMEN_BODY_PARTS = frozenset(
    {"ABDOMEN", "ABDOMENPELVIS", "ABDPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "CHEST_ABDOMEN",
     "CHEST_ABDOMEN_PELVIS", "ABDOMEN_PELVIS", "LIVER", "KIDNEY", "PANCREAS", "SPLEEN"}
)
#: Anatomy words that, in the descriptions of a CR/DX without Body Part Examined, mean "not chest".
_OTHER_ANATOMY_PREFIXES = (
    "knee", "hand", "wrist", "finger", "foot", "feet", "ankle", "toe", "hip", "pelvi", "spine",
    "lumbar", "cervical", "skull", "head", "femur", "tibia", "fibula", "humer", "elbow",
    "shoulder", "forearm", "leg", "arm", "abdo", "mammo", "breast", "dental", "sinus", "clavic",
    "scaphoid", "calcan", "heel", "sacr", "coccyx", "jaw", "mandib",
)

# --- views (PS3.16 CID 4010 "DX View") ---------------------------------------------------------
#: CID 4010 (DX View) codes of the chest projections, SNOMED CT and the SNOMED RT codes older senders
#: write, as training names the projection ("frontal" only says it is not a lateral).
_VIEW_CODE_PROJECTIONS = {"272479007": "PA", "R-40888": "PA", "399348003": "AP", "R-10206": "AP",
                         "399033003": "frontal",
                         **dict.fromkeys(("399067008", "399173006", "399198007", "R-102CD", "R-10236", "R-10232"),
                                         "lateral")}
#: Compacted meanings (letters only) of the frontal projections, for codes the table does not list.
_FRONTAL_MEANINGS = {"posteroanterior": "PA", "posterioranterior": "PA", "anteroposterior": "AP",
                     "anteriorposterior": "AP"}
#: The series' own texts that may name its view (not Study Description: it describes every film of
#: the study, which often has both projections).
_SERIES_TEXTS = ("SeriesDescription", "ImageComments", "AcquisitionDeviceProcessingDescription", "ProtocolName")
_FRONTAL_TOKENS = frozenset({"pa", "ap", "frontal", "front", "posteroanterior", "anteroposterior"})
_LATERAL_TOKENS = frozenset({"lat", "lateral", "ll", "rl", "seitlich"})


def _has_prefix(tokens: list[str], prefixes: tuple[str, ...]) -> bool:
    return any(tok.startswith(prefixes) for tok in tokens)


def _sop_name(uid: str) -> str:
    if not uid:
        return "no SOP class"
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001
        name = uid
    return f"SOP class {name}" if name != uid else f"SOP class {uid}"


def _descriptions(ds: Dataset) -> list[str]:
    return [h.text(ds, k) for k in ("StudyDescription", "SeriesDescription", "ProtocolName",
                                     "ImageComments", "RequestedProcedureDescription",
                                     "PerformedProcedureStepDescription")]


def _region_meanings(ds: Dataset) -> list[tuple[str, str]]:
    """(code, meaning) of the anatomy codes: Anatomic Region Sequence, also per-frame/shared FG."""
    found = [(c, m) for c, _, m in h.codes(ds, "AnatomicRegionSequence")]
    item = h.functional_group_item(ds, 0, "FrameAnatomySequence")
    if item is not None:
        found += [(c, m) for c, _, m in h.codes(item, "AnatomicRegionSequence")]
    return [(c, m) for c, m in found if c or m]  # an empty item says nothing


def _region_matches(ds: Dataset, code_set: frozenset[str], prefixes: tuple[str, ...]) -> bool:
    for code, meaning in _region_meanings(ds):
        if code in code_set or _has_prefix(h.tokens(meaning), prefixes):
            return True
    return False


def _chest_evidence(ds: Dataset) -> tuple[bool | None, str]:
    """Is the body part the chest? True, False, or None when nothing says what it is."""
    body_part = h.upper(ds, "BodyPartExamined")
    if body_part:
        if _has_prefix(h.tokens(body_part), _CHEST_PREFIXES):
            return True, f"BodyPartExamined {body_part}"
        return False, f"BodyPartExamined {body_part} is not the chest"
    regions = _region_meanings(ds)
    if regions:
        if _region_matches(ds, _CHEST_CODES, _CHEST_PREFIXES):
            return True, "AnatomicRegionSequence (chest)"
        meanings = ", ".join(m or c for c, m in regions)
        return False, f"AnatomicRegionSequence ({meanings}) is not the chest"
    words = h.tokens(*_descriptions(ds))
    if _has_prefix(words, _CHEST_PREFIXES):
        return True, "descriptions mention the chest"
    if _has_prefix(words, _OTHER_ANATOMY_PREFIXES):
        return False, "descriptions name a body part other than the chest"
    return None, "no body part information"


def coded_projection(code: str, meaning: str) -> str | None:
    """The chest projection a View Code Sequence item names: "PA", "AP", "lateral", "frontal" or None.

    By code (CID 4010), else by meaning, for senders with local codes: postero-anterior and
    antero-posterior (hyphenated or not), a meaning with the word "lateral" (left/right lateral,
    lateral projection) and "frontal". Oblique, decubitus and limb projections (medial-lateral,
    latero-medial) are none of these. One rule for the series classifier and the prompt's view.
    """
    if code in _VIEW_CODE_PROJECTIONS:
        return _VIEW_CODE_PROJECTIONS[code]
    words = h.tokens(meaning)
    if any(w.startswith(("oblique", "decubitus", "medial", "medio")) for w in words):
        return None
    compact = "".join(words)
    for spelled, projection in _FRONTAL_MEANINGS.items():
        if spelled in compact:
            return projection
    if "lateral" in words:
        return "lateral"
    return "frontal" if "frontal" in words else None


#: View Position defined terms of a film taken lying on one side (PS3.3 C.8.1.1).
_DECUBITUS_VIEW_POSITIONS = frozenset({"LLD", "RLD"})
#: Free-text views that name one: decubitus, decub, LLD, RLD.
_DECUBITUS_WORDS = frozenset({"decubitus", "decub", "lld", "rld"})


def _position_meanings(ds: Dataset) -> list[str]:
    """Meanings of the coded view, its modifiers and the patient orientation modifier."""
    views = h.items(ds, "ViewCodeSequence")
    found = [m for _, _, m in h.codes(ds, "ViewCodeSequence")]
    found += [m for view in views for _, _, m in h.codes(view, "ViewModifierCodeSequence")]
    found += [m for _, _, m in h.codes(ds, "ViewModifierCodeSequence")]
    found += [m for orientation in h.items(ds, "PatientOrientationCodeSequence")
              for _, _, m in h.codes(orientation, "PatientOrientationModifierCodeSequence")]
    return found


def decubitus_evidence(ds: Dataset) -> str | None:
    """Where the header says the film is a decubitus film, else None.

    A decubitus film is taken with a horizontal beam of a patient lying down (on one side: lateral
    decubitus; on the back: dorsal decubitus): the chest lies across the image. The model learned
    upright and supine films only, and on a lateral decubitus film it outlined "lungs" and "heart"
    across the wrong anatomy (RG1 turned a quarter, checked by eye), so the node does not read one.
    Sources: View Position LLD/RLD; "decubitus" in the meaning of the View Code, View Modifier or
    Patient Orientation Modifier codes; the words decubitus, decub, LLD, RLD in the series' own texts
    (not Study Description, which describes every film of the study).
    """
    view_position = h.upper(ds, "ViewPosition")
    if view_position in _DECUBITUS_VIEW_POSITIONS:
        return f"ViewPosition {view_position}"
    for meaning in _position_meanings(ds):
        if "DECUBITUS" in meaning:
            return f"coded position {meaning.lower()}"
    for keyword in _SERIES_TEXTS:
        if _DECUBITUS_WORDS.intersection(h.tokens(h.text(ds, keyword))):
            return f"{keyword} names a decubitus film"  # free text itself is never echoed
    return None


def _view_from_tokens(words: list[str]) -> View | None:
    frontal = any(w in _FRONTAL_TOKENS for w in words)
    lateral = any(w in _LATERAL_TOKENS for w in words)
    if frontal and not lateral:
        return View.FRONTAL
    if lateral and not frontal:
        return View.LATERAL
    return None  # neither, or both (e.g. "PA and LAT"): not decisive


def chest_view(ds: Dataset) -> tuple[View | None, str]:
    """Projection of a chest radiograph, and where it came from.

    Rule, first decisive source wins:

    1. View Position (0018,5101): ``PA``/``AP`` -> frontal; ``LL``/``RL``/``LAT``/``LATERAL`` ->
       lateral (PS3.3 C.8.11.5.1.1, C.8.1.1).
    2. View Code Sequence (0054,0220), CID 4010 (:func:`coded_projection`): postero-anterior,
       antero-posterior, frontal -> frontal; (left/right) lateral -> lateral.
    3. Series Description, Image Comments, Acquisition Device Processing Description, Protocol
       Name: the words PA, AP, frontal -> frontal; LAT, lateral, LL, RL -> lateral. A text naming
       both (e.g. "PA + LAT") is not decisive. Study Description is not used: it describes the
       whole study, which often has both projections.
    4. Fallback: frontal when the image is portrait or square (Rows >= Columns), since no source
       above says lateral; a landscape image, or one without Rows/Columns, gets None (unknown).
    """
    vp_words = h.tokens(h.text(ds, "ViewPosition"))
    view = _view_from_tokens(vp_words)
    if view is not None:
        return view, f"ViewPosition {h.upper(ds, 'ViewPosition')}"
    for code, _, meaning in h.codes(ds, "ViewCodeSequence"):
        projection = coded_projection(code, meaning)
        if projection is not None:
            view = View.LATERAL if projection == "lateral" else View.FRONTAL
            return view, f"ViewCodeSequence {meaning or code}"
    for keyword in _SERIES_TEXTS:
        view = _view_from_tokens(h.tokens(h.text(ds, keyword)))
        if view is not None:
            return view, f"{keyword} names a {view.value} view"  # free text itself is never echoed
    rows, cols = h.integer(ds, "Rows"), h.integer(ds, "Columns")
    if rows and cols and rows >= cols:
        return View.FRONTAL, "no view attribute; portrait/square image assumed frontal"
    return None, "no view attribute and a landscape or unsized image: view unknown"


def stored_orientation(ds: Dataset, view: View | None) -> Reorientation | None:
    """How to hang this chest film as the model learned it (:mod:`.orientation`), None when it cannot be known.

    From the first letters of Patient Orientation (0020,0020). Absent or incomplete values say
    nothing: the film is read as stored. None when the two values name the same axis of the patient
    (L\\R, F\\H...): contradictory, so the sides cannot be known.
    """
    values = _orientation_values(ds)
    if len(values) != 2 or not all(values):
        return AS_STORED
    return chest_reorientation(values[0][0], values[1][0], lateral=view is View.LATERAL)


def _orientation_values(ds: Dataset) -> list[str]:
    """Patient Orientation's two values, stripped and upper case; empty when not both are given."""
    return [v.strip().upper() for v in h.patient_orientation(ds) or ()]


def _orientation_text(ds: Dataset) -> str:
    return "\\".join(_orientation_values(ds))


class Classification(NamedTuple):
    """What :func:`classify` makes of one instance's header."""

    #: The kind; None when this node does not use the instance.
    kind: SeriesKind | None
    #: A chest radiograph's projection (:func:`chest_view`); None for other kinds.
    view: View | None
    #: Which attributes decided, for the log.
    reason: str
    #: For the study's reader: why a chest radiograph the node was sent is not read ("a decubitus
    #: film (ViewPosition LLD)"); None for every instance that is read or is no chest film.
    reader_note: str | None = None
    #: How a chest radiograph is hung for the model (:func:`stored_orientation`); None for other kinds.
    orientation: Reorientation | None = None


def _left_out_note(ds: Dataset, hung: Reorientation | None) -> str | None:
    """Why a chest radiograph hung as ``hung`` is not read, None when it is."""
    decubitus = decubitus_evidence(ds)
    if decubitus is not None:
        return f"a decubitus film ({decubitus})"
    if hung is None:
        return f"a film whose Patient Orientation {_orientation_text(ds)} is contradictory, so its sides are unknown"
    return None


def _is_radiograph(ds: Dataset) -> bool:
    """CR/DX SOP classes, or Secondary Capture / an unknown class with Modality CR/DX."""
    sop = h.sop_class_uid(ds)
    return sop in RADIOGRAPH_SOP_CLASSES or (
        h.upper(ds, "Modality") in RADIOGRAPH_MODALITIES and (not sop or sop in SECONDARY_CAPTURE_FAMILY))


def _is_skin(ds: Dataset) -> tuple[bool, str]:
    body_part = h.upper(ds, "BodyPartExamined")
    if body_part and _has_prefix(h.tokens(body_part), _SKIN_PREFIXES):
        return True, f"BodyPartExamined {body_part}"
    if _region_matches(ds, _SKIN_CODES, _SKIN_PREFIXES):
        return True, "AnatomicRegionSequence (skin)"
    words = h.tokens(*_descriptions(ds))
    if _has_prefix(words, _SKIN_PREFIXES) or any(w.startswith("dermoscop") for w in words):
        return True, "descriptions mention skin/lesion/dermoscopy"
    return False, f"BodyPartExamined {body_part or '(none)'} and descriptions do not indicate skin"


def _is_abdominal(ds: Dataset) -> tuple[bool, str]:
    body_part = h.upper(ds, "BodyPartExamined")
    if body_part in _ABDOMEN_BODY_PARTS:
        return True, f"BodyPartExamined {body_part}"
    if _region_matches(ds, _ABDOMEN_CODES, _ABDOMEN_PREFIXES):
        return True, "AnatomicRegionSequence (abdomen)"
    if _has_prefix(h.tokens(*_descriptions(ds)), _ABDOMEN_PREFIXES):
        return True, "descriptions mention abdominal anatomy"
    return False, f"BodyPartExamined {body_part or '(none)'} without abdominal coverage"


def _classify(ds: Dataset) -> Classification:
    sop = h.sop_class_uid(ds)
    modality = h.upper(ds, "Modality")
    what = f"Modality {modality or '(none)'}, {_sop_name(sop)}"

    if modality in NON_IMAGE_MODALITIES or sop.startswith(_NON_IMAGE_SOP_PREFIXES):
        return Classification(None, None, f"not an image this node reads ({what})")

    if _is_radiograph(ds):
        chest, why = _chest_evidence(ds)
        if chest is False:
            return Classification(None, None, f"radiograph but not a chest radiograph: {why} ({what})")
        if chest is None:
            LOGGER.info("%s without body part information: assumed to be a chest radiograph", what)
            why = "no body part information, CR/DX assumed chest"
        view, view_why = chest_view(ds)
        hung = stored_orientation(ds, view)
        left_out = _left_out_note(ds, hung)
        if left_out is not None:
            return Classification(None, None, f"chest radiograph not read, {left_out}: the model reads upright "
                                              f"and supine films whose sides are known ({what})", left_out)
        if not hung.is_identity:
            view_why += f"; {hung.describe()} for the model (Patient Orientation {_orientation_text(ds)})"
        return Classification(SeriesKind.CHEST_RADIOGRAPH, view,
                              f"chest radiograph ({what}; {why}; view from {view_why})", orientation=hung)

    # Dermoscopy / skin photograph.
    if sop == DERMOSCOPIC_PHOTOGRAPHY or (
        modality == "DMS" and (not sop or sop in SECONDARY_CAPTURE_FAMILY or sop == VL_PHOTOGRAPHIC)
    ):
        return Classification(SeriesKind.DERMOSCOPY, None, f"dermoscopy ({what})")
    if sop == VL_PHOTOGRAPHIC or (
        modality in PHOTO_MODALITIES and (not sop or sop in SECONDARY_CAPTURE_FAMILY)
    ):
        skin, why = _is_skin(ds)
        if skin:
            return Classification(SeriesKind.DERMOSCOPY, None, f"skin photograph ({what}; {why})")
        return Classification(None, None, f"photograph but not of skin: {why} ({what})")

    # CT.
    if sop in CT_SOP_CLASSES or (modality == "CT" and not sop):
        image_type = h.upper(ds, "ImageType")
        if "LOCALIZER" in image_type.split("\\"):
            return Classification(None, None, f"CT localizer (scout) image, not part of a volume ({what})")
        abdominal, why = _is_abdominal(ds)
        if abdominal:
            return Classification(SeriesKind.ABDOMINAL_CT, None, f"abdominal CT ({what}; {why})")
        return Classification(SeriesKind.CT, None, f"CT ({what}; {why})")

    return Classification(None, None, f"not handled by this node ({what})")


def classify(ds: Dataset) -> Classification:
    """Recognise an instance from its header.

    Parameters
    ----------
    ds : Dataset
        Any DICOM data set (pixel data not needed).

    Returns
    -------
    Classification
        The kind (None when this node does not use the instance), the chest radiograph
        projection (None for other kinds, see :func:`chest_view` for the rule), a
        human-readable reason naming the attributes that decided, for a chest film left out
        the note its reader gets, and for a chest film read how it is hung for the model.

    Notes
    -----
    * Chest radiograph: SOP class CR (PS3.4 B.5, ``...1.1``), DX for presentation / processing
      (``...1.1.1`` / ``...1.1.1.1``), or Secondary Capture (``...1.7`` and multi-frame
      ``...1.7.1-4``) with Modality CR/DX, and a chest body part (Body Part Examined,
      Anatomic Region Sequence, or descriptions naming chest/thorax/CXR/lung). A CR/DX with no
      body part information at all is accepted as chest (logged), since CR/DX routed to this
      node are nearly always chest films. A decubitus film (:func:`decubitus_evidence`) and one whose Patient
      Orientation contradicts itself (:func:`stored_orientation`) are not used; one stored mirrored
      or turned is read after :mod:`.orientation` hangs it as the model learned.
    * Dermoscopy: Dermoscopic Photography (``...77.1.7``), Modality DMS, or VL Photographic
      (``...77.1.4``) / Secondary Capture with Modality XC/DMS/OT with a skin body part.
    * CT: CT Image (``...1.2``), Enhanced CT (``...1.2.1``) and Legacy Converted Enhanced CT;
      ABDOMINAL_CT when Body Part Examined is ABDOMEN, ABDOMENPELVIS, CHESTABDOMEN,
      CHESTABDPELVIS (or the anatomy/descriptions name the abdomen or its organs), else CT.
      Localizers (Image Type value LOCALIZER, PS3.3 C.8.2.1.1.1) are rejected.
    * Never raises: a header that cannot be read gives ``(None, None, reason)``.
    """
    try:
        return _classify(ds)
    except Exception as exc:  # noqa: BLE001 - a weird header is a reason, not a crash
        LOGGER.warning("could not classify instance %s: %s", h.sop_instance_uid(ds), exc)
        return Classification(None, None, f"unreadable header: {type(exc).__name__}: {exc}")

"""Malformed and hostile DICOM inputs, generated at test time (no binary blobs in the repository).

Two halves:

* the **corpus** (:func:`build_corpus`): one named case per way a sender gets DICOM wrong, each
  with what the node must answer (a C-STORE status, PS3.4 B.2.3, or a refused presentation
  context, PS3.8 9.3.3.2), the reason its log must give, and what ``medversa infer`` must say;
* the **fuzz** (:func:`mutated_inputs`, :func:`run_input_path`): Hypothesis strategies that
  mutate valid data sets (their bytes and their element values), and the parsing and mapping
  path they go through (pydicom read, the SCP's acceptance check, series classification,
  pixels / CT volume, model task requests), which may only succeed or raise our own errors.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.uid import JPEG2000Lossless

from . import dicom_factory as f

SUCCESS = 0x0000
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MPEG2_MAIN_PROFILE = "1.2.840.10008.1.2.4.100"

#: storescu's complaint when the node accepted no context for what it wanted to send.
NO_CONTEXT = "No Acceptable Presentation Contexts"
#: storescu's complaint about a file it will not send (dcmtk checks value lengths itself).
BAD_FILE = "Bad DICOM file"


@dataclass(frozen=True)
class BadInput:
    """One corpus case: its files, and the outcome the node and ``medversa infer`` must show."""

    name: str
    what: str
    files: tuple[Path, ...]
    #: Status storescu must receive for every file; None when storescu cannot send it at all.
    status: int | None
    #: Fragment of storescu's output when ``status`` is None.
    storescu_says: str = ""
    #: Extra storescu options (``-R``: propose only what the files need, as a modality does).
    options: tuple[str, ...] = ()
    #: Status when the bytes go out as they are (a sender that does not check its files).
    raw_status: int | None = None
    #: Fragment the serve log must hold (the reason, in words).
    log: str = ""
    #: Fragment ``medversa infer``'s notes must hold for these files (None: it writes results).
    infer: str | None = ""
    #: Accepted instances whose study the node must then process.
    processed: bool = False
    figures: dict[str, object] = field(default_factory=dict)


def _save(ds: Dataset, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _write(data: bytes, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    return path


def _value_offset(data: bytes, tag: tuple[int, int], vr: bytes) -> int:
    """Offset of an explicit-VR element's 16-bit length field (after the 132-byte preamble + DICM)."""
    start = data.index(struct.pack("<HH", *tag) + vr, 132)
    return start + 6


def _cr(rows: int = 64, cols: int = 64, **attrs: object) -> Dataset:
    return f.make_cr(rows, cols, **attrs)


def _encapsulated_cr(ts: str, frames: int = 1, sop_class: str = f.CR_IMAGE) -> Dataset:
    """A 16 x 16 CR-like data set with one (fake) compressed fragment under transfer syntax ``ts``."""
    ds = _cr(16, 16, sop_class_uid=sop_class)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ts
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


#: The corpus cases, in the order :func:`build_corpus` writes them (test ids without writing files).
CASE_NAMES = (
    "truncated file", "file truncated in the header", "wrong value length", "missing Pixel Data", "short Pixel Data",
    "Rows/Columns larger than the pixel data", "Rows/Columns smaller than the pixel data", "memory bomb (native)",
    "memory bomb (compressed)", "memory bomb (Enhanced CT frames)", "unsupported transfer syntax",
    "non-image SOP class: Basic Text SR",
    "non-image SOP class: encapsulated PDF", "data set / SOP class mismatch", "CT series with a missing slice",
    "study of many tiny instances",
)


def build_corpus(folder: Path, many: int = 1000) -> list[BadInput]:
    """Write every corpus case under ``folder`` (one sub-folder per case) and describe it.

    ``many`` is the size of the study of tiny (8 x 8) instances.
    """
    cases: list[BadInput] = []
    good = _save(_cr(), folder / "seed", "cr")
    data = good.read_bytes()

    cases.append(BadInput(
        "truncated file", "a CR cut off 3000 bytes into its Pixel Data",
        (_write(data[:-3000], folder / "truncated", "cr"),), None, BAD_FILE, raw_status=CANNOT_UNDERSTAND,
        log="declares 8192 bytes but only", infer="declares 8192 bytes but only"))
    cut = _value_offset(data, (0x0008, 0x0018), b"UI") + 2 + 10  # ten characters into SOP Instance UID
    cases.append(BadInput(
        "file truncated in the header", "a CR cut off inside its SOP Instance UID",
        (_write(data[:cut], folder / "truncated_header", "cr"),), None, BAD_FILE, raw_status=CANNOT_UNDERSTAND,
        log="(0008,0018) declares", infer="(0008,0018) declares"))
    wrong = bytearray(data)
    struct.pack_into("<H", wrong, _value_offset(data, (0x0010, 0x0010), b"PN"), 0xFFF0)
    cases.append(BadInput(
        "wrong value length", "Patient's Name declares 65520 bytes",
        (_write(bytes(wrong), folder / "wrong_length", "cr"),), None, BAD_FILE, raw_status=CANNOT_UNDERSTAND,
        log="(0010,0010) declares 65520 bytes", infer="(0010,0010) declares 65520 bytes"))

    ds = _cr()
    del ds.PixelData
    cases.append(BadInput("missing Pixel Data", "a CR without (7FE0,0010)", (_save(ds, folder / "no_pixels", "cr"),),
                          DATASET_DOES_NOT_MATCH_SOP_CLASS, log="no PixelData", infer="no Pixel Data"))
    ds = _cr()
    ds.PixelData = ds.PixelData[:4096]
    cases.append(BadInput("short Pixel Data", "64 x 64 x 16 bits with half the bytes",
                          (_save(ds, folder / "short_pixels", "cr"),), CANNOT_UNDERSTAND,
                          log="fewer than the 8192 bytes", infer="fewer than the 8192 bytes"))
    ds = _cr()
    ds.Rows = ds.Columns = 96
    cases.append(BadInput("Rows/Columns larger than the pixel data", "header 96 x 96, data 64 x 64",
                          (_save(ds, folder / "rows_larger", "cr"),), CANNOT_UNDERSTAND,
                          log="fewer than the 18432 bytes", infer="fewer than the 18432 bytes"))
    ds = _cr()
    ds.Rows = 32
    cases.append(BadInput("Rows/Columns smaller than the pixel data", "header 32 x 64, data 64 x 64",
                          (_save(ds, folder / "rows_smaller", "cr"),), CANNOT_UNDERSTAND,
                          log="more than the 4096 bytes", infer="more than the 4096 bytes"))

    ds = _cr(8, 8, sop_class_uid=f.MF_GRAYSCALE_WORD_SC, modality="DX")
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 10000
    cases.append(BadInput("memory bomb (native)", "Rows = Columns = 65535, 10000 frames, 128 bytes of data",
                          (_save(ds, folder / "bomb_native", "sc"),), CANNOT_UNDERSTAND,
                          log="over the limit", infer="over the limit",
                          figures={"claimed_bytes": 65535 * 65535 * 10000 * 2}))
    ds = _encapsulated_cr(JPEG2000Lossless, frames=1_000_000, sop_class=f.MF_GRAYSCALE_WORD_SC)
    cases.append(BadInput("memory bomb (compressed)", "JPEG 2000, 1,000,000 frames of 16 x 16 in one fragment",
                          (_save(ds, folder / "bomb_encapsulated", "sc"),), CANNOT_UNDERSTAND,
                          options=("-xv",),  # propose JPEG 2000 lossless: sent as it is, not decompressed
                          log="holds 1 fragment(s)", infer="holds 1 fragment(s)",
                          figures={"claimed_bytes": 16 * 16 * 1_000_000 * 2}))
    ds = f.make_enhanced_ct(3, rows=8, cols=8)
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.PlanePositionSequence = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence
    del ds.PerFrameFunctionalGroupsSequence  # every frame's geometry from the shared groups
    ds.NumberOfFrames = 50_000_000
    cases.append(BadInput("memory bomb (Enhanced CT frames)", "an Enhanced CT claiming 50,000,000 frames of 8 x 8",
                          (_save(ds, folder / "bomb_frames", "ct"),), CANNOT_UNDERSTAND,
                          log="over the limit", infer="over the limit",
                          figures={"claimed_bytes": 8 * 8 * 50_000_000 * 2}))

    cases.append(BadInput(
        "unsupported transfer syntax", "a CR in MPEG-2 Main Profile, proposed only so (storescu -xm)",
        (_save(_encapsulated_cr(MPEG2_MAIN_PROFILE), folder / "mpeg2", "cr"),), None, NO_CONTEXT,
        options=("-R", "-xm"), log="none of the proposed transfer syntaxes is supported",
        infer="is not supported"))
    sr = f.base_dataset(BASIC_TEXT_SR, "SR")
    sr.ValueType = "CONTAINER"
    sr.ContinuityOfContent = "SEPARATE"
    cases.append(BadInput("non-image SOP class: Basic Text SR", "a text report sent to the node",
                          (_save(sr, folder / "basic_text_sr", "sr"),), None, NO_CONTEXT, options=("-R",),
                          log="Basic Text SR Storage", infer="not an image this node reads"))
    pdf = f.base_dataset(ENCAPSULATED_PDF, "DOC")
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    pdf.DocumentTitle = "referral"
    cases.append(BadInput("non-image SOP class: encapsulated PDF", "a PDF sent to the node",
                          (_save(pdf, folder / "pdf", "pdf"),), None, NO_CONTEXT, options=("-R",),
                          log="Encapsulated PDF Storage", infer="not an image this node reads"))
    # pydicom keeps the file meta in step with the data set, so the data set's SOP Class UID is
    # patched in the bytes: the file meta (and so the request) says CR, the data set says MR.
    mismatch = bytearray(data)
    at = _value_offset(data, (0x0008, 0x0016), b"UI") + 2
    mismatch[at:at + 26] = f.MR_IMAGE.encode().ljust(26, b"\0")
    cases.append(BadInput("data set / SOP class mismatch", "file meta says CR Image, the data set MR Image",
                          (_write(bytes(mismatch), folder / "mismatch", "cr"),), None, NO_CONTEXT, options=("-R",),
                          raw_status=DATASET_DOES_NOT_MATCH_SOP_CLASS, log="is not the presentation context's",
                          infer="not handled by this node"))

    series = f.make_ct_series(5, rows=8, cols=8)
    del series[2]
    cases.append(BadInput("CT series with a missing slice", "5 slices of an abdominal CT, the middle one never sent",
                          tuple(f.write_datasets(series, folder / "ct_gap")), SUCCESS,
                          log="missing slice(s)", infer="missing slice(s)", processed=True))
    tiny = f.make_ct_series(many, spacing=1.0, rows=8, cols=8)
    cases.append(BadInput("study of many tiny instances", f"{many} CT slices of 8 x 8 pixels in one series",
                          tuple(f.write_datasets(tiny, folder / "many")), SUCCESS,
                          log=f"volume of {many} slices", infer=None, processed=True))
    assert tuple(c.name for c in cases) == CASE_NAMES
    return cases


def study_uid_of(case: BadInput) -> str:
    """The Study Instance UID of a case with readable files."""
    return str(dcmread(case.files[0], stop_before_pixels=True).StudyInstanceUID)


def send_raw(path: Path, port: int, called_ae: str, calling_ae: str = "RAWSENDER") -> int | None:
    """Send a file's bytes as they are (pynetdicom's chunked C-STORE), as a careless sender would.

    SOP class, instance and transfer syntax come from the file meta only; nothing of the data set
    is checked. Returns the response status, or None when no context was accepted.
    """
    from pynetdicom import AE, _config
    from pynetdicom.dsutils import split_dataset

    meta, _ = split_dataset(path)
    ae = AE(calling_ae)
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        response = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    return int(response.Status) if response and "Status" in response else None


# -- fuzz -------------------------------------------------------------------------------------

@functools.cache
def seed_studies() -> tuple[tuple[bytes, ...], ...]:
    """Valid studies to mutate, encoded: chest radiographs (native, multi-frame, RLE), a skin
    photograph, a CT series and an Enhanced CT."""
    rle = f.make_cr(16, 16, bits=8)
    rle.compress("1.2.840.10008.1.2.5")
    mf = f.make_cr(pixels=f.chest_pixels(12, 12, frames=3), sop_class_uid=f.MF_GRAYSCALE_WORD_SC, modality="DX")
    studies = [[f.make_cr(16, 16)], [mf], [rle], [f.make_vl_photo(12, 16)], f.make_ct_series(3, rows=8, cols=8),
               [f.make_enhanced_ct(3, rows=8, cols=8)]]
    return tuple(tuple(_encode(ds) for ds in study) for study in studies)


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


#: Attributes the mapping path reads: the Image Pixel module, geometry, LUTs and recognition.
FUZZED_KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel", "PixelRepresentation",
    "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "RescaleSlope", "RescaleIntercept",
    "WindowCenter", "WindowWidth", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition", "ImageType", "GantryDetectorTilt",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PixelData",
)

_values = st.one_of(
    st.none(),  # delete the element
    st.integers(min_value=-(2**31), max_value=2**32 - 1),
    st.sampled_from([0, 1, 2, 3, 7, 8, 12, 16, 32, 64, 65535, 10**6]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=12),
    st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL_422", "PALETTE COLOR", "CHEST", "ABDOMEN", "CT", "DX",
                     "1.2.840.10008.5.1.4.1.1.2.1", "0\\0\\1\\0\\0\\0", "1\\0\\0\\1\\0\\0", "", "-1"]),
    st.binary(max_size=64),
)


@st.composite
def mutated_inputs(draw: st.DrawFn) -> list[bytes]:
    """A study of encoded data sets with one instance mutated (element values, then bytes)."""
    seeds = seed_studies()
    blobs = list(seeds[draw(st.integers(0, len(seeds) - 1))])
    victim = draw(st.integers(0, len(blobs) - 1))
    ds = dcmread(BytesIO(blobs[victim]))
    for _ in range(draw(st.integers(0, 3))):
        keyword, value = draw(st.sampled_from(FUZZED_KEYWORDS)), draw(_values)
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
            continue
        with contextlib.suppress(Exception):  # pydicom refuses the value outright: nothing to test
            setattr(ds, keyword, value)
    with contextlib.suppress(Exception):  # a value pydicom cannot write: the byte mutations still apply
        blobs[victim] = _encode(ds)
    data = bytearray(blobs[victim])
    fields = _length_fields(bytes(data))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "length", "length"]))
        if len(data) <= 132:
            break
        at = draw(st.integers(132, len(data) - 1))
        if action == "flip":
            data[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif action == "truncate":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif fields:  # a wrong value length on a real element
            offset, size = draw(st.sampled_from(fields))
            value = draw(st.sampled_from([0, 1, 2, 3, 0xFFFF, 0xFFFFFFFF, 2**31, len(data)]))
            data[offset:offset + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
    blobs[victim] = bytes(data)
    return blobs


#: Explicit VRs with a 4-byte Value Length field (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def _length_fields(blob: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the Value Length field of each top-level element of an explicit VR data set."""
    try:
        ds = dcmread(BytesIO(blob))
        fields = []
        for tag in list(ds.keys()):
            raw = ds.get_item(tag)
            if getattr(raw, "is_implicit_VR", True):
                continue
            size = 4 if raw.VR in _LONG_VRS else 2
            fields.append((raw.value_tell - size, size))
        return fields
    except Exception:  # noqa: BLE001 - no fields to aim at: the other mutations still apply
        return []


def clear_errors() -> tuple[type[BaseException], ...]:
    """The error types the input path may raise: everything else is a bug."""
    from medversa.dicom_mapping import PixelDataError
    from medversa.dicom_mapping.volume import VolumeError

    return (InvalidDicomError, PixelDataError, VolumeError)


def _request_of(blob: bytes) -> tuple[str, str] | None:
    """(SOP Class UID, SOP Instance UID) a sender takes from the file meta, or None."""
    try:
        meta = dcmread(BytesIO(blob), stop_before_pixels=True).file_meta
        return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
    except Exception:  # noqa: BLE001 - whatever pydicom makes of broken file meta
        return None


def run_input_path(blobs: list[bytes]) -> str:
    """Take a study through the node's input path; return what happened, in a few words.

    The SCP's decision on each data set (:func:`medversa.node.scp.check_received`), then what
    the worker and ``medversa infer`` do (:func:`medversa.node.infer.read_inputs`, then
    classification, pixels or CT volume, and the model's task requests). Raises only
    :func:`clear_errors` types; anything else escaping is a bug the fuzz test reports.
    """
    import tempfile

    from medversa.dicom_mapping import StudyOptions, plan_study, prepare_study
    from medversa.node.infer import read_inputs
    from medversa.node.scp import check_received

    refused = 0
    accepted: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        for i, blob in enumerate(blobs):
            path = Path(folder) / f"{i}.dcm"
            path.write_bytes(blob)
            request = _request_of(blob)
            if request is None:
                continue  # no usable file meta: a sender could not have sent it
            if check_received(blob, *request)[0] is None:
                refused += 1
            else:
                accepted.append(str(path))
        studies, problems = read_inputs([Path(folder)])
    unreadable = [p for p in problems if p.split(":")[0] in accepted]
    assert not unreadable, f"the SCP acknowledged what the worker cannot read: {unreadable}"
    outcomes = []
    for datasets in studies.values():
        inputs = prepare_study(datasets)
        planned, _ = plan_study(inputs, StudyOptions())
        for item in planned:
            for image in item.request.images:
                assert np.isfinite(image.pixels).all(), f"{item.request.task}: a model input with non-finite values"
        outcomes.append("planned" if planned else "skipped" if inputs.skipped else "nothing to do")
    kind = ", ".join(sorted(set(outcomes))) or "unreadable"
    return f"{kind}; {refused} refused by the SCP" if refused else kind



@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread when the block runs longer than ``seconds`` (a hang)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"the input path ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

"""The storage SOP classes and transfer syntaxes the node handles, in one place (PS3.4 B.5, PS3.5 A).

The SCP accepts them (conformance statement), and C-GET offers them when retrieving priors.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

#: Storage SOP classes we process.
STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}

#: Every SCP supports these (PS3.5 A.1, A.2).
UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: Compressed syntaxes pydicom decodes with the installed pylibjpeg / pyjpegls plug-ins.
COMPRESSED: tuple[str, ...] = (
    JPEG2000Lossless, JPEG2000, JPEGLosslessSV1, JPEGLossless, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless, RLELossless,
)

#: What the SCP accepts, in order of preference.
ACCEPTED_SYNTAXES: tuple[str, ...] = (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian, *COMPRESSED)

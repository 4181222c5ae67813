"""Who made a result object, and its UIDs: algorithm identity, Contributing Equipment, UID derivation.

IHE Radiology AI Results (AIR) asks every result object to carry a Contributing
Equipment Sequence item (PS3.3 C.7.5.1 General Equipment, C.12.1.1 SOP Common)
whose Purpose of Reference is (Newcode1, 99IHE, "Processing Algorithm") with the
algorithm's manufacturer, model name and software versions, and a Device UID
that changes whenever the model changes. UIDs of result objects are derived
deterministically from a job key under the organisation's root (PS3.5 9), so a
re-run of the same job yields the same objects (idempotent exports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import highdicom as hd
from pydicom.uid import generate_uid

from . import codes

#: Every object we write is UTF-8 (PS3.5 6.1.2.5.3): labels and report text may hold any script,
#: and some sources carry an empty or unusual Specific Character Set.
CHARACTER_SET = "ISO_IR 192"

#: Default organisation root: the node's UIDs when a site has not configured its own.
DEFAULT_ORG_ROOT = "1.2.826.0.1.3680043.10.1462."

_UID_ROOT = re.compile(r"^[0-9]+(\.[0-9]+)*\.$")


def check_org_root(root: str) -> str:
    """An organisation UID root ends with '.', has only digits and dots, and leaves room for a suffix."""
    if not _UID_ROOT.match(root) or len(root) > 40:
        raise ValueError(f"organisation UID root {root!r} must be digits and dots, end with '.', "
                         "and be at most 40 characters")
    return root


def derive_uid(org_root: str, *parts: str) -> str:
    """A UID under ``org_root`` that depends only on ``parts`` (same parts, same UID)."""
    return str(generate_uid(prefix=check_org_root(org_root), entropy_srcs=[str(p) for p in parts]))


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced a result (IHE AIR algorithm identification)."""

    name: str = "MedVersa"
    version: str = "0.1.0"
    #: Identity of the model weights (checkpoint SHA-256): the device UID follows it.
    model_id: str = "unknown"
    manufacturer: str = "medversa-node"
    model_name: str = "MedVersa"
    software_version: str = "medversa-node 0.1.0"
    org_root: str = DEFAULT_ORG_ROOT
    #: Shown in Series Descriptions: results are AI-generated and not verified.
    ai_notice: str = "AI-generated, unverified"

    def __post_init__(self) -> None:
        check_org_root(self.org_root)

    @property
    def device_uid(self) -> str:
        """Changes whenever the model (weights) or the algorithm version changes."""
        return derive_uid(self.org_root, "device", self.name, self.version, self.model_id)

    @property
    def software_versions(self) -> tuple[str, str]:
        return (self.software_version, f"{self.name} {self.version} model {self.model_id[:16]}")

    @property
    def serial_number(self) -> str:
        """Device Serial Number (required by SEG/PR): the model identity, short."""
        return self.model_id[:16] or "unknown"

    def contributing_equipment(self) -> hd.ContributingEquipment:
        # highdicom accepts only CID 7005 purposes; IHE AIR's (Newcode1, 99IHE) replaces it after.
        item = hd.ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.model_name,
            software_versions=list(self.software_versions),
            device_serial_number=self.serial_number,
            contribution_description=f"{self.name} {self.version}: {self.ai_notice}",
        )
        item.PurposeOfReferenceCodeSequence = [codes.PROCESSING_ALGORITHM]
        item.DeviceUID = self.device_uid
        return item

    def observer_context(self) -> hd.sr.ObserverContext:
        """The algorithm as the SR/KOS device observer (TID 1004)."""
        from pydicom.sr.codedict import codes as dcm_codes

        return hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=self.device_uid, name=self.name, manufacturer_name=self.manufacturer,
                model_name=self.model_name),
        )

    def sr_algorithm_id(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version, manufacturer=self.manufacturer)

    def seg_algorithm_id(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(name=self.name, family=codes.ALGORITHM_FAMILY_AI,
                                                  version=self.version)

_AGE = re.compile(r"^\d{3}[DWMY]$")


def drop_invalid_copied_attributes(ds: hd.SOPClass) -> list[str]:
    """Remove patient/study attributes copied from a source whose values break their VR.

    Builders copy the Patient and Study modules from the source image; a source
    with, say, PatientAge '62' (AS needs '062Y') would make our object invalid.
    Such optional (Type 3) values are dropped rather than guessed. Returns the
    keywords removed.
    """
    removed = []
    if "PatientAge" in ds and ds.PatientAge and not _AGE.match(str(ds.PatientAge)):
        del ds.PatientAge
        removed.append("PatientAge")
    if "PatientSex" in ds and ds.PatientSex not in ("M", "F", "O", ""):
        ds.PatientSex = ""  # Type 2: keep it, empty
        removed.append("PatientSex")
    return removed

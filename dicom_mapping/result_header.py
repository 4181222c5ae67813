"""The header every result object carries: its series and instance, the algorithm as its equipment.

The five builders (SR, SEG, presentation state, Secondary Capture, Key Object Selection) write the
same things into their General Series, General Equipment and SOP Common modules: the series and
instance UIDs and numbers, a Series Description that says the content is AI-generated and
unverified, the algorithm as Manufacturer / Manufacturer's Model Name / Software Versions, the IHE
AIR Contributing Equipment item (PS3.3 C.7.5.1, C.12.1.1) and UTF-8 as the character set. One
:class:`ResultHeader` gives them to highdicom's constructors, so the objects cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom import Dataset

from .identity import CHARACTER_SET, AlgorithmInfo, drop_invalid_copied_attributes

#: Content Label of the objects that have one (SEG, presentation states): PS3.3 C.10.9, a CS value.
CONTENT_LABEL = "MEDVERSA"

_D = TypeVar("_D", bound=Dataset)


@dataclass(frozen=True)
class ResultHeader:
    """Series, instance and equipment of one result object written by ``algorithm``."""

    algorithm: AlgorithmInfo
    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    series_description: str

    def kwargs(self, *, device_serial_number: bool = False) -> dict[str, Any]:
        """Keyword arguments for a highdicom constructor (every one passes them on to ``hd.SOPClass``).

        ``device_serial_number``: the Enhanced General Equipment module (SEG, presentation states)
        requires Device Serial Number (Type 1); the other objects do not carry one.
        """
        alg = self.algorithm
        args: dict[str, Any] = dict(
            series_instance_uid=self.series_instance_uid,
            series_number=self.series_number,
            sop_instance_uid=self.sop_instance_uid,
            instance_number=self.instance_number,
            series_description=self.series_description,
            manufacturer=alg.manufacturer,
            manufacturer_model_name=alg.model_name,
            software_versions=list(alg.software_versions),
            contributing_equipment=[alg.contributing_equipment()],
            specific_character_set=CHARACTER_SET,
        )
        if device_serial_number:
            args["device_serial_number"] = alg.serial_number
        return args

    def content(self, what: str) -> dict[str, str]:
        """Content Label and Description (SEG, presentation states): '<name> <what> (AI-generated, ...)'."""
        return dict(content_label=CONTENT_LABEL,
                    content_description=f"{self.algorithm.name} {what} ({self.algorithm.ai_notice})"[:64])

    def finish(self, ds: _D) -> _D:
        """The last step of every builder: drop patient/study values copied from a source that break their VR."""
        drop_invalid_copied_attributes(ds)
        return ds

"""Real DICOM tools as test oracles: dciodvfy (dicom3tools), dsrdump and dcmp2pgm (dcmtk)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import Dataset


def need_tool(name: str) -> str:
    """The path of a real tool: dcmtk's, not pynetdicom's Python apps of the same name."""
    from medversa.benchmarks.peers import dcmtk

    path = dcmtk(name) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bash .ci/install installs it)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dciodvfy prints for a file (warnings are allowed)."""
    result = subprocess.run([need_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def save(ds: Dataset, folder: Path, name: str) -> Path:
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_valid(ds: Dataset, folder: Path, name: str) -> Path:
    path = save(ds, folder, name)
    errors = dciodvfy_errors(path)
    assert not errors, "\n".join(errors)
    return path


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")


def pixelmed_sr_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of PixelMed's DicomSRValidator, the IHE Connectathon SR validator
    (Debian libpixelmed-java)."""
    java = shutil.which("java")
    if java is None or not PIXELMED_JAR.exists():
        pytest.skip("PixelMed is not installed (bash .ci/install installs libpixelmed-java)")
    limits = [f"-Djdk.xml.{name}=0" for name in ("xpathExprOpLimit", "xpathExprGrpLimit", "xpathTotalOpLimit")]
    result = subprocess.run([java, *limits, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator",
                             str(path)], capture_output=True, text=True, timeout=300)
    lines = (result.stdout + result.stderr).splitlines()
    if "IOD validation complete" not in lines:
        raise AssertionError(f"DicomSRValidator did not finish on {path}:\n" + "\n".join(lines[-20:]))
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]

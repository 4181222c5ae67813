"""OHIF Viewer (npm ``@ohif/app`` 3.13.2) served by a throwaway Orthanc, and a headless browser on it.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) serves DICOMweb at ``/dicom-web`` and, with
its ServeFolders plugin, the viewer prepared by ``deploy/ohif/prepare_ohif.py`` at ``/ohif``:
one origin, as in ``deploy/``. The prepared viewer is looked for in ``$MEDVERSA_OHIF_DIR`` and
then ``build/ohif/served`` (where ``.ci/install`` puts it).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
SERVE_FOLDERS_PLUGIN = PLUGINS / "libServeFolders.so"


def ohif_dir() -> Path | None:
    for candidate in (os.environ.get("MEDVERSA_OHIF_DIR"), REPO / "build" / "ohif" / "served"):
        if candidate and (Path(candidate) / "viewer").is_file():
            return Path(candidate)
    return None


def viewer_or_skip() -> Path:
    """The prepared OHIF build; skips the test when it, Chromium or Orthanc's DICOMweb plugin is missing."""
    import pytest

    from .browser import find_chromium

    folder = ohif_dir()
    if folder is None:
        pytest.skip("OHIF is not prepared (bash .ci/install puts @ohif/app 3.13.2 in build/ohif/served)")
    if find_chromium() is None:
        pytest.skip("chromium is not installed (bash .ci/install installs it)")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("orthanc-dicomweb is not installed (bash .ci/install installs it)")
    return folder


def orthanc_viewer_config(viewer: Path) -> dict:
    """Orthanc options that add DICOMweb and the viewer (merged into a test Orthanc's configuration)."""
    return {
        "Plugins": [str(DICOMWEB_PLUGIN), str(SERVE_FOLDERS_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        # The empty extension maps to HTML: OHIF's route files (viewer, segmentation, ...).
        "ServeFolders": {"Folders": {"/ohif": str(viewer)}, "Extensions": {"": "text/html"}},
    }


def viewer_url(base: str, study_uid: str, route: str = "viewer", **params: str) -> str:
    query = urllib.parse.urlencode({"StudyInstanceUIDs": study_uid, **params})
    return f"{base}/ohif/{route}?{query}"


#: Marks OHIF's onboarding tour as shown, so that its pop-up does not cover the viewport.
SKIP_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); true"

#: The centre (x, y) of the study browser's thumbnail of the series of a modality whose description
#: contains a text, or null.
SERIES_THUMBNAIL = """(() => {{
  const labels = [...document.querySelectorAll('[data-cy="series-modality-label"]')];
  for (const label of labels) {{
    if (label.textContent.trim() !== {modality}) continue;
    let item = label;  // the series' own entry: the largest ancestor holding no other series
    const others = el => el.querySelectorAll('[data-cy="series-modality-label"]').length;
    while (item.parentElement && others(item.parentElement) === 1) item = item.parentElement;
    if (!(item.textContent || '').includes({description})) continue;
    const box = label.getBoundingClientRect();
    return [box.x + box.width / 2, box.y + box.height / 2];
  }}
  return null;
}})()"""


def thumbnail_script(modality: str, description: str = "") -> str:
    import json

    return SERIES_THUMBNAIL.format(modality=json.dumps(modality), description=json.dumps(description))


#: The bounding box (x, y, width, height) of the largest canvas: the active viewport's rendering.
VIEWPORT_BOX = """(() => {
  let best = null;
  for (const c of document.querySelectorAll('canvas')) {
    const r = c.getBoundingClientRect();
    if (r.width * r.height > 40000 && (!best || r.width * r.height > best[2] * best[3]))
      best = [r.x, r.y, r.width, r.height];
  }
  return best;
})()"""


def annotation_pixels(png: Path, box: list[float], inset: int = 6) -> int:
    """Pixels inside ``box`` of a screenshot that are coloured where a grayscale image has none.

    Radiographs and CT display as gray (red = green = blue). SR outlines and labels (yellow, green
    when selected) and SEG overlays (a segment colour blended over the image) are not gray; OHIF's
    own chrome over the viewport (border, icons, prompts) is blue or cyan and is not counted (blue
    is its strongest channel).
    """
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x, y, w, h = (int(round(v)) for v in box)
    region = rgb[max(y + inset, 0):y + h - inset, max(x + inset, 0):x + w - inset]
    r, g, b = region[..., 0], region[..., 1], region[..., 2]
    chroma = region.max(axis=2) - region.min(axis=2)
    return int(((chroma > 12) & (b < np.maximum(r, g))).sum())

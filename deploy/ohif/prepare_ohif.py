#!/usr/bin/env python3
"""Prepare OHIF Viewer's published build (npm ``@ohif/app``, ``dist/``) to be served by Orthanc.

Orthanc's ServeFolders plugin serves a folder under a URI prefix of the same origin as its
DICOMweb plugin (no CORS needed), but not at the origin's root (1.10.1 refuses an empty URI) and
not a folder's ``index.html``. The published build assumes it lives at ``/``, so this script
copies it and:

- points every root-relative link of ``index.html``, the style sheets and the manifest, and the
  webpack public path of each bundle at the prefix (``/ohif/``), and sets ``window.PUBLIC_URL``;
- writes ``app-config.js``: router base name = the prefix, one DICOMweb data source at
  ``<origin>/dicom-web`` (the Orthanc DICOMweb plugin), no investigational-use dialog;
- copies ``index.html`` to extension-less files named after OHIF's routes (``viewer``,
  ``segmentation``, ...), which Orthanc serves as HTML when its ServeFolders configuration maps
  the empty extension to ``text/html`` (``deploy/orthanc/orthanc.json`` does).

Standard library only (it runs in the CI install, the demo and a compose init container).
Usage: ``prepare_ohif.py DIST_OR_TGZ OUT [--prefix /ohif] [--dicomweb /dicom-web]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

OHIF_VERSION = "3.13.2"
#: OHIF routes (mode route names and the data source form) a user may open directly.
ROUTES = ("viewer", "segmentation", "basic", "tmtv", "microscopy", "usAnnotation", "dynamic-volume", "worklist")
_PUBLIC_PATH = '__webpack_require__.p = "/";'

APP_CONFIG = """/** OHIF {version} for Orthanc: written by deploy/ohif/prepare_ohif.py (do not edit by hand). */
window.config = {{
  routerBasename: {prefix},
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {{
        friendlyName: 'Orthanc (same origin)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + {dicomweb},
        qidoRoot: window.location.origin + {dicomweb},
        wadoRoot: window.location.origin + {dicomweb},
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {{ enabled: true }},
        omitQuotationForMultipartRequest: true,
      }},
    }},
  ],
}};
"""


def _dist_of(source: Path, work: Path) -> Path:
    """The ``dist`` folder of an npm package tarball, an unpacked package or a dist folder."""
    if source.is_file():
        with tarfile.open(source) as tar:
            tar.extractall(work, filter="data")
        source = work / "package"
    for candidate in (source / "dist", source / "package" / "dist", source):
        if (candidate / "index.html").is_file() and (candidate / "app-config.js").is_file():
            return candidate
    raise SystemExit(f"{source}: not OHIF's published build (no dist/index.html and app-config.js)")


def prepare(source: Path, out: Path, prefix: str = "/ohif", dicomweb: str = "/dicom-web") -> Path:
    """Write the prepared copy of OHIF's build into ``out`` (replaced); return ``out``."""
    prefix = "/" + prefix.strip("/")
    with tempfile.TemporaryDirectory() as tmp:
        dist = _dist_of(source, Path(tmp))
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(dist, out, ignore=shutil.ignore_patterns("*.map"))
    index = (out / "index.html").read_text()
    index = index.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{prefix}/"')
    index = re.sub(r'(href|src)="/(?!/)', rf'\1="{prefix}/', index)
    (out / "index.html").write_text(index)
    for css in out.glob("*.css"):  # fonts and images the style sheets name from the root
        css.write_text(re.sub(r"url\((['\"]?)/(?!/)", rf"url(\1{prefix}/", css.read_text()))
    manifest = out / "manifest.json"
    if manifest.is_file():
        manifest.write_text(re.sub(r'"/(?!/)', f'"{prefix}/', manifest.read_text()))
    patched = 0
    for bundle in out.glob("*.js"):
        text = bundle.read_text(errors="surrogateescape")
        if _PUBLIC_PATH in text:
            bundle.write_text(text.replace(_PUBLIC_PATH, f'__webpack_require__.p = "{prefix}/";'),
                              errors="surrogateescape")
            patched += 1
    if not patched:
        raise SystemExit("no webpack public path found: not the OHIF build this script knows")
    (out / "app-config.js").write_text(APP_CONFIG.format(version=OHIF_VERSION, prefix=json.dumps(prefix),
                                                         dicomweb=json.dumps(dicomweb)))
    for route in ROUTES:
        shutil.copyfile(out / "index.html", out / route)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="npm pack tarball, unpacked package or its dist folder")
    parser.add_argument("out", type=Path, help="folder to write (replaced)")
    parser.add_argument("--prefix", default="/ohif", help="URI prefix Orthanc serves the folder under")
    parser.add_argument("--dicomweb", default="/dicom-web", help="DICOMweb root on the same origin")
    args = parser.parse_args(argv)
    print(prepare(args.source, args.out, args.prefix, args.dicomweb))
    return 0


if __name__ == "__main__":
    sys.exit(main())

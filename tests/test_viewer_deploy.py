"""The viewer wired to the PACS in deploy/: OHIF prepared for Orthanc, the compose service, the demo's PACS."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import yaml

from .ohif import DICOMWEB_PLUGIN, ohif_dir
from .orthanc import orthanc_server

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ORTHANC_JSON = DEPLOY / "orthanc" / "orthanc.json"


def _orthanc_json() -> dict:
    return json.loads("\n".join(x for x in ORTHANC_JSON.read_text().splitlines() if not x.lstrip().startswith("//")))


def _fake_package(tmp_path: Path) -> Path:
    """A minimal stand-in for npm's @ohif/app tarball: the files the prepare script rewrites."""
    dist = tmp_path / "package" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text('<script>window.PUBLIC_URL="/"</script><link href="/assets/x.css">'
                                     '<script src="/app-config.js"></script><script src="/app.bundle.1.js"></script>')
    (dist / "app-config.js").write_text("window.config = {};")
    (dist / "app.bundle.1.js").write_text('__webpack_require__.p = "/";\nconsole.log(1);')
    (dist / "manifest.json").write_text('{"icons": [{"src": "/assets/icon.png"}]}')
    (dist / "app.bundle.1.js.map").write_text("{}")
    (dist / "app.bundle.css").write_text("@font-face{src:url(/a1.woff2)}")
    tgz = tmp_path / "ohif-app.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    return tgz


def test_prepare_ohif_moves_the_build_under_the_prefix_and_points_it_at_dicomweb(tmp_path):
    out = tmp_path / "served"
    result = subprocess.run([sys.executable, str(DEPLOY / "ohif" / "prepare_ohif.py"), str(_fake_package(tmp_path)),
                             str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    index = (out / "index.html").read_text()
    assert 'window.PUBLIC_URL="/ohif/"' in index and 'src="/ohif/app.bundle.1.js"' in index
    assert not re.search(r'(src|href)="/(?!ohif/)', index)
    assert '__webpack_require__.p = "/ohif/";' in (out / "app.bundle.1.js").read_text()
    assert '"/ohif/assets/icon.png"' in (out / "manifest.json").read_text()
    assert "url(/ohif/a1.woff2)" in (out / "app.bundle.css").read_text()
    config = (out / "app-config.js").read_text()
    assert "routerBasename: \"/ohif\"" in config and "window.location.origin + \"/dicom-web\"" in config
    assert (out / "viewer").read_text() == index and not (out / "app.bundle.1.js.map").exists()


def test_prepare_ohif_refuses_what_is_not_the_ohif_build(tmp_path):
    (tmp_path / "dist").mkdir()
    result = subprocess.run([sys.executable, str(DEPLOY / "ohif" / "prepare_ohif.py"), str(tmp_path),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "not OHIF's published build" in result.stderr


def test_compose_serves_the_prepared_viewer_from_orthanc():
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    orthanc, ohif = services["orthanc"], services["ohif"]
    assert orthanc["depends_on"]["ohif"]["condition"] == "service_completed_successfully"
    assert "@ohif/app@3.13.2" in "\n".join(ohif["command"]) and "ohif-dist" in compose["volumes"]
    config = _orthanc_json()
    folder = config["ServeFolders"]["Folders"]["/ohif"]
    assert f"ohif-dist:{folder}:ro" in orthanc["volumes"]
    assert config["DicomWeb"]["Enable"] and config["DicomWeb"]["Root"] == "/dicom-web/"
    assert config["ServeFolders"]["Extensions"][""] == "text/html"
    assert orthanc["image"].startswith("jodogne/orthanc-plugins:")
    assert all(p.startswith("127.0.0.1:") for p in orthanc["ports"] if ":8042" in p)  # HTTP: this host only


def test_demo_pacs_serves_dicomweb_and_the_viewer_on_localhost(tmp_path_factory, tmp_path):
    import pytest

    viewer = ohif_dir()
    if viewer is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("OHIF or orthanc-dicomweb missing (bash .ci/install installs them)")
    sys.path.insert(0, str(DEPLOY / "demo"))
    try:
        from demo_config import demo_config
    finally:
        sys.path.pop(0)
    config = demo_config(tmp_path, viewer, 0, 0, 11112)
    assert config["RemoteAccessAllowed"] is False and config["DicomModalities"]["medversa"][1] == "127.0.0.1"
    keep = {k: config[k] for k in ("DicomWeb", "ServeFolders", "Plugins", "LuaScripts", "MedversaRouting",
                                   "UserMetadata", "DicomModalities")}
    server = orthanc_server(tmp_path_factory, extra_config=keep)
    try:
        with urllib.request.urlopen(server.url + "/ohif/viewer?StudyInstanceUIDs=1.2.3", timeout=10) as rsp:
            assert rsp.headers["Content-Type"].startswith("text/html") and b"/ohif/app-config.js" in rsp.read()
        with urllib.request.urlopen(server.url + "/dicom-web/studies", timeout=10) as rsp:
            assert rsp.status == 200
        assert "MedversaRouting" in server.log_text() or "autoroute" in server.log_text().lower()
    finally:
        server.stop(kill=True)

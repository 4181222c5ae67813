#!/usr/bin/env python3
"""Write the demonstration Orthanc configuration from deploy/orthanc/orthanc.json.

The production example is taken as it is (auto-routing, forwarded-instance mark, overwrite) and
changed for one machine: HTTP on localhost only without a password (RemoteAccessAllowed false),
storage under the demo folder, the node at 127.0.0.1, Debian's plugin paths, DICOMweb at
/dicom-web and OHIF (prepared by deploy/ohif/prepare_ohif.py) at /ohif, a short StableAge.

Usage: demo_config.py DEMO_DIR OHIF_DIR HTTP_PORT DICOM_PORT NODE_PORT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1]


def demo_config(demo: Path, ohif: Path, http_port: int, dicom_port: int, node_port: int) -> dict:
    text = "\n".join(line for line in (DEPLOY / "orthanc" / "orthanc.json").read_text().splitlines()
                     if not line.lstrip().startswith("//"))
    cfg = json.loads(text)
    cfg.update({
        "Name": "medversa-node demo PACS",
        "HttpPort": http_port, "DicomPort": dicom_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "RegisteredUsers": {},
        "StorageDirectory": str(demo / "orthanc-db"), "IndexDirectory": str(demo / "orthanc-db"),
        "DicomModalities": {"medversa": ["MEDVERSA", "127.0.0.1", node_port]},
        "LuaScripts": [str(DEPLOY / "orthanc" / "autoroute.lua")],
        "Plugins": [f"/usr/share/orthanc/plugins/{name}" for name in ("libOrthancDicomWeb.so", "libServeFolders.so")],
        "StableAge": 5,
        "SaveJobs": False,
    })
    cfg["DicomWeb"]["Enable"] = True
    cfg["ServeFolders"]["Folders"] = {"/ohif": str(ohif)}
    return cfg


def main(argv: list[str]) -> int:
    demo, ohif = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    cfg = demo_config(demo, ohif, int(argv[3]), int(argv[4]), int(argv[5]))
    (demo / "orthanc.json").write_text(json.dumps(cfg, indent=2))
    print(demo / "orthanc.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env bash
# One command, a local demonstration on this machine (after `bash .ci/install`):
#
#   bash deploy/demo/run.sh
#
# starts Orthanc as the PACS (DICOMweb at /dicom-web, the OHIF viewer at /ohif, the auto-routing
# script deploy/orthanc/autoroute.lua) and the node on its embedded default (`medversa serve`: no
# Redis, bundled demo model), sends the sample studies (deploy/demo/samples.py) into the PACS, which
# routes them to the node once they are stable; the node's results come back into the same studies.
# It prints the viewer's URLs and keeps running until Ctrl-C. HTTP listens on 127.0.0.1 only.
#
# Settings (environment): MEDVERSA_DEMO_DIR (build/demo), ORTHANC_HTTP_PORT (8042),
# ORTHANC_DICOM_PORT (4242), MEDVERSA_PORT (11112), MEDVERSA_DEMO_TIMEOUT (600 s to wait for results).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
DEMO=${MEDVERSA_DEMO_DIR:-$REPO/build/demo}
HTTP_PORT=${ORTHANC_HTTP_PORT:-8042}
DICOM_PORT=${ORTHANC_DICOM_PORT:-4242}
NODE_PORT=${MEDVERSA_PORT:-11112}
TIMEOUT=${MEDVERSA_DEMO_TIMEOUT:-600}
OHIF=$REPO/build/ohif/served
PY=$REPO/.venv/bin/python

[ -x "$PY" ] || { echo "run 'bash .ci/install' first (no .venv)"; exit 1; }
for f in /usr/sbin/Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so; do
  [ -e "$f" ] || { echo "$f is missing: run 'bash .ci/install' first"; exit 1; }
done
[ -f "$OHIF/viewer" ] || { echo "OHIF is not prepared in $OHIF: run 'bash .ci/install' first"; exit 1; }

mkdir -p "$DEMO"
"$PY" deploy/demo/demo_config.py "$DEMO" "$OHIF" "$HTTP_PORT" "$DICOM_PORT" "$NODE_PORT" >/dev/null
"$PY" deploy/demo/samples.py "$DEMO/samples" >/dev/null

PIDS=()
stop() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

/usr/sbin/Orthanc "$DEMO/orthanc.json" >"$DEMO/orthanc.log" 2>&1 &
PIDS+=($!)
MEDVERSA_SCP__BIND=127.0.0.1 "$REPO/.venv/bin/medversa" serve --port "$NODE_PORT" --data-dir "$DEMO/node" \
  --destination "ORTHANC@127.0.0.1:$DICOM_PORT" --pacs "ORTHANC@127.0.0.1:$DICOM_PORT" --idle-seconds 5 \
  >"$DEMO/node.log" 2>&1 &
PIDS+=($!)

"$PY" - "$HTTP_PORT" "$DEMO/samples" "$TIMEOUT" "$NODE_PORT" <<'PYEOF'
import json, socket, sys, time, urllib.request
from pathlib import Path

base = f"http://127.0.0.1:{sys.argv[1]}"
samples, timeout, node_port = Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])

def call(method, path, data=None, kind="application/json"):
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": kind})
    with urllib.request.urlopen(req, timeout=30) as rsp:
        return json.loads(rsp.read() or b"null")

deadline = time.monotonic() + 60
while True:
    try:
        call("GET", "/system"); break
    except OSError:
        if time.monotonic() > deadline: sys.exit("Orthanc did not start: see orthanc.log")
        time.sleep(0.5)
deadline = time.monotonic() + 120  # the node listens before the PACS routes anything to it
while True:
    try:
        socket.create_connection(("127.0.0.1", node_port), timeout=1).close(); break
    except OSError:
        if time.monotonic() > deadline: sys.exit("the node did not start: see node.log")
        time.sleep(0.5)
studies = set()
for path in sorted(samples.glob("*.dcm")):
    studies.add(call("POST", "/instances", path.read_bytes(), "application/dicom")["ParentStudy"])
print(f"sent {len(list(samples.glob('*.dcm')))} sample instances ({len(studies)} studies) to the PACS; "
      "it routes them to the node when they are stable", flush=True)
uids, done = {}, set()
deadline = time.monotonic() + timeout
while len(done) < len(studies) and time.monotonic() < deadline:
    for study in studies - done:
        info = call("GET", f"/studies/{study}")
        uids[study] = info["MainDicomTags"]["StudyInstanceUID"]
        series = [call("GET", f"/series/{s}")["MainDicomTags"] for s in info["Series"]]
        if any(s.get("Modality") == "SR" for s in series):
            done.add(study)
            print(f"results arrived for {info['MainDicomTags'].get('StudyDescription', study)}", flush=True)
    time.sleep(3)
if len(done) < len(studies):
    print("not every study has results yet (see node.log); the viewer shows what has arrived", flush=True)
print("\nmedversa-node demo (AI results are unverified; not for clinical use). Open in a browser:")
print(f"  study list:  {base}/ohif/viewer?StudyInstanceUIDs=" + ",".join(uids.values()))
for study, uid in uids.items():
    print(f"  study:       {base}/ohif/viewer?StudyInstanceUIDs={uid}")
print(f"  PACS (Orthanc Explorer): {base}/app/explorer.html\nCtrl-C stops the demo.", flush=True)
PYEOF
wait -n "${PIDS[@]}" || true

"""Our implementation reproduces the published implementation's outputs (tiny-official fixture)."""

import subprocess
import sys

from .conftest import TINY_OFFICIAL, need


def test_check_equivalence_reproduces_every_official_tensor():
    folder = need(TINY_OFFICIAL)
    result = subprocess.run([sys.executable, "-m", "medversa.cli", "model", "check-equivalence", str(folder)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("35/35 within tolerance")
    for name in ("cxr2d/det_box", "cxr2d/seg2d_logits", "ct3d/seg3d_logits_every8", "cxr2d/hidden_DET (generated)",
                 "ct3d/answer_logits", "cxr2d/visual_tokens"):
        assert any(line.startswith(name) and line.endswith("ok") for line in lines), name

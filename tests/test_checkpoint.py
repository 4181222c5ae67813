import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from medversa.inference import (
    Analyzer,
    ImageInput,
    Modality,
    Task,
    TaskRequest,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from medversa.inference.checkpoint import META_FILE, WEIGHTS_FILE, read_meta
from medversa.inference.generation import ForcedTokens

from .conftest import TINY_OFFICIAL, need


def _requests(rng):
    cxr = ImageInput(rng.integers(0, 256, (200, 180), dtype=np.uint8))
    ct = ImageInput(rng.normal(0, 100, (10, 40, 40)).astype(np.float32), volume=True)
    return [TaskRequest(Task.REPORT_FULL, Modality.CXR, [cxr]),
            TaskRequest(Task.CHEST_ORGAN_SEGMENTATION, Modality.CXR, [cxr], targets=("heart",)),
            TaskRequest(Task.ABDOMINAL_ORGAN_SEGMENTATION, Modality.CT, [ct], targets=("liver",))]


def _answers(analyzer, rng):
    reqs = _requests(rng)
    text = analyzer.run(reqs[:1])[0].text
    seg = analyzer.run([reqs[1]], choose=ForcedTokens([analyzer.tokenizer.encode("heart <DET> <2DSEG>.###")]))[0]
    ct = analyzer.run([reqs[2]], choose=ForcedTokens([analyzer.tokenizer.encode("liver <3DSEG>.###")]))[0]
    return text, seg.boxes[0], seg.masks_2d[0].mask, ct.masks_3d[0].mask


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    model, tok = build_model("tiny")
    save_checkpoint(model, tok, tmp_path / "ckpt")
    before = Analyzer(model, tok, device="cpu", max_new_tokens=16)
    after = Analyzer.from_checkpoint(tmp_path / "ckpt", device="cpu", max_new_tokens=16)
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name]), name
    a, b = _answers(before, np.random.default_rng(0)), _answers(after, np.random.default_rng(0))
    assert a[0] == b[0]
    assert (a[1].x0, a[1].y0, a[1].x1, a[1].y1) == (b[1].x0, b[1].y0, b[1].x1, b[1].y1)
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])


def test_checkpoint_records_its_weights_identity(tmp_path):
    model, tok = build_model("tiny")
    save_checkpoint(model, tok, tmp_path / "a")
    meta = read_meta(tmp_path / "a")
    assert meta["preset"] == "tiny" and len(meta["weights_sha256"]) == 64
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(model, tok, tmp_path / "b")
    assert read_meta(tmp_path / "b")["weights_sha256"] != meta["weights_sha256"]


def test_loading_a_checkpoint_missing_a_weight_fails_and_names_it(tmp_path):
    model, tok = build_model("tiny")
    folder = save_checkpoint(model, tok, tmp_path / "ckpt")
    state = load_file(folder / WEIGHTS_FILE)
    del state["det_head.4.weight"]
    save_file(state, str(folder / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="det_head.4.weight"):
        load_checkpoint(folder)


def test_a_folder_without_metadata_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_checkpoint(tmp_path)


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    model, tok = build_model("tiny")
    full = save_checkpoint(model, tok, tmp_path / "fp32")
    half = save_checkpoint(model, tok, tmp_path / "fp16", dtype="float16")
    assert (half / WEIGHTS_FILE).stat().st_size < 0.6 * (full / WEIGHTS_FILE).stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert json.loads((half / META_FILE).read_text())["stored_dtype"] == "float16"


def test_official_weights_load_onto_a_meta_built_model():
    """The published loader works without first initialising random weights (assign=True)."""
    from accelerate import init_empty_weights

    from medversa.inference import MedVersaModel
    from medversa.inference.equivalence import config_from_fixture, load_fixture_model
    from medversa.inference.official import load_official_state_dict

    folder = need(TINY_OFFICIAL)
    reference, fixture = load_fixture_model(folder)
    with init_empty_weights(include_buffers=False):
        empty = MedVersaModel(config_from_fixture(fixture))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(folder / "model.safetensors").items()}
    load_official_state_dict(empty, state, assign=True)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, empty.state_dict()[name]), name

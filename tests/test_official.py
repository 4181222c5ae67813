import subprocess
import sys

import pytest
import torch

from medversa.inference import MedVersaModel, create_config
from medversa.inference.official import (
    OfficialCheckpointError,
    check_mapping,
    load_official_state_dict,
    map_official_key,
    read_key_list,
)

from .conftest import OFFICIAL_TSV, need


@pytest.mark.parametrize(
    "official, ours, kind",
    [
        ("visual_encoder_2d.encoder.layers.2.blocks.5.attention.self.query.weight",
         "encoder_2d.encoder.layers.2.blocks.5.attention.q_proj.weight", "param"),
        ("visual_encoder_2d.encoder.layers.0.blocks.1.intermediate.dense.bias",
         "encoder_2d.encoder.layers.0.blocks.1.mlp.fc1.bias", "param"),
        ("visual_encoder_2d.encoder.layers.0.blocks.0.attention.self.relative_position_index",
         "encoder_2d.encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_index", "derived"),
        ("llama_model.base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
         "llm.base_model.model.model.layers.7.self_attn.q_proj.lora_A.default.weight", "param"),
        ("llama_model.base_model.model.model.layers.7.self_attn.v_proj.weight",
         "llm.base_model.model.model.layers.7.self_attn.v_proj.base_layer.weight", "param"),
        ("llama_model.base_model.model.model.layers.7.self_attn.k_proj.weight",
         "llm.base_model.model.model.layers.7.self_attn.k_proj.weight", "param"),
        ("llama_model.base_model.model.model.layers.3.self_attn.rotary_emb.inv_freq",
         "llm.base_model.model.model.rotary_emb.inv_freq", "derived"),
        ("llama_model.base_model.model.lm_head.0.weight", "llm.base_model.model.lm_head.weight", "param"),
        ("embed_tokens.weight", "llm.base_model.model.model.embed_tokens.weight", "alias"),
        ("text2seg_2d_gn.weight", "seg_2d_norm.weight", "param"),
        ("text2seg_3d.1.weight", "seg_3d_text.1.weight", "param"),
        ("model_seg_2d.decoder.blocks.0.conv1.0.weight", "seg_2d.decoder.blocks.0.conv1.0.weight", "param"),
    ],
)
def test_published_keys_map_to_our_modules(official, ours, kind):
    target = map_official_key(official)
    assert (target.name, target.kind) == (ours, kind)


def test_a_key_of_no_known_module_is_an_error():
    with pytest.raises(KeyError, match="no known MedOmni module"):
        map_official_key("visual_encoder_4d.weight")


def test_every_published_key_maps_with_equal_shape():
    rows = read_key_list(need(OFFICIAL_TSV))
    with torch.device("meta"):
        model = MedVersaModel(create_config("medversa-7b"))
    report = check_mapping(model, rows)
    assert report.ok, report.errors()
    assert report.mapped == report.total == 1098


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "medversa.cli", *args], capture_output=True, text=True, timeout=300)


def test_check_official_passes_on_the_reference_list():
    result = _cli("model", "check-official", str(need(OFFICIAL_TSV)))
    assert result.returncode == 0, result.stderr
    assert "mapped 1098/1098 keys" in result.stdout


def test_check_official_fails_when_one_key_is_removed(tmp_path):
    lines = need(OFFICIAL_TSV).read_text().splitlines()
    removed = [line for line in lines if line.startswith("text_det.4.weight")]
    assert removed
    copy = tmp_path / "one-missing.tsv"
    copy.write_text("\n".join(line for line in lines if line not in removed) + "\n")
    result = _cli("model", "check-official", str(copy))
    assert result.returncode == 1
    assert "mapped 1097/1097 keys" in result.stdout
    assert "det_head.4.weight" in result.stderr  # the parameter left unfilled is named


def test_check_official_fails_on_a_wrong_shape(tmp_path):
    lines = need(OFFICIAL_TSV).read_text().splitlines()
    bad = [line.replace("256x4096", "128x4096") if line.startswith("text_det.1.weight") else line for line in lines]
    copy = tmp_path / "bad-shape.tsv"
    copy.write_text("\n".join(bad) + "\n")
    result = _cli("model", "check-official", str(copy))
    assert result.returncode == 1
    assert "text_det.1.weight" in result.stderr


def test_loader_refuses_a_state_dict_with_a_missing_key():
    model = MedVersaModel(create_config("tiny"))
    with pytest.raises(OfficialCheckpointError, match="no published key fills"):
        load_official_state_dict(model, {"text_det.0.weight": torch.ones(64)})


def test_loader_refuses_unknown_keys_by_name():
    model = MedVersaModel(create_config("tiny"))
    with pytest.raises(OfficialCheckpointError, match="visual_encoder_9d.w"):
        load_official_state_dict(model, {"visual_encoder_9d.w": torch.ones(1)})

import json
import time

import pytest
import torch

from medversa.inference import MedVersaConfig, MedVersaModel, create_config
from medversa.inference.presets import list_presets


def test_presets_are_registered():
    assert {"tiny", "demo", "medversa-7b"} <= set(list_presets())


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="known presets"):
        create_config("gpt-5")


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_serialises_to_json_and_back(name, tmp_path):
    config = create_config(name)
    config.save(tmp_path / "config.json")
    again = MedVersaConfig.from_json(tmp_path / "config.json")
    assert again == config
    assert json.loads(again.to_json()) == json.loads(config.to_json())


def test_unknown_config_key_is_rejected_with_its_name():
    data = create_config("tiny").to_dict()
    data["llm"]["hiden_size"] = 3
    with pytest.raises(ValueError, match="hiden_size"):
        MedVersaConfig.from_dict(data)


def test_tiny_is_small_and_builds_in_a_second():
    t0 = time.perf_counter()
    model = MedVersaModel(create_config("tiny"))
    elapsed = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    assert n < 20_000_000
    assert elapsed < 5.0  # generous for a loaded CI machine; typically ~0.5 s


def test_medversa_7b_matches_the_published_parameter_count():
    # shared/reference/README.md: 6,867,437,838 unique parameters in MedOmni.
    with torch.device("meta"):
        model = MedVersaModel(create_config("medversa-7b"))
    assert sum(p.numel() for p in model.parameters()) == 6_867_437_838
    cfg = model.config
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (
        16, 16, 0.1, ("q_proj", "v_proj"))
    assert cfg.encoder_2d.out_channels == 1024 and cfg.encoder_3d.base_channels == 32
    assert cfg.num_visual_tokens == 9 and cfg.llm.hidden_size == 4096

"""What each room exports to the others (ARCHITECTURE.md: "each room exports what others use
from its package"), that the exports import cheaply, and the typed model loader."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from medversa.inference import Analyzer, load_analyzer, model_identity, save_checkpoint

ROOMS = ("inference", "dicom_mapping", "node", "training")


@pytest.mark.parametrize("room", ROOMS)
def test_every_exported_name_resolves_and_is_listed_once(room: str) -> None:
    package = importlib.import_module(f"medversa.{room}")
    assert len(package.__all__) == len(set(package.__all__))
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []
    assert set(package.__all__) <= set(dir(package))


def test_a_name_the_package_does_not_export_is_an_attribute_error() -> None:
    import medversa.dicom_mapping
    import medversa.inference

    for package in (medversa.inference, medversa.dicom_mapping):
        with pytest.raises(AttributeError, match="no_such_name"):
            package.no_such_name  # noqa: B018


@pytest.mark.parametrize("package, heavy", [("medversa.inference", "torch"), ("medversa.dicom_mapping", "highdicom"),
                                            ("medversa.dicom_mapping", "torch")])
def test_importing_a_rooms_package_does_not_load_what_only_running_needs(package: str, heavy: str) -> None:
    """The SCP and the command line import the packages; torch and highdicom load when a model
    runs or a result object is built, as they did when each module was imported on its own."""
    code = f"import sys, {package}; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_load_analyzer_builds_a_preset_with_random_weights_and_says_so(caplog) -> None:
    with caplog.at_level("WARNING", logger="medversa.inference.bundled"):
        analyzer = load_analyzer(preset="tiny", device="cpu", max_new_tokens=7)
    assert isinstance(analyzer, Analyzer)
    assert analyzer.max_new_tokens == 7 and analyzer.device.type == "cpu"
    assert model_identity(analyzer) == "random-tiny"
    assert "RANDOM weights" in caplog.text


def test_load_analyzer_reads_a_checkpoint_folder_before_a_preset(tmp_path) -> None:
    torch.manual_seed(0)
    fresh = load_analyzer(preset="tiny", device="cpu")
    save_checkpoint(fresh.model, fresh.tokenizer, tmp_path / "ckpt")
    loaded = load_analyzer(str(tmp_path / "ckpt"), preset="tiny", device="cpu")
    assert len(model_identity(loaded)) == 64  # the checkpoint's weights SHA-256, not the preset marker
    for name, tensor in fresh.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name


def test_load_analyzer_refuses_a_folder_that_is_not_a_checkpoint(tmp_path) -> None:
    with pytest.raises((FileNotFoundError, ValueError)):
        load_analyzer(tmp_path, device="cpu")


def test_load_analyzer_takes_the_preset_and_device_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        load_analyzer(None, "tiny")  # type: ignore[misc]

"""Checkpoint folders: ``config.json``, ``model.safetensors``, tokenizer files.

Our own format (the training package writes it, the node loads it), plus the
converter from the published checkpoint. Parameters are created on the meta
device and filled by ``load_state_dict(assign=True)``, so loading a 7B model
never initialises 7B random weights first. A checkpoint's identity
(``weights_sha256`` in ``medversa-checkpoint.json``) changes whenever its weights
do; DICOM results use it to derive the algorithm's device UID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file

from .model import DTYPES, MedVersaModel
from .model_config import MedVersaConfig
from .official import load_official_state_dict
from .presets import create_config
from .tokenizer import MedVersaTokenizer

LOGGER = logging.getLogger(__name__)

FORMAT = "medversa-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "medversa-checkpoint.json"


def build_model(preset_or_config: str | MedVersaConfig) -> tuple[MedVersaModel, MedVersaTokenizer]:
    """A freshly initialised model and its tokenizer (random weights unless pretrained paths are set)."""
    config = create_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    tokenizer = MedVersaTokenizer.from_path(config.tokenizer_path)
    if len(tokenizer) != config.llm.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, config vocab_size is {config.llm.vocab_size}")
    return MedVersaModel(config), tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: MedVersaModel,
    tokenizer: MedVersaTokenizer,
    folder: str | Path,
    dtype: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``folder`` (created if needed). ``dtype`` stores floats as e.g. float16 to save space."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(model.config, tokenizer_path=None)
    # Pretrained weights are inside the checkpoint now; loading must not look for them again.
    config.llm.pretrained_path = None
    config.encoder_2d.pretrained_path = None
    config.seg_2d.pretrained_path = None
    config.save(folder / CONFIG_FILE)
    state = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        if dtype and t.is_floating_point():
            t = t.to(DTYPES[dtype])
        state[name] = t.contiguous()
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    tokenizer.save(folder)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": model.config.name,
        "stored_dtype": dtype or "as-model",
        "weights_sha256": _sha256(folder / WEIGHTS_FILE),
        **(extra or {}),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a MedVersa checkpoint folder (no {META_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')} v{meta.get('format_version')}")
    return meta


def _empty_model(config: MedVersaConfig) -> MedVersaModel:
    """Parameters on the meta device, buffers real (rotary frequencies, Swin indices)."""
    with init_empty_weights(include_buffers=False):
        return MedVersaModel(config)


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[MedVersaModel, MedVersaTokenizer]:
    """Load a checkpoint folder strictly: every weight present, no weight left over."""
    folder = Path(folder)
    read_meta(folder)
    config = MedVersaConfig.from_json(folder / CONFIG_FILE)
    tokenizer = MedVersaTokenizer.from_path(folder)
    model = _empty_model(config)
    state = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    own = model.state_dict()
    for key in list(state):
        # Fresh allocations: tensors straight out of the file can be misaligned, which
        # changes CPU kernel paths and the last bits of the results.
        value = state.pop(key)
        if key in own and value.is_floating_point():
            value = value.to(own[key].dtype)
        state[key] = value.clone()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {folder} does not fit its config: missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}"
        )
    return model.to(device).eval(), tokenizer


def convert_official(
    weights: str | Path, tokenizer_path: str | Path, out: str | Path, config: MedVersaConfig | None = None
) -> Path:
    """Published ``pytorch_model.bin`` (+ a local Llama-2 tokenizer folder) -> our checkpoint folder."""
    config = config or create_config("medversa-7b")
    config = dataclasses.replace(config, tokenizer_path=str(tokenizer_path))
    tokenizer = MedVersaTokenizer.from_path(tokenizer_path)
    if len(tokenizer) != config.llm.vocab_size:
        raise ValueError(f"tokenizer at {tokenizer_path} has {len(tokenizer)} tokens, expected {config.llm.vocab_size}")
    state = torch.load(str(weights), map_location="cpu", weights_only=True, mmap=True)
    model = _empty_model(config)
    load_official_state_dict(model, state, config.lora.target_modules, assign=True)
    return save_checkpoint(model, tokenizer, out, extra={"converted_from": str(weights)})

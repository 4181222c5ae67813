"""The published MedVersa checkpoint: key mapping and strict loading.

The published ``pytorch_model.bin`` is ``MedOmni.state_dict()`` (medomni.py at
3clyp50/MedVersa_Internal@271a223, transformers 4.28.1, peft 0.2.0); its key list
is ``shared/reference/medversa-official-state-dict.tsv``. :func:`map_official_key`
is a pure function from one published key to its place in our
:class:`~medversa.inference.model.MedVersaModel`. Every key has exactly one
place, of one of three kinds:

``param``
    copied into our parameter of the same shape;
``alias``
    ``embed_tokens.weight`` / ``embed_states.weight`` are the LLM's input and
    output embeddings again (the same tensors in MedOmni); they must equal them;
``derived``
    buffers our libraries compute instead of storing (per-layer rotary
    ``inv_freq`` in transformers 4.28, Swin ``relative_position_index``); they
    must equal what we compute.

The published loader used ``load_state_dict(strict=False)``; ours refuses any
missing, unexpected or mis-shaped key and lists them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Kind = Literal["param", "alias", "derived"]

_LLM_OFFICIAL = "llama_model.base_model.model."

# Swin renames between transformers 4.28 (published) and 5.x (ours).
_SWIN_RENAMES = (
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".attention.self.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table"),
    (".attention.self.relative_position_index", ".attention.relative_position_bias.relative_position_index"),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)

_PREFIXES = (
    ("visual_encoder_3d.", "encoder_3d."),
    ("ln_vision_2d.", "adapter_2d.norm."),
    ("ln_vision_3d.", "adapter_3d.norm."),
    ("llama_proj_2d.", "adapter_2d.proj."),
    ("llama_proj_3d.", "adapter_3d.proj."),
    ("text_det.", "det_head."),
    ("model_seg_2d.", "seg_2d."),
    ("text2seg_2d_ln.", "seg_2d_text_ln."),
    ("text2seg_2d_gn.", "seg_2d_norm."),
    ("text2seg_2d.", "seg_2d_text."),
    ("text2seg_3d_ln.", "seg_3d_text_ln."),
    ("text2seg_3d_gn.", "seg_3d_norm."),
    ("text2seg_3d.", "seg_3d_text."),
)

_ROTARY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_LORA = re.compile(r"^(.*\.(?:q_proj|v_proj|k_proj|o_proj))\.(weight|bias|lora_A\.weight|lora_B\.weight)$")


@dataclass(frozen=True)
class Target:
    """Where one published key goes in our model."""

    name: str
    kind: Kind


def map_official_key(key: str, lora_targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Target:
    """Map one published state-dict key to our parameter/buffer name.

    Raises
    ------
    KeyError
        If the key belongs to no known part of MedOmni.
    """
    if key == "embed_tokens.weight":
        return Target("llm.base_model.model.model.embed_tokens.weight", "alias")
    if key == "embed_states.weight":
        return Target("llm.base_model.model.lm_head.weight", "alias")
    if key.startswith("visual_encoder_2d."):
        name = "encoder_2d." + key[len("visual_encoder_2d."):]
        for old, new in _SWIN_RENAMES:
            name = name.replace(old, new)
        kind: Kind = "derived" if name.endswith("relative_position_index") else "param"
        return Target(name, kind)
    if key.startswith(_LLM_OFFICIAL):
        rest = key[len(_LLM_OFFICIAL):]
        if rest == "lm_head.0.weight":  # CastOutputToFloat(nn.Sequential) wrapper
            return Target("llm.base_model.model.lm_head.weight", "param")
        if _ROTARY.match(rest):
            return Target("llm.base_model.model.model.rotary_emb.inv_freq", "derived")
        match = _LORA.match(rest)
        if match and match.group(1).rsplit(".", 1)[1] in lora_targets:
            module, leaf = match.groups()
            if leaf.startswith("lora_"):
                leaf = leaf.replace(".weight", ".default.weight")  # peft >= 0.3 adapter name
            else:
                leaf = "base_layer." + leaf
            return Target(f"llm.base_model.model.{module}.{leaf}", "param")
        return Target("llm.base_model.model." + rest, "param")
    for old, new in _PREFIXES:
        if key.startswith(old):
            return Target(new + key[len(old):], "param")
    raise KeyError(f"published key {key!r} belongs to no known MedOmni module")


@dataclass
class KeyRow:
    key: str
    shape: tuple[int, ...]
    dtype: str


def read_key_list(path: str | Path) -> list[KeyRow]:
    """Read ``medversa-official-state-dict.tsv`` (columns key, shape, dtype)."""
    rows: list[KeyRow] = []
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].split("\t")[:2] != ["key", "shape"]:
        raise ValueError(f"{path}: expected a header 'key<TAB>shape<TAB>dtype'")
    for n, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected key<TAB>shape, got {line!r}")
        shape = tuple(int(d) for d in parts[1].split("x")) if parts[1] else ()
        rows.append(KeyRow(parts[0], shape, parts[2] if len(parts) > 2 else ""))
    return rows


@dataclass
class MappingReport:
    mapped: int
    total: int
    unknown: list[str]
    missing_in_model: list[str]
    shape_mismatch: list[str]
    unfilled: list[str]

    @property
    def ok(self) -> bool:
        return not (self.unknown or self.missing_in_model or self.shape_mismatch or self.unfilled)

    def errors(self) -> str:
        parts = []
        for label, keys in (
            ("published keys with no place in our model", self.unknown),
            ("published keys whose target our model lacks", self.missing_in_model),
            ("shape mismatches", self.shape_mismatch),
            ("our parameters no published key fills", self.unfilled),
        ):
            if keys:
                parts.append(f"{label} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        return "; ".join(parts)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and all buffers (persistent or not) by name."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return tensors


def check_mapping(
    model: nn.Module, rows: list[KeyRow], lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> MappingReport:
    """Map every published key onto ``model`` and compare shapes; list every problem."""
    tensors = _model_tensors(model)
    params = dict(model.named_parameters())
    unknown, missing, mismatch = [], [], []
    filled: set[str] = set()
    mapped = 0
    for row in rows:
        try:
            target = map_official_key(row.key, lora_targets)
        except KeyError:
            unknown.append(row.key)
            continue
        ours = tensors.get(target.name)
        if ours is None:
            missing.append(f"{row.key} -> {target.name}")
            continue
        # Derived buffers may be laid out flat on our side (Swin's index is [49*49]).
        fits = ours.numel() == _numel(row.shape) if target.kind == "derived" else tuple(ours.shape) == row.shape
        if not fits:
            mismatch.append(f"{row.key} {row.shape} vs {target.name} {tuple(ours.shape)}")
            continue
        if target.kind == "param":
            filled.add(target.name)
        mapped += 1
    unfilled = sorted(set(params) - filled)
    return MappingReport(mapped, len(rows), unknown, missing, mismatch, unfilled)


class OfficialCheckpointError(ValueError):
    pass


def load_official_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj"),
    assign: bool = False,
) -> MappingReport:
    """Load a published state dict into ``model`` strictly.

    Parameters are cast to the model's dtypes and loaded with
    ``load_state_dict(strict=True)`` (``assign=True`` for a model built on the
    meta device); aliases and derived buffers are checked for equality
    (flattened). Raises :class:`OfficialCheckpointError` listing every key that
    does not fit.
    """
    rows = [KeyRow(k, tuple(v.shape), str(v.dtype)) for k, v in state.items()]
    report = check_mapping(model, rows, lora_targets)
    if not report.ok:
        raise OfficialCheckpointError(report.errors())
    params = dict(model.named_parameters())
    converted: dict[str, torch.Tensor] = {}
    checks: list[tuple[str, Target, torch.Tensor]] = []
    for key, value in state.items():
        target = map_official_key(key, lora_targets)
        if target.kind == "param":
            converted[target.name] = value.to(params[target.name].dtype)
        else:
            checks.append((key, target, value))
    model.load_state_dict(converted, strict=True, assign=assign)
    tensors = _model_tensors(model)
    bad = []
    with torch.no_grad():
        for key, target, value in checks:
            ours = tensors[target.name].reshape(-1)
            value = value.reshape(-1)
            if value.is_floating_point():
                same = torch.allclose(ours.float(), value.float(), rtol=1e-3, atol=1e-6)
            else:
                same = torch.equal(ours, value.to(ours.dtype))
            if not same:
                bad.append(f"{key} differs from {target.name}")
    if bad:
        raise OfficialCheckpointError("aliases/derived buffers that disagree: " + ", ".join(bad[:20]))
    return report

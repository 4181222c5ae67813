"""Numerical equivalence with the published implementation (``tiny-official`` fixture).

``shared/reference/tiny-official/`` holds a tiny, randomly initialised official
MedOmni (weights under the published key names), its inputs and the tensors the
official code computed. :func:`run_equivalence` builds our model from that
config, loads the weights through the published-checkpoint loader and recomputes
every expected tensor along our own code paths (encoders and adapters, prompt
embedding, the LLM, the task-token states from our cached generation loop, the
detection head and both segmentation modules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .generation import ForcedTokens, generate
from .model import MedVersaModel
from .model_config import (
    Encoder2DConfig,
    Encoder3DConfig,
    LLMConfig,
    LoRASettings,
    MedVersaConfig,
    Seg2DConfig,
)
from .official import load_official_state_dict
from .prompting import embed_with_images
from .tokenizer import MedVersaTokenizer

ATOL = 1e-4
RTOL = 1e-4


def config_from_fixture(fixture: dict) -> MedVersaConfig:
    """Our config for the fixture's ``config.json`` (sizes passed through the official configs)."""
    llama, swin, lora = fixture["llama_config"], fixture["swin_config"], fixture["lora"]
    return MedVersaConfig(
        name="tiny-official",
        llm=LLMConfig(
            vocab_size=fixture["vocab_size_after_resize"],
            hidden_size=llama["hidden_size"],
            intermediate_size=llama["intermediate_size"],
            num_hidden_layers=llama["num_hidden_layers"],
            num_attention_heads=llama["num_attention_heads"],
            max_position_embeddings=llama["max_position_embeddings"],
            rms_norm_eps=llama["rms_norm_eps"],
            dtype="float32",
        ),
        encoder_2d=Encoder2DConfig(
            image_size=swin["image_size"],
            patch_size=swin["patch_size"],
            embed_dim=swin["embed_dim"],
            depths=tuple(swin["depths"]),
            num_heads=tuple(swin["num_heads"]),
            window_size=swin["window_size"],
            mlp_ratio=swin["mlp_ratio"],
            layer_norm_eps=swin["layer_norm_eps"],
        ),
        encoder_3d=Encoder3DConfig(base_channels=32, num_groups=16),
        seg_2d=Seg2DConfig(),
        lora=LoRASettings(r=lora["r"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"],
                          target_modules=tuple(lora["target_modules"])),
    )


class _IdsOnlyTokenizer(MedVersaTokenizer):
    """The fixture gives token ids, not a tokenizer: enough for generation's stop check."""

    def __init__(self, special: dict[str, int]) -> None:  # noqa: D107 - no HF tokenizer here
        from .tokenizer import SpecialIds

        self.hf = None  # type: ignore[assignment]
        self.ids = SpecialIds(
            image=special["<ImageHere>"], det=special["<DET>"], seg2d=special["<2DSEG>"],
            seg3d=special["<3DSEG>"], na=special["<N/A>"], bos=special["<s>"],
        )

    def decode(self, ids: list[int]) -> str:
        return ""


@dataclass
class Comparison:
    name: str
    max_abs_diff: float
    ok: bool
    note: str = ""


def load_fixture_model(folder: Path) -> tuple[MedVersaModel, dict]:
    fixture = json.loads((folder / "config.json").read_text())
    torch.manual_seed(0)
    model = MedVersaModel(config_from_fixture(fixture))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(folder / "model.safetensors").items()}
    load_official_state_dict(model, state)
    return model.eval(), fixture


def _compare(name: str, got: torch.Tensor, expected: torch.Tensor) -> Comparison:
    got, expected = got.detach().double().reshape(expected.shape), expected.double()
    diff = float((got - expected).abs().max()) if expected.numel() else 0.0
    ok = bool(torch.allclose(got, expected, atol=ATOL, rtol=RTOL))
    return Comparison(name, diff, ok)


def _stats_comparisons(name: str, logits: torch.Tensor, expected: torch.Tensor) -> list[Comparison]:
    """The fixture's float64 statistics of the full 3D logits, with cases.json tolerances."""
    x = logits.double().flatten()
    w = (torch.arange(x.numel(), dtype=torch.float64) % 7) - 3
    ours = [x.sum(), x.mean(), x.std(), x.min(), x.max(), (x * x).sum(), (x * w).sum(), (x > 0).sum().double()]
    labels = ["sum", "mean", "std", "min", "max", "sum_of_squares", "sum(x*w)", "count(x>0)"]
    out = []
    for i, (label, value) in enumerate(zip(labels, ours, strict=False)):
        ref = float(expected[i])
        diff = abs(float(value) - ref)
        if label == "sum(x*w)":
            ok = diff <= 1.0
        elif label == "count(x>0)":
            ok = diff <= 100
        else:
            ok = diff <= 1e-4 * abs(ref) + 1e-12
        out.append(Comparison(f"{name}[{label}]", diff, ok))
    return out


@torch.inference_mode()
def run_equivalence(folder: str | Path) -> list[Comparison]:
    """Recompute every expected tensor of the fixture; one :class:`Comparison` each."""
    folder = Path(folder)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, fixture = load_fixture_model(folder)
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "expected.safetensors")
    tokenizer = _IdsOnlyTokenizer(fixture["special_tokens"])
    results: list[Comparison] = []
    for case in cases:
        name = case["name"]
        exp = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith(name + "/")}
        image = inputs[case["input_tensor"]].float()
        volumetric = case["modal"] == "ct"
        feats3d: list[torch.Tensor] = []
        if volumetric:
            tokens, feats3d = model.encode_3d(image.unsqueeze(0))
            pooled = model.adapter_3d.pool(feats3d[-1])[0]
            results.append(_compare(f"{name}/pooled_tokens_before_ln_vision_3d", pooled,
                                    exp["pooled_tokens_before_ln_vision_3d"]))
        else:
            tokens = model.encode_2d(image)
            swin = model.encoder_2d(pixel_values=image).last_hidden_state[0]
            results.append(_compare(f"{name}/swin_last_hidden_state", swin, exp["swin_last_hidden_state"]))
            grid = model.config.encoder_2d.grid
            fmap = swin.T.reshape(1, -1, grid, grid)
            results.append(_compare(f"{name}/pooled_tokens_before_ln_vision_2d", model.adapter_2d.pool(fmap)[0],
                                    exp["pooled_tokens_before_ln_vision_2d"]))
        results.append(_compare(f"{name}/visual_tokens", tokens[0], exp["visual_tokens"]))

        # Teacher-forced pass over prompt + answer.
        ids = torch.tensor(case["input_ids_with_image_placeholders"])
        embeds = embed_with_images(model.embed_ids, ids, tokenizer.ids.image, tokens)
        results.append(_compare(f"{name}/inputs_embeds", embeds, exp["inputs_embeds"]))
        lm = model.causal_lm
        out = lm.model(inputs_embeds=embeds[None], output_hidden_states=True)
        hidden = torch.stack([h[0] for h in out.hidden_states])
        results.append(_compare(f"{name}/hidden_states", hidden, exp["hidden_states"]))
        t_prompt, t_total = case["T_prompt"], case["T_total"]
        logits = lm.lm_head(out.last_hidden_state[0, t_prompt - 1:t_total - 1]).float()
        results.append(_compare(f"{name}/answer_logits", logits, exp["answer_logits"]))
        loss = F.cross_entropy(logits, torch.tensor(case["answer_ids"]))
        results.append(_compare(f"{name}/loss", loss.reshape(1), exp["loss"]))

        # The same answer through the cached generation loop: task states must match.
        gen = generate(model, tokenizer, [embeds[:t_prompt]], len(case["answer_ids"]),
                       choose=ForcedTokens([case["answer_ids"]]), end_sym=None)[0]
        states = {tokenizer.task_token_ids[s.token_id]: s.hidden for s in gen.task_states}
        for token, positions in case["special_token_positions"].items():
            tag = f"<{token}>"
            teacher = out.last_hidden_state[0, positions[0]]
            results.append(_compare(f"{name}/hidden_{token} (teacher-forced)", teacher, exp[f"hidden_{token}"]))
            results.append(_compare(f"{name}/hidden_{token} (generated)", states[tag], exp[f"hidden_{token}"]))
        if "<DET>" in states:
            results.append(_compare(f"{name}/det_box", model.detect(states["<DET>"][None])[0], exp["det_box"]))
        if "<2DSEG>" in states:
            h = states["<2DSEG>"][None]
            results.append(_compare(f"{name}/seg2d_text_states", model.seg_2d_text(h)[0], exp["seg2d_text_states"]))
            seg = model.segment_2d(image[0], h)[0]
            results.append(_compare(f"{name}/seg2d_logits", seg, exp["seg2d_logits"]))
        if "<3DSEG>" in states:
            h = states["<3DSEG>"][None]
            results.append(_compare(f"{name}/seg3d_text_states", model.seg_3d_text(h)[0], exp["seg3d_text_states"]))
            seg = model.segment_3d(feats3d, h)[0]
            d = [0, 21, 42, 63]
            results.append(_compare(f"{name}/seg3d_logits_axial_slices", seg[d], exp["seg3d_logits_axial_slices"]))
            results.append(_compare(f"{name}/seg3d_logits_coronal_h96", seg[:, 96, :], exp["seg3d_logits_coronal_h96"]))
            results.append(_compare(f"{name}/seg3d_logits_sagittal_w96", seg[:, :, 96],
                                    exp["seg3d_logits_sagittal_w96"]))
            results.append(_compare(f"{name}/seg3d_logits_every8", seg[::8, ::8, ::8], exp["seg3d_logits_every8"]))
            results.extend(_stats_comparisons(f"{name}/seg3d_logits_stats", seg, exp["seg3d_logits_stats"]))
    return results


def format_report(results: list[Comparison]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{r.name:<{width}}  max|diff| {r.max_abs_diff:.3e}  {'ok' if r.ok else 'FAIL'}" for r in results]
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed}/{len(results)} within tolerance (atol {ATOL}, rtol {RTOL})")
    return "\n".join(lines)



"""The MedVersa model: encoders, adapters, the LLM orchestrator and vision modules.

Structure follows the paper (Methods, Figs. 6-7) and the published ``MedOmni``
(medomni/models/medomni.py): a Swin 2D encoder and a 3D UNet encoder give
feature maps that two adapters (adaptive average pooling to 9 tokens,
LayerNorm, Linear) project into the LLM's embedding space; a Llama LLM with LoRA
reads them with the request and emits text and task tokens; the last-layer
hidden state of each ``<DET>``, ``<2DSEG>``, ``<3DSEG>`` drives a detection
head, a 2D UNet or the 3D UNet's decoder.

Module names are ours; :mod:`medversa.inference.official` maps the published
checkpoint's keys onto them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, SwinConfig, SwinModel

from .model_config import MedVersaConfig
from .unet2d import ResNetUNet2d
from .unet3d import UNet3d

LOGGER = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class VisualAdapter(nn.Module):
    """Adaptive average pooling to ``side*side`` tokens, LayerNorm, Linear (paper Fig. 6b)."""

    def __init__(self, in_channels: int, out_channels: int, side: int, volumetric: bool) -> None:
        super().__init__()
        self.side = side
        self.volumetric = volumetric
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, out_channels)

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """[B, C, (D,) H, W] -> [B, side*side, C]."""
        if self.volumetric:
            pooled = F.adaptive_avg_pool3d(feature_map, (1, self.side, self.side))
        else:
            pooled = F.adaptive_avg_pool2d(feature_map, (self.side, self.side))
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.pool(feature_map)))


class DetectionHead(nn.Sequential):
    """LN, Linear, ReLU, LN, Linear -> 4 normalised x0, y0, x1, y1 (paper Fig. 7a)."""

    def __init__(self, hidden: int, width: int = 256) -> None:
        super().__init__(
            nn.LayerNorm(hidden),
            nn.Linear(hidden, width),
            nn.ReLU(inplace=True),
            nn.LayerNorm(width),
            nn.Linear(width, 4),
        )


class TaskProjection(nn.Sequential):
    """LN, Linear: a task token's hidden state -> the segmentation bottleneck width."""

    def __init__(self, hidden: int, channels: int) -> None:
        super().__init__(nn.LayerNorm(hidden), nn.Linear(hidden, channels))


def build_llm(config: MedVersaConfig) -> nn.Module:
    """Llama from its config (or a local folder), resized to our vocabulary, LoRA through peft."""
    c = config.llm
    dtype = DTYPES[c.dtype]
    if c.pretrained_path:
        llm = LlamaForCausalLM.from_pretrained(c.pretrained_path, local_files_only=True, dtype=dtype)
        llm.resize_token_embeddings(c.vocab_size)
    else:
        llm_config = LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads or c.num_attention_heads,
            max_position_embeddings=c.max_position_embeddings,
            rms_norm_eps=c.rms_norm_eps,
            rope_theta=c.rope_theta,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        llm = LlamaForCausalLM(llm_config).to(dtype)
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=list(config.lora.target_modules),
        )
        llm = get_peft_model(llm, lora)
        # peft creates LoRA matrices in the default dtype (float32), as peft 0.2.0 did.
    return llm


def build_swin(config: MedVersaConfig) -> SwinModel:
    c = config.encoder_2d
    if c.pretrained_path:
        return SwinModel.from_pretrained(c.pretrained_path, local_files_only=True, add_pooling_layer=False)
    swin_config = SwinConfig(
        image_size=c.image_size,
        patch_size=c.patch_size,
        embed_dim=c.embed_dim,
        depths=list(c.depths),
        num_heads=list(c.num_heads),
        window_size=c.window_size,
        mlp_ratio=c.mlp_ratio,
        drop_path_rate=c.drop_path_rate,
        layer_norm_eps=c.layer_norm_eps,
    )
    return SwinModel(swin_config, add_pooling_layer=False)


class MedVersaModel(nn.Module):
    """All MedVersa modules; orchestration lives in :mod:`.generation` and :mod:`.analyzer`."""

    def __init__(self, config: MedVersaConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.llm.hidden_size
        side = config.pool_side
        self.encoder_2d = build_swin(config)
        self.encoder_3d = UNet3d(1, 1, config.encoder_3d.base_channels, config.encoder_3d.num_groups)
        self.adapter_2d = VisualAdapter(config.encoder_2d.out_channels, hidden, side, volumetric=False)
        self.adapter_3d = VisualAdapter(config.encoder_3d.out_channels, hidden, side, volumetric=True)
        self.llm = build_llm(config)
        self.det_head = DetectionHead(hidden)
        s2 = config.seg_2d
        self.seg_2d = ResNetUNet2d(s2.channels, s2.decoder_channels, s2.num_groups)
        if s2.pretrained_path:
            self._load_resnet_weights(s2.pretrained_path)
        deep_2d = s2.channels[-1]
        deep_3d = config.encoder_3d.out_channels
        self.seg_2d_text = TaskProjection(hidden, deep_2d)
        self.seg_2d_norm = nn.GroupNorm(s2.num_groups, deep_2d)
        self.seg_3d_text = TaskProjection(hidden, deep_3d)
        self.seg_3d_norm = nn.GroupNorm(config.encoder_3d.num_groups, deep_3d)
        # The published model defines these LayerNorms but its forward never uses
        # them; they are kept so the published checkpoint maps key for key.
        self.seg_2d_text_ln = nn.LayerNorm(deep_2d)
        self.seg_3d_text_ln = nn.LayerNorm(deep_3d)

    # --- the LLM ---------------------------------------------------------------------------
    @property
    def causal_lm(self) -> LlamaForCausalLM:
        """The Llama under the (optional) peft wrapper; LoRA layers stay injected."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(ids)

    # --- visual tokens ---------------------------------------------------------------------
    def encode_2d(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, 224, 224] -> visual tokens [N, 9, hidden]."""
        states = self.encoder_2d(pixel_values=images).last_hidden_state  # [N, g*g, C]
        grid = self.config.encoder_2d.grid
        fmap = states.transpose(1, 2).reshape(states.shape[0], states.shape[2], grid, grid)
        return self.adapter_2d(fmap)

    def encode_3d(self, volumes: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[N, 1, D, H, W] -> visual tokens [N, 9, hidden] and the UNet features for 3D masks."""
        feats = self.encoder_3d.encode(volumes)
        return self.adapter_3d(feats[-1]), feats

    # --- vision modules --------------------------------------------------------------------
    def detect(self, hidden: torch.Tensor) -> torch.Tensor:
        """Task-token states [K, hidden] -> boxes [K, 4] (normalised xyxy)."""
        return self.det_head(hidden)

    def segment_2d(self, image: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One image [3, 224, 224] and K task states -> mask logits [K, 224, 224]."""
        feats = self.seg_2d.encode(image.unsqueeze(0))
        k = hidden.shape[0]
        feats = [f.expand(k, *f.shape[1:]) for f in feats]
        text = self.seg_2d_text(hidden)[:, :, None, None]
        feats[-1] = self.seg_2d_norm(feats[-1] + text)
        return self.seg_2d.decode(feats)[:, 0]

    def segment_3d(self, feats: list[torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """UNet features of one volume (batch 1) and K task states -> logits [K, D, H, W]."""
        k = hidden.shape[0]
        feats = [f.expand(k, *f.shape[1:]) for f in feats]
        text = self.seg_3d_text(hidden)[:, :, None, None, None]
        feats[-1] = self.seg_3d_norm(feats[-1] + text)
        return self.encoder_3d.decode(feats)[:, 0]

    def _load_resnet_weights(self, path: str) -> None:
        """ImageNet ResNet-18 weights from a local file (torchvision keys; BatchNorm stats dropped)."""
        from safetensors.torch import load_file

        state = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu")
        own = self.seg_2d.encoder.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(usable))
        if missing:
            raise ValueError(f"ResNet weights at {path} lack {len(missing)} keys, e.g. {missing[:5]}")
        self.seg_2d.encoder.load_state_dict(usable)

"""2D segmentation UNet with a ResNet-18 encoder and GroupNorm (paper Fig. 7b).

The encoder is timm's ResNet (BasicBlock, [2, 2, 2, 2]) with GroupNorm in
place of BatchNorm, as the published model replaced every BatchNorm2d by
GroupNorm(16, C). Its keys (``conv1``, ``bn1``, ``layer1..4``) are those of
segmentation_models_pytorch's ``Unet('resnet18')`` encoder, and the decoder
follows that Unet: five blocks of nearest x2 upsampling, concat with the skip,
two conv-norm-ReLU; then a 3x3 conv head. The task embedding is added to the
deepest encoder feature by the caller.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn


def _group_norm(num_channels: int, num_groups: int = 16, **_: object) -> nn.GroupNorm:
    """GroupNorm with timm's norm-layer call signature (channels first, keyword options)."""
    return nn.GroupNorm(num_groups, num_channels)


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(num_groups, out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.conv1 = ConvNormReLU(in_channels + skip_channels, out_channels, num_groups)
        self.conv2 = ConvNormReLU(out_channels, out_channels, num_groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    def __init__(self, encoder_channels: list[int], decoder_channels: tuple[int, ...], num_groups: int) -> None:
        super().__init__()
        # encoder_channels: stem, layer1..layer4 (shallow to deep)
        head = encoder_channels[-1]
        skips = list(reversed(encoder_channels[:-1])) + [0]
        ins = [head] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, num_groups) for i, s, o in zip(ins, skips, decoder_channels, strict=False)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        skips = list(reversed(feats[:-1]))
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class ResNetUNet2d(nn.Module):
    """``encode`` -> [stem, layer1, layer2, layer3, layer4]; ``decode`` -> logits at input size."""

    def __init__(
        self,
        channels: tuple[int, ...] = (64, 128, 256, 512),
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        num_groups: int = 16,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = ResNet(
            block=BasicBlock,
            layers=(2, 2, 2, 2),
            channels=tuple(channels),
            norm_layer=partial(_group_norm, num_groups=num_groups),
            num_classes=0,
            global_pool="",
        )
        stem_channels = self.encoder.conv1.out_channels  # timm's plain stem is 64 wide
        self.decoder = UNetDecoder([stem_channels, *channels], decoder_channels, num_groups)
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)
        )

    @property
    def deepest_channels(self) -> int:
        return self.encoder.num_features

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        enc = self.encoder
        stem = enc.act1(enc.bn1(enc.conv1(x)))
        l1 = enc.layer1(enc.maxpool(stem))
        l2 = enc.layer2(l1)
        l3 = enc.layer3(l2)
        l4 = enc.layer4(l3)
        return [stem, l1, l2, l3, l4]

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(feats))

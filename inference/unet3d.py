"""3D UNet: encoder of CT volumes (visual tokens) and decoder for 3D masks.

Same layout as the published ``medomni/models/UNet.py`` UNet3d (a double-conv
(conv, GroupNorm, LeakyReLU) stem, four max-pool+double-conv stages to 8x base channels, four trilinear
up+concat+double-conv stages, a 1x1x1 head) with GroupNorm, so the published
keys ``conv``, ``enc1..4``, ``dec1..4``, ``out`` map one to one. The task
embedding is added at the bottleneck by the caller (MedVersa paper, Fig. 7c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv3d(nn.Module):
    """(Conv3d 3x3x3 -> GroupNorm -> LeakyReLU(0.01)) x 2 (paper Fig. 7c: GN + LReLU)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(num_groups, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(num_groups, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.MaxPool3d(2, 2), DoubleConv3d(in_channels, out_channels, num_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class Up3d(nn.Module):
    """Trilinear x2 upsampling (align_corners=True), pad to the skip, concat [skip, up], double conv."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.conv = DoubleConv3d(in_channels, out_channels, num_groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        dz, dy, dx = (skip.shape[i] - x.shape[i] for i in (2, 3, 4))
        if dz or dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2, dz // 2, dz - dz // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class Head3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet3d(nn.Module):
    """``encode`` gives the five feature maps; ``decode`` turns (edited) features into logits."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 32, num_groups: int = 16
    ) -> None:
        super().__init__()
        c = base_channels
        self.conv = DoubleConv3d(in_channels, c, num_groups)
        self.enc1 = Down3d(c, 2 * c, num_groups)
        self.enc2 = Down3d(2 * c, 4 * c, num_groups)
        self.enc3 = Down3d(4 * c, 8 * c, num_groups)
        self.enc4 = Down3d(8 * c, 8 * c, num_groups)
        self.dec1 = Up3d(16 * c, 4 * c, num_groups)
        self.dec2 = Up3d(8 * c, 2 * c, num_groups)
        self.dec3 = Up3d(4 * c, c, num_groups)
        self.dec4 = Up3d(2 * c, c, num_groups)
        self.out = Head3d(c, num_classes)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.conv(x)
        x2 = self.enc1(x1)
        x3 = self.enc2(x2)
        x4 = self.enc3(x3)
        x5 = self.enc4(x4)
        return [x1, x2, x3, x4, x5]

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4, x5 = feats
        y = self.dec1(x5, x4)
        y = self.dec2(y, x3)
        y = self.dec3(y, x2)
        y = self.dec4(y, x1)
        return self.out(y)

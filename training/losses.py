"""The paper's training objectives (Methods, "Training details").

- Language: cross-entropy on answer tokens only (prompt and padding masked).
- Detection: the language loss plus box regression (L1 and generalised IoU on the
  normalised boxes the detection head predicts from each ``<DET>`` state).
- Segmentation: focal loss plus Dice loss with equal weights (MONAI's DiceFocalLoss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss
from torchvision.ops import generalized_box_iou_loss

from .batching import IGNORE


def language_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits at t predict labels at t+1; IGNORE positions skipped."""
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    targets = labels[:, 1:].reshape(-1)
    if (targets != IGNORE).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(shifted, targets, ignore_index=IGNORE)


def ordered(boxes: torch.Tensor) -> torch.Tensor:
    """Corners sorted so x0<=x1, y0<=y1 (the head's raw outputs need not be)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([torch.minimum(x0, x1), torch.minimum(y0, y1), torch.maximum(x0, x1), torch.maximum(y0, y1)], -1)


def box_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + generalised IoU, both averaged over boxes."""
    pred = ordered(predicted.float())
    return F.l1_loss(pred, target) + generalized_box_iou_loss(pred, target, reduction="mean")


class MaskLoss(torch.nn.Module):
    """Focal + Dice with equal weights on sigmoid logits; [K, ...] logits and targets."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = DiceFocalLoss(sigmoid=True, lambda_dice=1.0, lambda_focal=1.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float().unsqueeze(1), target.float().unsqueeze(1))

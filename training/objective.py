"""One forward pass of a training batch through every MedVersa module it needs.

:class:`TrainingObjective` wraps the model so that DDP/FSDP see a single
``forward`` (their gradient hooks need it). The LLM reads the prompt and answer
(teacher forcing); the last-layer hidden state *at* each task token's position —
the state computed with the task token as input, as the inference path keeps it
— drives the detection head and the 2D/3D segmentation decoders.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from medversa.inference import MedVersaModel, embed_with_images

from .batching import Batch
from .losses import MaskLoss, box_loss, language_loss


class TrainingObjective(nn.Module):
    def __init__(self, model: MedVersaModel, image_token_id: int,
                 loss_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.model = model
        self.image_token_id = image_token_id
        #: Weight of each loss in the total (1 when not given; the paper weighs them equally).
        #: "route" > 0 adds the routing loss: each task token's state regresses onto its structure's code.
        self.loss_weights = dict(loss_weights or {})
        self._codes: dict[str, torch.Tensor] = {}
        self.mask_loss = MaskLoss()

    def routing_code(self, structure: str) -> torch.Tensor:
        """A fixed unit-RMS vector per structure name, the same in every run and process (CRC32-seeded).

        Training only: staged runs first train the heads on these codes while the LLM learns to
        produce them at the task token; inference always reads the LLM's state (the published path).
        """
        key = " ".join(structure.lower().split())
        if key not in self._codes:
            gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            self._codes[key] = torch.randn(self.model.config.llm.hidden_size, generator=gen)
        return self._codes[key]

    def _route(self, states: torch.Tensor, structures: list[str], losses: dict, teacher: bool) -> torch.Tensor:
        """The states the heads read: the LLM's, or (teacher conditioning) the structures' codes."""
        if len(structures) != states.shape[0] or not all(structures):
            if teacher or self.loss_weights.get("route", 0.0) > 0:
                raise ValueError("routing needs the structure of every task token")
            return states
        codes = torch.stack([self.routing_code(s) for s in structures]).to(states.device)
        if self.loss_weights.get("route", 0.0) > 0:
            route = F.mse_loss(states.float(), codes)
            losses["route"] = (losses["route"] + route) / 2 if "route" in losses else route
        return codes.to(states.dtype) if teacher else states
        self.mask_loss = MaskLoss()

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        model = self.model
        device = batch.ids.device
        volumetric = batch.modality.is_volume
        tokens, feats3d = self._visual_tokens(batch, volumetric)
        embeds = torch.stack([
            embed_with_images(model.embed_ids, batch.ids[b], self.image_token_id, tokens[b])
            for b in range(batch.size)
        ])
        lm = model.causal_lm
        hidden = lm.model(inputs_embeds=embeds, attention_mask=batch.attention).last_hidden_state
        logits = lm.lm_head(hidden)
        losses = {"lm": language_loss(logits, batch.labels)}
        if batch.det_positions:
            states = torch.stack([hidden[b, p] for b, p in batch.det_positions])
            states = self._route(states, batch.det_structures, losses, batch.teacher_conditioning)
            losses["det"] = box_loss(model.detect(states), batch.det_boxes.to(device))
        if batch.seg_positions:
            states = torch.stack([hidden[b, p] for b, p in batch.seg_positions])
            states = self._route(states, batch.seg_structures, losses, batch.teacher_conditioning)
            targets = torch.stack(batch.seg_masks).to(device)
            if volumetric:
                logits3d = torch.cat([model.segment_3d(feats3d[b], states[k:k + 1])
                                      for k, (b, _) in enumerate(batch.seg_positions)])
                losses["seg"] = self.mask_loss(logits3d, targets)
            else:
                images = torch.stack([batch.images[b][0] for b, _ in batch.seg_positions]).to(device)
                losses["seg"] = self.mask_loss(self._segment_2d(images, states), targets)
        losses["total"] = sum(self.loss_weights.get(k, 1.0) * v for k, v in losses.items())
        return losses

    def _visual_tokens(self, batch: Batch, volumetric: bool) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        model = self.model
        counts = [int(img.shape[0]) for img in batch.images]
        hidden = model.config.llm.hidden_size
        empty = torch.zeros(0, model.config.num_visual_tokens, hidden, device=batch.ids.device)
        if volumetric:
            tokens, feats = [], []
            for img in batch.images:
                if img.shape[0] == 0:
                    tokens.append(empty)
                    feats.append([])
                    continue
                tok, f = model.encode_3d(img.to(batch.ids.device))
                tokens.append(tok)
                feats.append(f)
            return tokens, feats
        if sum(counts) == 0:
            return [empty] * batch.size, []
        all_tokens = model.encode_2d(torch.cat([img for img in batch.images if img.shape[0]]).to(batch.ids.device))
        return list(all_tokens.split(counts)), []

    def _segment_2d(self, images: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``MedVersaModel.segment_2d`` for K (image, state) pairs at once."""
        m = self.model
        feats = m.seg_2d.encode(images)
        feats[-1] = m.seg_2d_norm(feats[-1] + m.seg_2d_text(states)[:, :, None, None])
        return m.seg_2d.decode(feats)[:, 0]

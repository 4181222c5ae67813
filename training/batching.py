"""Samples -> tensors the model trains on: prompt + answer ids, loss mask, images, task-token targets.

The prompt is built exactly as at inference (``inference/prompting.py``): image
prefix with BOS, request (with ``<context>`` for report and classification),
``###Assistant:``; the answer follows with the end symbol ``###``. Only answer
tokens carry a language-model target. A task token's target (box or mask) is
kept only if the token survives truncation to ``max_length``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from medversa.inference import (
    MedVersaConfig,
    MedVersaTokenizer,
    Modality,
    Task,
    build_prompt_ids,
    preprocess_image,
    preprocess_volume,
    resize_nearest,
)

from .samples import Sample

IGNORE = -100


@dataclass
class Batch:
    """One domain-aware minibatch: one task, one modality."""

    task: Task
    modality: Modality
    ids: torch.Tensor  # [B, T] right-padded
    attention: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE outside answers
    images: list[torch.Tensor]  # per sample: [n, 3, 224, 224] (2D) or [n, 1, D, H, W] (CT)
    det_positions: list[tuple[int, int]]  # (sample, position) of each <DET> kept
    det_boxes: torch.Tensor  # [K, 4] normalised xyxy
    seg_positions: list[tuple[int, int]]  # (sample, position) of each <2DSEG>/<3DSEG> kept
    seg_masks: list[torch.Tensor]  # per seg token: [224, 224] or [D, H, W] float, model layout
    det_structures: list[str] = field(default_factory=list)  # the class of each <DET> kept
    seg_structures: list[str] = field(default_factory=list)  # the structure of each seg token kept
    #: Staged training: the heads read each structure's routing code instead of the LLM's state.
    teacher_conditioning: bool = False

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])


def mask_to_model_2d(mask: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(resize_nearest(mask.astype(np.float32), (size, size)))


def mask_to_model_3d(mask: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """[slices, rows, cols] -> the model layout [z, x, y] = [slices, cols, rows], resized (inverse of postprocess)."""
    return torch.from_numpy(np.ascontiguousarray(resize_nearest(mask.transpose(0, 2, 1).astype(np.float32), shape)))


def collate(samples: list[Sample], tokenizer: MedVersaTokenizer, config: MedVersaConfig,
            max_length: int) -> Batch:
    if not samples:
        raise ValueError("an empty batch")
    task, modality = samples[0].task, samples[0].modality
    if any(s.task is not task or s.modality is not modality for s in samples):
        raise ValueError("a domain-aware batch holds one task and one modality")
    pre = config.preprocess
    end = config.generation.end_sym
    seqs, targets, images = [], [], []
    det_positions, det_boxes, seg_positions, seg_masks = [], [], [], []
    det_structures, seg_structures = [], []
    task_ids = {tokenizer.ids.det, tokenizer.ids.seg2d, tokenizer.ids.seg3d}
    for b, sample in enumerate(samples):
        prompt = build_prompt_ids(tokenizer, len(sample.images), sample.question, sample.context,
                                  sample.task.uses_context, config.num_visual_tokens).ids
        if len(prompt) >= max_length:
            raise ValueError(f"sample {sample.record_id}: the prompt alone has {len(prompt)} tokens "
                             f"(max_length {max_length})")
        answer = tokenizer.encode(sample.answer + end)
        ids = (prompt + answer)[:max_length]
        labels = ([IGNORE] * len(prompt) + answer)[:max_length]
        seqs.append(ids)
        targets.append(labels)
        boxes, masks = iter(sample.boxes), iter(sample.masks)
        det_names = iter(sample.structures if sample.boxes else [])
        seg_names = iter(sample.structures if sample.masks else [])
        for pos in range(len(prompt), len(ids)):
            token = ids[pos]
            if token == tokenizer.ids.det:
                det_positions.append((b, pos))
                det_boxes.append(next(boxes))
                det_structures.append(next(det_names, ""))
            elif token in task_ids:
                seg_positions.append((b, pos))
                mask = next(masks)
                seg_structures.append(next(seg_names, ""))
                seg_masks.append(mask_to_model_3d(mask, pre.ct_shape) if modality.is_volume
                                 else mask_to_model_2d(mask, pre.image_size))
        if modality.is_volume:
            images.append(torch.stack([preprocess_volume(v, pre) for v in sample.images]) if sample.images
                          else torch.zeros(0, 1, *pre.ct_shape))
        else:
            images.append(torch.stack([preprocess_image(i, pre) for i in sample.images]) if sample.images
                          else torch.zeros(0, 3, pre.image_size, pre.image_size))
    longest = max(len(s) for s in seqs)
    pad = tokenizer.hf.pad_token_id if tokenizer.hf.pad_token_id is not None else 0
    ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
    labels = torch.full((len(seqs), longest), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(seqs), longest), dtype=torch.long)
    for b, (s, t) in enumerate(zip(seqs, targets, strict=False)):
        ids[b, :len(s)] = torch.tensor(s)
        labels[b, :len(t)] = torch.tensor(t)
        attention[b, :len(s)] = 1
    boxes = torch.tensor(det_boxes, dtype=torch.float32).reshape(-1, 4)
    return Batch(task, modality, ids, attention, labels, images, det_positions, boxes, seg_positions, seg_masks,
                 det_structures, seg_structures)


def crop_volumes(batch: Batch, shape: tuple[int, int, int], foreground: float, seed: int) -> Batch:
    """Organ-centred random crops of a CT batch's model volumes and masks (MONAI RandCropByPosNegLabeld).

    Why: over a whole 64x192x192 model volume the soft Dice of a small organ (kidney, pancreas: 1 % of
    the voxels) is swamped by the background's sigmoid mass, and its gradient barely moves the decoder.
    A crop centred on the organ with probability ``foreground`` (else anywhere) keeps the loss and the
    architecture and shows the decoder far less background per step, at a fraction of the cost. Every
    seg token of a sample shares its image's crop; ``seed`` makes the crops reproducible per step.
    """
    from monai.transforms import RandCropByPosNegLabeld

    if not batch.modality.is_volume:
        return batch
    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=list(shape),
                                  pos=foreground, neg=1.0 - foreground, num_samples=1, allow_smaller=False)
    images, masks = list(batch.images), list(batch.seg_masks)
    for b, stack in enumerate(batch.images):
        tokens = [i for i, (sample, _) in enumerate(batch.seg_positions) if sample == b]
        if not tokens:
            continue
        if stack.shape[0] != 1:
            raise ValueError(f"a cropped CT sample holds one volume, sample {b} holds {stack.shape[0]}")
        crop.set_random_state(seed=(seed + 7919 * b) % 2**32)
        labels = torch.stack([masks[i] for i in tokens])  # [tokens, D, H, W]: the crop centres on the first
        out = crop({"image": stack[0], "label": labels})[0]
        images[b] = out["image"].as_tensor().unsqueeze(0)  # MONAI's MetaTensor -> a plain tensor
        cropped = out["label"].as_tensor()
        for k, i in enumerate(tokens):
            masks[i] = cropped[k].contiguous()
    return dataclasses.replace(batch, images=images, seg_masks=masks)

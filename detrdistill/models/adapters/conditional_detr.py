"""Adapter for transformers' ``ConditionalDetrForObjectDetection``.

Same structure as DETR (see ``detr.py``) with a sigmoid class head and boxes predicted as
offsets from per-query reference points: box = sigmoid(bbox_predictor(h) + [ref_xy, 0, 0]).
"""

from __future__ import annotations

import torch
from transformers.models.conditional_detr.modeling_conditional_detr import inverse_sigmoid

from detrdistill.models.adapters.detr import DetrFamilyAdapter


class ConditionalDetrAdapter(DetrFamilyAdapter):
    class_head = "sigmoid"

    def _heads(self, hidden: torch.Tensor, decoder_output) -> tuple[torch.Tensor, torch.Tensor]:
        # reference_points is [Q, B, 2]; every stage shares the same reference.
        reference = inverse_sigmoid(decoder_output.reference_points).transpose(0, 1)
        offsets = self.model.bbox_predictor(hidden)
        shift = torch.zeros_like(offsets)
        shift[..., :2] = reference
        return self.model.class_labels_classifier(hidden), (offsets + shift).sigmoid()

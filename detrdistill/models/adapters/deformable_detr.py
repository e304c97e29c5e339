"""Adapter for transformers' ``DeformableDetrForObjectDetection`` (single-stage variant).

Multi-scale: the encoder output is one flattened sequence over all levels; the record
splits it back into per-level maps using the level shapes the decoder receives. Learned
queries are [Q, 2D]: position half, then content half; reference points come from the
model's own linear layer applied to the position half.
"""

from __future__ import annotations

import contextlib

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import inverse_sigmoid

from detrdistill.models.adapters.base import (
    DetrAdapter,
    capture_call_kwargs,
    extend_call_kwargs,
    queries_per_image,
    query_groups_kept_apart,
    split_levels,
    split_mask_levels,
)
from detrdistill.models.record import DecodedQueries, DetrRecord


class DeformableDetrAdapter(DetrAdapter):
    class_head = "sigmoid"

    def __init__(self, model):
        if model.config.two_stage:
            raise ValueError("two-stage Deformable DETR has no learned queries; use two_stage=False")
        super().__init__(model)

    @property
    def num_feature_levels(self) -> int:
        return self.model.config.num_feature_levels

    def learned_queries(self) -> torch.Tensor:
        return self.model.model.query_position_embeddings.weight

    def _heads(
        self, hidden: torch.Tensor, init_reference: torch.Tensor, inter_references: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, K, Q, D], init_reference [B, Q, 2], inter_references [B, K, Q, 2 or 4]
        -> logits [K, B, Q, C], boxes [K, B, Q, 4]; the same arithmetic as the model's forward."""
        logits, boxes = [], []
        for stage in range(hidden.shape[1]):
            reference = inverse_sigmoid(init_reference if stage == 0 else inter_references[:, stage - 1])
            delta = self.model.bbox_embed[stage](hidden[:, stage])
            if reference.shape[-1] == 4:
                delta = delta + reference
            else:
                shift = torch.zeros_like(delta)
                shift[..., :2] = reference
                delta = delta + shift
            logits.append(self.model.class_embed[stage](hidden[:, stage]))
            boxes.append(delta.sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def _group_inputs(self, queries: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """queries [Q', 2D] or [B, Q', 2D] -> content [B, Q', D], position [B, Q', D], reference points [B, Q', 2]."""
        position, content = torch.split(queries_per_image(queries, batch), self.d_model, dim=-1)
        reference = self.model.model.reference_points(position).sigmoid()
        return content, position, reference

    def _forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, group: torch.Tensor | None) -> DetrRecord:
        inner = self.model.model
        encoder_kwargs, decoder_kwargs, group_reference = {}, {}, []

        def append_group(kwargs: dict) -> dict:
            content, position, reference = self._group_inputs(group, kwargs["inputs_embeds"].shape[0])
            group_reference.append(reference)
            return {
                **kwargs,
                "inputs_embeds": torch.cat([kwargs["inputs_embeds"], content], 1),
                "object_queries_position_embeddings": torch.cat(
                    [kwargs["object_queries_position_embeddings"], position], 1
                ),
                "reference_points": torch.cat([kwargs["reference_points"], reference], 1),
            }

        with contextlib.ExitStack() as stack:
            # Capture first: the record keeps the decoder's own arguments, without the group.
            stack.enter_context(capture_call_kwargs(inner.encoder, encoder_kwargs))
            stack.enter_context(capture_call_kwargs(inner.decoder, decoder_kwargs))
            if group is not None:
                stack.enter_context(extend_call_kwargs(inner.decoder, append_group))
                sizes = [self.config.num_queries, group.shape[-2]]
                stack.enter_context(query_groups_kept_apart([layer.self_attn for layer in inner.decoder.layers], sizes))
            output = inner(pixel_values=pixel_values, pixel_mask=pixel_mask)
        level_shapes = [tuple(s) for s in decoder_kwargs["spatial_shapes_list"]]
        logits, boxes = self._heads(
            output.intermediate_hidden_states,
            torch.cat([output.init_reference_points, *group_reference], 1),
            output.intermediate_reference_points,
        )
        return DetrRecord(
            logits=logits,
            boxes_cxcywh=boxes,
            decoder_hidden=output.intermediate_hidden_states.transpose(0, 1),
            features=split_levels(output.encoder_last_hidden_state, level_shapes),
            feature_masks=split_mask_levels(encoder_kwargs["attention_mask"], level_shapes),
            encoder_inputs=split_levels(encoder_kwargs["inputs_embeds"], level_shapes),
            query_embeddings=self.learned_queries(),
            class_head=self.class_head,
            decoder_inputs=decoder_kwargs,
        )

    def decode(self, record: DetrRecord, queries: torch.Tensor) -> DecodedQueries:
        content, position, reference = self._group_inputs(queries, record.logits.shape[1])
        kwargs = dict(record.decoder_inputs)
        kwargs.update(inputs_embeds=content, object_queries_position_embeddings=position, reference_points=reference)
        output = self.model.model.decoder(**kwargs)
        logits, boxes = self._heads(
            output.intermediate_hidden_states, reference, output.intermediate_reference_points
        )
        return DecodedQueries(
            logits=logits, boxes_cxcywh=boxes, decoder_hidden=output.intermediate_hidden_states.transpose(0, 1)
        )

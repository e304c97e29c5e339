"""Adapter for transformers' ``DetrForObjectDetection`` (softmax head, one feature level).

Also the base of the Conditional DETR adapter, which differs only in its box head.
"""

from __future__ import annotations

import contextlib

import torch

from detrdistill.models.adapters.base import (
    DetrAdapter,
    capture_call_kwargs,
    capture_outputs,
    extend_call_kwargs,
    queries_per_image,
    query_groups_kept_apart,
)
from detrdistill.models.record import DecodedQueries, DetrRecord


class DetrFamilyAdapter(DetrAdapter):
    """DETR: per-stage hidden states are the decoder layers' outputs after the shared
    final LayerNorm, as in the original DETR's intermediate outputs; the last stage is the
    model's own ``last_hidden_state`` so its boxes equal the model's ``pred_boxes``."""

    class_head = "softmax"

    def learned_queries(self) -> torch.Tensor:
        return self.model.model.query_position_embeddings.weight

    def _stage_hidden(self, layer_outputs: list[torch.Tensor], last_hidden: torch.Tensor) -> torch.Tensor:
        """[K, B, Q, D] from the K raw layer outputs and the decoder's final output."""
        norm = self.model.model.decoder.layernorm
        return torch.stack([norm(h) for h in layer_outputs[:-1]] + [last_hidden])

    def _heads(self, hidden: torch.Tensor, decoder_output) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [K, B, Q, D] -> logits [K, B, Q, C], boxes [K, B, Q, 4]."""
        return self.model.class_labels_classifier(hidden), self.model.bbox_predictor(hidden).sigmoid()

    def _forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, group: torch.Tensor | None) -> DetrRecord:
        inner = self.model.model
        encoder_kwargs, decoder_kwargs, layer_outputs, projected = {}, {}, [], []

        def append_group(kwargs: dict) -> dict:
            position = queries_per_image(group, kwargs["inputs_embeds"].shape[0])
            return {
                **kwargs,
                "inputs_embeds": torch.cat([kwargs["inputs_embeds"], torch.zeros_like(position)], 1),
                "object_queries_position_embeddings": torch.cat(
                    [kwargs["object_queries_position_embeddings"], position], 1
                ),
                "attention_mask": None,
            }

        with contextlib.ExitStack() as stack:
            # Capture first: the record keeps the decoder's own arguments, without the group.
            stack.enter_context(capture_call_kwargs(inner.encoder, encoder_kwargs))
            stack.enter_context(capture_call_kwargs(inner.decoder, decoder_kwargs))
            stack.enter_context(capture_outputs(list(inner.decoder.layers), layer_outputs))
            stack.enter_context(capture_outputs([inner.input_projection], projected))
            if group is not None:
                stack.enter_context(extend_call_kwargs(inner.decoder, append_group))
                sizes = [self.config.num_queries, group.shape[-2]]
                stack.enter_context(query_groups_kept_apart([layer.self_attn for layer in inner.decoder.layers], sizes))
            output = inner(pixel_values=pixel_values, pixel_mask=pixel_mask)
        batch, width, height_l, width_l = projected[0].shape
        hidden = self._stage_hidden(layer_outputs, output.last_hidden_state)
        logits, boxes = self._heads(hidden, output)
        mask = encoder_kwargs["attention_mask"].reshape(batch, height_l, width_l).bool()
        encoder_out = output.encoder_last_hidden_state.transpose(1, 2).reshape(batch, width, height_l, width_l)
        return DetrRecord(
            logits=logits,
            boxes_cxcywh=boxes,
            decoder_hidden=hidden,
            features=[encoder_out],
            feature_masks=[mask],
            encoder_inputs=[projected[0]],
            query_embeddings=self.learned_queries(),
            class_head=self.class_head,
            decoder_inputs=decoder_kwargs,
        )

    def decode(self, record: DetrRecord, queries: torch.Tensor) -> DecodedQueries:
        decoder = self.model.model.decoder
        batch = record.logits.shape[1]
        position = queries_per_image(queries, batch)
        kwargs = dict(record.decoder_inputs)
        kwargs.update(
            inputs_embeds=torch.zeros_like(position),
            object_queries_position_embeddings=position,
            attention_mask=None,
        )
        layer_outputs = []
        with capture_outputs(list(decoder.layers), layer_outputs):
            output = decoder(**kwargs)
        hidden = self._stage_hidden(layer_outputs, output.last_hidden_state)
        logits, boxes = self._heads(hidden, output)
        return DecodedQueries(logits=logits, boxes_cxcywh=boxes, decoder_hidden=hidden)

"""Adapter for transformers' ``RTDetrForObjectDetection`` and ``RTDetrV2ForObjectDetection``.

RT-DETR has no learned object queries. Its hybrid encoder (AIFI self-attention on the last
level, then a CNN FPN/PAN fusing the levels) yields multi-scale maps; each is projected to
the decoder width and flattened into the decoder's memory. A proposal head on that memory
(``enc_score_head``, ``enc_bbox_head`` plus grid anchors) scores every position, and the
top-Q positions per image become the queries: their (detached) content and their boxes, as
inverse-sigmoid reference points. The decoder refines those boxes stage by stage
(deformable cross-attention, a box and a class head per stage). What this adapter decides:

- **Stages**: the record's K stages are the decoder's, ``intermediate_logits`` and
  ``intermediate_reference_points``; the last equals the model's ``logits`` / ``pred_boxes``.
- **Proposals**: the top-k encoder proposals (``enc_topk_logits``, ``enc_topk_bboxes``) are
  ``record.proposals``, one stage before the decoder's. The detection loss supervises it,
  as RT-DETR's own loss does (otherwise the proposal head never learns: everything the
  decoder receives from it is detached); logits distillation reads it only with
  ``distill.logits.proposal_stage``.
- **Denoising**: with ``targets`` in training mode (and ``num_denoising`` > 0) transformers
  prepends the contrastive denoising groups to the queries, behind its own attention mask.
  The adapter cuts them off every stage before building the record (``dn_num_split``) and
  hands them over apart, as ``record.denoising``, which only the detection loss reads: no
  denoising query is ever in the stages, the proposals or the query prior, so none enters a
  logits, feature or assignment distillation match. The teacher runs in eval mode and has
  none.
- **Query prior** (assignment distillation): the queries the decoder started from, per
  image: ``record.query_embeddings`` [B, Q, D + 4] = the selected content [B, Q, D], then
  the initial reference boxes [B, Q, 4] (inverse-sigmoid cxcywh). ``decode(record,
  queries)`` feeds the content as ``inputs_embeds`` and the boxes as ``reference_points`` to
  the decoder, so the teacher's selected proposals (mapped to the student's width when they
  differ) run in the student's decoder, on the student's memory; ``decode(record,
  record.query_embeddings)`` reproduces the record. Between different widths, and from
  another family (e.g. Deformable DETR's learned [Q, 2D]), the prior arrives through AD's
  learned linear map, as for any pair; that map mixes the box part into the content like any
  other coordinate, so it starts without the teacher's boxes and has to learn them.
  ``forward_with_group`` appends the group after the model's own queries (and after the
  denoising groups) with a block-diagonal self-attention mask that keeps transformers'
  denoising mask inside its block.
- **Features** (FD): the hybrid encoder's fused multi-scale maps as the decoder reads them,
  i.e. its memory (the PAN outputs after the per-level projection to the decoder width), split
  back into [B, D, H_l, W_l] levels: always D wide, as FD's query masks need. ``encoder_inputs``
  are the projected backbone maps entering the hybrid encoder (``encoder_hidden_dim`` wide).
  RT-DETR ignores padding; ``feature_masks`` are the pixel mask resized to each level, as
  transformers' backbone wrapper computes them.
- **Canvas**: the FPN upsamples each level x2 onto the next finer one, so the input's sides
  must be multiples of the coarsest stride (``size_divisor``; ``collate_detection`` pads to it).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from detrdistill.models.adapters.base import (
    DetrAdapter,
    capture_call_kwargs,
    capture_outputs,
    extend_call_kwargs,
    group_attention_mask,
    queries_per_image,
    split_group,
    split_levels,
)
from detrdistill.models.record import DecodedQueries, DenoisingOutputs, DetrRecord


def denoising_matches(meta: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image (denoising query indices, GT indices): every group's positive copy of GT j
    reconstructs GT j (transformers' ``RTDetrLoss.get_cdn_matched_indices``)."""
    matches = []
    for positives, target in zip(meta["dn_positive_idx"], targets, strict=True):
        gt = torch.arange(len(target["class_labels"]), device=positives.device).tile(meta["dn_num_group"])
        matches.append((positives.long(), gt))
    return matches


class RTDetrAdapter(DetrAdapter):
    """RT-DETR (v1 and v2): queries selected per image from the encoder's top-k proposals."""

    class_head = "sigmoid"
    has_proposals = True
    per_image_queries = True

    def __init__(self, model):
        config = model.config
        if config.learn_initial_query:
            raise ValueError("learn_initial_query=True is not supported: the query prior is the selected proposals' "
                             "content, and transformers' learned-query path does not run (Embedding.tile)")
        if config.num_feature_levels != len(config.encoder_in_channels):
            raise ValueError(
                f"num_feature_levels ({config.num_feature_levels}) must equal the hybrid encoder's levels "
                f"({len(config.encoder_in_channels)}): extra strided levels have no encoder input to distil"
            )
        super().__init__(model)

    @property
    def num_feature_levels(self) -> int:
        return self.model.config.num_feature_levels

    @property
    def size_divisor(self) -> int:
        """The coarsest stride: the FPN upsamples each level x2 onto the next finer one, so every
        level's size must be exactly twice the next coarser one's."""
        return max(self.model.config.feat_strides)

    @property
    def query_dim(self) -> int:
        """D + 4: content, then the inverse-sigmoid reference box."""
        return self.d_model + 4

    def learned_queries(self) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self.model).__name__} has no learned queries: it selects them per image from the encoder's "
            "top-k proposals; its query prior is a record's query_embeddings [B, Q, D + 4]"
        )

    def __call__(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, targets: list[dict] | None = None
    ) -> DetrRecord:
        return self._forward(pixel_values, pixel_mask, None, targets)

    def forward_with_group(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, queries: torch.Tensor,
        targets: list[dict] | None = None,
    ) -> tuple[DetrRecord, DecodedQueries]:
        return split_group(self._forward(pixel_values, pixel_mask, queries, targets), self.config.num_queries)

    def _split_queries(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Q', D + 4] -> content [B, Q', D], reference box logits [B, Q', 4]."""
        if queries.shape[-1] != self.query_dim:
            raise ValueError(f"queries have width {queries.shape[-1]}; this model takes {self.query_dim} "
                             f"(content {self.d_model}, then an inverse-sigmoid cxcywh box)")
        return queries[..., : self.d_model], queries[..., self.d_model:]

    def _stages(
        self, decoder_output, reference_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder output over T queries -> logits [K, B, T, C], boxes [K, B, T, 4], hidden [K, B, T, D].

        RT-DETR's decoder applies its own per-stage heads; reference_logits [B, T, 4] (its
        initial boxes) are what D-FINE's heads need."""
        return (decoder_output.intermediate_logits.transpose(0, 1),
                decoder_output.intermediate_reference_points.transpose(0, 1),
                decoder_output.intermediate_hidden_states.transpose(0, 1))

    def _forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, group: torch.Tensor | None,
        targets: list[dict] | None,
    ) -> DetrRecord:
        inner = self.model.model
        own_kwargs, call_kwargs, projected = {}, {}, []

        def append_group(kwargs: dict) -> dict:
            content, reference = self._split_queries(queries_per_image(group, kwargs["inputs_embeds"].shape[0]))
            total = kwargs["inputs_embeds"].shape[1]  # denoising + own queries
            mask = group_attention_mask([total, content.shape[1]], content.dtype, content.device)
            if kwargs["encoder_attention_mask"] is not None:  # transformers' denoising mask, kept in its block
                mask[..., :total, :total] = kwargs["encoder_attention_mask"]
            return {
                **kwargs,
                "inputs_embeds": torch.cat([kwargs["inputs_embeds"], content], 1),
                "reference_points": torch.cat([kwargs["reference_points"], reference], 1),
                "encoder_attention_mask": mask,
            }

        with contextlib.ExitStack() as stack:
            # Registration order is call order: own_kwargs sees the decoder's own arguments,
            # call_kwargs those it runs with (the group appended).
            stack.enter_context(capture_call_kwargs(inner.decoder, own_kwargs))
            if group is not None:
                stack.enter_context(extend_call_kwargs(inner.decoder, append_group))
            stack.enter_context(capture_call_kwargs(inner.decoder, call_kwargs))
            stack.enter_context(capture_outputs(list(inner.encoder_input_proj), projected))
            # labels only make transformers add denoising groups, and only in training mode.
            output = inner(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=targets)
        logits, boxes, hidden = self._stages(output, call_kwargs["reference_points"])
        meta = output.denoising_meta_values
        num_denoising = meta["dn_num_split"][0] if meta is not None else 0
        denoising = None
        if num_denoising:
            denoising = DenoisingOutputs(
                logits=logits[:, :, :num_denoising], boxes_cxcywh=boxes[:, :, :num_denoising],
                matches=denoising_matches(meta, targets), num_groups=meta["dn_num_group"],
            )
        own = slice(num_denoising, None)
        level_shapes = [tuple(s) for s in own_kwargs["spatial_shapes_list"]]
        return DetrRecord(
            logits=logits[:, :, own],
            boxes_cxcywh=boxes[:, :, own],
            decoder_hidden=hidden[:, :, own],
            features=split_levels(own_kwargs["encoder_hidden_states"], level_shapes),
            feature_masks=[F.interpolate(pixel_mask[None].float(), size=shape)[0].bool() for shape in level_shapes],
            encoder_inputs=projected,
            query_embeddings=torch.cat([own_kwargs["inputs_embeds"][:, own], own_kwargs["reference_points"][:, own]],
                                       -1),
            class_head=self.class_head,
            decoder_inputs=own_kwargs,
            proposals=DecodedQueries(
                logits=output.enc_topk_logits[None], boxes_cxcywh=output.enc_topk_bboxes[None],
                decoder_hidden=own_kwargs["inputs_embeds"][None, :, own],
            ),
            denoising=denoising,
        )

    def decode(self, record: DetrRecord, queries: torch.Tensor) -> DecodedQueries:
        content, reference = self._split_queries(queries_per_image(queries, record.logits.shape[1]))
        kwargs = dict(record.decoder_inputs)
        kwargs.update(inputs_embeds=content, reference_points=reference, encoder_attention_mask=None)
        logits, boxes, hidden = self._stages(self.model.model.decoder(**kwargs), reference)
        return DecodedQueries(logits=logits, boxes_cxcywh=boxes, decoder_hidden=hidden)

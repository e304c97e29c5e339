"""The one uniform view of a DETR forward pass that every loss and analysis reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DetrRecord:
    """Outputs of one forward pass of a DETR-family detector, family-independent.

    K = decoder stages, B = batch, Q = queries, C = class columns, D = model width.

    Attributes:
        logits: [K, B, Q, C] class logits per stage. C = num_labels for sigmoid heads
            (Conditional/Deformable DETR); num_labels + 1 for softmax heads (DETR), whose
            last column is "no object".
        boxes_cxcywh: [K, B, Q, 4] boxes per stage, normalised to the padded input canvas.
        decoder_hidden: [K, B, Q, D] decoder output embeddings per stage (what the heads read).
        features: encoder output per feature level, each [B, D, H_l, W_l].
        feature_masks: per level [B, H_l, W_l], True where the pixel is real (not padding).
        encoder_inputs: per level [B, D, H_l, W_l], the projected backbone maps that enter
            the encoder (the release's choice for feature distillation).
        query_embeddings: the query prior, what ``decode`` takes to reproduce this pass: [Q, D_q]
            learned object queries (D_q = 2D for Deformable DETR: position half then content half),
            or [B, Q, D_q] for families that select their queries per image from the encoder's
            top-k proposals (RT-DETR, D-FINE: the decoder's initial content, then its initial
            reference box as inverse-sigmoid cxcywh, D_q = D + 4).
        class_head: "sigmoid" or "softmax".
        decoder_inputs: the decoder call's keyword arguments, kept to run the decoder again
            on the same encoder output with other queries (see the adapter's ``decode``).
        proposals: the encoder's top-k proposals that seeded the decoder (RT-DETR, D-FINE), as
            one extra stage [1, B, Q, ...] before the decoder's (decoder_hidden: the selected
            content); None for families without. The detection loss supervises it (it is how the
            proposal head learns); LD reads it only with ``distill.logits.proposal_stage``.
        denoising: the outputs of the denoising queries (RT-DETR, D-FINE, training with targets
            only); None otherwise. Only the detection loss reads them: they are never part of
            the stages above, so no distillation term ever sees one.
    """

    logits: torch.Tensor
    boxes_cxcywh: torch.Tensor
    decoder_hidden: torch.Tensor
    features: list[torch.Tensor]
    feature_masks: list[torch.Tensor]
    encoder_inputs: list[torch.Tensor]
    query_embeddings: torch.Tensor
    class_head: str
    decoder_inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    proposals: DecodedQueries | None = None
    denoising: DenoisingOutputs | None = None

    @property
    def num_stages(self) -> int:
        return self.logits.shape[0]

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """(H_l, W_l) of each feature level."""
        return [tuple(f.shape[-2:]) for f in self.features]

    def shape_table(self, strides: list[int] | None = None) -> str:
        """What the record holds, as a Markdown table of each field's dimensions and shape
        (feature levels with their ``strides`` when given): the notebooks' view of a forward pass."""
        rows = [("logits", "K, B, Q, C", self.logits), ("boxes_cxcywh", "K, B, Q, 4", self.boxes_cxcywh),
                ("decoder_hidden", "K, B, Q, D", self.decoder_hidden),
                ("query_embeddings", "Q, D_q" if self.query_embeddings.dim() == 2 else "B, Q, D_q",
                 self.query_embeddings)]
        for level, (feature, encoder_input) in enumerate(zip(self.features, self.encoder_inputs, strict=True)):
            where = f"level {level}" + (f", stride {strides[level]}" if strides else "")
            rows += [(f"features ({where})", "B, D, H_l, W_l", feature),
                     (f"encoder_inputs ({where})", "B, D, H_l, W_l", encoder_input)]
        lines = ["| field | dimensions | shape |", "|---|---|---|"]
        lines += [f"| {name} | [{dims}] | {list(tensor.shape)} |" for name, dims, tensor in rows]
        return "\n".join(lines) + f"\n\nclass head: {self.class_head}"

    def detection_stages(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [K', B, Q, C], boxes_cxcywh [K', B, Q, 4]): every stage the detector's own loss
        supervises, the encoder's proposals (where the family has them) before the decoder's."""
        if self.proposals is None:
            return self.logits, self.boxes_cxcywh
        return (torch.cat([self.proposals.logits, self.logits]),
                torch.cat([self.proposals.boxes_cxcywh, self.boxes_cxcywh]))


@dataclass
class DecodedQueries:
    """Decoder outputs for an extra set of queries run on a record's encoder output.

    Attributes:
        logits: [K, B, Q', C]; boxes_cxcywh: [K, B, Q', 4]; decoder_hidden: [K, B, Q', D].
    """

    logits: torch.Tensor
    boxes_cxcywh: torch.Tensor
    decoder_hidden: torch.Tensor


@dataclass
class DenoisingOutputs:
    """The denoising queries of one training pass (RT-DETR, D-FINE): noised copies of the
    ground-truth boxes and labels, decoded beside the object queries behind transformers' own
    attention mask, each positive one trained to reconstruct its box (DN-DETR / DINO).

    N = denoising queries (dn_num_split[0]: groups x 2 x the batch's most objects).

    Attributes:
        logits: [K, B, N, C]; boxes_cxcywh: [K, B, N, 4], the same stages as the record's.
        matches: per image (denoising query indices, GT indices): which box each positive
            query reconstructs; negatives and padding are trained towards no object.
        num_groups: denoising groups; the loss normalises by num_boxes x num_groups.
    """

    logits: torch.Tensor
    boxes_cxcywh: torch.Tensor
    matches: list[tuple[torch.Tensor, torch.Tensor]]
    num_groups: int


def record_in_float32(record: DetrRecord) -> DetrRecord:
    """The record with every floating-point tensor as float32 (a no-op for float32 ones)."""

    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        if isinstance(value, list):
            return [cast(v) for v in value]
        if isinstance(value, DecodedQueries):
            return DecodedQueries(*(cast(getattr(value, f.name)) for f in dataclasses.fields(value)))
        return value

    tensors = [f.name for f in dataclasses.fields(record) if f.name not in ("decoder_inputs", "denoising")]
    return dataclasses.replace(record, **{name: cast(getattr(record, name)) for name in tensors})

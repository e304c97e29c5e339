"""Adapter for the package's own ``AdaMixerForObjectDetection`` (``models/adamixer``).

AdaMixer has no encoder: the record's ``features`` and ``encoder_inputs`` are both the
projected multi-scale maps the decoder samples (the paper distils these for AdaMixer).
Learned queries are [Q, D + 4]: content vector, then the initial box (x, y, z, r) relative
to the image. ``decode`` runs all stages again on the record's maps with other queries;
``forward_with_group`` runs the model's own queries and another group in one decoder pass,
kept apart by a block-diagonal self-attention mask.
"""

from __future__ import annotations

import torch

from detrdistill.models.adapters.base import DetrAdapter, split_group
from detrdistill.models.record import DecodedQueries, DetrRecord


class AdaMixerAdapter(DetrAdapter):
    class_head = "sigmoid"
    takes_per_image_queries = False  # AdaMixerForObjectDetection.decode takes one set [Q', D + 4]

    @property
    def num_feature_levels(self) -> int:
        return len(self.model.strides)

    def learned_queries(self) -> torch.Tensor:
        return self.model.learned_queries()

    def __call__(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, targets: list[dict] | None = None
    ) -> DetrRecord:
        features = self.model.encode(pixel_values, pixel_mask)
        return self._record(features, self.model.decode(self.learned_queries(), features))

    def forward_with_group(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, queries: torch.Tensor,
        targets: list[dict] | None = None,
    ) -> tuple[DetrRecord, DecodedQueries]:
        features = self.model.encode(pixel_values, pixel_mask)
        own = self.learned_queries()
        decoded = self.model.decode(torch.cat([own, queries]), features, group_sizes=[own.shape[0], queries.shape[0]])
        return split_group(self._record(features, decoded), own.shape[0])

    def _record(self, features, decoded) -> DetrRecord:
        """AdaMixerFeatures + AdaMixerDecoderOutput -> DetrRecord."""
        return DetrRecord(
            logits=decoded.logits,
            boxes_cxcywh=decoded.boxes_cxcywh,
            decoder_hidden=decoded.hidden,
            features=list(features.maps),
            feature_masks=list(features.masks),
            encoder_inputs=list(features.maps),
            query_embeddings=self.learned_queries(),
            class_head=self.class_head,
            decoder_inputs={"features": features},
        )

    def decode(self, record: DetrRecord, queries: torch.Tensor) -> DecodedQueries:
        decoded = self.model.decode(queries, record.decoder_inputs["features"])
        return DecodedQueries(logits=decoded.logits, boxes_cxcywh=decoded.boxes_cxcywh, decoder_hidden=decoded.hidden)

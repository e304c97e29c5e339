"""Query-prior assignment distillation (paper section 4.3, eq. 9).

The teacher's learned queries run through the student's decoder as an extra group, on the
student's own encoder output, in the same decoder pass as the student's own queries behind a
block-diagonal self-attention mask (so the two groups never attend to each other; see the
adapters' ``forward_with_group``). That group is trained with the ordinary detection loss against the ground
truth, but with the teacher's stable stage-wise assignment (teacher query i <-> GT j)
instead of a fresh Hungarian match. A learnable linear map takes teacher queries to the
student's query width when they differ. Training only: the saved student uses its own
queries.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.losses.detection import DetectionLoss
from detrdistill.matching import MatchIndices
from detrdistill.models.record import DecodedQueries


class AssignmentDistillation(nn.Module):
    """L_assignKD summed over student stages, as {"ad_cls", "ad_bbox", "ad_giou"}.

    Args:
        teacher_query_dim, student_query_dim: widths of the learned query embeddings.
    """

    def __init__(self, teacher_query_dim: int, student_query_dim: int):
        super().__init__()
        self.query_map = (
            nn.Linear(teacher_query_dim, student_query_dim)
            if teacher_query_dim != student_query_dim
            else nn.Identity()
        )

    def prior_queries(self, teacher_queries: torch.Tensor) -> torch.Tensor:
        """[M, D_qT] frozen teacher queries -> [M, D_qS] the student decoder's extra group."""
        return self.query_map(teacher_queries.detach())

    def forward(
        self,
        decoded: DecodedQueries,
        teacher_gt_indices: list[MatchIndices],
        stage_map: list[int],
        targets: list[dict],
        criterion: DetectionLoss,
        num_boxes: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """decoded: the student decoder's outputs for ``prior_queries`` [K_S, B, M, ...];
        teacher_gt_indices: the teacher's match to GT at each teacher stage; stage_map: teacher
        stage for each student stage; num_boxes: as the student's detection loss (see DetectionLoss)."""
        indices = [teacher_gt_indices[teacher_stage] for teacher_stage in stage_map]
        terms, _ = criterion(decoded.logits, decoded.boxes_cxcywh, targets, indices=indices, num_boxes=num_boxes)
        return {name.replace("det_", "ad_"): value for name, value in terms.items()}

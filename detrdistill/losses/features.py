"""Target-aware feature distillation (paper section 4.2, eq. 5-8).

The student imitates the teacher's encoder features, F^T - phi(F^S), under soft spatial
masks built from the teacher's query embeddings (its last decoder stage's output, one per
prediction, as in the public release). Eq. 8 is

    L = sum_i q_i / (M d HW) * ||psi_i (F^T - phi(F^S))||^2

so each pixel's squared error is weighted by w = mean_i q_i psi_i^2: psi_i enters squared,
and its sign never matters. The quality score q_i = c_i^gamma * IoU(b_i, matched GT)^(1 - gamma)
(eq. 7); c_i is the teacher's top class probability and the IoU is with the GT box the
teacher's own Hungarian match gives query i (0 for unmatched queries). The masks
(``distill.features.mask``):

- ``paper``: eq. 6 literally, psi_i = F^T . Q_i, the raw dot product over channels, with
  eq. 8's quality weighting. Its scale is that of the features times the queries' (about
  70x the ``quality`` form's mean weight on the trained Deformable teacher here), so
  lambda_FD = 20 means the paper's weight only with features of the paper's scale.
- ``quality`` (default): psi_i = HW * softmax over valid positions of
  (F^T . Q_i / (tau sqrt(d))), with eq. 8's quality weighting: a spatial attention map of the
  query, mean 1 over the image, so the weight's scale does not depend on the features'.
  tau = ``distill.features.temperature``; at tau = 1 the masks of the trained teachers here
  are nearly uniform (median E[psi^2] 1.5, uniform 1), a lower tau sharpens them.
- ``vanilla`` (eq. 6's mean, Table 2's weak baseline): psi = mean_i psi_i of the softmax
  masks, all queries equal.
- ``release``: cosine similarity of F^T and Q_i, summed with weights score * max-IoU,
  clamped at 0.01 and divided by its per-image maximum.

Student levels are paired with the teacher level of the same spatial size; where the
teacher has none (e.g. a single-scale teacher for a multi-scale student) the teacher map is
resized to the student's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detrdistill.box_ops import box_cxcywh_to_xyxy, box_iou
from detrdistill.config import FeatureDistillConfig
from detrdistill.matching import MatchIndices
from detrdistill.models.record import DetrRecord


def class_scores(logits: torch.Tensor, class_head: str) -> torch.Tensor:
    """Top class probability per prediction: [..., C] -> [...] (no-object excluded)."""
    if class_head == "softmax":
        return logits.softmax(-1)[..., :-1].max(-1).values
    return logits.sigmoid().max(-1).values


def matched_iou(boxes_cxcywh: torch.Tensor, targets: list[dict], gt_indices: MatchIndices) -> torch.Tensor:
    """IoU of each prediction with the GT box it is matched to (0 if unmatched): [B, M, 4] -> [B, M]."""
    iou = torch.zeros(boxes_cxcywh.shape[:2], device=boxes_cxcywh.device)
    for image, (queries, gts) in enumerate(gt_indices):
        if len(queries):
            predicted = box_cxcywh_to_xyxy(boxes_cxcywh[image, queries])
            target = box_cxcywh_to_xyxy(targets[image]["boxes"][gts].to(boxes_cxcywh.device))
            iou[image, queries] = box_iou(predicted, target)[0].diagonal().clamp(min=0)
    return iou


def max_iou(boxes_cxcywh: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """Each prediction's best IoU with any GT box of its image: [B, M, 4] -> [B, M]."""
    iou = torch.zeros(boxes_cxcywh.shape[:2], device=boxes_cxcywh.device)
    for image, target in enumerate(targets):
        if len(target["boxes"]):
            pairwise, _ = box_iou(box_cxcywh_to_xyxy(boxes_cxcywh[image]),
                                  box_cxcywh_to_xyxy(target["boxes"].to(boxes_cxcywh.device)))
            iou[image] = pairwise.max(-1).values
    return iou


def quality_scores(scores: torch.Tensor, iou: torch.Tensor, gamma: float) -> torch.Tensor:
    """q = c^gamma * IoU^(1 - gamma) (eq. 7), elementwise."""
    return scores.clamp(min=0) ** gamma * iou.clamp(min=0) ** (1 - gamma)


def query_masks(
    features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-query spatial attention masks, HW * softmax(F . Q_i / (temperature sqrt(D))).

    Args:
        features: [B, D, H, W] teacher features; valid: [B, H, W] bool (False = padding);
        queries: [B, M, D] teacher query embeddings; temperature: tau, in units of sqrt(D).

    Returns:
        [B, M, H, W], non-negative, 0 on padding, mean 1 over each image's valid pixels.
    """
    batch, dim, height, width = features.shape
    logits = torch.einsum("bmd,bdhw->bmhw", queries, features) / (temperature * dim**0.5)
    logits = logits.masked_fill(~valid[:, None], float("-inf"))
    attention = logits.flatten(2).softmax(-1).view(batch, -1, height, width)
    num_valid = valid.flatten(1).sum(-1).clamp(min=1).view(batch, 1, 1, 1)
    return attention * num_valid


def dot_product_masks(features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Eq. 6's psi_i = F . Q_i, the raw dot product over channels: [B, M, H, W], 0 on padding.

    features: [B, D, H, W]; valid: [B, H, W] bool; queries: [B, M, D]. Signed and unscaled.
    """
    return torch.einsum("bmd,bdhw->bmhw", queries, features) * valid[:, None]


def cosine_masks(features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The release's per-query map cos(F^T, Q_i): [B, M, H, W] in [-1, 1], 0 on padding.

    features: [B, D, H, W]; valid: [B, H, W] bool; queries: [B, M, D].
    """
    cosine = torch.einsum("bmd,bdhw->bmhw", F.normalize(queries, dim=-1), F.normalize(features, dim=1))
    return cosine * valid[:, None]


def release_mask(
    features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The release's mask: sum_i w_i cos(F^T, Q_i), clamped at 0.01, / per-image max -> [B, H, W]."""
    mask = (weights[:, :, None, None] * cosine_masks(features, valid, queries)).sum(1).clamp(min=0.01) * valid
    return mask / mask.flatten(1).max(-1).values.clamp(min=1e-6).view(-1, 1, 1)


def _align(teacher: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a teacher map [B, C, H, W] to ``size`` (area-average down, bilinear up)."""
    if tuple(teacher.shape[-2:]) == tuple(size):
        return teacher
    if size[0] <= teacher.shape[-2] and size[1] <= teacher.shape[-1]:
        return F.adaptive_avg_pool2d(teacher, size)
    return F.interpolate(teacher, size=size, mode="bilinear", align_corners=False)


def pair_levels(student_shapes: list[tuple[int, int]], teacher_shapes: list[tuple[int, int]]) -> list[int]:
    """Teacher level for each student level: the same spatial size, else the closest in area."""
    pairs = []
    for shape in student_shapes:
        area = shape[0] * shape[1]
        same = [i for i, t in enumerate(teacher_shapes) if tuple(t) == tuple(shape)]
        pairs.append(same[0] if same else min(range(len(teacher_shapes)),
                                               key=lambda i: abs(teacher_shapes[i][0] * teacher_shapes[i][1] - area)))
    return pairs


class FeatureDistillation(nn.Module):
    """L_featKD over all student feature levels, with the learnable adaptation layers phi.

    Args:
        config: mask type, gamma, temperature, feature source (checked by the config itself).
        student_dim, teacher_dim: channel widths of the distilled features.
        num_student_levels: number of student feature levels (one phi each).
    """

    def __init__(self, config: FeatureDistillConfig, student_dim: int, teacher_dim: int, num_student_levels: int):
        super().__init__()
        self.config = config
        self.projections = nn.ModuleList(
            nn.Conv2d(student_dim, teacher_dim, kernel_size=1) if student_dim != teacher_dim else nn.Identity()
            for _ in range(num_student_levels)
        )

    def query_weights(self, scores: torch.Tensor, boxes_cxcywh: torch.Tensor, targets: list[dict],
                      gt_indices: MatchIndices) -> torch.Tensor | None:
        """Each teacher query's weight for this mask type: [B, M] from the teacher's top class
        probabilities [B, M], boxes [B, M, 4] and its own match to GT; None for "vanilla"."""
        if self.config.mask in ("quality", "paper"):
            return quality_scores(scores, matched_iou(boxes_cxcywh, targets, gt_indices), self.config.gamma)
        if self.config.mask == "release":
            return scores * max_iou(boxes_cxcywh, targets)
        return None

    def masks_per_query(self, features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Each teacher query's mask psi_i under this form, for one level: [B, M, H, W].

        ``paper``: the raw dot product F . Q_i; ``quality`` and ``vanilla``: the spatial softmax
        (``vanilla`` averages them over queries); ``release``: cos(F^T, Q_i), which it sums with
        the query weights. features [B, D, H, W], valid [B, H, W] bool, queries [B, M, D].
        """
        if self.config.mask == "paper":
            return dot_product_masks(features, valid, queries)
        if self.config.mask == "release":
            return cosine_masks(features, valid, queries)
        return query_masks(features, valid, queries, self.config.temperature)

    def weight_maps(
        self, features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor, query_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-pixel weight w on ||F^T - phi(F^S)||^2 for one teacher level: [B, H, W].

        query_weights: [B, M] from ``query_weights`` (unused by the vanilla mask).
        """
        if self.config.mask == "release":
            return release_mask(features, valid, queries, query_weights) ** 2
        masks = self.masks_per_query(features, valid, queries)
        if self.config.mask == "vanilla":
            return masks.mean(1) ** 2
        # sum_i q_i / M * psi_i^2: eq. 8's per-query squared masks folded into one map.
        return (query_weights[:, :, None, None] * masks**2).mean(1)

    def forward(self, student: DetrRecord, teacher: DetrRecord, query_weights: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        """{"fd": L_featKD} between the records' maps of ``config.features`` (the encoder output,
        or its input), the masks built from the teacher's last decoder stage; query_weights
        [B, M] (``query_weights``). Before lambda_FD."""
        use_input = self.config.features == "encoder_input"
        return {"fd": self.loss(
            student.encoder_inputs if use_input else student.features,
            teacher.encoder_inputs if use_input else teacher.features,
            teacher.feature_masks,
            teacher.decoder_hidden[-1],
            query_weights,
        )}

    def loss(
        self,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
        teacher_valid: list[torch.Tensor],
        teacher_queries: torch.Tensor,
        query_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """student_features per level [B, D_S, H, W]; teacher_features per level [B, D_T, H', W']
        with validity masks [B, H', W']; teacher_queries [B, M, D_T]; query_weights [B, M] (see
        ``query_weights``). Returns the scalar loss, summed over student levels, averaged over images."""
        teacher_shapes = [tuple(f.shape[-2:]) for f in teacher_features]
        student_shapes = [tuple(f.shape[-2:]) for f in student_features]
        loss = student_features[0].sum() * 0.0
        for level, teacher_level in enumerate(pair_levels(student_shapes, teacher_shapes)):
            size = student_shapes[level]
            with torch.no_grad():
                teacher = _align(teacher_features[teacher_level], size)
                valid = _align(teacher_valid[teacher_level][:, None].float(), size)[:, 0] > 0.5
                weight = self.weight_maps(teacher, valid, teacher_queries, query_weights)
            difference = (teacher - self.projections[level](student_features[level])) ** 2
            num_valid = valid.flatten(1).sum(-1).clamp(min=1)
            per_image = (weight[:, None] * difference).flatten(1).sum(-1) / (num_valid * teacher.shape[1])
            loss = loss + per_image.mean()
        return loss

"""Assignment distillation step by step on one image (notebook 04's walk-through, 4.3).

For one image: the extra query group AD runs through the student's decoder (the teacher's
queries through the learned query map), the teacher's assignment it is trained with at each
student stage (fixed, where the student's own queries get a fresh Hungarian match), this
image's AD loss terms, and the assignment of each GT box to a query stage by stage for any
number of models, with the instability IS it gives on this image. The pieces are the loss's
and the IS analysis's own (``losses/assignment.py``, ``analysis/instability.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detrdistill.analysis.draw import to_pixels_xyxy
from detrdistill.analysis.instability import UNMATCHED, assignment_vector, match_every_stage, stage_changes
from detrdistill.config import LossConfig
from detrdistill.losses.assignment import AssignmentDistillation
from detrdistill.losses.detection import DetectionLoss
from detrdistill.losses.logits import stage_mapping
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for
from detrdistill.models.record import DecodedQueries


@dataclass
class AdStep:
    """One image's extra query group. K = student stages, M = teacher queries, n = GT boxes.

    Attributes:
        prior_queries: [M, D_q] the extra group, teacher queries mapped to the student's width (the
            image's own for a teacher that selects its queries per image: RT-DETR, D-FINE).
        boxes_xyxy: [K, M, 4] px, the student's answer to each teacher query at each stage.
        teacher_boxes_xyxy: [M, 4] px, the teacher's own last-stage boxes.
        stage_map: [K] the teacher stage whose assignment trains each student stage.
        assignment: per student stage, [P, 2] (teacher query, GT index): the teacher's match at
            its mapped stage, the fixed targets of the extra group.
        terms: {"ad_cls", "ad_bbox", "ad_giou"}, this image's AD loss (before lambda_AD).
        gt_boxes_xyxy: [n, 4] px.
    """

    prior_queries: np.ndarray
    boxes_xyxy: np.ndarray
    teacher_boxes_xyxy: np.ndarray
    stage_map: list[int]
    assignment: list[np.ndarray]
    terms: dict[str, float]
    gt_boxes_xyxy: np.ndarray


@torch.no_grad()
def ad_step(student, teacher, batch: dict, image: int = 0, query_map: nn.Module | None = None,
            loss: LossConfig | None = None) -> AdStep:
    """AD on image ``image`` of a collated batch: the student's decoder run on the teacher's
    queries (through ``query_map``, ``query_prior.load_query_map``), against the teacher's
    assignment; ``loss`` the run's matching costs and loss weights (its ``config.loss``)."""
    loss = loss or LossConfig()
    student_adapter, teacher_adapter = adapter_for(student), adapter_for(teacher)
    student.eval()
    teacher.eval()
    t = teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
    s = student_adapter(batch["pixel_values"], batch["pixel_mask"])
    assignment = AssignmentDistillation(teacher_adapter.query_dim, student_adapter.query_dim)
    assignment.query_map = query_map or nn.Identity()
    prior_queries = assignment.prior_queries(t.query_embeddings)
    one = slice(image, image + 1)  # the image's own outputs: the forward pass treats images apart
    whole = student_adapter.decode(s, prior_queries)
    decoded = DecodedQueries(whole.logits[:, one], whole.boxes_cxcywh[:, one], whole.decoder_hidden[:, one])
    targets = batch["labels"][one]
    matcher = HungarianMatcher.from_config(loss, teacher_adapter.class_head)
    teacher_gt = [matcher(t.logits[k, one], t.boxes_cxcywh[k, one], targets) for k in range(t.num_stages)]
    stage_map = stage_mapping(s.num_stages, t.num_stages, progressive=True)
    criterion = DetectionLoss(loss, student_adapter.num_classes, student_adapter.class_head)
    terms = assignment(decoded, teacher_gt, stage_map, targets, criterion)
    size = batch["padded_size"]
    return AdStep(
        prior_queries=(prior_queries[image] if prior_queries.dim() == 3 else prior_queries).numpy(),
        boxes_xyxy=to_pixels_xyxy(decoded.boxes_cxcywh[:, 0], size),
        teacher_boxes_xyxy=to_pixels_xyxy(t.boxes_cxcywh[-1, image], size),
        stage_map=stage_map,
        assignment=[torch.stack(teacher_gt[k][0], 1).numpy() for k in stage_map],
        terms={name: float(value) for name, value in terms.items()},
        gt_boxes_xyxy=to_pixels_xyxy(targets[0]["boxes"], size),
    )


@dataclass
class StageAssignment:
    """Which query each GT box is matched to at each decoder stage, for one model and image.

    Attributes:
        query_of_gt: [K, n] the query the model's own Hungarian match gives GT j at stage k.
        changes: [K - 1] IS^k on this image, the predictions whose assigned GT (or none)
            differs between stages k and k + 1 (``instability.stage_changes``).
    """

    query_of_gt: np.ndarray
    changes: np.ndarray


@torch.no_grad()
def stage_assignments(models: dict[str, nn.Module], batch: dict, image: int = 0,
                      loss: LossConfig | None = None) -> dict[str, StageAssignment]:
    """For each model (label -> detector), its stage-by-stage assignment on image ``image``:
    the instability before and after AD when given a student trained without and with it."""
    loss = loss or LossConfig()
    num_gt = len(batch["labels"][image]["boxes"])
    result = {}
    for label, model in models.items():
        adapter = adapter_for(model)
        model.eval()
        every_image, num_queries = match_every_stage(adapter, HungarianMatcher.from_config(loss, adapter.class_head),
                                                     batch)
        matches = [stage[image] for stage in every_image]
        query_of_gt = torch.full((len(matches), num_gt), UNMATCHED, dtype=torch.int64)
        for stage, (queries, gts) in enumerate(matches):
            query_of_gt[stage, gts] = queries
        per_query = torch.stack([assignment_vector(*match, num_queries=num_queries) for match in matches])
        result[label] = StageAssignment(query_of_gt.numpy(), stage_changes(per_query).numpy())
    return result

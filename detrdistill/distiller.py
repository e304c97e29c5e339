"""DETRDistill as a training objective: a frozen teacher, a student, and the three KD losses.

    L = L_det + lambda_ld * L_LD + lambda_fd * L_FD + lambda_ad * L_AD      (paper section 4.4)

The teacher runs in eval mode under no_grad on the same augmented batch as the student.
The losses only read ``DetrRecord``s, so any supported family can teach any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detrdistill.config import ConfigError, RunConfig
from detrdistill.losses.assignment import AssignmentDistillation
from detrdistill.losses.baselines import baseline_terms, build_baseline
from detrdistill.losses.denoising import denoising_terms
from detrdistill.losses.detection import DetectionLoss
from detrdistill.losses.features import FeatureDistillation, class_scores
from detrdistill.losses.logits import LogitsDistillation, stage_mapping
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for
from detrdistill.models.record import record_in_float32
from detrdistill.precision import autocast


class DistillHeads(nn.Module):
    """The distiller's own trainable layers: FD's adaptation convs, AD's query map and a
    comparison baseline's layers (adapters, MGD generators, FGD GcBlocks)."""

    def __init__(self, features: FeatureDistillation | None, assignment: AssignmentDistillation | None,
                 baseline: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.assignment = assignment
        self.baseline = baseline


def teacher_logits_for(student_head: str, teacher_logits: torch.Tensor, teacher_head: str) -> torch.Tensor:
    """Teacher logits in the student's class-head convention, for class distillation.

    A softmax teacher (DETR) teaching a sigmoid student becomes per-class logits whose
    sigmoid is the teacher's class probability.
    """
    if student_head == teacher_head:
        return teacher_logits
    if teacher_head == "softmax":
        return torch.logit(teacher_logits.softmax(-1)[..., :-1], eps=1e-6)
    raise ConfigError(
        "a sigmoid-head teacher (Conditional/Deformable DETR) cannot give class targets to a softmax-head "
        "student (DETR): for box-only logits distillation set distill.logits.pos_cls: false and "
        "distill.logits.class_cost: 0, disable distill.logits.enabled, or pick a sigmoid-head student"
    )


class DETRDistillObjective:
    """Callable training objective: batch -> dict of named, weighted loss terms.

    Terms: det_cls, det_bbox, det_giou (the student's own loss; det_dn_cls, det_dn_bbox,
    det_dn_giou too for a student that trains with denoising queries), ld_pos_cls, ld_pos_box,
    ld_neg_box (x lambda_ld), fd (x lambda_fd), ad_cls, ad_bbox, ad_giou (x lambda_ad).

    Only the student gets the batch's targets, and only for its denoising groups, which its
    record keeps apart from the stages every distillation term reads.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: RunConfig):
        self.config = config.distill
        self.student, self.teacher = student, teacher
        teacher.eval().requires_grad_(False)
        self.student_adapter, self.teacher_adapter = adapter_for(student), adapter_for(teacher)
        student_head, teacher_head = self.student_adapter.class_head, self.teacher_adapter.class_head
        if self.student_adapter.num_classes != self.teacher_adapter.num_classes:
            raise ConfigError(
                f"teacher has {self.teacher_adapter.num_classes} classes, student "
                f"{self.student_adapter.num_classes}: distill between models of the same label set"
            )
        self.logits_distillation = LogitsDistillation(self.config.logits, student_head)
        if self.config.logits.enabled and self.config.logits.proposal_stage and not (
                self.student_adapter.has_proposals and self.teacher_adapter.has_proposals):
            raise ConfigError("distill.logits.proposal_stage needs a teacher and a student with encoder proposals "
                              "(RT-DETR, D-FINE); turn it off for this pair")
        if self.config.logits.enabled and self.logits_distillation.needs_class_targets:
            teacher_logits_for(student_head, torch.zeros(1, 2), teacher_head)  # fail early on a bad pairing
        self.criterion = DetectionLoss(config.loss, self.student_adapter.num_classes, student_head)
        self.teacher_matcher = HungarianMatcher.from_config(config.loss, teacher_head)
        features = None
        if self.config.features.enabled:
            features = FeatureDistillation(
                self.config.features, self.student_adapter.d_model, self.teacher_adapter.d_model,
                self.student_adapter.num_feature_levels,
            )
        assignment = None
        if self.config.assignment.enabled:
            if self.teacher_adapter.per_image_queries and not self.student_adapter.takes_per_image_queries:
                raise ConfigError(
                    f"a {teacher.config.model_type} teacher selects its queries per image, and a "
                    f"{student.config.model_type} student decodes only one query set for all images: "
                    "set distill.assignment.enabled: false for this pair"
                )
            assignment = AssignmentDistillation(self.teacher_adapter.query_dim, self.student_adapter.query_dim)
        baseline = build_baseline(
            self.config.baseline, self.student_adapter.d_model, self.teacher_adapter.d_model,
            self.student_adapter.num_feature_levels,
        )
        self.heads = DistillHeads(features, assignment, baseline)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.student, "distill_heads": self.heads}

    @property
    def size_divisor(self) -> int:
        """What the batches' canvas sides must be multiples of: both models' needs (``collate_detection``)."""
        return math.lcm(self.student_adapter.size_divisor, self.teacher_adapter.size_divisor)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        pixel_values, pixel_mask, targets = batch["pixel_values"], batch["pixel_mask"], batch["labels"]
        with torch.no_grad():
            with autocast(self.config.teacher_precision, pixel_values.device, "distill.teacher_precision"):
                teacher = self.teacher_adapter(pixel_values, pixel_mask)
            teacher = record_in_float32(teacher)  # matching and losses read float32
            # The teacher's own match to GT feeds LD, FD and AD only; a baseline-only run skips it.
            needs_match = self.config.logits.enabled or self.config.features.enabled or self.config.assignment.enabled
            teacher_gt = [
                self.teacher_matcher(teacher.logits[k], teacher.boxes_cxcywh[k], targets)
                for k in range(teacher.num_stages if needs_match else 0)
            ]
        cfg = self.config
        num_boxes = batch.get("num_boxes")
        if cfg.assignment.enabled:
            prior_queries = self.heads.assignment.prior_queries(teacher.query_embeddings)
            student, prior_group = self.student_adapter.forward_with_group(pixel_values, pixel_mask, prior_queries,
                                                                           targets)
        else:
            student = self.student_adapter(pixel_values, pixel_mask, targets)
        terms, _ = self.criterion(*student.detection_stages(), targets, num_boxes=num_boxes)
        if student.denoising is not None:
            terms.update(denoising_terms(self.criterion, student.denoising, targets, num_boxes))
        student_head = self.student_adapter.class_head

        if cfg.logits.enabled:
            teacher_logits = teacher.logits  # read only by the class term and the class cost
            if self.logits_distillation.needs_class_targets:
                teacher_logits = teacher_logits_for(student_head, teacher.logits, self.teacher_adapter.class_head)
            logits_terms = self.logits_distillation(
                student.logits, student.boxes_cxcywh, teacher_logits, teacher.boxes_cxcywh, teacher_gt
            )
            if cfg.logits.proposal_stage:
                proposal_terms = self._proposal_stage_terms(student, teacher, targets)
                logits_terms = {name: value + proposal_terms[name] for name, value in logits_terms.items()}
            terms.update({name: cfg.lambda_ld * value for name, value in logits_terms.items()})

        if cfg.features.enabled:
            features = self.heads.features
            with torch.no_grad():
                scores = class_scores(teacher.logits[-1], self.teacher_adapter.class_head)
                query_weights = features.query_weights(scores, teacher.boxes_cxcywh[-1], targets, teacher_gt[-1])
            feature_terms = features(student, teacher, query_weights)
            terms.update({name: cfg.lambda_fd * value for name, value in feature_terms.items()})

        if cfg.assignment.enabled:
            stage_map = stage_mapping(student.num_stages, teacher.num_stages, progressive=True)
            assignment_terms = self.heads.assignment(
                prior_group, teacher_gt, stage_map, targets, self.criterion, num_boxes
            )
            terms.update({name: cfg.lambda_ad * value for name, value in assignment_terms.items()})

        if self.heads.baseline is not None:  # a comparison baseline (losses/baselines/)
            terms.update(baseline_terms(self.heads.baseline, cfg.baseline, student, teacher, targets))
        return terms

    def _proposal_stage_terms(self, student, teacher, targets) -> dict[str, torch.Tensor]:
        """LD on the encoder's top-k proposals alone, one stage each, the teacher's positives
        from its own match of its proposals to the ground truth."""
        with torch.no_grad():
            teacher_gt = self.teacher_matcher(teacher.proposals.logits[0], teacher.proposals.boxes_cxcywh[0], targets)
        return self.logits_distillation(
            student.proposals.logits, student.proposals.boxes_cxcywh, teacher.proposals.logits,
            teacher.proposals.boxes_cxcywh, [teacher_gt],
        )

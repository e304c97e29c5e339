"""The denoising loss of families that train with denoising queries (RT-DETR, D-FINE).

Noised copies of the ground truth run through the decoder beside the object queries
(``DetrRecord.denoising``); each positive copy is trained to reconstruct its own box and
class, every other one towards no object, with the detector's ordinary per-stage loss under
the known assignment instead of a Hungarian match, normalised by num_boxes x the number of
groups (DN-DETR / DINO, transformers' ``RTDetrLoss``). Part of the student's own loss only:
no distillation term reads these queries.
"""

from __future__ import annotations

import torch

from detrdistill.distributed import mean_over_processes
from detrdistill.losses.detection import DetectionLoss
from detrdistill.models.record import DenoisingOutputs


def denoising_terms(
    criterion: DetectionLoss, denoising: DenoisingOutputs, targets: list[dict], num_boxes: float | None = None
) -> dict[str, torch.Tensor]:
    """{"det_dn_cls", "det_dn_bbox", "det_dn_giou"}, each summed over the stages; ``num_boxes``
    as the detection loss's (default: the batch's box count averaged over processes)."""
    if num_boxes is None:
        num_boxes = mean_over_processes(torch.tensor(float(sum(len(t["boxes"]) for t in targets)))).item()
    stages = denoising.logits.shape[0]
    terms, _ = criterion(denoising.logits, denoising.boxes_cxcywh, targets, indices=[denoising.matches] * stages,
                         num_boxes=max(num_boxes, 1.0) * denoising.num_groups)
    return {name.replace("det_", "det_dn_"): value for name, value in terms.items()}

"""Fit a pretrained detector's class head to a dataset's categories, matched by name.

Hub COCO checkpoints (facebook/detr-*, microsoft/conditional-detr-*, SenseTime/deformable-detr*)
have 91 class slots, one per COCO category id including the unused ones ("N/A"), while
``CocoDetection`` numbers a split's categories 0..C-1 in id order (80 for COCO 2017; the
RT-DETR and D-FINE checkpoints have those 80). The rows of the class head that belong to the
dataset's categories are kept, in the dataset's order; predictions for those classes are
unchanged (sigmoid heads exactly; softmax heads keep the no-object row and renormalise over
fewer classes). RT-DETR and D-FINE have two more: the encoder's proposal scores
(``enc_score_head``), and the label embedding of their denoising queries
(``denoising_class_embed``, whose last row is the padding label). They pick their queries by
each position's best score over all classes, so a restricted model may select other
proposals than the full one: its detections of the kept classes are not the same.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.data.errors import DatasetError


def _class_heads(model: nn.Module, num_slots: int) -> list[tuple[str, nn.Linear]]:
    """Every linear class head (name containing "class", or RT-DETR's "score_head") with ``num_slots`` outputs."""
    heads, seen = [], set()
    for name, module in model.named_modules():
        is_head = "class" in name or "score_head" in name
        if isinstance(module, nn.Linear) and is_head and module.out_features == num_slots:
            if id(module) not in seen:  # Deformable DETR without box refinement shares one head
                seen.add(id(module))
                heads.append((name, module))
    return heads


def _denoising_label_embeddings(model: nn.Module, num_labels: int) -> list[nn.Embedding]:
    """RT-DETR / D-FINE's embedding of denoising labels: a row per class, then the padding label."""
    return [module for name, module in model.named_modules() if isinstance(module, nn.Embedding)
            and name.endswith("denoising_class_embed") and module.num_embeddings == num_labels + 1]


def restrict_to_dataset_classes(model, id2label: dict[int, str], where: str):
    """``model`` with a class head for exactly ``id2label`` (label -> name); unchanged when it
    already has those classes. ``where`` names the model in errors (a path)."""
    model_labels = {int(k): str(v) for k, v in model.config.id2label.items()}
    if model_labels == id2label:
        return model
    by_name = {}
    for label, name in sorted(model_labels.items()):
        by_name.setdefault(name.lower(), label)
    missing = [name for name in id2label.values() if name.lower() not in by_name]
    if missing:
        raise DatasetError(
            f"the model in {where} has classes {sorted(set(model_labels.values()))[:12]}..., without the "
            f"dataset's {missing[:10]}: use a model trained on this label set (classes are matched by name)"
        )
    keep = [by_name[id2label[label].lower()] for label in sorted(id2label)]
    num_labels = len(model_labels)
    softmax = bool(_class_heads(model, num_labels + 1))  # DETR: one more output, "no object"
    rows = torch.tensor(keep + [num_labels] if softmax else keep)
    heads = _class_heads(model, num_labels + 1 if softmax else num_labels)
    if not heads:
        raise DatasetError(f"found no class head in the model in {where} to fit to the dataset's classes")
    with torch.no_grad():
        for _, head in heads:
            head.weight = nn.Parameter(head.weight[rows].clone())
            head.bias = nn.Parameter(head.bias[rows].clone())
            head.out_features = len(rows)
        for embedding in _denoising_label_embeddings(model, num_labels):
            embedding.weight = nn.Parameter(embedding.weight[torch.tensor(keep + [num_labels])].clone())
            embedding.num_embeddings, embedding.padding_idx = len(keep) + 1, len(keep)
    model.config.id2label = dict(id2label)
    model.config.label2id = {name: label for label, name in id2label.items()}
    return model

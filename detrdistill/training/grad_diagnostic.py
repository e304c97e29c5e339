"""Per-term gradient diagnostic: which loss terms push the shared parameters, and against whom.

When "my distillation does not help", the first question is whether a term's gradient
reaches the parameters it should, how large it is beside the detection loss's, and whether
it agrees with the others. Every ``train.grad_diagnostic_every`` steps the loop asks, before
the normal backward pass, for the gradient of each loss component alone:

    components   det (det_*), ld (ld_*), fd, ad (ad_*), kd (a baseline's kd_<method>), as
                 weighted in the objective (so "fd" is lambda_FD x L_FD)
    groups       the student's trainable parameters in four groups: backbone, encoder (with
                 the input projections that feed it), decoder (with the queries), heads; and
                 the distiller's own layers (FD's projections, AD's query map, a baseline's),
                 "distill_heads", which are not shared but count in the clipped gradient norm

and records, per group, each component's gradient norm and the cosine between every two
components' gradients (None where either has no gradient there, e.g. FD on the heads). The
gradients come from ``torch.autograd.grad`` on the retained graph: nothing is accumulated
into ``.grad``, so the training run is the same as without the diagnostic. Off (0) costs
nothing: the loop checks one integer. With several processes the main process measures its
own slice of the batch.
"""

from __future__ import annotations

import itertools
import time

import torch
from torch import nn

PARAMETER_GROUPS = ("backbone", "encoder", "decoder", "heads", "distill_heads")
# Module names of the class and box heads in transformers' DETR family and in our AdaMixer
# (RT-DETR / D-FINE: also the proposal heads, D-FINE's first-guess and quality heads).
HEAD_MODULES = {"class_embed", "bbox_embed", "class_labels_classifier", "bbox_predictor", "class_head", "box_head",
                "enc_score_head", "enc_bbox_head", "pre_bbox_head", "lqe_layers"}
ENCODER_MODULES = {"encoder", "input_proj", "input_projection", "input_projections", "level_embed",
                   "encoder_input_proj", "decoder_input_proj", "enc_output"}


def parameter_group(name: str) -> str:
    """The group of a parameter from its dotted name: heads, backbone, encoder, else decoder."""
    parts = set(name.split("."))
    if parts & HEAD_MODULES:
        return "heads"
    if "backbone" in parts:
        return "backbone"
    if parts & ENCODER_MODULES:
        return "encoder"
    return "decoder"


def group_parameters(model: nn.Module, distill_heads: list[nn.Module] = ()) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters by group, then the distiller's layers as "distill_heads"
    (``PARAMETER_GROUPS`` order, empty groups left out)."""
    groups: dict[str, list[nn.Parameter]] = {group: [] for group in PARAMETER_GROUPS}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[parameter_group(name)].append(parameter)
    groups["distill_heads"] = [p for module in distill_heads for p in module.parameters() if p.requires_grad]
    return {group: params for group, params in groups.items() if params}


def loss_component(term: str) -> str:
    """The component a named loss term belongs to: ``ld_pos_cls`` -> ``ld``, ``fd`` -> ``fd``."""
    return term.split("_", 1)[0]


def gradient_diagnostic(terms: dict[str, torch.Tensor], groups: dict[str, list[nn.Parameter]]) -> dict:
    """Gradient norms and pairwise cosines of the loss components on each parameter group.

    Args:
        terms: the objective's named, weighted loss terms (scalars sharing one graph, which
            must still be alive: the caller's backward pass comes after).
        groups: ``group_parameters(student)``.

    Returns:
        {"grad_norm": {component: {group: float}},
         "grad_cosine": {group: {"a|b": float or None}}, "grad_ms": float}
    """
    started = time.perf_counter()
    components: dict[str, torch.Tensor] = {}
    for name, value in terms.items():
        key = loss_component(name)
        components[key] = components[key] + value if key in components else value
    parameters = [p for params in groups.values() for p in params]
    flat: dict[str, dict[str, torch.Tensor]] = {}
    for component, loss in components.items():
        grads = torch.autograd.grad(loss.float(), parameters, retain_graph=True, allow_unused=True)
        grads = iter(grads)
        flat[component] = {}
        for group, params in groups.items():
            # A parameter this component does not reach counts as a zero gradient, so every
            # component's vector of a group has the same length (their cosine needs it).
            pieces = [next(grads) for _ in params]
            reached = any(g is not None for g in pieces)
            flat[component][group] = torch.cat([
                (g if g is not None else torch.zeros_like(p)).flatten().float()
                for g, p in zip(pieces, params, strict=True)
            ]) if reached else None
    norms = {c: {g: 0.0 if v is None else v.norm().item() for g, v in by_group.items()} for c, by_group in flat.items()}
    cosines: dict[str, dict[str, float | None]] = {}
    for group in groups:
        cosines[group] = {}
        for a, b in itertools.combinations(flat, 2):
            va, vb = flat[a][group], flat[b][group]
            usable = va is not None and vb is not None and norms[a][group] > 0 and norms[b][group] > 0
            cosines[group][f"{a}|{b}"] = (
                (va @ vb).item() / (norms[a][group] * norms[b][group]) if usable else None
            )
    return {"grad_norm": norms, "grad_cosine": cosines, "grad_ms": round(1000 * (time.perf_counter() - started), 1)}

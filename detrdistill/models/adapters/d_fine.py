"""Adapter for transformers' ``DFineForObjectDetection``.

D-FINE is RT-DETR's encoder, query selection and denoising (see ``rt_detr.py``: proposals,
denoising groups, query prior, features and ``decode`` work the same way here) with another
decoder head. Its first decoder layer makes a first guess of every box
(``pre_bbox_head``); from then on, each layer predicts, for each of the box's four edges, a
distribution over ``max_num_bins + 1`` offsets from that first guess (``bbox_embed``), added
to the previous layer's (fine-grained distribution refinement); the box is the
distributions' expectation under a non-uniform weighting (``integral``, ``distance2bbox``),
and each layer's class logits get a localisation-quality term read off its distributions
(``lqe_layers``).

**Stages**: K = decoder_layers + 1. Stage 0 is the first guess (class_embed[0] on the first
layer's output, box from ``pre_bbox_head``), then one stage per layer: exactly D-FINE's
``intermediate_logits`` / ``intermediate_reference_points`` in training, where stage 0 is
how ``pre_bbox_head`` learns (every later box starts from its detached output). In eval
mode transformers emits only the last layer's; the adapter computes every stage in both
modes with the decoder's own modules and arithmetic, so the last stage equals the model's
``logits`` / ``pred_boxes``. Requires ``eval_idx`` to be the last layer (the released
models' setting).

The per-edge distributions (``intermediate_predicted_corners``, the ``corners`` below,
[B, T, 4 (max_num_bins + 1)] logits) are not in the record. A corner-distribution KL term for
a D-FINE pair (D-FINE's own localisation self-distillation, across models) would add them as
an optional record field filled here, and pair them per stage with LD's teacher-student
matches (``match_teacher_student``) in ``losses/logits.py``; both models need the same
``max_num_bins``, ``up`` and ``reg_scale`` for the bins to mean the same offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.d_fine.modeling_d_fine import distance2bbox, inverse_sigmoid, weighting_function

from detrdistill.models.adapters.rt_detr import RTDetrAdapter


class DFineAdapter(RTDetrAdapter):
    def __init__(self, model):
        config = model.config
        if config.eval_idx not in (-1, config.decoder_layers - 1):
            raise ValueError(f"eval_idx {config.eval_idx} is not supported: the record's last stage must be the last "
                             "decoder layer's (eval_idx -1)")
        super().__init__(model)

    def _stages(
        self, decoder_output, reference_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [L, B, T, D] (D-FINE's decoder stacks layers first) and the initial boxes
        reference_logits [B, T, 4] -> logits [L + 1, B, T, C], boxes [L + 1, B, T, 4], hidden
        [L + 1, B, T, D]; the decoder's arithmetic, detaches included."""
        decoder = self.model.model.decoder
        hidden = decoder_output.intermediate_hidden_states
        project = weighting_function(decoder.max_num_bins, decoder.up, decoder.reg_scale)
        first_guess = F.sigmoid(decoder.pre_bbox_head(hidden[0]) + inverse_sigmoid(F.sigmoid(reference_logits)))
        logits, boxes = [decoder.class_embed[0](hidden[0])], [first_guess]
        corners, previous = 0, 0
        for layer, layer_hidden in enumerate(hidden):
            corners = decoder.bbox_embed[layer](layer_hidden + previous) + corners
            previous = layer_hidden.detach()
            boxes.append(distance2bbox(first_guess.detach(), decoder.integral(corners, project), decoder.reg_scale))
            logits.append(decoder.lqe_layers[layer](decoder.class_embed[layer](layer_hidden), corners))
        return torch.stack(logits), torch.stack(boxes), torch.cat([hidden[:1], hidden])

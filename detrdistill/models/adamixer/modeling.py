"""AdaMixer (Gao et al., CVPR 2022) in plain PyTorch: no encoder, an adaptive decoder.

    image -> ResNet (frozen BatchNorm) -> 1x1 conv + GroupNorm per level (d_model channels)
          -> queries: content vector (LayerNorm of a learned embedding) + box (x, y, z, r)
          -> K stages, each:
               self-attention over queries (content + sinusoidal box embedding, with an
                   IoF bias: log(IoF(b_i, b_j)) times a learned per-head temperature)
               adaptive 3D sampling of the maps at points generated from the content
               adaptive channel then spatial mixing (``mixing.py``), LayerNorm
               FFN (residual, LayerNorm)
               class head (sigmoid) and box head: delta (dx, dy, dz, dr) refines the box
          -> the next stage starts from the refined box, detached (as AdaMixer and
             Deformable DETR's box refinement do).

Boxes come out as cxcywh normalised to the padded canvas, like the transformers families.
Saved with ``save_pretrained(dir)`` as ``config.json`` (``model_type: "adamixer"``) and
``model.safetensors``; ``AdaMixerForObjectDetection.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ResNetBackbone, ResNetConfig
from transformers.models.detr.modeling_detr import replace_batch_norm

from detrdistill.models.adamixer.boxes import (
    WHOLE_IMAGE_XYZR_REL,
    pairwise_iof,
    refine_xyzr,
    relative_to_xyzr,
    xyzr_position_embedding,
    xyzr_to_cxcywh,
    xyzr_to_xyxy,
)
from detrdistill.models.adamixer.config import AdaMixerConfig
from detrdistill.models.adamixer.mixing import AdaptiveMixing
from detrdistill.models.adamixer.sampling import INITIAL_DZ, make_sample_points, sample_3d

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
IOF_EPS = 1e-7  # log(IoF + eps): disjoint boxes get a large finite negative bias, never -inf


@dataclass
class AdaMixerDecoderOutput:
    """Per-stage decoder outputs. K stages, B images, Q queries, C classes, D = d_model.

    Attributes:
        logits: [K, B, Q, C]; boxes_cxcywh: [K, B, Q, 4] normalised to the padded canvas;
        hidden: [K, B, Q, D] each stage's content vectors (what its heads read).
    """

    logits: torch.Tensor
    boxes_cxcywh: torch.Tensor
    hidden: torch.Tensor


@dataclass
class AdaMixerFeatures:
    """What the decoder reads, computed once per image batch.

    Attributes:
        maps: per level [B, D, H_l, W_l] (projected backbone maps).
        masks: per level [B, H_l, W_l] bool, True where the pixel is real (not padding).
        image_wh: [B, 2] real image sizes in pixels (initial boxes cover them).
        canvas_wh: (W, H) of the padded canvas in pixels.
    """

    maps: list[torch.Tensor]
    masks: list[torch.Tensor]
    image_wh: torch.Tensor
    canvas_wh: tuple[int, int]


@dataclass
class AdaMixerObjectDetectionOutput:
    """The model's forward output; ``logits`` and ``pred_boxes`` are the last stage's,
    named as in transformers' detectors.

    Attributes:
        logits: [B, Q, C]; pred_boxes: [B, Q, 4] cxcywh normalised to the padded canvas;
        decoder: every stage's outputs; features: the maps the decoder sampled.
    """

    logits: torch.Tensor
    pred_boxes: torch.Tensor
    decoder: AdaMixerDecoderOutput
    features: AdaMixerFeatures


def _mlp_head(d_model: int, out_dim: int) -> nn.Sequential:
    """AdaMixer's heads: Linear (no bias) + LayerNorm + ReLU, then the output layer."""
    return nn.Sequential(
        nn.Linear(d_model, d_model, bias=False), nn.LayerNorm(d_model), nn.ReLU(), nn.Linear(d_model, out_dim)
    )


class AdaMixerStage(nn.Module):
    """One decoder stage with its own class and box heads."""

    def __init__(self, config: AdaMixerConfig):
        super().__init__()
        d = config.d_model
        self.config = config
        self.iof_tau = nn.Parameter(torch.ones(config.num_heads))
        self.attention = nn.MultiheadAttention(d, config.num_heads, dropout=config.dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(d)
        self.sampling_offsets = nn.Linear(d, config.n_groups * config.n_points * 3)
        self.mixing = AdaptiveMixing(d, config.n_groups, config.n_points, config.out_points)
        self.mixing_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.ffn_dim), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.ffn_dim, d),
            nn.Dropout(config.dropout),
        )
        self.ffn_norm = nn.LayerNorm(d)
        self.class_head = _mlp_head(d, config.num_labels)
        self.box_head = _mlp_head(d, 4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AdaMixer's initialisation."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        prior = self.config.prior_prob
        nn.init.constant_(self.class_head[-1].bias, -math.log((1 - prior) / prior))
        # Boxes start as the query's own box: zero deltas.
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        self.mixing.reset_parameters()
        # Sampling points start at fixed positions inside the box (a grid when P is a square
        # number, else uniform), the same for every query, at the level of scale / 4.
        nn.init.zeros_(self.sampling_offsets.weight)
        groups, points = self.config.n_groups, self.config.n_points
        with torch.no_grad():
            bias = self.sampling_offsets.bias.view(groups, points, 3)
            side = math.isqrt(points)
            if side * side == points:
                centres = torch.linspace(-0.5, 0.5, side + 1)[:-1] + 0.5 / side
                bias[..., 0] = centres.view(1, side).expand(side, side).flatten()
                bias[..., 1] = centres.view(side, 1).expand(side, side).flatten()
            else:
                nn.init.uniform_(bias[..., :2], -0.5, 0.5)
            bias[..., 2] = INITIAL_DZ

    def forward(
        self,
        content: torch.Tensor,
        xyzr: torch.Tensor,
        maps: list[torch.Tensor],
        strides: list[int],
        canvas_wh: tuple[int, int],
        apart: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """content [B, Q, D], xyzr [B, Q, 4] -> (content [B, Q, D], logits [B, Q, C], refined xyzr [B, Q, 4]).

        ``apart`` [Q, Q] bool: True where query i must not attend to query j (separate groups).
        """
        d = content.shape[-1]
        with torch.no_grad():
            log_iof = (pairwise_iof(xyzr_to_xyxy(xyzr)) + IOF_EPS).log()  # [B, Q, Q]
            position = xyzr_position_embedding(xyzr, canvas_wh, d)
        # [B * heads, Q, Q], image-major as nn.MultiheadAttention expects.
        attention_bias = (log_iof[:, None] * self.iof_tau.view(1, -1, 1, 1)).flatten(0, 1)
        if apart is not None:
            attention_bias = attention_bias.masked_fill(apart, float("-inf"))
        # As AdaMixer (mmcv's attention with identity = query): the box embedding joins the
        # residual stream, not only the attention keys.
        query = content + position
        attended, _ = self.attention(query, query, query, attn_mask=attention_bias, need_weights=False)
        content = self.attention_norm(query + attended)

        offsets = self.sampling_offsets(content)
        points = make_sample_points(offsets, xyzr, self.config.n_groups, self.config.n_points)
        sampled = sample_3d(maps, strides, points, self.config.level_tau)
        content = self.mixing_norm(self.mixing(sampled, content))
        content = self.ffn_norm(content + self.ffn(content))

        logits = self.class_head(content)
        return content, logits, refine_xyzr(xyzr, self.box_head(content))


class AdaMixerForObjectDetection(nn.Module):
    """AdaMixer with a transformers ResNet backbone; see the module docstring."""

    def __init__(self, config: AdaMixerConfig):
        super().__init__()
        self.config = config
        self.strides = config.feature_strides
        self.backbone = ResNetBackbone(ResNetConfig(**config.backbone))
        with torch.no_grad():
            # As the transformers DETRs: batch statistics of a few detection images are
            # noisier than the pretraining's, so BatchNorm keeps its pretrained statistics.
            replace_batch_norm(self.backbone)
        d = config.d_model
        groups = 32 if d % 32 == 0 else config.n_groups
        self.input_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, d, kernel_size=1), nn.GroupNorm(groups, d))
            for channels in self.backbone.channels
        )
        for projection in self.input_projections:
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.query_content = nn.Embedding(config.num_queries, d)
        initial_boxes = torch.tensor(WHOLE_IMAGE_XYZR_REL).repeat(config.num_queries, 1)
        if config.learn_initial_boxes:
            self.initial_boxes_xyzr_rel = nn.Parameter(initial_boxes)
        else:
            self.register_buffer("initial_boxes_xyzr_rel", initial_boxes)
        self.stages = nn.ModuleList(AdaMixerStage(config) for _ in range(config.num_stages))

    @property
    def query_dim(self) -> int:
        """Width of a learned query: content (D) then image-relative box (4)."""
        return self.config.d_model + 4

    def learned_queries(self) -> torch.Tensor:
        """[Q, D + 4]: content embedding, then the initial box (x, y, z, r) relative to the image."""
        return torch.cat([self.query_content.weight, self.initial_boxes_xyzr_rel], dim=-1)

    def encode(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> AdaMixerFeatures:
        """pixel_values [B, 3, H, W], pixel_mask [B, H, W] (1 = real pixel, images at top left)."""
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
        backbone_maps = self.backbone(pixel_values).feature_maps
        maps = [projection(m) for projection, m in zip(self.input_projections, backbone_maps, strict=True)]
        masks = [F.interpolate(pixel_mask[None].float(), size=m.shape[-2:])[0].bool() for m in maps]
        real = pixel_mask.bool()
        image_wh = torch.stack([real.any(dim=1).sum(-1), real.any(dim=2).sum(-1)], dim=-1).clamp(min=1)
        return AdaMixerFeatures(maps=maps, masks=masks, image_wh=image_wh, canvas_wh=(width, height))

    def decode(
        self, queries: torch.Tensor, features: AdaMixerFeatures, group_sizes: list[int] | None = None
    ) -> AdaMixerDecoderOutput:
        """Run every stage with ``queries`` [Q', D + 4] (content then image-relative box) on ``features``.

        The content part is LayerNorm-ed (no affine) before the first stage, as AdaMixer's
        query generator does. ``group_sizes`` (summing to Q') splits the queries into
        consecutive groups that never attend to each other: the same outputs as one pass
        per group, since self-attention is the only place queries meet.
        """
        d = self.config.d_model
        if queries.shape[-1] != self.query_dim:
            raise ValueError(f"queries have width {queries.shape[-1]}, this AdaMixer takes {self.query_dim} (D + 4)")
        batch = features.image_wh.shape[0]
        apart = None
        if group_sizes is not None:
            if sum(group_sizes) != queries.shape[0]:
                raise ValueError(f"group_sizes {group_sizes} do not add up to the {queries.shape[0]} queries")
            group_of = torch.repeat_interleave(
                torch.arange(len(group_sizes), device=queries.device), torch.tensor(group_sizes, device=queries.device)
            )
            apart = group_of[:, None] != group_of[None, :]
        content = F.layer_norm(queries[:, :d], (d,)).unsqueeze(0).expand(batch, -1, -1)
        # No detach here: the model's own initial boxes are a buffer unless learn_initial_boxes,
        # and other queries' boxes (assignment distillation's mapped teacher queries) may train.
        xyzr = relative_to_xyzr(queries[:, d:], features.image_wh)
        logits, boxes, hidden = [], [], []
        for stage in self.stages:
            content, stage_logits, refined = stage(
                content, xyzr, features.maps, self.strides, features.canvas_wh, apart
            )
            logits.append(stage_logits)
            boxes.append(xyzr_to_cxcywh(refined, features.canvas_wh))
            hidden.append(content)
            xyzr = refined.detach()
        return AdaMixerDecoderOutput(logits=torch.stack(logits), boxes_cxcywh=torch.stack(boxes),
                                     hidden=torch.stack(hidden))

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None
    ) -> AdaMixerObjectDetectionOutput:
        features = self.encode(pixel_values, pixel_mask)
        decoded = self.decode(self.learned_queries(), features)
        return AdaMixerObjectDetectionOutput(
            logits=decoded.logits[-1], pred_boxes=decoded.boxes_cxcywh[-1], decoder=decoded, features=features
        )

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AdaMixerForObjectDetection:
        """Load a directory written by ``save_pretrained``."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: pass a directory written by save_pretrained")
        model = cls(AdaMixerConfig.load(directory / CONFIG_NAME))
        if (directory / WEIGHTS_NAME).is_file():
            state = load_file(str(directory / WEIGHTS_NAME))
        elif (directory / LEGACY_WEIGHTS_NAME).is_file():
            state = torch.load(directory / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{directory / WEIGHTS_NAME} does not fit {directory / CONFIG_NAME}: {error}") from error
        return model

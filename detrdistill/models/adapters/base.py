"""What every family adapter provides, and the hook plumbing they share.

An adapter wraps a transformers ``...ForObjectDetection`` model (it owns no parameters of
its own) and turns one forward pass into a ``DetrRecord``. It also runs the decoder with
another set of queries: after the pass (``decode``, by replaying the decoder's captured
keyword arguments with the query arguments replaced), or inside the same pass as a second
query group that a block-diagonal self-attention mask keeps apart from the model's own
queries (``forward_with_group``, what assignment distillation trains with: one decoder
pass instead of two).

Query priors are [Q', D_q], one set for every image, or [B, Q', D_q], a set per image (what
RT-DETR and D-FINE select from their encoder's proposals); ``queries_per_image`` makes
either [B, Q', D_q].
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from detrdistill.models.record import DecodedQueries, DetrRecord


@contextlib.contextmanager
def capture_call_kwargs(module: nn.Module, into: dict[str, Any]):
    """Record the keyword arguments of ``module``'s next call into ``into``."""

    def hook(_module, _args, kwargs):
        into.update(kwargs)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield into
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_outputs(modules: list[nn.Module], into: list[torch.Tensor]):
    """Append each module's output tensor (first element if a tuple) to ``into``."""

    def hook(_module, _args, output):
        into.append(output[0] if isinstance(output, tuple) else output)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield into
    finally:
        for handle in handles:
            handle.remove()


def group_attention_mask(group_sizes: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, Q, Q] additive self-attention mask (Q = sum of sizes): 0 within a group, the
    dtype's most negative value across groups, so no query attends outside its group."""
    group_of = torch.repeat_interleave(torch.arange(len(group_sizes), device=device),
                                       torch.tensor(group_sizes, device=device))
    apart = group_of[:, None] != group_of[None, :]
    return torch.zeros(apart.shape, dtype=dtype, device=device).masked_fill(apart, torch.finfo(dtype).min)[None, None]


@contextlib.contextmanager
def query_groups_kept_apart(self_attentions: list[nn.Module], group_sizes: list[int]):
    """During the block, each decoder self-attention gets ``group_attention_mask``.

    Every family here calls its decoder self-attention with an ``attention_mask`` keyword
    (None for object queries, which are never padded), so replacing it is enough.
    """

    def hook(_module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        kwargs["attention_mask"] = group_attention_mask(group_sizes, hidden.dtype, hidden.device)
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in self_attentions]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def extend_call_kwargs(module: nn.Module, extend):
    """During the block, ``module`` is called with ``extend(kwargs)`` instead of its kwargs."""
    handle = module.register_forward_pre_hook(lambda _m, args, kwargs: (args, extend(kwargs)), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def queries_per_image(queries: torch.Tensor, batch: int) -> torch.Tensor:
    """[Q', D_q] (shared by every image) or [B, Q', D_q] -> [B, Q', D_q]."""
    return queries.unsqueeze(0).expand(batch, -1, -1) if queries.dim() == 2 else queries


def split_group(record: DetrRecord, own_queries: int) -> tuple[DetrRecord, DecodedQueries]:
    """A record of a grouped pass [K, B, Q + Q', ...] -> (the model's own record, the extra group)."""
    own = dataclasses.replace(
        record,
        logits=record.logits[:, :, :own_queries],
        boxes_cxcywh=record.boxes_cxcywh[:, :, :own_queries],
        decoder_hidden=record.decoder_hidden[:, :, :own_queries],
    )
    group = DecodedQueries(
        logits=record.logits[:, :, own_queries:],
        boxes_cxcywh=record.boxes_cxcywh[:, :, own_queries:],
        decoder_hidden=record.decoder_hidden[:, :, own_queries:],
    )
    return own, group


def split_levels(flat: torch.Tensor, level_shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """[B, sum(H_l * W_l), D] -> per level [B, D, H_l, W_l]."""
    sizes = [h * w for h, w in level_shapes]
    return [
        chunk.transpose(1, 2).reshape(flat.shape[0], flat.shape[2], h, w)
        for chunk, (h, w) in zip(flat.split(sizes, dim=1), level_shapes, strict=True)
    ]


def split_mask_levels(flat_mask: torch.Tensor, level_shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """[B, sum(H_l * W_l)] -> per level [B, H_l, W_l] bool (True = real pixel)."""
    sizes = [h * w for h, w in level_shapes]
    return [
        chunk.reshape(flat_mask.shape[0], h, w).bool()
        for chunk, (h, w) in zip(flat_mask.split(sizes, dim=1), level_shapes, strict=True)
    ]


class DetrAdapter:
    """Uniform access to one transformers DETR-family detector.

    Subclasses set ``class_head`` and implement ``_forward`` (one pass, optionally with an
    extra query group), ``decode`` and ``learned_queries``.

    ``targets`` (per image ``class_labels`` [n_i], ``boxes`` [n_i, 4]) are read only by
    families that train with denoising queries (RT-DETR, D-FINE), in training mode; the
    others ignore them.
    """

    class_head: str = "sigmoid"
    # Whether records carry the encoder's top-k proposals (``DetrRecord.proposals``).
    has_proposals: bool = False
    # Whether the query prior is a set per image, [B, Q, D_q] (selected, not learned).
    per_image_queries: bool = False
    # Whether decode / forward_with_group take a query set per image, [B, Q', D_q].
    takes_per_image_queries: bool = True

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels

    @property
    def d_model(self) -> int:
        return self.model.config.d_model

    @property
    def num_feature_levels(self) -> int:
        """Number of feature levels in the record (single-scale families: 1)."""
        return 1

    def learned_queries(self) -> torch.Tensor:
        """[Q, D_q] the learned object query embeddings."""
        raise NotImplementedError

    @property
    def size_divisor(self) -> int:
        """The input canvas's sides must be multiples of this (``collate_detection``'s size_divisor)."""
        return 1

    @property
    def query_dim(self) -> int:
        """D_q, the width of this family's query prior (``DetrRecord.query_embeddings``)."""
        return self.learned_queries().shape[-1]

    def __call__(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, targets: list[dict] | None = None
    ) -> DetrRecord:
        """Forward pass. pixel_values [B, 3, H, W]; pixel_mask [B, H, W] (1 = real pixel)."""
        return self._forward(pixel_values, pixel_mask, None)

    def _forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, group: torch.Tensor | None) -> DetrRecord:
        """One pass; with ``group`` [Q', D_q] its queries follow the model's own in every stage,
        behind a block-diagonal self-attention mask (``query_groups_kept_apart``)."""
        raise NotImplementedError

    def decode(self, record: DetrRecord, queries: torch.Tensor) -> DecodedQueries:
        """Run this model's decoder on ``record``'s encoder output with ``queries`` [Q', D_q] or
        [B, Q', D_q]; ``decode(record, record.query_embeddings)`` reproduces the record.

        The queries form their own group: they attend to each other and to the encoder
        output, never to the model's own queries (it is a separate decoder pass).
        """
        raise NotImplementedError

    def forward_with_group(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, queries: torch.Tensor,
        targets: list[dict] | None = None,
    ) -> tuple[DetrRecord, DecodedQueries]:
        """The record of a forward pass and the outputs for ``queries`` [Q', D_q] or [B, Q', D_q]
        run as a second group in the same decoder pass: equal to ``decode(record, queries)``, in one pass."""
        return split_group(self._forward(pixel_values, pixel_mask, queries), self.config.num_queries)

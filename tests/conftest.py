"""Shared fixtures: tiny detector configs, a tiny generated shapes dataset, a tiny run config.

Everything is built from configs; nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from detrdistill.config import (  # noqa: E402
    BackboneConfig,
    BackbonePretrainingConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from detrdistill.data.shapes import make_shapes  # noqa: E402
from detrdistill.models.build import build_detector  # noqa: E402

# The models here are tiny: one thread is much faster than several competing for the cores
# (and leaves them to anything else running on the machine).
torch.set_num_threads(1)

FAMILIES = ("detr", "conditional_detr", "deformable_detr")
# Queries from the encoder's top-k proposals (tests/test_rt_detr_*.py).
PROPOSAL_FAMILIES = ("rt_detr", "rt_detr_v2", "d_fine")
TINY_ID2LABEL = {0: "circle", 1: "square", 2: "triangle"}
IMAGE_SIZE = 64


def make_tiny_model_config(family: str) -> ModelConfig:
    """A tiny detector of ``family``: d_model 32, 2 encoder / 3 decoder layers, 10 queries
    (RT-DETR, D-FINE: strides 8, 16, 32 and 20 denoising queries)."""
    multi_scale = family == "deformable_detr"
    out_features = ["stage3", "stage4"] if multi_scale else ["stage3"]
    if family in PROPOSAL_FAMILIES:
        out_features = ["stage2", "stage3", "stage4"]
    return ModelConfig(
        family=family,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        dropout=0.0,
        num_feature_levels=3,
        with_box_refine=True,
        encoder_n_points=2,
        decoder_n_points=2,
        num_denoising=20,
        backbone=BackboneConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            out_features=out_features,
        ),
    )


def make_tiny_run_config(
    family: str = "conditional_detr", steps: int = 6, pretraining: bool = False, **train_overrides
) -> RunConfig:
    """A run small enough to train for a few steps in seconds on a CPU."""
    train = dict(
        steps=steps,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=3,
        eval_every=0,
        lr=1e-3,
        lr_backbone=1e-4,
        seed=0,
    )
    train.update(train_overrides)
    return RunConfig(
        model=make_tiny_model_config(family),
        backbone_pretraining=BackbonePretrainingConfig(enabled=pretraining, steps=5, batch_size=16, crop_size=32),
        data=DataConfig(image_size=IMAGE_SIZE, batch_size=4, eval_batch_size=8, num_workers=0),
        train=TrainConfig(**train),
    )


def make_tiny_detector(family: str, seed: int = 0, id2label: dict | None = None, perturb: float = 0.0):
    """A freshly built tiny detector.

    At initialisation the box heads output almost exactly 0.5 whatever their input, so
    comparisons of boxes prove little; ``perturb`` > 0 adds N(0, perturb^2) noise to every
    parameter, which spreads boxes, logits and stages apart (0.2 is plenty).
    """
    torch.manual_seed(seed)
    model = build_detector(make_tiny_model_config(family), id2label or TINY_ID2LABEL)
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb)
    return model


@pytest.fixture(scope="session")
def tiny_model_config():
    """Factory: ``tiny_model_config(family) -> ModelConfig``."""
    return make_tiny_model_config


@pytest.fixture(scope="session")
def tiny_run_config():
    """Factory: ``tiny_run_config(family="conditional_detr", steps=6, pretraining=False, **train) -> RunConfig``."""
    return make_tiny_run_config


@pytest.fixture(scope="session")
def tiny_detector():
    """Factory: ``tiny_detector(family, seed=0, id2label=None, perturb=0.0)`` -> a freshly built detector."""
    return make_tiny_detector


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A generated shapes dataset: 24 train / 8 val images of 64x64 (read-only for tests)."""
    return make_shapes(
        tmp_path_factory.mktemp("shapes64"), num_train=24, num_val=8, seed=0, image_size=IMAGE_SIZE, progress=False
    )

"""Build a transformers DETR-family detector from a ``ModelConfig``, or load a saved one.

Everything is built offline from configs: no hub download, no timm, no torchvision. Every
family built here has the same transformers ResNet backbone (``model.backbone``), so one
pretrained backbone serves them all; hub RT-DETR / D-FINE checkpoints bring their own
(RTDetrResNet, HGNetV2) and load with ``model.pretrained``.
Trained models are plain transformers directories (``save_pretrained``), so
``AutoModelForObjectDetection.from_pretrained(dir)`` reloads them anywhere. AdaMixer is the
package's own (``models/adamixer``): its directories say ``model_type: "adamixer"`` and
``load_detector`` reads them with ``AdaMixerForObjectDetection.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForObjectDetection,
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DFineConfig,
    DFineForObjectDetection,
    PreTrainedModel,
    ResNetConfig,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrV2Config,
    RTDetrV2ForObjectDetection,
)

from detrdistill.config import BackboneConfig, ConfigError, ModelConfig
from detrdistill.models.adamixer import AdaMixerConfig, AdaMixerForObjectDetection

FAMILIES = {
    "detr": (DetrConfig, DetrForObjectDetection),
    "conditional_detr": (ConditionalDetrConfig, ConditionalDetrForObjectDetection),
    "deformable_detr": (DeformableDetrConfig, DeformableDetrForObjectDetection),
    "adamixer": (AdaMixerConfig, AdaMixerForObjectDetection),
    "rt_detr": (RTDetrConfig, RTDetrForObjectDetection),
    "rt_detr_v2": (RTDetrV2Config, RTDetrV2ForObjectDetection),
    "d_fine": (DFineConfig, DFineForObjectDetection),
}
# Families whose queries are the encoder's top-k proposals (a hybrid encoder, no learned queries).
PROPOSAL_FAMILIES = ("rt_detr", "rt_detr_v2", "d_fine")


def resnet_config(backbone: BackboneConfig) -> ResNetConfig:
    return ResNetConfig(
        embedding_size=backbone.embedding_size,
        hidden_sizes=list(backbone.hidden_sizes),
        depths=list(backbone.depths),
        layer_type=backbone.layer_type,
        out_features=list(backbone.out_features),
    )


def detector_config(model: ModelConfig, id2label: dict[int, str]):
    if model.family not in FAMILIES:
        raise ConfigError(f"model.family {model.family!r} is not one of {sorted(FAMILIES)}")
    if model.family == "adamixer":
        return adamixer_config(model, id2label)
    if model.family in PROPOSAL_FAMILIES:
        return rt_detr_config(model, id2label)
    config_class, _ = FAMILIES[model.family]
    kwargs = dict(
        backbone_config=resnet_config(model.backbone),
        d_model=model.d_model,
        encoder_layers=model.encoder_layers,
        decoder_layers=model.decoder_layers,
        encoder_attention_heads=model.encoder_attention_heads,
        decoder_attention_heads=model.decoder_attention_heads,
        encoder_ffn_dim=model.encoder_ffn_dim,
        decoder_ffn_dim=model.decoder_ffn_dim,
        num_queries=model.num_queries,
        dropout=model.dropout,
        # Per-stage outputs are what distillation works on; with this flag transformers'
        # own training path also supervises every stage, as the papers do.
        auxiliary_loss=True,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
    )
    if model.family == "deformable_detr":
        kwargs.update(
            num_feature_levels=model.num_feature_levels,
            with_box_refine=model.with_box_refine,
            encoder_n_points=model.encoder_n_points,
            decoder_n_points=model.decoder_n_points,
            two_stage=False,
        )
    return config_class(**kwargs)


def rt_detr_config(model: ModelConfig, id2label: dict[int, str]):
    """RT-DETR (v1, v2) and D-FINE from a ``ModelConfig``.

    The feature levels are ``backbone.out_features`` (stageN has stride 2^(N+1)), each
    projected to ``d_model``, which is the hybrid encoder's width too; ``encoder_layers`` are
    the AIFI self-attention layers on the coarsest level (``encoder_*`` heads and FFN width
    theirs); ``num_denoising`` the contrastive denoising queries in training. The rest keeps
    transformers' defaults, which are the papers'. Anchors are generated for each input size.
    """
    stages = []
    for name in model.backbone.out_features:
        if not (name.startswith("stage") and name.removeprefix("stage").isdigit()):
            raise ConfigError(f"model.backbone.out_features: {name!r} is not a ResNet stage (stage1 .. stage4)")
        stages.append(int(name.removeprefix("stage")))
    levels = len(stages)
    config_class, _ = FAMILIES[model.family]
    kwargs = dict(
        backbone_config=resnet_config(model.backbone),
        encoder_in_channels=[model.backbone.hidden_sizes[stage - 1] for stage in stages],
        feat_strides=[2 ** (stage + 1) for stage in stages],
        encoder_hidden_dim=model.d_model,
        d_model=model.d_model,
        decoder_in_channels=[model.d_model] * levels,
        num_feature_levels=levels,
        encode_proj_layers=[levels - 1],
        encoder_layers=model.encoder_layers,
        encoder_attention_heads=model.encoder_attention_heads,
        encoder_ffn_dim=model.encoder_ffn_dim,
        decoder_layers=model.decoder_layers,
        decoder_attention_heads=model.decoder_attention_heads,
        decoder_ffn_dim=model.decoder_ffn_dim,
        decoder_n_points=model.decoder_n_points,
        num_queries=model.num_queries,
        dropout=model.dropout,
        num_denoising=model.num_denoising,
        anchor_image_size=None,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
    )
    if model.family == "rt_detr_v2":
        kwargs["decoder_n_levels"] = levels
    try:
        return config_class(**kwargs)
    except ValueError as error:
        raise ConfigError(f"model (family {model.family}): {error}") from error


def adamixer_config(model: ModelConfig, id2label: dict[int, str]) -> AdaMixerConfig:
    """AdaMixer has no encoder: the encoder_* fields are unused; decoder_layers = its stages."""
    backbone = dict(
        embedding_size=model.backbone.embedding_size,
        hidden_sizes=list(model.backbone.hidden_sizes),
        depths=list(model.backbone.depths),
        layer_type=model.backbone.layer_type,
        out_features=list(model.backbone.out_features),
    )
    try:
        return AdaMixerConfig(
            id2label={int(k): v for k, v in id2label.items()},
            backbone=backbone,
            d_model=model.d_model,
            num_stages=model.decoder_layers,
            num_queries=model.num_queries,
            num_heads=model.decoder_attention_heads,
            ffn_dim=model.decoder_ffn_dim,
            n_groups=model.adamixer_groups,
            n_points=model.adamixer_n_points,
            out_points=model.adamixer_out_points,
            dropout=model.dropout,
            learn_initial_boxes=model.adamixer_learn_initial_boxes,
        )
    except ValueError as error:
        raise ConfigError(f"model (family adamixer): {error}") from error


def build_detector(model: ModelConfig, id2label: dict[int, str]) -> PreTrainedModel:
    """A freshly initialised detector (random backbone unless weights are loaded after)."""
    _, model_class = FAMILIES[model.family]
    detector = model_class(detector_config(model, id2label))
    set_backbone_trainable(detector, model.backbone.trainable)
    return detector


def backbone_module(detector: PreTrainedModel) -> torch.nn.Module:
    """The transformers ``ResNetBackbone`` inside a detector (with frozen BatchNorm)."""
    if isinstance(detector, AdaMixerForObjectDetection):
        return detector.backbone
    return detector.model.backbone.model


def set_backbone_trainable(detector: PreTrainedModel, trainable: str) -> None:
    """Choose which backbone parameters train.

    transformers' own rule matches timm parameter names and so freezes the whole of a
    transformers ResNet; we set it explicitly instead.
    """
    frozen_prefixes = {"all": (), "all_but_stem": ("embedder.",),
                       "all_but_stem_and_stage1": ("embedder.", "encoder.stages.0."), "none": ("",)}
    if trainable not in frozen_prefixes:
        raise ConfigError(f"model.backbone.trainable {trainable!r} is not one of {list(frozen_prefixes)}")
    for name, parameter in backbone_module(detector).named_parameters():
        parameter.requires_grad_(not name.startswith(frozen_prefixes[trainable]))


def load_backbone_weights(detector: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a pretrained ResNetBackbone's weights into the detector's backbone."""
    state = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = backbone_module(detector).load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConfigError(
            "pretrained backbone does not fit the detector's backbone config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def resolve_model_dir(run_or_model_dir: str | Path) -> Path:
    """A run directory's ``model/`` folder, or the directory itself when it is a model."""
    path = Path(run_or_model_dir)
    return path / "model" if (path / "model" / "config.json").is_file() else path


def load_detector(model_dir: str | Path) -> PreTrainedModel:
    """Load any ``from_pretrained``-compatible detector directory (ours or a hub download),
    or the model of a run directory."""
    model_dir = resolve_model_dir(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json: pass a directory written by save_pretrained "
            "(a run's model/ folder or a downloaded checkpoint)"
        )
    model_class = AutoModelForObjectDetection
    if json.loads((model_dir / "config.json").read_text()).get("model_type") == AdaMixerConfig.model_type:
        model_class = AdaMixerForObjectDetection
    try:
        model = model_class.from_pretrained(model_dir)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        weights = sorted(p.name for p in model_dir.glob("*.safetensors")) or ["no *.safetensors file"]
        raise FileNotFoundError(
            f"{model_dir} could not be loaded ({type(error).__name__}: {str(error)[:200]}); its weights "
            f"({', '.join(weights)}) are missing, truncated or corrupt. Copy the model directory again; in a run "
            "directory that still has its checkpoint.pt, the same train/distill command with --resume writes "
            "model/ and eval.json anew from it."
        ) from error
    if getattr(model.config, "anchor_image_size", None):
        # An RT-DETR / D-FINE checkpoint may fix its proposal anchors to one input size, which in
        # eval mode then takes no other; generated for each input they are the same at that size.
        model.config.anchor_image_size = None
    return model

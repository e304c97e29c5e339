"""Run configuration: one dataclass per concern, loaded from YAML.

A run's YAML has the sections ``model``, ``backbone_pretraining``, ``data``, ``loss`` and
``train``; missing fields take the defaults below. Presets live in ``detrdistill/configs/``
and can be named without a path (``--config conditional_teacher``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class FamilyPresets:
    """A family's teacher and student presets (names in ``configs/`` or YAML paths)."""

    teacher: str
    student: str


# The one table of each family's CPU-scale preset pair (benchmarks, suites, demo) ...
FAMILY_PRESETS: dict[str, FamilyPresets] = {
    "deformable_detr": FamilyPresets("deformable_teacher", "deformable_student"),
    "conditional_detr": FamilyPresets("conditional_teacher", "conditional_student"),
    "adamixer": FamilyPresets("adamixer_teacher", "adamixer_student"),
}
# ... and of the paper-size pairs for a GPU (R101 -> R50).
GPU_FAMILY_PRESETS: dict[str, FamilyPresets] = {
    "conditional_detr": FamilyPresets("gpu_conditional_teacher", "gpu_conditional_student"),
    "deformable_detr": FamilyPresets("gpu_deformable_teacher", "gpu_deformable_student"),
}


@dataclass
class BackboneConfig:
    """A transformers ResNet backbone (``ResNetConfig``)."""

    layer_type: str = "basic"
    embedding_size: int = 32
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    depths: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    # Which ResNet stages feed the detector: the last entry sets the single-scale stride
    # (stage3 = stride 16, stage4 = stride 32); multi-scale families use all of them.
    out_features: list[str] = field(default_factory=lambda: ["stage3"])
    # "all_but_stem" trains every stage but the stem (DETR freezes the stem and stage 1 of
    # an ImageNet ResNet, "all_but_stem_and_stage1"; ours is pretrained on far less data, so
    # by default stage 1 may move). Also "all" and "none".
    trainable: str = "all_but_stem"


MODEL_FAMILIES = ("detr", "conditional_detr", "deformable_detr", "adamixer", "rt_detr", "rt_detr_v2", "d_fine")


@dataclass
class ModelConfig:
    """Detector architecture. ``family`` picks the transformers class and adapter."""

    family: str = "conditional_detr"
    d_model: int = 128
    encoder_layers: int = 3
    decoder_layers: int = 3
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 512
    decoder_ffn_dim: int = 512
    num_queries: int = 30
    dropout: float = 0.0
    # Deformable DETR only (decoder_n_points: also RT-DETR and D-FINE).
    num_feature_levels: int = 3
    with_box_refine: bool = True
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    # AdaMixer only (family "adamixer"; decoder_layers = its stages, no encoder; its levels are
    # backbone.out_features). Defaults are the paper's: 32 points in each of 4 groups, 128 outputs.
    adamixer_n_points: int = 32
    adamixer_groups: int = 4
    adamixer_out_points: int = 128
    adamixer_learn_initial_boxes: bool = False  # the paper: every query starts from the whole image
    # RT-DETR (rt_detr, rt_detr_v2) and D-FINE (d_fine) only: contrastive denoising queries added in
    # training (transformers' default and the papers' 100; 0: none). Their levels are backbone.out_features
    # (the papers': stage2, stage3, stage4), their AIFI layers encoder_layers; decoder_n_points is theirs too.
    num_denoising: int = 100
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Start from a from_pretrained-compatible directory instead of building from the above.
    pretrained: str | None = None

    def __post_init__(self):
        if self.family not in MODEL_FAMILIES:
            raise ConfigError(f"model.family {self.family!r} is not one of {list(MODEL_FAMILIES)}")


@dataclass
class BackbonePretrainingConfig:
    """Classification pretraining of the ResNet on object crops (the ImageNet analog)."""

    enabled: bool = True
    steps: int = 600
    batch_size: int = 64
    crop_size: int = 48
    lr: float = 2e-3
    weight_decay: float = 1e-4


INVALID_BOX_MODES = ("clip", "reject")


@dataclass
class DataConfig:
    image_size: int = 128
    batch_size: int = 8
    eval_batch_size: int = 32
    num_workers: int = 0
    train_split: str = "train"
    val_split: str = "val"
    # What to do with boxes that extend outside their image: "clip" or "reject".
    invalid_boxes: str = "clip"
    # Cap on the longer image side after resizing (COCO recipes: image_size 800, max_size 1333).
    max_size: int | None = None
    # Keep decoded images in memory when a split fits in this many MiB (0: always read from
    # disk). The embedded 4000-image train split takes 250 MiB; COCO train2017 would take ~100 GiB.
    # Each DataLoader worker process keeps its own copy.
    cache_mb: float = 1024.0
    # Accept images[i].file_name values that are absolute or climb out of the image folder
    # ("../"); off, so that an annotation file from elsewhere cannot point the reader anywhere.
    allow_files_outside_root: bool = False
    # Before training, look at every image file of a split that fits the image cache (exists,
    # header's size matches the record), so a bad file stops the run at once, not hours in.
    check_files: bool = True

    def __post_init__(self):
        for name in ("image_size", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_workers < 0 or self.cache_mb < 0:
            raise ConfigError(f"data.num_workers and data.cache_mb must be >= 0, got {self.num_workers!r} and "
                              f"{self.cache_mb!r}")
        if self.max_size is not None and self.max_size < self.image_size:
            raise ConfigError(f"data.max_size ({self.max_size}) must be null or >= data.image_size ({self.image_size})")
        if self.invalid_boxes not in INVALID_BOX_MODES:
            raise ConfigError(f"data.invalid_boxes {self.invalid_boxes!r} is not one of {INVALID_BOX_MODES}")


@dataclass
class LossConfig:
    """Hungarian matching costs and detection loss weights (per decoder stage)."""

    class_cost: float = 2.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # Softmax heads (DETR): weight of the no-object class in the cross-entropy.
    eos_coef: float = 0.1


@dataclass
class TrainConfig:
    steps: int | None = 2000
    # Wall-clock budget in minutes; when set, training stops at whichever comes first.
    minutes: float | None = None
    lr: float = 5e-4
    lr_backbone: float = 5e-5
    weight_decay: float = 1e-4
    clip_grad_norm: float = 0.1
    warmup_steps: int = 100
    # Step decay: multiply the LR by lr_drop_factor once this fraction of the budget is spent.
    lr_drop_at: float = 0.8
    lr_drop_factor: float = 0.1
    log_every: int = 20
    checkpoint_every: int = 250
    # Evaluate on the val split every this many steps (0: only at the end).
    eval_every: int = 0
    # Cap on val images for intermediate evaluations (the final one uses the whole split).
    eval_max_images: int | None = None
    seed: int = 0
    # Autocast of the forward passes: "no" (float32), "bf16" or "fp16" (with a loss scaler).
    # Matching and losses stay float32 (precision.py).
    mixed_precision: str = "no"
    # Forward/backward passes per optimiser step, each on a global batch of data.batch_size:
    # an optimiser step sees batch_size * grad_accum_steps images.
    grad_accum_steps: int = 1
    # Every this many steps, record each loss component's gradient norm and the pairwise
    # cosines on the student's parameter groups in metrics.jsonl (training/grad_diagnostic.py;
    # ``detrdistill diagnose RUN`` draws them). 0: off, at no cost.
    grad_diagnostic_every: int = 0

    def __post_init__(self):
        # One budget check: every way of setting a budget (YAML, --steps, --minutes, --set) ends here.
        if self.steps is None and self.minutes is None:
            raise ConfigError("train: give a budget, train.steps and/or train.minutes")
        if self.steps is not None and (not isinstance(self.steps, int) or isinstance(self.steps, bool)
                                       or self.steps < 1):
            raise ConfigError(
                f"train.steps must be a whole number >= 1 (or null with train.minutes), got {self.steps!r}"
            )
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"train.minutes must be > 0 (or null with train.steps), got {self.minutes!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision {self.mixed_precision!r} is not one of ['no', 'bf16', 'fp16']")
        if not isinstance(self.grad_accum_steps, int) or self.grad_accum_steps < 1:
            raise ConfigError(f"train.grad_accum_steps must be an integer >= 1, got {self.grad_accum_steps!r}")
        if not isinstance(self.grad_diagnostic_every, int) or self.grad_diagnostic_every < 0:
            raise ConfigError(
                f"train.grad_diagnostic_every must be an integer >= 0 (0: off), got {self.grad_diagnostic_every!r}"
            )


LD_NORMALISATIONS = ("per_term", "matched")


@dataclass
class LogitsDistillConfig:
    """Hungarian-matching logits distillation (LD, paper eq. 2-4; Tables 6 and 7)."""

    enabled: bool = True
    pos_cls: bool = True  # class KD on pairs whose teacher query is a positive
    pos_reg: bool = True  # box KD on positive pairs
    neg_reg: bool = True  # box KD on negative pairs (paper footnote 1: no class term there)
    progressive: bool = True  # student stage k <- teacher stage ceil(k K_T / K_S); else the last
    all_pairs: bool = False  # the public release: class + box on every pair, no pos/neg split
    # RT-DETR / D-FINE teacher and student only: distil the encoder's top-k proposals (the stage that
    # picks the decoder's queries) as one more LD stage, added to the ld_* sums.
    proposal_stage: bool = False
    # Each term's denominator. "per_term": the mean over that term's own pairs (positives or
    # negatives), so the few positives weigh as much as the many negatives. "matched": every
    # term's sum over the number of matched pairs, as the release normalises; the paper's eq. 2-4
    # sum over pairs and leave the denominator open.
    normalise: str = "per_term"
    # Teacher-student matching cost (the release's: class BCE summed over classes, L1, GIoU).
    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0

    def __post_init__(self):
        if self.normalise not in LD_NORMALISATIONS:
            raise ConfigError(f"distill.logits.normalise {self.normalise!r} is not one of {LD_NORMALISATIONS}")


FD_MASKS = ("quality", "paper", "vanilla", "release")
FD_FEATURE_SOURCES = ("encoder_output", "encoder_input")


@dataclass
class FeatureDistillConfig:
    """Target-aware feature distillation (FD, paper eq. 5-8; Table 2). losses/features.py
    writes each mask out."""

    enabled: bool = True
    # "quality": per-query spatial-softmax masks weighted by the quality score (eq. 8);
    # "paper": eq. 6's raw dot product F.Q_i as the mask, with eq. 8's quality weighting;
    # "vanilla": the mean of all softmax query masks, unweighted (eq. 6);
    # "release": cosine-similarity masks weighted by score * max-IoU, clamped and max-normalised.
    mask: str = "quality"
    gamma: float = 0.5  # quality q = c^gamma * IoU^(1 - gamma)
    # The softmax masks' temperature, in units of sqrt(d) ("quality" and "vanilla"): lower is sharper.
    temperature: float = 1.0
    # "encoder_output" (paper footnote 2) or "encoder_input" (the release's neck maps).
    features: str = "encoder_output"

    def __post_init__(self):
        if self.mask not in FD_MASKS:
            raise ConfigError(f"distill.features.mask {self.mask!r} is not one of {FD_MASKS}")
        if self.features not in FD_FEATURE_SOURCES:
            raise ConfigError(f"distill.features.features {self.features!r} is not one of {FD_FEATURE_SOURCES}")
        if not self.temperature > 0:
            raise ConfigError(f"distill.features.temperature must be > 0, got {self.temperature}")


@dataclass
class AssignmentDistillConfig:
    """Query-prior assignment distillation (AD, paper eq. 9)."""

    enabled: bool = True


BASELINE_METHODS = ("none", "fitnet", "mgd", "fgd", "fgfi")
BASELINE_FEATURE_SOURCES = ("encoder_output", "encoder_input")
# Default weight of each baseline's term kd_<method> when ``weight`` is None (see BaselineKDConfig).
BASELINE_DEFAULT_WEIGHTS = {"none": 0.0, "fitnet": 1.0, "mgd": 2e-5, "fgd": 1.0, "fgfi": 0.01}


@dataclass
class BaselineKDConfig:
    """A comparison feature-KD method (paper Tables 1 and 3), added as the loss term kd_<method>.

    ``method``: none | fitnet | mgd | fgd | fgfi (``detrdistill/losses/baselines/``). For a
    baseline-only run set distill.logits/features/assignment.enabled to false.
    ``weight`` multiplies the method's loss; None takes its default:
      fitnet 1.0 (per-element MSE; Romero's hint loss has no weight of its own),
      mgd 2e-5 (MGD's alpha for detection, sum form),
      fgd 1.0 (FGD's own weights are fgd_alpha/beta/gamma/lambda below),
      fgfi 0.01 (FGFI's lambda; loss normalised by 2 x the number of masked cells).
    The published weights already land near DETRDistill's 20 x fd, so they are kept. Measured
    at initialisation (deformable_student with its pretrained backbone, 4 train batches of 8 from
    data/shapes; encoder_output): kd_fitnet 4.1, kd_mgd 0.28, kd_fgd 3.0 (fg 2.1, bg 0.5, mask
    0.3, rela 0.09), kd_fgfi 2.4, against 20 x fd = 8.3 with the trained demo teacher (1.9 with
    a fresh deformable_teacher) and a detection loss of 71 (all decoder stages). MGD, the
    smallest, is 7-30x under fd; raise ``weight`` to match it if wanted.
    ``features``: encoder_output | encoder_input, as distill.features.features.
    """

    method: str = "none"
    weight: float | None = None
    features: str = "encoder_output"
    mgd_mask_ratio: float = 0.65  # MGD's lambda: fraction of student pixels zeroed before generation
    fgd_temperature: float = 0.5
    fgd_alpha: float = 1e-3  # foreground imitation
    fgd_beta: float = 5e-4  # background imitation
    fgd_gamma: float = 1e-3  # spatial + channel attention imitation
    fgd_lambda: float = 5e-6  # global relation (GcBlock)

    def __post_init__(self):
        self.check_method()
        if self.features not in BASELINE_FEATURE_SOURCES:
            raise ConfigError(
                f"distill.baseline.features {self.features!r} is not one of {BASELINE_FEATURE_SOURCES}"
            )
        if self.weight is not None and self.weight < 0:
            raise ConfigError(f"distill.baseline.weight must be >= 0 or null (the default), got {self.weight}")
        if not 0 <= self.mgd_mask_ratio < 1:
            raise ConfigError(f"distill.baseline.mgd_mask_ratio must be in [0, 1), got {self.mgd_mask_ratio}")
        if self.fgd_temperature <= 0:
            raise ConfigError(f"distill.baseline.fgd_temperature must be > 0, got {self.fgd_temperature}")

    def check_method(self) -> None:
        """The one check of ``method``: also run when the loss is built, since a name changed
        after construction would otherwise build no loss and distil nothing, silently."""
        if self.method not in BASELINE_METHODS:
            raise ConfigError(f"distill.baseline.method {self.method!r} is not one of {BASELINE_METHODS}")

    def resolved_weight(self) -> float:
        """``weight``, or the method's default weight when it is None."""
        return BASELINE_DEFAULT_WEIGHTS[self.method] if self.weight is None else float(self.weight)


@dataclass
class DistillConfig:
    """DETRDistill: L = L_det + lambda_ld L_LD + lambda_fd L_FD + lambda_ad L_AD."""

    teacher: str | None = None  # a from_pretrained directory or a run directory
    lambda_ld: float = 1.0
    lambda_fd: float = 20.0
    lambda_ad: float = 1.0
    logits: LogitsDistillConfig = field(default_factory=LogitsDistillConfig)
    features: FeatureDistillConfig = field(default_factory=FeatureDistillConfig)
    assignment: AssignmentDistillConfig = field(default_factory=AssignmentDistillConfig)
    baseline: BaselineKDConfig = field(default_factory=BaselineKDConfig)
    # Autocast of the frozen teacher's forward pass (under no_grad): None follows
    # train.mixed_precision; "no", "bf16" or "fp16" sets it apart (e.g. a bf16 teacher for
    # an fp32 student). Its outputs are cast to float32 before matching and losses.
    teacher_precision: str | None = None

    def __post_init__(self):
        if self.teacher_precision not in (None, "no", "bf16", "fp16"):
            raise ConfigError(
                f"distill.teacher_precision {self.teacher_precision!r} is not one of [null, 'no', 'bf16', 'fp16']"
            )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone_pretraining: BackbonePretrainingConfig = field(default_factory=BackbonePretrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


class ConfigError(ValueError):
    """A config file that cannot be read or has unknown fields."""


def has_type(value: Any, hint: Any) -> bool:
    """``isinstance`` for the annotations this module uses: int, float, bool, str, X | None, list[X]."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(has_type(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is an int subclass, but True as a step count is a mistake
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _from_dict(cls, values: dict[str, Any], where: str, prefix: str = ""):
    """``cls`` from a mapping, every key known and every value of its field's type.

    ``where`` names the source (a file), ``prefix`` the section (``train.``) in messages."""
    section = prefix.rstrip(".") or "the top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {section} must be a mapping of fields, got {type(values).__name__} {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {[prefix + name for name in unknown]} in {section}; "
            f"known fields are {sorted(known)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _from_dict(hints[name], value, where, f"{prefix}{name}.")
        elif not has_type(value, hints[name]):
            raise ConfigError(f"{where}: {prefix}{name} must be {type_name(hints[name])}, "
                              f"got {type(value).__name__} {value!r}")
        else:
            kwargs[name] = list(value) if isinstance(value, tuple) else value
    try:
        return cls(**kwargs)
    except ConfigError as error:  # a dataclass's own validation: say which file it came from
        raise ConfigError(f"{where}: {error}") from error


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset in ``detrdistill/configs`` (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if preset.is_file():
        return preset
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!s} is neither a file nor a preset; presets: {presets}")


def load_config(name_or_path: str | Path) -> RunConfig:
    """A run config from a YAML file or preset name. ``base: PRESET_OR_FILE`` at the top of a
    YAML starts from that config and overrides only the fields the YAML gives."""
    path = resolve_config_path(name_or_path)
    return _from_dict(RunConfig, _read_with_base(path, []), str(path))


def _read_with_base(path: Path, seen: list[Path]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' goes round in a loop: {' -> '.join(map(str, [*seen, path]))}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a preset name or a YAML path, got {base!r}")
    base_path = resolve_config_path(base if Path(base).is_absolute() or not (path.parent / base).is_file()
                                    else path.parent / base)
    return _merge(_read_with_base(base_path, [*seen, path.resolve()]), values)


def _merge(base: dict, override: dict) -> dict:
    """``override``'s fields on top of ``base``'s, section by section."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    return _from_dict(RunConfig, values, "config")


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

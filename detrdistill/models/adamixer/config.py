"""AdaMixer's configuration: every hyper-parameter, with the paper's values as defaults.

Gao et al., "AdaMixer: A Fast-Converging Query-Based Object Detector", CVPR 2022: 6 decoder
stages, 100 queries, content width 256, 32 sampling points in each of 4 groups mixed into
128 spatial outputs, FFN width 2048, 8 attention heads. Saved as ``config.json`` beside the
weights, with ``model_type: "adamixer"`` so that ``load_detector`` knows what to build.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# ResNet stage name -> stride of its output map (transformers' ResNet: a stride-4 stem, then
# stage1 keeps the resolution and every later stage halves it).
STAGE_STRIDES = {"stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}


def _default_backbone() -> dict[str, Any]:
    """transformers ``ResNetConfig`` keyword arguments (a small ResNet-18-like net, C2-C5)."""
    return {
        "embedding_size": 32,
        "hidden_sizes": [32, 64, 128, 256],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }


@dataclass
class AdaMixerConfig:
    """Hyper-parameters of ``AdaMixerForObjectDetection``.

    Attributes:
        id2label: class index -> name (sigmoid head: one logit per class, no "no object").
        backbone: transformers ``ResNetConfig`` keyword arguments; ``out_features`` are the
            stages whose maps (after a 1x1 projection to ``d_model``) the decoder samples.
        d_model: width of the query content vectors and of the projected feature maps.
        num_stages: decoder stages, each with its own class and box heads.
        num_queries: object queries (content vector + (x, y, z, r) box descriptor).
        num_heads: heads of the self-attention over queries.
        ffn_dim: hidden width of each stage's FFN.
        n_groups: sampling groups; group g samples channels [g D/G, (g+1) D/G) of the maps.
        n_points: sampling points per group (the paper's P_in).
        out_points: spatial outputs of the adaptive spatial mixing (the paper's P_out).
        level_tau: temperature of the Gaussian level weights over log2(stride).
        dropout: dropout in self-attention and FFN (the paper: 0).
        learn_initial_boxes: whether the queries' initial boxes train (the paper: no; every
            query starts from the whole image and the content vectors tell them apart).
        prior_prob: initial foreground probability of the class heads (focal-loss init).
    """

    model_type: ClassVar[str] = "adamixer"

    id2label: dict[int, str] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=_default_backbone)
    d_model: int = 256
    num_stages: int = 6
    num_queries: int = 100
    num_heads: int = 8
    ffn_dim: int = 2048
    n_groups: int = 4
    n_points: int = 32
    out_points: int = 128
    level_tau: float = 2.0
    dropout: float = 0.0
    learn_initial_boxes: bool = False
    prior_prob: float = 0.01

    def __post_init__(self):
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        problems = []
        if self.d_model % self.n_groups:
            problems.append(f"d_model {self.d_model} is not divisible by n_groups {self.n_groups}")
        if self.d_model % self.num_heads:
            problems.append(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.d_model % 8:
            # The sinusoidal embedding of (x, y, z, r) gives each coordinate D/4 channels of sin/cos pairs.
            problems.append(f"d_model {self.d_model} is not a multiple of 8")
        unknown = [s for s in self.backbone.get("out_features", []) if s not in STAGE_STRIDES]
        if unknown or not self.backbone.get("out_features"):
            problems.append(
                f"backbone.out_features {self.backbone.get('out_features')} must name ResNet stages from "
                f"{sorted(STAGE_STRIDES)}"
            )
        for name in ("num_stages", "num_queries", "n_points", "out_points"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if problems:
            raise ValueError(
                "AdaMixer config: " + "; ".join(problems) + " (in a run config: model.d_model, "
                "model.decoder_attention_heads, model.adamixer_groups, model.backbone.out_features, ...)"
            )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def feature_strides(self) -> list[int]:
        """Stride in pixels of each feature level the decoder samples."""
        return [STAGE_STRIDES[name] for name in self.backbone["out_features"]]

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return {"model_type": self.model_type, **values}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> AdaMixerConfig:
        values = dict(values)
        model_type = values.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"{where}: model_type is {model_type!r}, expected {cls.model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown AdaMixer field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> AdaMixerConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(values, str(path))

"""The transformers image processor of a trained detector: how it wants its images.

Saved beside every run's model (``model/preprocessor_config.json``) so that
``AutoImageProcessor.from_pretrained(RUN/model)`` and ``pipeline("object-detection",
model=RUN/model)`` resize, normalise and pad as this package's evaluation does
(``data/transforms.build_transforms(False, ...)``): shorter side to ``data.image_size``, the
longer capped at ``data.max_size``, bilinear, ImageNet mean and std, zero padding at the
bottom and right with a pixel mask. AdaMixer is this package's own model, which transformers
does not know: it gets no processor, and its model card says so.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    ConditionalDetrImageProcessor,
    DeformableDetrImageProcessor,
    DetrImageProcessor,
    RTDetrImageProcessor,
)

from detrdistill.config import DataConfig
from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PROCESSORS = {"detr": DetrImageProcessor, "conditional_detr": ConditionalDetrImageProcessor,
              "deformable_detr": DeformableDetrImageProcessor, "rt_detr": RTDetrImageProcessor,
              "rt_detr_v2": RTDetrImageProcessor, "d_fine": RTDetrImageProcessor}  # D-FINE's hub processor is RT-DETR's
# transformers needs a longest edge; without data.max_size nothing caps it.
UNCAPPED_LONGEST_EDGE = 1_000_000


def image_processor_for(model_type: str, data: DataConfig):
    """The processor of a ``model.config.model_type`` trained with ``data``; None for AdaMixer."""
    if model_type not in PROCESSORS:
        return None
    longest = data.max_size if data.max_size is not None else UNCAPPED_LONGEST_EDGE
    return PROCESSORS[model_type](
        do_resize=True, size={"shortest_edge": data.image_size, "longest_edge": longest}, resample=2,  # bilinear
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD), do_pad=True,
    )


def save_image_processor(model, data: DataConfig, model_dir: Path) -> bool:
    """Write the model's processor into ``model_dir``; False when the family has none."""
    processor = image_processor_for(model.config.model_type, data)
    if processor is None:
        return False
    processor.save_pretrained(model_dir)
    return True

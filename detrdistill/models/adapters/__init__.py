"""One adapter per DETR family, all returning the same ``DetrRecord``."""

from detrdistill.models.adapters.adamixer import AdaMixerAdapter
from detrdistill.models.adapters.base import DetrAdapter
from detrdistill.models.adapters.conditional_detr import ConditionalDetrAdapter
from detrdistill.models.adapters.d_fine import DFineAdapter
from detrdistill.models.adapters.deformable_detr import DeformableDetrAdapter
from detrdistill.models.adapters.detr import DetrFamilyAdapter
from detrdistill.models.adapters.rt_detr import RTDetrAdapter

ADAPTERS = {
    "detr": DetrFamilyAdapter,
    "conditional_detr": ConditionalDetrAdapter,
    "deformable_detr": DeformableDetrAdapter,
    "adamixer": AdaMixerAdapter,
    "rt_detr": RTDetrAdapter,
    "rt_detr_v2": RTDetrAdapter,
    "d_fine": DFineAdapter,
}


def adapter_for(model) -> DetrAdapter:
    """The adapter for a detector (transformers' or our AdaMixer), chosen by ``model.config.model_type``."""
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise ValueError(f"no adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "DetrAdapter", "adapter_for"]

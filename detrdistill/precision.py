"""Mixed precision: which forward passes autocast, and what stays in float32.

``train.mixed_precision`` ("no", "bf16", "fp16") autocasts the objective (student and, by
default, teacher forward passes); ``distill.teacher_precision`` can set the teacher apart
(e.g. a bf16 teacher under no_grad for an fp32 student). Hungarian matching and the losses
turn autocast off and read float32 copies of the predictions (``DetectionLoss``,
``LogitsDistillation``, ``models.record.record_in_float32`` for the teacher's record), so matching costs,
focal/L1/GIoU terms and their normalisers are never rounded to 8 mantissa bits.
"""

from __future__ import annotations

import contextlib

import torch

from detrdistill.config import ConfigError

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, field: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: float32, no autocast)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{field}: {precision!r} is not one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def autocast(precision: str | None, device: torch.device, field: str = "train.mixed_precision"):
    """``torch.autocast`` for ``precision`` on ``device``'s type. "no" turns autocast off
    (also inside an enclosing autocast block); None leaves the enclosing setting as it is."""
    if precision is None:
        return contextlib.nullcontext()
    dtype = autocast_dtype(precision, field)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

"""Detectors: building from configs, loading saved ones, and the uniform adapters."""

from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import build_detector, load_detector
from detrdistill.models.record import DecodedQueries, DetrRecord

__all__ = ["DecodedQueries", "DetrRecord", "adapter_for", "build_detector", "load_detector"]

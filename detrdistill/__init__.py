"""Knowledge distillation for DETR object detectors."""

__version__ = "0.1.0"

"""AdaMixer (Gao et al., CVPR 2022), the paper's ablation detector, in plain PyTorch."""

from detrdistill.models.adamixer.config import AdaMixerConfig
from detrdistill.models.adamixer.modeling import AdaMixerForObjectDetection

__all__ = ["AdaMixerConfig", "AdaMixerForObjectDetection"]

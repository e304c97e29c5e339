"""Ground-truth boxes rasterised onto a feature grid, for the GT-guided baselines (FGD, FGFI).

Boxes are (cx, cy, w, h) normalised by the padded canvas (``data/collate.py``), so a box
times the level's (W_l, H_l) is already in feature cells. A cell belongs to a box when the
two overlap: a box always covers at least the cell holding its centre, however small it is
on a coarse level (FGD's original rounds the same way, floor/ceil, but also adds one extra
row and column at the far edge; we do not).
"""

from __future__ import annotations

import torch

# Box edges within this many cells of a grid line count as on it: (0.3 - 0.1) * 8 in float
# arithmetic is 1.6000000000000003, and ceil of an edge that is "exactly" 2.0 must stay 2.
_EDGE_TOLERANCE_CELLS = 1e-4


def box_cell_ranges(boxes_cxcywh: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The block of cells each box overlaps: [n, 4] boxes -> [n, 4] long (row0, row1, col0, col1),
    half-open (rows row0..row1-1), clipped to the grid, never empty."""
    cx, cy, w, h = boxes_cxcywh.float().unbind(-1)
    x1, x2 = (cx - w / 2) * width, (cx + w / 2) * width
    y1, y2 = (cy - h / 2) * height, (cy + h / 2) * height
    col0 = torch.floor(x1 + _EDGE_TOLERANCE_CELLS).clamp(0, width - 1)
    row0 = torch.floor(y1 + _EDGE_TOLERANCE_CELLS).clamp(0, height - 1)
    col1 = torch.maximum(torch.ceil(x2 - _EDGE_TOLERANCE_CELLS), col0 + 1).clamp(max=width)
    row1 = torch.maximum(torch.ceil(y2 - _EDGE_TOLERANCE_CELLS), row0 + 1).clamp(max=height)
    return torch.stack([row0, row1, col0, col1], dim=-1).long()


def gt_box_mask(targets: list[dict], valid: torch.Tensor) -> torch.Tensor:
    """Union of each image's GT boxes on the grid of ``valid``.

    Args:
        targets: per image {"boxes": [n, 4] normalised cxcywh, ...}.
        valid: [B, H, W] bool, False on padding.

    Returns:
        [B, H, W] bool: True on real pixels that some GT box of the image overlaps.
    """
    height, width = valid.shape[-2:]
    mask = torch.zeros_like(valid)
    for image, target in enumerate(targets):
        for row0, row1, col0, col1 in box_cell_ranges(target["boxes"], height, width).tolist():
            mask[image, row0:row1, col0:col1] = True
    return mask & valid


def inverse_area_mask(targets: list[dict], valid: torch.Tensor) -> torch.Tensor:
    """FGD's foreground scale mask: each cell gets 1 / (cells of the box covering it), the
    largest such value where boxes overlap (the smallest box wins), 0 elsewhere and on padding.

    Args: as ``gt_box_mask``. Returns: [B, H, W] float; a lone box's cells sum to 1.
    """
    height, width = valid.shape[-2:]
    weights = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    for image, target in enumerate(targets):
        for row0, row1, col0, col1 in box_cell_ranges(target["boxes"], height, width).tolist():
            block = weights[image, row0:row1, col0:col1]
            block.clamp_(min=1.0 / ((row1 - row0) * (col1 - col0)))
    return weights * valid

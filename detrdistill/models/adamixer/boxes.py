"""AdaMixer's (x, y, z, r) box descriptor and what is computed from it.

A query's box is ``xyzr``: centre (x, y) in pixels of the padded canvas, z = log2 of the
box's scale sqrt(w h) in pixels, r = log2 of its aspect ratio h / w. So
w = 2^(z - r/2) and h = 2^(z + r/2): every real 4-vector is a valid box, which is why
box refinement can add unconstrained deltas to it.

Learned initial boxes are stored *relative to the image* (``xyzr_rel``): (x, y) as fractions
of the image width and height, z and r relative to the whole image, so (0.5, 0.5, 0, 0)
is the whole image whatever its size (AdaMixer's initial proposal).
"""

from __future__ import annotations

import torch


def xyzr_to_xyxy(xyzr: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x, y, z, r) -> [..., 4] (x0, y0, x1, y1), same units as x and y."""
    xy, z, r = xyzr[..., :2], xyzr[..., 2:3], xyzr[..., 3:4]
    wh = torch.cat([2.0 ** (z - 0.5 * r), 2.0 ** (z + 0.5 * r)], dim=-1)
    return torch.cat([xy - 0.5 * wh, xy + 0.5 * wh], dim=-1)


def xyzr_to_cxcywh(xyzr: torch.Tensor, canvas_wh: tuple[int, int]) -> torch.Tensor:
    """[..., 4] xyzr in canvas pixels -> [..., 4] cxcywh normalised to the canvas (W, H)."""
    xy, z, r = xyzr[..., :2], xyzr[..., 2:3], xyzr[..., 3:4]
    wh = torch.cat([2.0 ** (z - 0.5 * r), 2.0 ** (z + 0.5 * r)], dim=-1)
    scale = xyzr.new_tensor(canvas_wh)
    return torch.cat([xy / scale, wh / scale], dim=-1)


def relative_to_xyzr(xyzr_rel: torch.Tensor, image_wh: torch.Tensor) -> torch.Tensor:
    """Image-relative boxes -> absolute xyzr per image.

    Args:
        xyzr_rel: [Q, 4] or [B, Q, 4]; image_wh: [B, 2] real (unpadded) image sizes in pixels.

    Returns:
        [B, Q, 4]: x = x_rel W, y = y_rel H, z = z_rel + log2 sqrt(W H), r = r_rel + log2(H / W).
    """
    image_wh = image_wh.to(xyzr_rel.dtype)[:, None, :]  # [B, 1, 2]
    width, height = image_wh[..., 0:1], image_wh[..., 1:2]
    xy = xyzr_rel[..., :2] * image_wh
    z = xyzr_rel[..., 2:3] + 0.5 * torch.log2(width * height)
    r = xyzr_rel[..., 3:4] + torch.log2(height / width)
    return torch.cat([xy, z, r], dim=-1)


def refine_xyzr(xyzr: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """AdaMixer's box refinement: the centre moves by delta_xy times the box scale 2^z,
    z and r move by their deltas. Both [..., 4]."""
    scale = 2.0 ** xyzr[..., 2:3]
    return torch.cat([xyzr[..., :2] + delta[..., :2] * scale, xyzr[..., 2:] + delta[..., 2:]], dim=-1)


def pairwise_iof(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """Intersection over the *first* box's area: [B, Q, 4] -> [B, Q, Q], entry (i, j) =
    |b_i & b_j| / |b_i| (how much of query i's box query j covers)."""
    top_left = torch.maximum(boxes_xyxy[:, :, None, :2], boxes_xyxy[:, None, :, :2])
    bottom_right = torch.minimum(boxes_xyxy[:, :, None, 2:], boxes_xyxy[:, None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).prod(-1)
    return intersection / area[:, :, None].clamp(min=1e-6)


def xyzr_position_embedding(xyzr: torch.Tensor, canvas_wh: tuple[int, int], dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a box: [B, Q, 4] -> [B, Q, dim], dim / 4 channels per coordinate.

    AdaMixer divides x and y by 1000 (about the size of a COCO image); we divide by the
    canvas size, which puts them in the same [0, 1] range on any image size.
    """
    per_coordinate = dim // 4
    scale = xyzr.new_tensor([canvas_wh[0], canvas_wh[1], 1.0, 1.0])
    coordinates = xyzr / scale
    index = torch.arange(per_coordinate, dtype=xyzr.dtype, device=xyzr.device)
    frequencies = 10000.0 ** (2 * torch.div(index, 2, rounding_mode="floor") / per_coordinate)
    angles = coordinates[..., None] / frequencies  # [B, Q, 4, D/4]
    embedding = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)
    return embedding.flatten(-2)


WHOLE_IMAGE_XYZR_REL = (0.5, 0.5, 0.0, 0.0)

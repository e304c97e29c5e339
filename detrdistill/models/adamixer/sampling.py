"""AdaMixer's adaptive 3D feature sampling over the multi-scale maps.

Each query generates, from its content vector, G groups of P sampling points, each an
offset (dx, dy, dz) from its box: x = x_box + dx w, y = y_box + dy h, z = z_box + dz. A
point's z is log2 of the feature stride it reads, and it reads *all* levels with Gaussian
weights on that log2 scale (normalised to sum 1), so z moves smoothly between levels:

    weight_l = softmax_l( -(z - log2 stride_l)^2 / tau )

(AdaMixer's level index is z - 3 on strides 4..32 with z offsets starting at -1: a box of
scale s reads stride s / 4 at the start; here the z offsets start at -2 for the same mapping.)
Within a level the value is bilinear, with zeros outside the map, as ``grid_sample``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Initial z offset of every sampling point: read the level of stride (box scale) / 4.
INITIAL_DZ = -2.0


def level_weights(z: torch.Tensor, strides: Sequence[int], tau: float) -> torch.Tensor:
    """Soft level selection: [...] point z (log2 stride) -> [..., L] weights summing to 1."""
    level_z = torch.log2(torch.tensor(list(strides), dtype=z.dtype, device=z.device))
    return torch.softmax(-((z[..., None] - level_z) ** 2) / tau, dim=-1)


def make_sample_points(offsets: torch.Tensor, xyzr: torch.Tensor, n_groups: int, n_points: int) -> torch.Tensor:
    """Sampling points from per-query offsets.

    Args:
        offsets: [B, Q, G * P * 3] (dx, dy relative to the box's w and h; dz in log2 units).
        xyzr: [B, Q, 4] the queries' boxes (canvas pixels, see ``boxes.py``).

    Returns:
        [B, Q, G, P, 3]: x, y in canvas pixels and z = log2 of the stride to read.
    """
    batch, queries = xyzr.shape[:2]
    offsets = offsets.view(batch, queries, n_groups, n_points, 3)
    z, r = xyzr[..., 2:3], xyzr[..., 3:4]
    wh = torch.cat([2.0 ** (z - 0.5 * r), 2.0 ** (z + 0.5 * r)], dim=-1)[:, :, None, None, :]
    xy = xyzr[:, :, None, None, :2] + offsets[..., :2] * wh
    point_z = xyzr[:, :, None, None, 2:3] + offsets[..., 2:3]
    return torch.cat([xy, point_z], dim=-1)


def sample_3d(
    features: Sequence[torch.Tensor], strides: Sequence[int], points: torch.Tensor, tau: float
) -> torch.Tensor:
    """Read the multi-scale maps at 3D points.

    Args:
        features: L maps [B, D, H_l, W_l]; level l's pixel (i, j) covers canvas pixels
            [j s_l, (j + 1) s_l) x [i s_l, (i + 1) s_l), s_l = strides[l].
        points: [B, Q, G, P, 3] from ``make_sample_points``; group g reads channels
            [g D / G, (g + 1) D / G).

    Returns:
        [B, Q, G, P, D / G]: per point, the level-weighted sum of the bilinear values.
    """
    batch, queries, groups, points_per_group, _ = points.shape
    weights = level_weights(points[..., 2], strides, tau)  # [B, Q, G, P, L]
    # One (image, group) pair per grid_sample batch entry: [B * G, Q, P, ...].
    xy = points[..., :2].permute(0, 2, 1, 3, 4).reshape(batch * groups, queries, points_per_group, 2)
    weights = weights.permute(0, 2, 1, 3, 4).reshape(batch * groups, 1, queries, points_per_group, -1)
    out = 0.0
    for level, (value, stride) in enumerate(zip(features, strides, strict=True)):
        _, channels, height, width = value.shape
        value = value.reshape(batch * groups, channels // groups, height, width)
        # align_corners=False: -1 and 1 are the outer edges of the map, i.e. canvas pixel 0
        # and W_l s_l, so a feature pixel's centre sits at canvas (j + 0.5) s_l.
        extent = xy.new_tensor([width * stride, height * stride])
        grid = xy / extent * 2.0 - 1.0
        sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + sampled * weights[..., level]  # [B * G, D / G, Q, P]
    channels_per_group = out.shape[1]
    return out.view(batch, groups, channels_per_group, queries, points_per_group).permute(0, 3, 1, 4, 2)

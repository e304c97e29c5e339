"""AdaMixer's adaptive mixing: channel then spatial mixing with per-query generated weights.

For each query and sampling group, a linear layer of the query's content vector generates
a channel-mixing matrix M [C, C] (C = D / G) and a spatial-mixing matrix S [P_out, P_in].
The group's sampled features X [P_in, C] become

    ReLU(LN(S . ReLU(LN(X . M))))                 (LN over the whole [points, channels] map)

and the G mixed maps, flattened, are projected back to the content width and added to the
content vector (residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptiveMixing(nn.Module):
    """Args: d_model (D), n_groups (G), n_points (P_in per group), out_points (P_out)."""

    def __init__(self, d_model: int, n_groups: int, n_points: int, out_points: int):
        super().__init__()
        self.n_groups, self.n_points, self.out_points = n_groups, n_points, out_points
        self.channels = d_model // n_groups
        self.channel_params = self.channels * self.channels
        self.spatial_params = out_points * n_points
        self.parameter_generator = nn.Linear(d_model, n_groups * (self.channel_params + self.spatial_params))
        self.out_proj = nn.Linear(n_groups * out_points * self.channels, d_model)

    def reset_parameters(self) -> None:
        # Zero weights: at the start every query mixes with the same (bias) matrices, as AdaMixer.
        nn.init.zeros_(self.parameter_generator.weight)

    def forward(self, sampled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """sampled [B, Q, G, P_in, C], content [B, Q, D] -> content [B, Q, D] (residual added)."""
        batch, queries = content.shape[:2]
        params = self.parameter_generator(content).view(batch * queries, self.n_groups, -1)
        channel_mix, spatial_mix = params.split([self.channel_params, self.spatial_params], dim=-1)
        channel_mix = channel_mix.view(batch * queries, self.n_groups, self.channels, self.channels)
        spatial_mix = spatial_mix.view(batch * queries, self.n_groups, self.out_points, self.n_points)

        x = sampled.reshape(batch * queries, self.n_groups, self.n_points, self.channels)
        x = torch.matmul(x, channel_mix)  # [BQ, G, P_in, C]
        x = F.relu(F.layer_norm(x, x.shape[-2:]))
        x = torch.matmul(spatial_mix, x)  # [BQ, G, P_out, C]
        x = F.relu(F.layer_norm(x, x.shape[-2:]))
        return content + self.out_proj(x.reshape(batch, queries, -1))

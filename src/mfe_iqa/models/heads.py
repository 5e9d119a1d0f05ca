"""The quality regression head shared by MFENet and the plain baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RegressionHead(nn.Module):
    """Global pooling then an MLP (Linear, GELU, Dropout per hidden layer) to one score per image.

    ``pooling='avg'`` uses the mean over space; ``'avgmax'`` concatenates mean and max (2C inputs).
    (B, C, h, w) -> (B,). The output is linear (no sigmoid) so that the loss sees unsquashed errors.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.1,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if pooling not in ("avg", "avgmax"):
            raise ValueError(f"head.pooling must be 'avg' or 'avgmax', got '{pooling}'.")
        self.pooling = pooling
        layers: list[nn.Module] = []
        prev = in_channels * (2 if pooling == "avgmax" else 1)
        for dim in hidden_dims:
            layers += [nn.Linear(prev, int(dim)), nn.GELU(), nn.Dropout(dropout)]
            prev = int(dim)
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # (B, C)
        if self.pooling == "avgmax":
            pooled = torch.cat([pooled, x.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        return self.mlp(pooled).squeeze(1)  # (B,)

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


STAGE_STATISTICS = ("mean", "std")


def stage_statistics(maps: Sequence[torch.Tensor], pooling: Sequence[str] = STAGE_STATISTICS) -> torch.Tensor:
    """[(B, C_j, h_j, w_j)] -> (B, len(pooling) * sum C_j) in float32: per stage, each statistic of ``pooling``
    over space (``mean``; ``std``, the population standard deviation), concatenated stage by stage."""
    parts = []
    for m in maps:
        m = m.float()
        for stat in pooling:
            parts.append(m.mean(dim=(2, 3)) if stat == "mean" else m.std(dim=(2, 3), unbiased=False))
    return torch.cat(parts, dim=1)


class StatsLinearHead(nn.Module):
    """A linear score from the pooled statistics of a branch's stage maps: per stage and channel the spatial
    mean and standard deviation, standardized by a non-affine BatchNorm, then w . z + b.

    What a ridge probe of the frozen pre-trained DAN fits (``mfe_iqa.probe``), as a path inside the network:
    the DAN's second-order statistics (noise, blur, contrast) reach the score without passing through the
    fusion into QEN. ``w`` and ``b`` start at zero and draw no random numbers, so a network with this path
    starts with exactly the outputs and the initialization of the same network without it;
    ``mfe_iqa.probe.init_stats_head_ridge`` sets them to the ridge probe's solution instead (LP-FT).
    [(B, C_j, h_j, w_j)] -> (B,).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.in_features = len(STAGE_STATISTICS) * sum(int(c) for c in channels)
        self.norm = nn.BatchNorm1d(self.in_features, affine=False)
        # (1, D) like an nn.Linear weight, so the optimizer's weight decay (the ridge penalty) applies to it
        self.weight = nn.Parameter(torch.zeros(1, self.in_features))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        z = self.norm(stage_statistics(maps))  # [mean_1, std_1, mean_2, std_2, ...]
        return (z @ self.weight.t()).squeeze(1) + self.bias

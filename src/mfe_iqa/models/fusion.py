"""Feature fusion: MS-CAM, AFF and iAFF (Dai et al., WACV 2021), simple add/concat, and MFENet's FFM.

All fusions take two maps of the same shape, X (the QEN feature) and Y (the other branch, already projected
to X's width and resized to X's resolution), and return one map of that shape.
"""

from __future__ import annotations

import torch
from torch import nn


class MSCAM(nn.Module):
    """Multi-scale channel attention: M(X) = sigmoid(L(X) + G(X)), (B, C, H, W) -> weights (B, C, H, W).

    L is a point-wise bottleneck (1x1 conv, BN, ReLU, 1x1 conv, BN) on every pixel; G is the same bottleneck on
    the globally average-pooled vector. G has no BatchNorm here (the original has) because BN over a (B, C, 1, 1)
    tensor fails in training with a batch of one; this changes nothing else.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = max(channels // reduction, 1)
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, mid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.local_att(x) + self.global_att(x))  # (B,C,H,W) + (B,C,1,1) broadcast


class AFF(nn.Module):
    """Attentional feature fusion: Z = M(X + Y) * X + (1 - M(X + Y)) * Y (no extra factor 2)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mscam = MSCAM(channels, reduction)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.mscam(x + y)
        return w * x + (1 - w) * y


class IAFF(nn.Module):
    """Iterative AFF: a first AFF gives the initial integration Z1, whose attention M2(Z1) then mixes X and Y."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mscam1 = MSCAM(channels, reduction)
        self.mscam2 = MSCAM(channels, reduction)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w1 = self.mscam1(x + y)
        z1 = w1 * x + (1 - w1) * y
        w2 = self.mscam2(z1)
        return w2 * x + (1 - w2) * y


class AddFusion(nn.Module):
    """Z = X + Y: the simple baseline the paper argues against."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class ConcatFusion(nn.Module):
    """Z = BN(conv1x1([X, Y])): concatenation baseline, projected back to X's width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([x, y], dim=1))  # (B, 2C, H, W) -> (B, C, H, W)


class FFM(nn.Module):
    """Feature Fusion Module: adds high-frequency features H to QEN features X, weighted by attention.

    Interpretation of the paper's "adaptive" fusion (its equations are not available to us): a channel
    attention computed from both branches decides *which* high-frequency channels matter for the current
    QEN features, a spatial attention computed from H decides *where* (texture and edges), and
    Z = X + a_c(X, H) * a_s(H) * H. The residual form keeps the QEN path intact when the weights go to zero.

    ``gate_init``: None (default) is the formula above. A number adds a learnable per-channel scale g, initialized
    to that value: Z = X + g * a_c * a_s * H (ReZero / layer scale). With 0.0 the network starts exactly as
    without HFEN (a freshly initialized branch adds no noise to the QEN features) and lets the high-frequency
    path in as g learns; the HFEN still trains from its own auxiliary loss meanwhile.
    """

    def __init__(
        self, channels: int, reduction: int = 4, spatial_kernel: int = 7, gate_init: float | None = None
    ) -> None:
        super().__init__()
        mid = max(channels // reduction, 1)
        self.channel_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * channels, mid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_att = nn.Sequential(
            nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2),
            nn.Sigmoid(),
        )
        self.gate: nn.Parameter | None = None
        if gate_init is not None:
            self.gate = nn.Parameter(torch.full((channels,), float(gate_init)))  # (C,), no weight decay (1-D)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a_c = self.channel_att(torch.cat([x, h], dim=1))  # (B, C, 1, 1)
        stats = torch.cat([h.mean(dim=1, keepdim=True), h.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        a_s = self.spatial_att(stats)  # (B, 1, H, W)
        added = a_c * a_s * h  # (B, C, H, W)
        if self.gate is not None:
            added = self.gate.view(1, -1, 1, 1) * added
        return x + added


FUSION_KINDS = ("aff", "iaff", "add", "concat")
HF_FUSION_KINDS = ("ffm", "add", "concat")


def build_fusion(kind: str, channels: int, reduction: int = 4, gate_init: float | None = None) -> nn.Module:
    """A fusion module by name: aff | iaff | add | concat | ffm (``gate_init`` only applies to ffm)."""
    if kind == "aff":
        return AFF(channels, reduction)
    if kind == "iaff":
        return IAFF(channels, reduction)
    if kind == "add":
        return AddFusion()
    if kind == "concat":
        return ConcatFusion(channels)
    if kind == "ffm":
        return FFM(channels, reduction, gate_init=gate_init)
    raise ValueError(
        f"Unknown fusion '{kind}'; choose one of aff, iaff, add, concat (DAN) or ffm, add, concat (HFEN)."
    )


class BranchProjection(nn.Module):
    """Brings a branch feature to the QEN feature's width (1x1 conv + BN) and resolution (bilinear resize).

    (B, C_in, h, w) -> (B, C_out, H, W); the resize only acts when the sizes differ (e.g. odd input sizes).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.proj(y)
        if tuple(y.shape[-2:]) != tuple(size):
            y = nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y

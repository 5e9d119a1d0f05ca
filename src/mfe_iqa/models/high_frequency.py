"""HFEN: the High-Frequency Extraction Network of MFENet, and the fixed high-frequency target of its task.

Interpretation (the paper's method section is not available): an octave convolution (Chen et al., ICCV 2019)
splits a feature map X into a low-frequency band X_L = AvgPool2(X) at half resolution and a high-frequency band
X_H = X - Up(X_L). Its high-frequency output is conv_HH(X_H) + Up(conv_LH(X_L)). The *high-frequency module*
keeps only the high band: it drops the X_L -> H path (and the whole low-frequency output), convolves X_H, and
removes the low band of its own output once more. Every convolution pads by replication, so a constant
input gives exactly zero, and a smooth input gives almost zero: the module passes texture and edges only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def remove_low_band(x: torch.Tensor) -> torch.Tensor:
    """X_H = X - Up(AvgPool2(X)): the part of (B, C, H, W) that the half-resolution octave cannot represent."""
    low = F.avg_pool2d(
        x, kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False
    )  # (B, C, H/2, W/2)
    return x - F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ConvNormAct(nn.Sequential):
    """A vanilla k x k convolution (replicate padding), BatchNorm and GELU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                in_ch,
                out_ch,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                padding_mode="replicate",
                bias=False,
            ),
            nn.BatchNorm2d(out_ch),
            nn.GELU(),
        )


class HighFrequencyModule(nn.Module):
    """Octave-convolution high-frequency module: (B, C_in, H, W) -> (B, C_out, H, W), low band discarded.

    X_H = X - Up(AvgPool(X)); Y = GELU(conv3x3(X_H)) + shortcut(X_H); output = Y - Up(AvgPool(Y)).
    No normalization layer inside: BatchNorm after the high-pass would rescale a weak high band (a smooth
    image) to unit variance in training and undo the filtering; the strided convs around it carry the BN.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        # the high -> high path of the octave convolution (the L -> H, H -> L and L -> L paths are dropped)
        self.conv_hh = nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode="replicate", bias=False)
        self.act = nn.GELU()
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h = remove_low_band(x)  # (B, C_in, H, W) high band only
        y = self.act(self.conv_hh(x_h)) + self.shortcut(x_h)  # (B, C_out, H, W)
        return remove_low_band(y)


class HighFrequencyExtractionNetwork(nn.Module):
    """Vanilla convolutions, then high-frequency modules, giving features at reductions 4, 8, 16, 32.

    stem (vanilla 3x3 convs, full resolution) -> HF module (full resolution, finest texture) ->
    for each stage i: strided vanilla conv(s) down to 1/r_i, then an HF module -> feature i of width
    ``channels[i]``. ``num_stages`` limits how deep it goes (MFENet asks for the deepest fused stage).
    A light decoder maps the full-resolution HF features and stage 0 back to a (B, 1, H, W) map that the
    auxiliary loss compares with the fixed high-frequency target of the input.
    """

    reductions: tuple[int, ...] = (4, 8, 16, 32)

    def __init__(
        self,
        stem_channels: int = 16,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_stages: int = 4,
    ) -> None:
        super().__init__()
        if not 1 <= num_stages <= len(channels):
            raise ValueError(f"hfen num_stages={num_stages} must be in 1..{len(channels)} (len(channels)).")
        self.channels = [int(c) for c in channels[:num_stages]]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.stem = ConvNormAct(3, stem_channels, 3)
        self.stem_hf = HighFrequencyModule(stem_channels, stem_channels)
        downs, hfs = [], []
        prev = stem_channels
        for i, ch in enumerate(self.channels):
            steps = 2 if i == 0 else 1  # stage 0 goes from 1/1 to 1/4, later stages halve
            layers = [ConvNormAct(prev if s == 0 else ch, ch, 3, stride=2) for s in range(steps)]
            downs.append(nn.Sequential(*layers))
            hfs.append(HighFrequencyModule(ch, ch))
            prev = ch
        self.downs = nn.ModuleList(downs)
        self.hf_modules = nn.ModuleList(hfs)
        # Decoder for the auxiliary task: stage-0 features upsampled x4 plus a skip from full resolution.
        self.dec_stage0 = ConvNormAct(self.channels[0], stem_channels, 3)
        self.dec_out = nn.Sequential(
            ConvNormAct(stem_channels, stem_channels, 3), nn.Conv2d(stem_channels, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x in [0, 1], (B, 3, H, W) -> ([(B, channels[i], ceil(H/r_i), ceil(W/r_i))], hf_pred (B, 1, H, W))."""
        x = (x - self.mean) / self.std
        full = self.stem_hf(self.stem(x))  # (B, stem, H, W)
        feats = []
        y = full
        for down, hf in zip(self.downs, self.hf_modules):
            y = hf(down(y))
            feats.append(y)
        up = F.interpolate(self.dec_stage0(feats[0]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        hf_pred = self.dec_out(up + full)  # (B, 1, H, W)
        return feats, hf_pred


class HighFrequencyTarget(nn.Module):
    """The fixed high-frequency component of an image: luma minus its Gaussian blur (a difference of Gaussians).

    (B, 3, H, W) in [0, 1] -> (B, 1, H, W), roughly in [-0.5, 0.5] and zero on flat regions. Not learned.
    """

    def __init__(self, sigma: float = 1.5) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"hf_target sigma must be > 0, got {sigma}.")
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = g / g.sum()
        self.radius = radius
        self.register_buffer("kernel_h", g.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", g.view(1, 1, -1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = (x * self.luma.to(x.dtype)).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        r = self.radius
        mode = "reflect" if min(gray.shape[-2:]) > r else "replicate"
        blur = F.conv2d(F.pad(gray, (r, r, 0, 0), mode=mode), self.kernel_h.to(x.dtype))
        blur = F.conv2d(F.pad(blur, (0, 0, r, r), mode=mode), self.kernel_v.to(x.dtype))
        return gray - blur

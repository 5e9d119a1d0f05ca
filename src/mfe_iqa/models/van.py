"""VAN: the Visual Attention Network (Guo et al., 2022), the QEN backbone of MFENet.

timm does not ship VAN, so this is our own implementation. Module and parameter names follow the official
`Visual-Attention-Network/VAN-Classification` code (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``)
so that the official ImageNet checkpoints load by key from a local file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from timm.layers import DropPath
from torch import nn

from mfe_iqa.errors import UserError


@dataclass(frozen=True)
class VANSpec:
    """Widths, depths and MLP ratios of one VAN variant."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)


# Official variants (VAN-Classification `van_b0` .. `van_b3`); published sizes 4.1M / 13.9M / 26.6M / 44.8M.
VAN_VARIANTS: dict[str, VANSpec] = {
    "van_b0": VANSpec((32, 64, 160, 256), (3, 3, 5, 2)),
    "van_b1": VANSpec((64, 128, 320, 512), (2, 2, 4, 2)),
    "van_b2": VANSpec((64, 128, 320, 512), (3, 3, 12, 3)),
    "van_b3": VANSpec((64, 128, 320, 512), (3, 5, 27, 3)),
}

VAN_STAGE_REDUCTIONS: tuple[int, int, int, int] = (4, 8, 16, 32)


class VANCheckpointError(UserError, RuntimeError):
    """A VAN weight file whose keys or shapes do not fit the configured variant."""


class DepthwiseConv(nn.Module):
    """3x3 depth-wise convolution inside the MLP (gives the MLP a positional/local prior)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class ConvMlp(nn.Module):
    """1x1 conv -> 3x3 depth-wise conv -> GELU -> 1x1 conv, on (B, C, H, W) maps."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


# Smallest map side from which the dilated depth-wise conv runs by phases on the CPU (below, the plain call is
# faster: 64 channels at 16x16 took 26 ms by phases against 37 ms, 160 channels at 8x8 29 against 20 ms; batch 16,
# forward + backward, one thread; `python -m mfe_iqa.models.van` prints these figures for this machine).
PHASE_MIN_SIDE = 16
# False: LKA always calls its dilated conv plainly (the reference; `benchmark_phases` toggles it).
CPU_FAST_DILATED_CONV = True


def dilated_depthwise_by_phases(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The same result as ``conv(x)`` for a depth-wise "same" conv with dilation d, computed without dilation.

    Output pixel (d*a + r, d*b + s) only reads input pixels of the same phase (r, s), d apart; so the map is
    split into its d*d phase sub-maps (stacked on the batch axis), each convolved by the undilated kernel,
    and interleaved back. PyTorch's CPU kernels for dilated depth-wise convs are several times slower per tap
    than undilated ones. (B, C, H, W) -> (B, C, H, W); H and W are zero-padded to a multiple of d, which is
    what the conv's own zero padding reads there.
    """
    d = conv.dilation[0]
    k = conv.kernel_size[0]
    b, c, h, w = x.shape
    hp, wp = -(-h // d) * d, -(-w // d) * d
    x = nn.functional.pad(x, (0, wp - w, 0, hp - h))
    phases = x.view(b, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4)  # (B, d, d, C, H/d, W/d)
    phases = phases.reshape(b * d * d, c, hp // d, wp // d)
    y = nn.functional.conv2d(phases, conv.weight, conv.bias, padding=k // 2, groups=conv.groups)
    y = y.view(b, d, d, c, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2).reshape(b, c, hp, wp)
    return y[:, :, :h, :w]


def dilated_depthwise_in_reach(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The same result as ``conv(x)`` for a "same" dilated conv, leaving out the taps that only read padding.

    On a map of side n, a tap at offset d*j (j = -k//2 .. k//2) reads the map only where |d*j| <= n - 1; the
    others multiply the zero padding everywhere. VAN's 7x7 dilation-3 conv reaches 9 pixels: on the 4x4 maps
    of a 128-px input's last stage 40 of its 49 taps are padding. (B, C, H, W) -> (B, C, H, W).
    """
    d, k = conv.dilation[0], conv.kernel_size[0]
    c = k // 2
    half_h, half_w = min(c, (x.shape[-2] - 1) // d), min(c, (x.shape[-1] - 1) // d)
    weight = conv.weight[:, :, c - half_h : c + half_h + 1, c - half_w : c + half_w + 1]
    return nn.functional.conv2d(
        x, weight, conv.bias, padding=(d * half_h, d * half_w), dilation=d, groups=conv.groups
    )


class LargeKernelAttention(nn.Module):
    """LKA: a 21x21 receptive field decomposed into 5x5 depth-wise, 7x7 depth-wise dilation 3, and 1x1 convs.

    The result is an attention map that multiplies the input element-wise (spatial and channel adaptivity).
    On the CPU, in eager mode, maps from ``PHASE_MIN_SIDE`` pixels on run the dilated conv by phases
    (``dilated_depthwise_by_phases``) and smaller ones without the taps that only read padding
    (``dilated_depthwise_in_reach``): the same numbers up to float rounding, faster. Scripted, traced,
    exported or compiled graphs and other devices use the plain call.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        # nested on purpose: TorchScript skips a block under `not is_scripting()` alone, not under an `and`
        if not torch.jit.is_scripting():  # noqa: SIM102
            if _eager_cpu(attn):
                return x * self.conv1(dilated_depthwise_fast(attn, self.conv_spatial))
        return x * self.conv1(self.conv_spatial(attn))


def dilated_depthwise_fast(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` by phases from ``PHASE_MIN_SIDE`` pixels on, else without the out-of-reach taps."""
    if min(x.shape[-2:]) >= PHASE_MIN_SIDE:
        return dilated_depthwise_by_phases(x, conv)
    return dilated_depthwise_in_reach(x, conv)


def _eager_cpu(x: torch.Tensor) -> bool:
    """On the CPU and in eager mode: not scripted, traced, exported or compiled (their graphs must not bake in
    a choice made from one input's size)."""
    if not CPU_FAST_DILATED_CONV or x.device.type != "cpu":
        return False
    return not (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


class SpatialAttention(nn.Module):
    """1x1 conv -> GELU -> LKA gating -> 1x1 conv, with a residual connection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LargeKernelAttention(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))
        return y + x


class VANBlock(nn.Module):
    """BN -> attention and BN -> MLP, each scaled per channel by a layer-scale vector and drop-pathed."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1.view(1, -1, 1, 1) * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2.view(1, -1, 1, 1) * self.mlp(self.norm2(x)))


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (7x7/4 for stage 1, 3x3/2 after) followed by BatchNorm.

    The padding is k // 2, so any input size works: the output is ceil(H / stride) x ceil(W / stride).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class VAN(nn.Module):
    """Visual Attention Network returning the four stage feature maps (and class logits if ``num_classes``).

    ``forward_stage(i, x)`` runs one stage (patch embedding, blocks, LayerNorm) so that MFENet can fuse the
    other branches between stages. Input is a normalized image tensor (B, 3, H, W); the stage outputs are
    (B, embed_dims[i], ceil(H / r_i), ceil(W / r_i)) with r = 4, 8, 16, 32.
    """

    def __init__(
        self,
        variant: str = "van_b0",
        num_classes: int = 0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pretrained_path: str | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if variant not in VAN_VARIANTS:
            raise ValueError(f"Unknown VAN variant '{variant}'; choose one of {sorted(VAN_VARIANTS)}.")
        spec = VAN_VARIANTS[variant]
        self.variant = variant
        self.embed_dims: list[int] = list(spec.embed_dims)
        self.depths: list[int] = list(spec.depths)
        self.reductions: list[int] = list(VAN_STAGE_REDUCTIONS)
        self.num_stages = len(self.depths)
        self.num_classes = num_classes
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()  # stochastic depth decay rule
        cur = 0
        for i in range(self.num_stages):
            embed = OverlapPatchEmbed(
                in_chans if i == 0 else self.embed_dims[i - 1],
                self.embed_dims[i],
                patch_size=7 if i == 0 else 3,
                stride=4 if i == 0 else 2,
            )
            blocks = nn.ModuleList(
                VANBlock(self.embed_dims[i], spec.mlp_ratios[i], drop_rate, dpr[cur + j])
                for j in range(self.depths[i])
            )
            cur += self.depths[i]
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(self.embed_dims[i], eps=1e-6))
        self.head = nn.Linear(self.embed_dims[-1], num_classes) if num_classes > 0 else None
        self.apply(_init_weights)
        if pretrained_path:
            self.load_pretrained(pretrained_path)

    def forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (0-based): (B, C_{i-1}, h, w) -> (B, C_i, ceil(h/s), ceil(w/s))."""
        x = getattr(self, f"patch_embed{i + 1}")(x)
        for blk in getattr(self, f"block{i + 1}"):
            x = blk(x)
        # LayerNorm over channels, applied channels-last: (B, C, h, w) -> (B, h, w, C) -> back
        x = getattr(self, f"norm{i + 1}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x.contiguous()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All four stage outputs, [(B, C_i, H/r_i, W/r_i)]."""
        feats = []
        for i in range(self.num_stages):
            x = self.forward_stage(i, x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """Class logits (B, num_classes) when a head exists, else the list of stage features."""
        feats = self.forward_features(x)
        if self.head is None:
            return feats
        return self.head(feats[-1].mean(dim=(2, 3)))

    def load_pretrained(self, path: str | Path) -> None:
        """Load an official VAN checkpoint (``.pth``/``.pth.tar``, possibly nested under 'state_dict'/'model').

        ``head.*`` is skipped when this model has no classifier; any other mismatch raises a
        ``VANCheckpointError`` listing the missing and unexpected keys.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"VAN weights '{path}' do not exist. Download the official checkpoint of {self.variant} "
                "(Visual-Attention-Network/VAN-Classification) and set model.qen.pretrained_path to it, "
                "or set model.qen.pretrained_path=null to train from scratch."
            )
        obj = torch.load(path, map_location="cpu", weights_only=False)
        state = extract_state_dict(obj, str(path))
        if self.head is None:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
        unexpected = sorted(k for k in state if k not in own)
        wrong_shape = sorted(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in state
            if k in own and tuple(state[k].shape) != tuple(own[k].shape)
        )
        if missing or unexpected or wrong_shape:
            raise VANCheckpointError(
                f"'{path}' does not fit VAN variant '{self.variant}': {len(missing)} missing keys {missing[:8]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:8]}, {len(wrong_shape)} shape mismatches "
                f"{wrong_shape[:4]}. Check model.qen.variant matches the checkpoint (van_b0 = VAN-Tiny, "
                "van_b1 = Small, van_b2 = Base, van_b3 = Large)."
            )
        self.load_state_dict(state, strict=False)


def extract_state_dict(obj: object, where: str) -> dict[str, torch.Tensor]:
    """The tensor dict of a checkpoint: top level, or nested under 'state_dict' / 'model'; 'module.' stripped."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key], where)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise VANCheckpointError(
        f"'{where}' holds no state dict: expected a dict of tensors, possibly under 'state_dict' or 'model'."
    )


def _init_weights(m: nn.Module) -> None:
    """The official initialization: truncated normal for Linear, fan-out normal for convs, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def van_param_count(variant: str, num_classes: int = 1000) -> int:
    """Parameter count of a VAN variant (with an ImageNet head by default, as published)."""
    return sum(p.numel() for p in VAN(variant, num_classes=num_classes).parameters())


def stage_channels(variant: str) -> Sequence[int]:
    """The four stage widths of a variant without building it."""
    return VAN_VARIANTS[variant].embed_dims


def benchmark_phases(
    variant: str = "van_b0", batch: int = 16, size: int = 128, repeats: int = 5
) -> list[str]:
    """Forward + backward milliseconds of LKA's dilated conv, plain vs the CPU fast path, per stage and whole VAN.

    The two ways alternate within one run, so that a change of load hits both alike (the ratio is what to
    read; the absolute times depend on the machine and its load). Returns the printed lines.
    """
    import time

    global CPU_FAST_DILATED_CONV
    saved = CPU_FAST_DILATED_CONV

    def alternate(ways: dict[str, Callable[[], torch.Tensor]]) -> dict[str, float]:
        totals = dict.fromkeys(ways, 0.0)
        for i in range(repeats + 1):  # the first round warms up
            for name, fn in ways.items():
                start = time.perf_counter()
                fn().sum().backward()
                if i > 0:
                    totals[name] += (time.perf_counter() - start) / repeats * 1000
        return totals

    lines = [f"{variant}, batch {batch}, {size} px, {torch.get_num_threads()} thread(s), fwd + bwd ms:"]
    torch.manual_seed(0)
    for width, stride in zip(VAN_VARIANTS[variant].embed_dims, (4, 8, 16, 32)):
        side = -(-size // stride)
        conv = nn.Conv2d(width, width, 7, padding=9, groups=width, dilation=3)
        x = torch.randn(batch, width, side, side, requires_grad=True)
        how = "by phases" if side >= PHASE_MIN_SIDE else "taps in reach"
        t = alternate({"plain": partial(conv, x), "fast": partial(dilated_depthwise_fast, x, conv)})
        lines.append(
            f"  dilated 7x7 conv, {width} ch at {side}x{side}: plain {t['plain']:.1f}, {how} {t['fast']:.1f} "
            f"(x{t['plain'] / t['fast']:.2f})"
        )
    model = VAN(variant, num_classes=1).train()
    model_cl = VAN(variant, num_classes=1).train().to(memory_format=torch.channels_last)
    images = torch.rand(batch, 3, size, size)
    images_cl = images.contiguous(memory_format=torch.channels_last)

    def step(fast: bool, channels_last: bool = False) -> torch.Tensor:
        global CPU_FAST_DILATED_CONV
        CPU_FAST_DILATED_CONV = fast
        return model_cl(images_cl) if channels_last else model(images)

    try:
        t = alternate(
            {"plain": partial(step, False), "fast": partial(step, True), "fast_cl": partial(step, True, True)}
        )
    finally:
        CPU_FAST_DILATED_CONV = saved
    lines.append(
        f"  whole {variant}: plain {t['plain']:.0f}, fast path {t['fast']:.0f} (x{t['plain'] / t['fast']:.2f}), "
        f"fast path in channels-last (system.channels_last) {t['fast_cl']:.0f} (x{t['plain'] / t['fast_cl']:.2f})"
    )
    return lines


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Time VAN's dilated depth-wise conv, plain vs the CPU fast path (and channels-last)."
    )
    parser.add_argument("--variant", default="van_b0", choices=sorted(VAN_VARIANTS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("\n".join(benchmark_phases(args.variant, args.batch, args.size, args.repeats)))

"""Stand-in networks with known scores, and a writer of IQA training checkpoints in the documented format.

Used by the inference tests (predict, gMAD, export, bench) so that scores can be computed by hand.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mfe_iqa.models.outputs import MFENetOutput


class ChannelMeanNet(nn.Module):
    """score = gain * mean of the chosen input channels + bias: a "model" whose score is known by hand."""

    def __init__(self, channels: tuple[int, ...] = (0, 1, 2), gain: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.channels = list(channels)
        self.gain = nn.Parameter(torch.tensor(float(gain)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, x: torch.Tensor) -> MFENetOutput:  # x: (B, 3, H, W) in [0, 1]
        return MFENetOutput(score=self.gain * x[:, self.channels].mean(dim=(1, 2, 3)) + self.bias)


class TinyConvNet(nn.Module):
    """A small conv net with normalization buffers, standing in for MFENet where real layers are needed."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2),
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> MFENetOutput:
        f = self.features((x - self.mean) / self.std).mean(dim=(2, 3))  # (B, width)
        return MFENetOutput(score=torch.sigmoid(self.head(f)).squeeze(1))


def target_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def write_iqa_checkpoint(path: Path, net: nn.Module, model_cfg: dict, database: dict | None = None) -> Path:
    """A checkpoint as IQATrainingModule writes it: ``state_dict`` under ``net.`` plus ``checkpoint["mfe_iqa"]``."""
    database = database or {"name": "livec", "mos_min": 3.42, "mos_max": 92.43, "lower_better": False}
    ckpt = {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "mfe_iqa": {"model_cfg": model_cfg, "database": database},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def write_image(path: Path, array: np.ndarray) -> Path:
    """Save an (H, W, 3) uint8 array losslessly (PNG/BMP) so decoded values are exact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` intra-op threads, then restore: on the shared 2-core test machine two
    spinning OpenMP threads slow mfenet_tiny down by an order of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

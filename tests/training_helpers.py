"""Toy data and a stand-in network for the training tests (IQATrainingModule, mfe-iqa-eval).

NoiseDB: a random brightness (nuisance, unrelated to quality) plus +-1 noise of amplitude 0.3 * (1 - MOS):
more noise, lower quality. An untrained network's response grows with the noise energy (so it tends to rank the
images backwards); a trained one must learn that noise lowers quality.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mfe_iqa.data.items import BATCH_DIST_TYPE, BATCH_IMAGE, BATCH_INDEX, BATCH_MOS
from mfe_iqa.losses.iqa import QualityLoss
from mfe_iqa.models.outputs import MFENetOutput
from mfe_iqa.systems.iqa import IQATrainingModule, warmup_cosine_schedule

SIZE = 32


class NoiseDB(Dataset):
    """n images of SIZE x SIZE; train items (3, h, w), eval items (K, 3, h, w) crops of the same image."""

    def __init__(self, n: int, seed: int, crops: int | None = None, num_types: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mos = torch.rand(n, generator=g)
        self.brightness = 0.3 + 0.4 * torch.rand(n, generator=g)
        self.pattern = torch.randint(0, 2, (n, 1, SIZE + 4, SIZE + 4), generator=g).float() * 2 - 1
        self.dist_type = torch.where(torch.arange(n) % 4 == 3, -1, torch.arange(n) % num_types)
        self.crops = crops

    def __len__(self) -> int:
        return len(self.mos)

    def image(self, i: int) -> torch.Tensor:
        img = self.brightness[i] + 0.3 * (1 - self.mos[i]) * self.pattern[i].expand(3, -1, -1)
        return img.clamp(0, 1)  # (3, SIZE + 4, SIZE + 4)

    def __getitem__(self, i: int) -> dict:
        img = self.image(i)
        if self.crops is None:
            x = img[:, 2 : 2 + SIZE, 2 : 2 + SIZE]
        else:  # K deterministic crops
            x = torch.stack([img[:, k : k + SIZE, k : k + SIZE] for k in range(self.crops)])
        return {BATCH_IMAGE: x, BATCH_MOS: self.mos[i], BATCH_DIST_TYPE: self.dist_type[i], BATCH_INDEX: i}


class TinyNet(nn.Module):
    """Stand-in for MFENet: conv 'backbone' + norm, a score head, an HF decoder and a distortion head."""

    def __init__(self, width: int = 8, num_dist_types: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.LayerNorm(width)  # over the pooled channels (per-image scale survives in their ratios)
        self.score_head = nn.Linear(width, 1)
        self.hf_head = nn.Conv2d(width, 1, 1)
        self.dist_head = nn.Linear(width, num_dist_types)

    def forward(self, x: torch.Tensor) -> MFENetOutput:
        f = F.relu(self.conv(x))  # (B, C, H, W)
        pooled = self.norm(f.mean(dim=(2, 3)))  # (B, C)
        gray = x.mean(dim=1, keepdim=True)
        hf_target = gray - F.avg_pool2d(gray, 3, 1, 1, count_include_pad=False)  # (B, 1, H, W)
        return MFENetOutput(
            score=self.score_head(pooled).squeeze(1),
            hf_pred=self.hf_head(f),
            hf_target=hf_target,
            dist_logits=self.dist_head(pooled),
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "backbone": [*self.conv.parameters()],
            "head": [
                *self.norm.parameters(),
                *self.score_head.parameters(),
                *self.hf_head.parameters(),
                *self.dist_head.parameters(),
            ],
        }


MODEL_CFG = {"_target_": f"{TinyNet.__module__}.TinyNet", "width": 8, "num_dist_types": 3}


def tiny_system(lr: float, database: dict) -> IQATrainingModule:
    """IQATrainingModule around a seeded TinyNet: L1 + PLCC loss, AdamW at ``lr``, cosine without warm-up."""
    torch.manual_seed(0)
    return IQATrainingModule(
        net=TinyNet(),
        quality_loss=QualityLoss(l1=1.0, plcc=1.0),
        optimizer=functools.partial(torch.optim.AdamW, lr=lr),
        scheduler=functools.partial(warmup_cosine_schedule, warmup_fraction=0.0),
        model_cfg=MODEL_CFG,
        database=database,
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests are tiny: one intra-op thread avoids oversubscribing the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""torch Datasets over a list of IQAItem: decode, transform, and yield the batch keys of ``items``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mfe_iqa.data.images import load_rgb
from mfe_iqa.data.items import (
    BATCH_DIST_TYPE,
    BATCH_IMAGE,
    BATCH_IMAGE_DEGRADED,
    BATCH_INDEX,
    BATCH_MOS,
    IQAItem,
)
from mfe_iqa.data.transforms import DegradedTwin, EvalTransform, TrainTransform, to_tensor


def image_key(path: str) -> str:
    """A machine-independent name for an image (parent folder / file name): seeds its test crops."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


class _ItemDataset(Dataset):
    def __init__(
        self,
        items: Sequence[IQAItem],
        short_side: int | None = None,
        path_map: Mapping[str, str] | None = None,
    ):
        self.items = list(items)
        self.short_side = short_side
        self.path_map = dict(path_map or {})

    def load(self, item: IQAItem) -> np.ndarray:
        cached = self.path_map.get(item.path)
        if cached is not None:  # already resized to short_side
            return load_rgb(cached)
        return load_rgb(item.path, short_side=self.short_side)

    def labels(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        return {
            BATCH_MOS: torch.tensor(item.mos, dtype=torch.float32),
            BATCH_DIST_TYPE: torch.tensor(item.dist_type, dtype=torch.int64),
            BATCH_INDEX: torch.tensor(index, dtype=torch.int64),
        }


class IQATrainDataset(_ItemDataset):
    """``crops_per_image`` random crops of every item per epoch; ``index`` is the item's position.

    With ``twin`` each sample also holds ``image_degraded``: the same crop through ``twin`` (a distorted copy).
    """

    def __init__(
        self,
        items,
        transform: TrainTransform,
        crops_per_image: int = 1,
        twin: DegradedTwin | None = None,
        **kwargs,
    ):
        super().__init__(items, **kwargs)
        if crops_per_image < 1:
            raise ValueError(f"data.train_crops must be >= 1, got {crops_per_image}")
        self.transform = transform
        self.twin = twin
        self.crops_per_image = int(crops_per_image)
        # Seeded from torch's (seed_everything) state so the main-process loader is reproducible.
        self.reseed(torch.initial_seed())

    def reseed(self, seed: int) -> None:
        self.transform.reseed(seed)
        if self.twin is not None:
            self.twin.reseed(seed)

    def __len__(self) -> int:
        return len(self.items) * self.crops_per_image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = i % len(self.items)
        sample = self.labels(index)
        crop = self.transform.crop(self.load(self.items[index]))  # (crop, crop, 3) uint8
        sample[BATCH_IMAGE] = to_tensor(crop)  # (3, crop, crop)
        if self.twin is not None:
            sample[BATCH_IMAGE_DEGRADED] = to_tensor(self.twin(crop))
        return sample


class IQAEvalDataset(_ItemDataset):
    """K deterministic views of every item: image (K, 3, h, w)."""

    def __init__(self, items, transform: EvalTransform, **kwargs):
        super().__init__(items, **kwargs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.labels(index)
        item = self.items[index]
        sample[BATCH_IMAGE] = self.transform(self.load(item), image_key(item.path))  # (K, 3, h, w)
        return sample


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's albumentations pipeline its own seed.

    torch seeds worker ``i`` with ``base_seed + i`` (base_seed drawn from the seeded main generator),
    so crops differ between workers and epochs yet repeat for the same global seed.
    """
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, IQATrainDataset):
        info.dataset.reseed(info.seed)

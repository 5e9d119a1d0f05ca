"""Data for DAN contrastive pre-training: pristine images distorted on the fly into (type, level) classes.

Classes: 0 = pristine, 1 + 5 * type + (level - 1) for the 25 KADID types (0-based) at levels 1..5,
and, optionally, one instance class per authentic image (126, 127, ...). Every batch comes from
``ClassBalancedBatchSampler``: each (type, level) class drawn holds at least ``samples_per_class``
items of different contents, so every anchor has positives of other content (CONTRIQUE's positives).

Each item gives two views (CONTRIQUE): a region of 2c x 2c pixels is cropped at random and distorted at
native resolution; view 1 is a random c x c crop of it (full scale), view 2 the whole region resized to
c x c (half scale); each view is flipped horizontally at random. Output is float32 RGB in [0, 1].

Validation (k-NN): held-out pristine images (queries, never trained on) and, with ``bank_crops > 0``,
the training images (the labelled bank), each distorted into every class at fixed seeds; the system
classifies each query by its nearest bank items (``bank_crops = 0``: by the *other* held-out images).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mfe_iqa.data.distortions import (
    CHROMA_ONLY_TYPES,
    DISTORTION_NAMES,
    NUM_LEVELS,
    apply_distortion,
    is_gray,
    type_indices,
)
from mfe_iqa.data.images import IMAGE_SUFFIXES, load_rgb
from mfe_iqa.data.synthetic import dead_leaves
from mfe_iqa.errors import UserError

log = logging.getLogger(__name__)

PRISTINE_CLASS = 0
NUM_TYPES = len(DISTORTION_NAMES)
NUM_SYNTHETIC_CLASSES = 1 + NUM_TYPES * NUM_LEVELS  # 126: pristine + 25 types x 5 levels
POOL_PRISTINE, POOL_AUTHENTIC = 0, 1

# One item of a batch: (pool, image index in that pool, class id, seed of its distortion and crops).
ItemSpec = tuple[int, int, int, int]


class PretrainDataError(UserError, ValueError):
    """Pre-training images or settings the user must fix (missing folder, too few images...)."""


def class_index(type_index: int, level: int) -> int:
    """The class id of KADID type ``type_index`` (0-based) at ``level`` (1..5)."""
    return 1 + type_index * NUM_LEVELS + (level - 1)


def class_type_level(cls: int) -> tuple[int, int]:
    """(type 0-based, level 1..5) of a synthetic class; (-1, 0) for pristine and authentic classes."""
    if 1 <= cls < NUM_SYNTHETIC_CLASSES:
        return (cls - 1) // NUM_LEVELS, (cls - 1) % NUM_LEVELS + 1
    return -1, 0


def resolve_types(types: Sequence[int | str] | None) -> list[int]:
    """Type indices (0-based) from names or indices; None means all 25."""
    if types is None:
        return list(range(NUM_TYPES))
    return sorted(set(type_indices(types, "pretrain_data.types", indices=True, error=PretrainDataError)))


def class_list(types: Sequence[int], include_pristine: bool = True) -> list[int]:
    """The synthetic classes used: pristine (optional) and every level of each type."""
    classes = [PRISTINE_CLASS] if include_pristine else []
    return classes + [class_index(t, lv) for t in types for lv in range(1, NUM_LEVELS + 1)]


def chroma_only_classes(classes: Sequence[int]) -> list[int]:
    """The classes of ``classes`` whose type acts on chroma alone (no distortion on a gray image)."""
    chroma = {DISTORTION_NAMES.index(n) for n in CHROMA_ONLY_TYPES}
    return [c for c in classes if class_type_level(c)[0] in chroma]


def list_images(folders: Sequence[str | os.PathLike]) -> list[str]:
    """Every image file under the folders (recursive, sorted), with a clear error for a missing/empty folder."""
    paths: list[str] = []
    for folder in folders:
        root = Path(os.path.expanduser(str(folder)))
        if not root.is_dir():
            raise PretrainDataError(
                f"pre-training image folder '{root}' does not exist: fix pretrain_data.folders."
            )
        found = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise PretrainDataError(
                f"pre-training image folder '{root}' holds no image ({', '.join(IMAGE_SUFFIXES)})."
            )
        paths += found
    return paths


class ClassBalancedBatchSampler(Sampler[list[ItemSpec]]):
    """Batches of item specs in which every synthetic class drawn has >= ``samples_per_class`` members.

    ``batch_size - authentic_per_batch`` synthetic items are split over ``n // samples_per_class`` distinct
    classes (the remainder goes to the first classes, so none has fewer); the images of one class are
    distinct while the pool allows. Authentic items are their own class (their two views are the
    positives). Batches depend only on (seed, epoch, rank, step): each DDP rank draws its own.
    ``colour_images``: the indices of the images with chroma (None: all); the ``chroma_only`` classes draw
    their images from those alone, since on a gray image their distortion changes nothing (with fewer
    colour images than ``samples_per_class`` their contents repeat, as any class does on a small pool).
    """

    def __init__(
        self,
        num_images: int,
        classes: Sequence[int],
        batch_size: int,
        samples_per_class: int = 2,
        steps_per_epoch: int = 100,
        num_authentic: int = 0,
        authentic_per_batch: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        colour_images: Sequence[int] | None = None,
        chroma_only: Sequence[int] = (),
        num_synthetic: int = 0,
        synthetic_fraction: float | None = None,
    ) -> None:
        if samples_per_class < 2:
            raise PretrainDataError(
                f"samples_per_class must be >= 2 (positives of other content), got {samples_per_class}"
            )
        if num_images < 2:
            raise PretrainDataError(
                f"pre-training needs >= 2 training images (got {num_images}): add images or folders."
            )
        if authentic_per_batch and num_authentic == 0:
            raise PretrainDataError(
                "authentic_per_batch > 0 but no authentic image was given (authentic_folders/paths)."
            )
        n_syn = batch_size - authentic_per_batch
        if n_syn < samples_per_class:
            raise PretrainDataError(
                f"batch_size {batch_size} minus authentic_per_batch {authentic_per_batch} leaves {n_syn} synthetic "
                f"items, fewer than samples_per_class={samples_per_class}."
            )
        if not classes:
            raise PretrainDataError(
                "no synthetic class to draw: give distortion types or include_pristine=true."
            )
        self.colour_images = (
            np.arange(num_images)
            if colour_images is None
            else np.asarray(sorted(colour_images), dtype=np.int64)
        )
        self.chroma_only = set(int(c) for c in chroma_only) & set(int(c) for c in classes)
        if self.chroma_only and len(self.colour_images) == 0:
            names = sorted({DISTORTION_NAMES[class_type_level(c)[0]] for c in self.chroma_only})
            raise PretrainDataError(
                f"none of the {num_images} training images has colour, but the chroma-only types {names} change "
                "nothing on gray images: add colour images or leave those types out with pretrain_data.types."
            )
        if not 0 <= num_synthetic <= num_images:
            raise PretrainDataError(f"num_synthetic {num_synthetic} must be in 0..num_images ({num_images})")
        if synthetic_fraction is not None and not (0.0 <= float(synthetic_fraction) <= 1.0 and num_synthetic):
            raise PretrainDataError(
                f"pretrain_data.synthetic_fraction {synthetic_fraction}: give a share in [0, 1] together with "
                "synthetic_contents > 0, or null to draw from real and synthetic contents alike"
            )
        if synthetic_fraction is not None and float(synthetic_fraction) < 1.0 and num_synthetic == num_images:
            raise PretrainDataError(
                "synthetic_fraction < 1 needs real training images besides the synthetic ones"
            )
        self.num_images = int(num_images)
        self.num_synthetic = int(num_synthetic)
        self.synthetic_fraction = None if synthetic_fraction is None else float(synthetic_fraction)
        self.classes = list(classes)
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.steps_per_epoch = int(steps_per_epoch)
        self.num_authentic = int(num_authentic)
        self.authentic_per_batch = int(authentic_per_batch)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start: new draws every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def batch(self, step: int) -> list[ItemSpec]:
        """The item specs of batch ``step`` of the current epoch on this rank."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, step])
        n_syn = self.batch_size - self.authentic_per_batch
        n_classes = min(n_syn // self.samples_per_class, len(self.classes))
        drawn = rng.choice(len(self.classes), size=n_classes, replace=False)
        sizes = np.full(n_classes, n_syn // n_classes)
        sizes[: n_syn % n_classes] += (
            1  # remainder to the first classes: every class keeps >= samples_per_class
        )
        seeds = rng.integers(0, 2**31 - 1, size=self.batch_size)
        items: list[ItemSpec] = []
        for ci, size in zip(drawn, sizes):
            # Repeated permutations: distinct contents first, repeats only when the class outgrows the pool.
            cls = self.classes[ci]
            pool = self.colour_images if cls in self.chroma_only else np.arange(self.num_images)
            if self.synthetic_fraction is None:
                images = self._distinct(rng, pool, int(size))
            else:  # the last num_synthetic indices are synthetic: a fixed share of each class from them
                first_fake = self.num_images - self.num_synthetic
                real_pool, fake_pool = pool[pool < first_fake], pool[pool >= first_fake]
                n_fake = int(round(self.synthetic_fraction * int(size))) if len(real_pool) else int(size)
                real = self._distinct(rng, real_pool, int(size) - n_fake)
                fake = self._distinct(rng, fake_pool, n_fake)
                images = np.concatenate([real, fake])
            items += [(POOL_PRISTINE, int(i), cls, 0) for i in images]
        if self.authentic_per_batch:
            auth = rng.choice(
                self.num_authentic,
                size=self.authentic_per_batch,
                replace=self.authentic_per_batch > self.num_authentic,
            )
            items += [(POOL_AUTHENTIC, int(i), NUM_SYNTHETIC_CLASSES + int(i), 0) for i in auth]
        return [(p, i, c, int(s)) for (p, i, c, _), s in zip(items, seeds)]

    @staticmethod
    def _distinct(rng: np.random.Generator, pool: np.ndarray, size: int) -> np.ndarray:
        """``size`` images of ``pool``: repeated permutations, so distinct while the pool allows."""
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        reps = -(-size // len(pool))
        return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:size]

    def __iter__(self) -> Iterator[list[ItemSpec]]:
        for step in range(self.steps_per_epoch):
            yield self.batch(step)


class SyntheticSpec:
    """``count`` dead-leaves contents of ``size`` x ``size`` pixels; content j is drawn from seed (seed, j)."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        if count < 0 or size < 16:
            raise PretrainDataError(
                f"pretrain_data.synthetic_contents must be >= 0 and synthetic_size >= 16, got {count}, {size}"
            )
        self.count, self.size, self.seed = int(count), int(size), int(seed)

    def name(self, j: int) -> str:
        """How content j is recorded in pretrain_images.csv (no file: it is drawn in memory)."""
        return f"dead_leaves:{self.size}:{self.seed}:{j}"

    def names(self) -> list[str]:
        return [self.name(j) for j in range(self.count)]

    def image(self, j: int) -> np.ndarray:
        if not 0 <= j < self.count:
            raise IndexError(f"synthetic content {j} of {self.count}")
        return dead_leaves(self.size, self.size, np.random.default_rng([self.seed, 0x5EED, j]))


class _ImagePool:
    """Decoded images by path, optionally cached in memory (per worker process)."""

    def __init__(
        self,
        paths: Sequence[str],
        short_side: int | None,
        min_side: int,
        cache: bool,
        synthetic: SyntheticSpec | None = None,
    ) -> None:
        self.paths = list(paths)
        self.short_side = short_side
        self.min_side = int(min_side)
        self.cache = cache
        self.synthetic = synthetic
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths) + (self.synthetic.count if self.synthetic else 0)

    def get(self, index: int) -> np.ndarray:
        if index in self._images:
            return self._images[index]
        if index >= len(self.paths):  # a synthetic content, drawn from its own seed (same in every worker)
            img = self.synthetic.image(index - len(self.paths))
            self._images[index] = img  # always cached: cheaper to keep than to draw again
            return img
        img = load_rgb(self.paths[index], short_side=self.short_side)
        h, w = img.shape[:2]
        if min(h, w) < self.min_side:  # smaller than a crop region: enlarge (cubic) so crops fit
            s = self.min_side / min(h, w)
            img = cv2.resize(
                img, (max(self.min_side, round(w * s)), max(self.min_side, round(h * s))), cv2.INTER_CUBIC
            )
        if self.cache:
            self._images[index] = img
        return img


def _distort(region: np.ndarray, cls: int, rng: np.random.Generator) -> np.ndarray:
    t, level = class_type_level(cls)
    return region if t < 0 else apply_distortion(region, t, level, rng)


def _checked_min_scale(min_scale: float) -> float:
    if not 0.0 < float(min_scale) <= 1.0:
        raise PretrainDataError(f"pretrain_data.min_scale must be in (0, 1], got {min_scale}")
    return float(min_scale)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return (
        torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    )  # (3, h, w) in [0, 1]


class PretrainBatchDataset(Dataset):
    """Builds a whole training batch from a list of ``ItemSpec`` (used with ``batch_size=None``)."""

    def __init__(
        self,
        pristine: Sequence[str],
        authentic: Sequence[str],
        crop_size: int,
        short_side: int | None = None,
        hflip: bool = True,
        cache_images: bool = True,
        rotate: bool = False,
        min_scale: float = 1.0,
        synthetic: SyntheticSpec | None = None,
    ) -> None:
        self.crop_size = int(crop_size)
        self.region = 2 * self.crop_size
        self.hflip = hflip
        self.rotate = bool(rotate)
        self.min_scale = _checked_min_scale(min_scale)
        self.pools = (
            _ImagePool(pristine, short_side, self.region, cache_images, synthetic),
            _ImagePool(authentic, short_side, self.region, cache_images),
        )

    def __len__(self) -> int:
        return len(self.pools[0])

    def views(self, pool: int, index: int, cls: int, seed: int) -> torch.Tensor:
        """Two views (2, 3, c, c): a full-scale crop and the half-scale region, of one distorted region.

        Content augmentation (before the distortion, so it never alters one): with ``min_scale < 1`` the
        pristine region is a window of r / s pixels (s uniform in [min_scale, 1]) area-reduced to r x r,
        a new content scale; with ``rotate`` it is turned by a random multiple of 90 degrees.
        """
        rng = np.random.default_rng(seed)
        img = self.pools[pool].get(index)
        h, w = img.shape[:2]
        r, c = self.region, self.crop_size
        src = r
        if self.min_scale < 1.0:
            src = min(h, w, int(round(r / rng.uniform(self.min_scale, 1.0))))
        y, x = int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1))
        pristine = img[y : y + src, x : x + src]
        if src != r:
            pristine = cv2.resize(pristine, (r, r), interpolation=cv2.INTER_AREA)
        if self.rotate:
            pristine = np.rot90(pristine, int(rng.integers(0, 4)))
        region = _distort(np.ascontiguousarray(pristine), cls, rng)  # (2c, 2c, 3) uint8
        vy, vx = int(rng.integers(0, r - c + 1)), int(rng.integers(0, r - c + 1))
        full = region[vy : vy + c, vx : vx + c]
        half = cv2.resize(region, (c, c), interpolation=cv2.INTER_AREA)
        out = []
        for view in (full, half):
            if self.hflip and rng.random() < 0.5:
                view = view[:, ::-1]
            out.append(_to_tensor(view))
        return torch.stack(out)

    def __getitem__(self, spec: list[ItemSpec]) -> dict[str, torch.Tensor]:
        views = torch.stack([self.views(p, i, c, s) for p, i, c, s in spec])  # (B, 2, 3, c, c)
        tl = [class_type_level(c) for _, _, c, _ in spec]
        return {
            "views": views,
            "label": torch.tensor([c for _, _, c, _ in spec], dtype=torch.int64),
            "dist_type": torch.tensor([t for t, _ in tl], dtype=torch.int64),
            "dist_level": torch.tensor([lv for _, lv in tl], dtype=torch.int64),
            "content": torch.tensor(
                [i if p == POOL_PRISTINE else -1 - i for p, i, _, _ in spec], dtype=torch.int64
            ),
        }


class PretrainValDataset(Dataset):
    """The fixed k-NN set: every class of held-out (query) images and, optionally, of training (bank) images.

    Each image contributes ``crops`` (queries) or ``bank_crops`` (bank) regions of 2c x 2c (the first
    centred, the others at seeded random places), each distorted into every class with a fixed seed.
    ``view="crop"`` returns the centre c x c of each distorted region (the full-scale training view),
    ``view="region"`` the whole 2c x 2c region (same scale, more pixels: steadier pooled statistics).
    Items carry ``is_bank`` and ``content`` (query image i -> i, bank image j -> len(paths) + j). The bank's
    distortions are drawn with other seeds than training ever uses; bank images are training contents,
    queries never are. ``gray`` (one flag per query, then per bank image): gray images leave out the
    ``chroma_only`` classes (no distortion on them); ``skipped`` counts those (image, region, class) items.
    """

    def __init__(
        self,
        paths: Sequence[str],
        classes: Sequence[int],
        crop_size: int,
        short_side: int | None = None,
        seed: int = 0,
        cache_images: bool = True,
        bank_paths: Sequence[str] = (),
        crops: int = 1,
        bank_crops: int = 0,
        view: str = "crop",
        gray: Sequence[bool] | None = None,
        chroma_only: Sequence[int] = (),
    ) -> None:
        if view not in ("crop", "region"):
            raise PretrainDataError(f"pretrain_data.val_view must be 'crop' or 'region', got '{view}'")
        if crops < 1 or bank_crops < 0:
            raise PretrainDataError(f"val_crops must be >= 1 and bank_crops >= 0, got {crops}, {bank_crops}")
        self.crop_size = int(crop_size)
        self.view = view
        self.num_queries = len(paths)
        self.pool = _ImagePool(
            list(paths) + (list(bank_paths) if bank_crops else []),
            short_side,
            2 * self.crop_size,
            cache_images,
        )
        items = [(i, p, c) for i in range(len(paths)) for p in range(crops) for c in classes]
        if bank_crops:
            items += [
                (len(paths) + j, p, c)
                for j in range(len(bank_paths))
                for p in range(bank_crops)
                for c in classes
            ]
        gray_flags = [False] * (len(paths) + len(bank_paths)) if gray is None else [bool(g) for g in gray]
        if len(gray_flags) != len(paths) + len(bank_paths):
            raise ValueError(f"gray has {len(gray_flags)} flags for {len(paths)} + {len(bank_paths)} images")
        no_op = set(int(c) for c in chroma_only)
        self.items = [(i, p, c) for i, p, c in items if not (gray_flags[i] and c in no_op)]
        self.skipped = len(items) - len(self.items)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.items)

    def _origin(self, index: int, place: int, h: int, w: int, r: int) -> tuple[int, int]:
        if place == 0:
            return (h - r) // 2, (w - r) // 2
        rng = np.random.default_rng([self.seed, index, place, 7919])
        return int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        index, place, cls = self.items[k]
        img = self.pool.get(index)
        h, w = img.shape[:2]
        r, c = 2 * self.crop_size, self.crop_size
        y, x = self._origin(index, place, h, w, r)
        # place 0 keeps the original seed sequence [seed, index, cls]; training seeds are single integers.
        key = [self.seed, index, cls] + ([place] if place else [])
        region = _distort(img[y : y + r, x : x + r], cls, np.random.default_rng(key))
        t, level = class_type_level(cls)
        image = region if self.view == "region" else region[c // 2 : c // 2 + c, c // 2 : c // 2 + c]
        return {
            "image": _to_tensor(image),  # (3, c, c) or (3, 2c, 2c)
            "label": torch.tensor(cls, dtype=torch.int64),
            "dist_type": torch.tensor(t, dtype=torch.int64),
            "dist_level": torch.tensor(level, dtype=torch.int64),
            "content": torch.tensor(index, dtype=torch.int64),
            "is_bank": torch.tensor(index >= self.num_queries),
        }


class PretrainDataModule(L.LightningDataModule):
    """Pristine images (folders and/or an explicit list; the demo's by default) for DAN pre-training.

    Under DDP set ``trainer.use_distributed_sampler=false`` (conf/pretrain.yaml does): each rank draws its
    own batches from the sampler, and every rank runs the (small) whole k-NN validation set.
    """

    def __init__(
        self,
        folders: Sequence[str] | None = None,
        image_paths: Sequence[str] | None = None,
        authentic_folders: Sequence[str] | None = None,
        authentic_paths: Sequence[str] | None = None,
        demo_root: str | None = None,
        demo: dict[str, Any] | None = None,
        num_val_images: int = 3,
        val_crops: int = 1,
        bank_crops: int = 0,
        num_bank_images: int | None = None,
        val_view: str = "crop",
        types: Sequence[int | str] | None = None,
        include_pristine: bool = True,
        crop_size: int = 64,
        batch_size: int = 128,
        samples_per_class: int = 2,
        authentic_per_batch: int = 0,
        authentic_from_train: bool = False,
        steps_per_epoch: int = 50,
        eval_batch_size: int = 128,
        short_side: int | None = None,
        hflip: bool = True,
        rotate: bool = False,
        min_scale: float = 1.0,
        cache_images: bool = True,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        seed: int = 0,
        output_dir: str | None = None,
        check_gray: bool = True,
        synthetic_contents: int = 0,
        synthetic_size: int = 224,
        synthetic_fraction: float | None = None,
    ) -> None:
        super().__init__()
        self.folders = list(folders or [])
        self.image_paths = [str(p) for p in (image_paths or [])]
        self.authentic_folders = list(authentic_folders or [])
        self.authentic_paths_given = [str(p) for p in (authentic_paths or [])]
        self.demo_root = demo_root
        self.demo = dict(demo or {})
        self.num_val_images = int(num_val_images)
        self.val_crops = int(val_crops)
        self.bank_crops = int(bank_crops)
        self.num_bank_images = None if num_bank_images is None else int(num_bank_images)
        self.val_view = str(val_view)
        self.types = resolve_types(list(types) if types is not None else None)
        self.classes = class_list(self.types, include_pristine)
        self.crop_size = int(crop_size)
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.authentic_per_batch = int(authentic_per_batch)
        # the training pristine images are also instance classes (an authentic database's own training
        # split, e.g. livec_cpu); the held-out k-NN queries never are
        self.authentic_from_train = bool(authentic_from_train)
        self.steps_per_epoch = int(steps_per_epoch)
        self.eval_batch_size = int(eval_batch_size)
        self.short_side = short_side
        self.hflip = hflip
        self.rotate = bool(rotate)
        self.min_scale = _checked_min_scale(min_scale)
        self.cache_images = cache_images
        self.num_workers = int(num_workers)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.pin_memory = pin_memory
        self.seed = int(seed)
        self.output_dir = output_dir
        self.check_gray = bool(check_gray)
        # Dead-leaves contents (mfe_iqa.data.synthetic): training only, never queries nor bank items.
        self.synthetic = (
            SyntheticSpec(int(synthetic_contents), int(synthetic_size), self.seed)
            if int(synthetic_contents) != 0
            else None
        )
        if self.synthetic and self.synthetic.size < 2 * int(crop_size):
            raise PretrainDataError(
                f"pretrain_data.synthetic_size {self.synthetic.size} is smaller than a training region "
                f"(2 x crop_size = {2 * int(crop_size)}): raise synthetic_size"
            )
        self.synthetic_fraction = synthetic_fraction
        self.gray: dict[str, bool] = {}  # path -> no chroma (filled at setup when check_gray)
        self.chroma_only = chroma_only_classes(self.classes)
        self.train_paths: list[str] = []
        self.val_paths: list[str] = []
        self.authentic_paths: list[str] = []
        self.sampler: ClassBalancedBatchSampler | None = None

    def _pristine_pool(self) -> list[str]:
        paths = list_images(self.folders) if self.folders else []
        missing = [p for p in self.image_paths if not Path(p).is_file()]
        if missing:
            raise PretrainDataError(
                f"{len(missing)} of the {len(self.image_paths)} files in pretrain_data.image_paths do not exist, "
                f"e.g. {missing[:3]}: give existing image files."
            )
        paths += self.image_paths
        if not paths:
            if self.demo_root is None:
                raise PretrainDataError(
                    "no pre-training images: set pretrain_data.folders, pretrain_data.image_paths or demo_root."
                )
            from mfe_iqa.data.demo import ensure_demo

            paths = list_images([ensure_demo(self.demo_root, **self.demo) / "pristine"])
        seen: set[str] = set()
        unique = [p for p in paths if not (p in seen or seen.add(p))]
        if len(unique) < len(paths):
            log.info("pre-training: %d duplicate image paths left out", len(paths) - len(unique))
        return unique

    def setup(self, stage: str | None = None) -> None:
        if self.sampler is not None:
            return
        pool = self._pristine_pool()
        if len(pool) < self.num_val_images + 2:
            raise PretrainDataError(
                f"{len(pool)} pristine images: need num_val_images ({self.num_val_images}) + at least 2 for training."
            )
        order = np.random.default_rng(self.seed).permutation(len(pool))
        self.val_paths = sorted(pool[i] for i in order[: self.num_val_images])
        self.train_paths = sorted(pool[i] for i in order[self.num_val_images :])
        self.authentic_paths = (list_images(self.authentic_folders) if self.authentic_folders else []) + list(
            self.authentic_paths_given
        )
        if self.authentic_from_train:
            given = set(self.authentic_paths)
            self.authentic_paths += [p for p in self.train_paths if p not in given]
        queries = set(self.val_paths)
        leaked = [p for p in self.authentic_paths if p in queries]
        if leaked:
            raise PretrainDataError(
                f"{len(leaked)} authentic image(s) are also held-out k-NN query images, e.g. {leaked[0]}: the "
                "k-NN would score contents the network was trained on. Keep the authentic images apart from "
                "the pristine pool (pretrain_data.folders / image_paths), or use "
                "pretrain_data.authentic_from_train=true to make the training pristine images instance classes."
            )
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        if self.check_gray and self.chroma_only:
            self.gray = {p: is_gray(load_rgb(p, short_side=self.short_side)) for p in pool}
            n_gray = sum(self.gray.values())
            if n_gray:
                log.info(
                    "DAN pre-training: %d of %d pristine images are gray: the chroma-only types (%s) are drawn "
                    "from the colour images only and left out of the gray images' k-NN rows",
                    n_gray,
                    len(pool),
                    ", ".join(CHROMA_ONLY_TYPES),
                )
        colour = [i for i, p in enumerate(self.train_paths) if not self.gray.get(p, False)]
        n_synthetic = self.synthetic.count if self.synthetic else 0
        colour += list(range(len(self.train_paths), len(self.train_paths) + n_synthetic))  # drawn in colour
        self.sampler = ClassBalancedBatchSampler(
            num_images=len(self.train_paths) + n_synthetic,
            classes=self.classes,
            batch_size=self.batch_size,
            samples_per_class=self.samples_per_class,
            steps_per_epoch=self.steps_per_epoch,
            num_authentic=len(self.authentic_paths),
            authentic_per_batch=self.authentic_per_batch,
            seed=self.seed,
            rank=rank,
            world_size=world,
            colour_images=colour,
            chroma_only=self.chroma_only,
            num_synthetic=n_synthetic,
            synthetic_fraction=self.synthetic_fraction,
        )
        log.info(
            "DAN pre-training images: %d train (+ %d synthetic dead-leaves contents), %d held out for k-NN, "
            "%d authentic; %d classes",
            len(self.train_paths),
            n_synthetic,
            len(self.val_paths),
            len(self.authentic_paths),
            len(self.classes) + len(self.authentic_paths),
        )
        if self.output_dir and rank == 0:
            self.write_image_list(Path(self.output_dir) / "pretrain_images.csv")

    @property
    def bank_paths(self) -> list[str]:
        """The training images whose distorted crops form the k-NN bank (all, or ``num_bank_images`` by seed)."""
        if self.num_bank_images is None or self.num_bank_images >= len(self.train_paths):
            return list(self.train_paths)
        order = np.random.default_rng([self.seed, 1]).permutation(len(self.train_paths))
        return sorted(self.train_paths[i] for i in order[: self.num_bank_images])

    @property
    def used_images(self) -> dict[str, list[str]]:
        """Exactly which files pre-training uses, by role."""
        return {
            "train": list(self.train_paths),
            "val": list(self.val_paths),
            "authentic": list(self.authentic_paths),
            "synthetic": self.synthetic.names() if self.synthetic else [],
        }

    def write_image_list(self, path: Path) -> Path:
        """``role,path,gray`` for every file used (train / val / authentic), for the record.

        ``gray``: 1 = no chroma (the chroma-only types are not applied to it), 0 = colour, empty = not checked.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["role", "path", "gray"])
            for role, paths in self.used_images.items():
                w.writerows([role, p, "" if p not in self.gray else int(self.gray[p])] for p in paths)
        return path

    def train_dataloader(self) -> DataLoader:
        dataset = PretrainBatchDataset(
            self.train_paths,
            self.authentic_paths,
            self.crop_size,
            self.short_side,
            self.hflip,
            self.cache_images,
            rotate=self.rotate,
            min_scale=self.min_scale,
            synthetic=self.synthetic,
        )
        return DataLoader(
            dataset,
            sampler=self.sampler,
            batch_size=None,  # the dataset returns whole batches
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataset(self) -> PretrainValDataset:
        """The fixed k-NN set (queries: the held-out images; bank: distorted training images)."""
        bank = self.bank_paths
        dataset = PretrainValDataset(
            self.val_paths,
            self.classes,
            self.crop_size,
            self.short_side,
            self.seed,
            self.cache_images,
            bank_paths=bank,
            crops=self.val_crops,
            bank_crops=self.bank_crops,
            view=self.val_view,
            gray=[self.gray.get(p, False) for p in self.val_paths + bank],
            chroma_only=self.chroma_only,
        )
        if dataset.skipped:
            log.info(
                "k-NN set: %d (gray image, chroma-only class) items left out, %d kept",
                dataset.skipped,
                len(dataset),
            )
        return dataset

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_dataset(),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
        )

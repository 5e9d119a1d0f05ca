"""Training and test-time image pipelines (albumentations + OpenCV) producing float32 [0, 1] tensors.

No mean/std normalization here: every network normalizes its own input with its backbone's
statistics. Images smaller than the crop: the shorter side is upscaled (bicubic) to the crop size,
keeping the aspect ratio, before cropping; larger images are never rescaled by the crop step.
Test crops are deterministic: their positions come from a generator seeded with
``(crop_seed, crc32(image key))``, so an image gets the same K crops in every run and every split.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from mfe_iqa.data.distortions import NUM_LEVELS, apply_distortion, type_indices

TEST_MODES = ("crops", "full", "resize")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def upscale_to_min_side(image: np.ndarray, min_side: int) -> np.ndarray:
    """Upscale so that min(H, W) >= min_side (bicubic, aspect kept); images already large enough pass as is."""
    h, w = image.shape[:2]
    if min(h, w) >= min_side:
        return image
    scale = min_side / min(h, w)
    size = (max(min_side, int(np.ceil(w * scale))), max(min_side, int(np.ceil(h * scale))))  # (w, h)
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


class TrainTransform:
    """Random ``crop_size`` crop + horizontal flip (albumentations), then to tensor (3, crop, crop).

    albumentations keeps its own generator: ``reseed`` is called once per data-loader worker
    (see ``datasets.seed_worker``) so workers draw different crops, reproducibly for a seed.
    """

    def __init__(self, crop_size: int = 224, hflip: bool = True, seed: int | None = None):
        self.crop_size = int(crop_size)
        self.pipeline = A.Compose(
            [A.RandomCrop(self.crop_size, self.crop_size), A.HorizontalFlip(p=0.5 if hflip else 0.0)],
            seed=seed,
        )

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(int(seed) % 2**32)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The random (flipped) crop as (crop, crop, 3) uint8."""
        return self.pipeline(image=upscale_to_min_side(image, self.crop_size))["image"]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_tensor(self.crop(image))  # (3, crop, crop)


# Bank types that lower the quality of any photograph (blur, noise, compression, pixel loss): a distorted copy
# ranks below its source whatever the source's own quality. Left out on purpose: brighten, darken, mean shift,
# contrast change, high sharpen and the saturation changes can improve an under- or over-exposed, soft or dull
# photograph, and the colour types (diffusion, shift, quantization, block) and the local ones (jitter,
# non-eccentricity patch) are mild at low levels on small crops.
QUALITY_LOWERING_TYPES: tuple[str, ...] = (
    "gaussian_blur",
    "lens_blur",
    "motion_blur",
    "jpeg2000",
    "jpeg",
    "white_noise",
    "white_noise_color_component",
    "impulse_noise",
    "multiplicative_noise",
    "denoise",
    "pixelate",
    "quantization",
)


class DegradedTwin:
    """A training crop's degraded copy for synthetic quality ranking (RankIQA's idea, without its pre-training).

    Each call draws one of ``types`` (distortion-bank names) and one of ``levels`` (1..5) and distorts the crop
    with ``apply_distortion``; the system then asks the network to score the copy below its source. ``reseed``
    is called like ``TrainTransform.reseed`` (once per data-loader worker), on a stream of its own.
    """

    def __init__(
        self,
        types: Sequence[str] = QUALITY_LOWERING_TYPES,
        levels: Sequence[int] = (2, 3, 4, 5),
        seed: int | None = None,
    ):
        key = "data.degraded_twin"  # errors name the config key the settings come from
        self.types = type_indices(types, f"{key}.types")
        if isinstance(levels, str | int) or not list(levels):
            raise ValueError(
                f"{key}.levels must be a non-empty list of levels 1..{NUM_LEVELS}, got {levels!r}"
            )
        bad = [lv for lv in levels if not (isinstance(lv, int) and 1 <= lv <= NUM_LEVELS)]
        if bad:
            raise ValueError(f"{key}.levels: {bad} not in 1..{NUM_LEVELS}")
        self.levels = [int(lv) for lv in levels]
        self.reseed(0 if seed is None else seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng([int(seed) % 2**32, 0x7219])  # a stream apart from the crops'

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        type_index = self.types[int(self.rng.integers(len(self.types)))]
        level = self.levels[int(self.rng.integers(len(self.levels)))]
        return apply_distortion(crop, type_index, level, self.rng)


class EvalTransform:
    """Test-time views of one image as (K, 3, h, w).

    ``crops``: K = ``num_crops`` crops of ``crop_size`` at seeded random positions;
    ``full``: the whole image, K = 1 (sizes differ between images: batch size 1);
    ``resize``: the whole image resized to ``crop_size`` x ``crop_size``, K = 1.
    """

    def __init__(self, mode: str = "crops", crop_size: int = 224, num_crops: int = 25, crop_seed: int = 0):
        if mode not in TEST_MODES:
            raise ValueError(f"data.test_mode must be one of {TEST_MODES}, got {mode!r}")
        if mode == "crops" and num_crops < 1:
            raise ValueError(f"data.test_crops must be >= 1, got {num_crops}")
        self.mode, self.crop_size, self.num_crops, self.crop_seed = (
            mode,
            int(crop_size),
            int(num_crops),
            int(crop_seed),
        )
        self.resize = A.Resize(self.crop_size, self.crop_size, interpolation=cv2.INTER_AREA)

    @property
    def views(self) -> int:
        return self.num_crops if self.mode == "crops" else 1

    def crop_boxes(self, height: int, width: int, key: str) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of the K crops of an image of this size (after upscaling)."""
        rng = np.random.default_rng([self.crop_seed, zlib.crc32(key.encode("utf-8"))])
        ys = rng.integers(0, height - self.crop_size + 1, size=self.num_crops)
        xs = rng.integers(0, width - self.crop_size + 1, size=self.num_crops)
        return list(zip(ys.tolist(), xs.tolist()))

    def __call__(self, image: np.ndarray, key: str) -> torch.Tensor:
        if self.mode == "full":
            return to_tensor(image).unsqueeze(0)  # (1, 3, H, W)
        if self.mode == "resize":
            return to_tensor(self.resize(image=image)["image"]).unsqueeze(0)  # (1, 3, crop, crop)
        image = upscale_to_min_side(image, self.crop_size)
        c = self.crop_size
        # Transpose the whole image once, then slice: the K crops come out as (K, 3, crop, crop) contiguous
        # uint8 (much faster than permuting K crops), then one float conversion for all of them.
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))  # (3, H, W)
        crops = np.stack([chw[:, y : y + c, x : x + c] for y, x in self.crop_boxes(*image.shape[:2], key)])
        return torch.from_numpy(crops).float().div_(255.0)

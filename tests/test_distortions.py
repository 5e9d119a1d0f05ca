"""The distortion bank: shapes, monotone severity, determinism, input checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from mfe_iqa.data.distortions import (
    CHROMA_ONLY_TYPES,
    DISTORTION_NAMES,
    LEVELS,
    NUM_LEVELS,
    apply_distortion,
    is_gray,
    type_indices,
)

KADID_ORDER = [
    "gaussian_blur",
    "lens_blur",
    "motion_blur",
    "color_diffusion",
    "color_shift",
    "color_quantization",
    "color_saturation_1",
    "color_saturation_2",
    "jpeg2000",
    "jpeg",
    "white_noise",
    "white_noise_color_component",
    "impulse_noise",
    "multiplicative_noise",
    "denoise",
    "brighten",
    "darken",
    "mean_shift",
    "jitter",
    "non_eccentricity_patch",
    "pixelate",
    "quantization",
    "color_block",
    "high_sharpen",
    "contrast_change",
]


def _luminance(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


# Types whose severity is a change of brightness or contrast are measured by that change, not by PSNR.
OWN_MEASURE = {
    "brighten": lambda ref, out: _luminance(out).mean() - _luminance(ref).mean(),
    "darken": lambda ref, out: _luminance(ref).mean() - _luminance(out).mean(),
    "mean_shift": lambda ref, out: abs(out.astype(np.float64).mean() - ref.astype(np.float64).mean()),
    "contrast_change": lambda ref, out: abs(np.log(_luminance(out).std() / _luminance(ref).std())),
}


@pytest.fixture(scope="module")
def natural_images() -> list[np.ndarray]:
    return [
        cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA),
        cv2.resize(data.chelsea(), (128, 96), interpolation=cv2.INTER_AREA),
    ]


def test_names_follow_kadid_order():
    assert tuple(KADID_ORDER) == DISTORTION_NAMES
    assert set(LEVELS) == set(DISTORTION_NAMES)
    assert all(len(v) == NUM_LEVELS for v in LEVELS.values())


@pytest.mark.parametrize("type_index", range(25), ids=KADID_ORDER)
def test_severity_grows_with_level(type_index, natural_images):
    name = DISTORTION_NAMES[type_index]
    for img in natural_images:
        for seed in (0, 1):
            outs = [apply_distortion(img, type_index, level, seed) for level in range(1, NUM_LEVELS + 1)]
            if name in OWN_MEASURE:
                change = [OWN_MEASURE[name](img, o) for o in outs]
                assert change[0] > 0, f"{name} level 1 does not change the image in its own measure"
                assert all(a < b for a, b in zip(change, change[1:])), f"{name} seed {seed}: {change}"
            else:
                psnr = [peak_signal_noise_ratio(img, o, data_range=255) for o in outs]
                assert np.isfinite(psnr[0]), f"{name} level 1 leaves the image unchanged"
                assert all(a > b for a, b in zip(psnr, psnr[1:])), f"{name} seed {seed}: PSNR {psnr}"


@pytest.mark.parametrize("shape", [(16, 16), (17, 23), (1, 1), (33, 7)])
def test_shape_and_dtype_preserved_on_any_size(shape):
    img = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    for t in range(len(DISTORTION_NAMES)):
        for level in (1, NUM_LEVELS):
            out = apply_distortion(img, t, level, rng=0)
            assert out.shape == img.shape and out.dtype == np.uint8, (DISTORTION_NAMES[t], shape)
            # PIL-backed types returned read-only views once: torch warned and in-place users broke
            assert out.flags.writeable and out.flags.c_contiguous, (DISTORTION_NAMES[t], shape)


def test_same_seed_same_output_and_input_untouched(natural_images):
    img = natural_images[1]
    before = img.copy()
    differs = []
    for t in range(len(DISTORTION_NAMES)):
        a = apply_distortion(img, t, 3, rng=123)
        b = apply_distortion(img, t, 3, rng=np.random.default_rng(123))
        np.testing.assert_array_equal(a, b, err_msg=DISTORTION_NAMES[t])
        differs.append(not np.array_equal(a, apply_distortion(img, t, 3, rng=124)))
    np.testing.assert_array_equal(img, before)
    # The random types (noise, motion direction, patch positions, shift sign...) must use the seed.
    for name in ("white_noise", "impulse_noise", "denoise", "jitter", "color_block", "motion_blur"):
        assert differs[DISTORTION_NAMES.index(name)], f"{name} ignores its seed"


def test_bad_input_is_refused_clearly():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        apply_distortion(img.astype(np.float32), 0, 1)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        apply_distortion(img[..., 0], 0, 1)
    with pytest.raises(ValueError, match="type_index"):
        apply_distortion(img, 25, 1)
    with pytest.raises(ValueError, match="level"):
        apply_distortion(img, 0, 0)


def test_type_indices_reads_names_and_indices_against_kadids_numbering():
    # KADID-10k's readme numbers the types 1..25 in KADID_ORDER: jpeg is #10, contrast change #25
    assert type_indices(["jpeg", "gaussian_blur"], "k") == [9, 0]
    assert type_indices(["contrast_change", 3, "24"], "k", indices=True) == [24, 3, 24]


class _ConfigError(ValueError):
    pass


@pytest.mark.parametrize(
    ("types", "indices", "message"),
    [
        ([], False, r"my.key must be a non-empty list of distortion names, got \[\]"),
        ("jpeg", False, r"my.key must be a non-empty list of distortion names, got 'jpeg'"),
        # every unknown name at once, and a digit string is not a name unless indices are allowed
        (
            ["jpeg", "blurry", "3", "nois"],
            False,
            r"my.key: unknown distortion name\(s\) \['blurry', '3', 'nois'\]",
        ),
        ([0, 25, "-1"], True, r"my.key: unknown distortion name\(s\) \['-1'\]"),
        ([0, 25, 31], True, r"my.key: index\(es\) \[25, 31\] outside 0..24"),
    ],
)
def test_type_indices_refuses_bad_lists_naming_the_key(types, indices, message):
    with pytest.raises(_ConfigError, match=message):
        type_indices(types, "my.key", indices=indices, error=_ConfigError)


def test_chroma_only_types_are_exactly_those_that_leave_gray_images_unchanged():
    """A gray photograph (R = G = B) is untouched by the chroma-only types at every level (within one grey
    level of rounding) and visibly changed by every other type at level 5; a colour one is changed by all."""
    gray = np.repeat(cv2.resize(data.camera(), (96, 96), interpolation=cv2.INTER_AREA)[..., None], 3, axis=2)
    colour = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    assert is_gray(gray) and not is_gray(colour)
    for t, name in enumerate(DISTORTION_NAMES):
        if name in CHROMA_ONLY_TYPES:
            for level in range(1, NUM_LEVELS + 1):
                out = apply_distortion(gray, t, level, 0).astype(int)
                assert np.abs(out - gray).max() <= 2, f"{name} level {level} changed a gray image"
                assert np.abs(out - gray).mean() < 0.5
        else:
            out = apply_distortion(gray, t, NUM_LEVELS, 0).astype(int)
            assert np.abs(out - gray).mean() > 0.5, (
                f"{name} leaves a gray image unchanged: list it as chroma-only"
            )
        assert np.abs(apply_distortion(colour, t, NUM_LEVELS, 0).astype(int) - colour).mean() > 0.5, name


@pytest.mark.parametrize("shape", [(64, 64), (96, 128), (384, 512)])
def test_non_eccentricity_patch_covers_kadids_area_fraction_at_any_size(shape):
    """Level p moves p patches of 16 px on KADID's 512x384 images: p * 256 / 196608 of the area. Any image
    size keeps that fraction (at most it, as patches may overlap; at least half of it on a textured image)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)  # texture: every moved patch differs
    t = DISTORTION_NAMES.index("non_eccentricity_patch")
    for level, p in enumerate(LEVELS["non_eccentricity_patch"], start=1):
        changed = (apply_distortion(img, t, level, 0) != img).any(axis=2).mean()
        target = p * 16 * 16 / (512 * 384)
        assert 0.5 * target <= changed <= 1.25 * target, (shape, level, changed, target)

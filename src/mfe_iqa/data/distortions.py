"""The distortion bank: the 25 KADID-10k / KADIS-700k distortion types at 5 levels, on uint8 RGB images.

Written on OpenCV, NumPy and Pillow (colour quantization, JPEG 2000) so that it runs on the fly in
data-loader workers. Each type follows the KADID-10k definition (Lin, Hosu, Saupe, QoMEX 2019,
``imdist_generator``) in spirit; where KADID's levels are not monotone in severity (mean shift, contrast
change) or where its MATLAB operator is slow (denoise with DnCNN) we choose a standard, fast equivalent and
say so in the function's docstring. Level 1 is the mildest, level 5 the strongest. All randomness comes
from the ``rng`` argument, so a seed gives the same output every time.

Run ``python -m mfe_iqa.data.distortions`` to print images/s per type at 256x256.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

DISTORTION_NAMES: tuple[str, ...] = (
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
)
NUM_LEVELS = 5
# Types that act on chroma alone (Lab a*, b* or HSV saturation): on an image without chroma (every pixel
# R = G = B) they change nothing, so the (image, type) pair is no distortion at all and pre-training
# leaves it out. The other 22 types change a gray image too (tests/test_distortions.py checks both).
CHROMA_ONLY_TYPES: tuple[str, ...] = ("color_diffusion", "color_saturation_1", "color_saturation_2")
# Largest |R - G| or |G - B| of an image still counted as gray (JPEG chroma subsampling leaves a level or two).
GRAY_TOLERANCE = 2


def is_gray(img: np.ndarray, tolerance: int = GRAY_TOLERANCE) -> bool:
    """True when the uint8 RGB image (H, W, 3) has no chroma: every pixel has |R - G|, |G - B| <= tolerance."""
    x = img.astype(np.int16)
    return bool(
        np.abs(x[..., 0] - x[..., 1]).max() <= tolerance and np.abs(x[..., 1] - x[..., 2]).max() <= tolerance
    )


# Per-type level parameters, mildest first. Every number here is the strength of one level.
LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (0.6, 1.0, 2.0, 3.0, 5.0),  # sigma in pixels
    "lens_blur": (1, 2, 4, 6, 8),  # disk radius in pixels
    "motion_blur": (1, 2, 4, 6, 10),  # line half-length in pixels
    "color_diffusion": (1, 3, 6, 8, 12),  # sigma of the blur applied to Lab a*, b*
    "color_shift": (1, 3, 6, 8, 12),  # shift of one channel in pixels
    "color_quantization": (64, 48, 32, 16, 8),  # palette size
    "color_saturation_1": (0.7, 0.5, 0.3, 0.15, 0.0),  # HSV saturation factor (desaturation)
    "color_saturation_2": (1.5, 2.5, 4.0, 6.0, 9.0),  # Lab a*, b* factor (over-saturation)
    "jpeg2000": (16, 32, 45, 120, 170),  # compression ratio
    "jpeg": (43, 36, 24, 7, 4),  # JPEG quality
    "white_noise": (0.001, 0.002, 0.003, 0.005, 0.01),  # variance on [0, 1] RGB
    "white_noise_color_component": (0.0005, 0.001, 0.002, 0.004, 0.008),  # variance on [0, 1] YCrCb
    "impulse_noise": (0.003, 0.01, 0.02, 0.035, 0.05),  # fraction of samples set to 0 or 1
    "multiplicative_noise": (0.003, 0.008, 0.02, 0.05, 0.1),  # speckle variance
    "denoise": (0.001, 0.002, 0.003, 0.005, 0.01),  # variance of the noise that is then removed
    "brighten": (0.2, 0.4, 0.7, 1.1, 1.6),  # gamma exponent 1 / (1 + a) on Lab L*
    "darken": (0.15, 0.3, 0.5, 0.8, 1.3),  # gamma exponent (1 + a) on Lab L*
    "mean_shift": (0.05, 0.1, 0.15, 0.2, 0.25),  # |offset| on [0, 1] RGB, sign drawn from rng
    "jitter": (0.5, 1.0, 2.0, 3.0, 4.0),  # max per-pixel displacement in pixels
    "non_eccentricity_patch": (30, 60, 100, 150, 200),  # patches moved per 512x384 image
    "pixelate": (0.5, 0.33, 0.25, 0.16, 0.1),  # down-sampling factor
    "quantization": (16, 11, 8, 6, 4),  # grey levels per channel
    "color_block": (2, 4, 6, 8, 10),  # number of blocks
    "high_sharpen": (1, 2, 3, 6, 12),  # unsharp-mask amount on Lab L*
    "contrast_change": (0.2, 0.4, 0.65, 1.0, 1.5),  # |log contrast factor|, sign drawn from rng
}


# ---------------------------------------------------------------------------------------------------- helpers
def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) * (1.0 / 255.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _rgb_to_lab(x: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(x, cv2.COLOR_RGB2Lab)  # L in [0, 100], a*, b* in about [-127, 127]


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)


def _filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate with ``kernel`` using symmetric padding (valid for kernels larger than the image)."""
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    pad = ((ph, ph), (pw, pw)) + ((0, 0),) * (x.ndim - 2)
    xp = np.pad(x, pad, mode="symmetric")
    out = cv2.filter2D(xp, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REPLICATE)
    return out[ph : ph + x.shape[0], pw : pw + x.shape[1]]


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with symmetric padding (valid for kernels larger than the image)."""
    k = int(2 * np.ceil(3 * sigma) + 1)
    g = cv2.getGaussianKernel(k, sigma).astype(np.float32)  # (k, 1)
    r = k // 2
    pad = ((r, r), (r, r)) + ((0, 0),) * (x.ndim - 2)
    out = cv2.sepFilter2D(np.pad(x, pad, mode="symmetric"), -1, g, g, borderType=cv2.BORDER_REPLICATE)
    return out[r : r + x.shape[0], r : r + x.shape[1]]


_KADID_PATCH_AREA = 16 * 16  # pixels of one non-eccentricity patch on a 512x384 image (384 / 24)


# ---------------------------------------------------------------------------------------------------- types
def _gaussian_blur(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(_gaussian(_to_float(img), p))


def _lens_blur(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Defocus: a normalized disk kernel of radius ``p`` (MATLAB ``fspecial('disk')``)."""
    r = int(p)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    # Anti-aliased disk: sub-sample each kernel cell 4x4 and count samples inside the circle.
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    inside = ((xx[..., None, None] + sub[None, None, :, None]) ** 2) + (
        (yy[..., None, None] + sub[None, None, None, :]) ** 2
    ) <= (r + 0.5) ** 2
    kernel = inside.mean(axis=(2, 3))
    return _to_uint8(_filter(_to_float(img), kernel / kernel.sum()))


def _motion_blur(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Linear motion of half-length ``p`` pixels at a random angle (splatted line kernel)."""
    angle = rng.uniform(0, np.pi)
    r = int(np.ceil(p))
    kernel = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for t in np.linspace(-p, p, int(8 * p) + 1):
        x, y = r + t * np.cos(angle), r + t * np.sin(angle)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dy, dx, wgt in (
            (0, 0, (1 - fx) * (1 - fy)),
            (0, 1, fx * (1 - fy)),
            (1, 0, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            if 0 <= y0 + dy <= 2 * r and 0 <= x0 + dx <= 2 * r:
                kernel[y0 + dy, x0 + dx] += wgt
    return _to_uint8(_filter(_to_float(img), kernel / kernel.sum()))


def _color_diffusion(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    lab = _rgb_to_lab(_to_float(img))
    lab[..., 1:] = _gaussian(np.ascontiguousarray(lab[..., 1:]), p)
    return _to_uint8(_lab_to_rgb(lab))


def _color_shift(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Shift one random channel by ``p`` pixels in a random direction, blended in where edges are strong."""
    x = _to_float(img)
    ch = int(rng.integers(0, 3))
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = p * np.cos(angle), p * np.sin(angle)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    shifted = cv2.warpAffine(
        np.ascontiguousarray(x[..., ch]), m, (x.shape[1], x.shape[0]), borderMode=cv2.BORDER_REFLECT
    )
    grey = x.mean(axis=2)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    mag = np.sqrt(gx * gx + gy * gy)
    mask = np.sqrt(mag / (mag.max() + 1e-6))
    x[..., ch] = x[..., ch] * (1 - mask) + shifted * mask
    return _to_uint8(x)


def _color_quantization(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Palette of ``p`` colours with Floyd-Steinberg dithering (MATLAB ``rgb2ind``).

    The palette comes from Pillow's fast octree (median cut is 20x slower); dithering then maps onto it.
    """
    pil = Image.fromarray(img)
    palette = pil.quantize(colors=int(p), method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    return np.asarray(pil.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB"))


def _color_saturation_1(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(_to_float(img), cv2.COLOR_RGB2HSV)  # H in [0, 360), S, V in [0, 1]
    hsv[..., 1] *= p
    return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def _color_saturation_2(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    lab = _rgb_to_lab(_to_float(img))
    lab[..., 1:] *= p
    return _to_uint8(_lab_to_rgb(lab))


def _jpeg2000(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """JPEG 2000 (OpenJPEG through Pillow) at compression ratio ``p``."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(p)])
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(p)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image")
    return cv2.cvtColor(cv2.imdecode(enc, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _white_noise(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(np.sqrt(p))
    return _to_uint8(_to_float(img) + noise)


def _white_noise_color_component(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """White noise added in YCrCb, so the noise is correlated across RGB and mostly chromatic."""
    ycc = cv2.cvtColor(_to_float(img), cv2.COLOR_RGB2YCrCb)
    ycc += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(np.sqrt(p))
    return _to_uint8(np.clip(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), 0, 1))


def _impulse_noise(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise on each colour sample independently (MATLAB ``imnoise`` on an RGB image)."""
    u = rng.random(img.shape, dtype=np.float32)
    out = img.copy()
    out[u < p / 2] = 0
    out[(u >= p / 2) & (u < p)] = 255
    return out


def _multiplicative_noise(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(img)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(np.sqrt(p))
    return _to_uint8(x + x * noise)


def _denoise(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of variance ``p`` removed by a bilateral filter.

    KADID uses DnCNN (slow in MATLAB); the bilateral filter (about 1 ms at 256x256, 40x faster than
    OpenCV's non-local means) gives the same signature: over-smoothed texture with residual noise on edges.
    """
    sigma = float(np.sqrt(p))
    noisy = _to_uint8(_to_float(img) + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma))
    return cv2.bilateralFilter(noisy, d=5, sigmaColor=3.0 * sigma * 255.0, sigmaSpace=1.5 + 20 * sigma)


def _gamma_on_lightness(img: np.ndarray, exponent: float) -> np.ndarray:
    lab = _rgb_to_lab(_to_float(img))
    lab[..., 0] = 100.0 * np.power(np.clip(lab[..., 0] / 100.0, 0.0, 1.0), exponent)
    return _to_uint8(_lab_to_rgb(lab))


def _brighten(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _gamma_on_lightness(img, 1.0 / (1.0 + p))


def _darken(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _gamma_on_lightness(img, 1.0 + p)


def _mean_shift(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Add a constant ``±p`` to every sample; KADID's levels change sign, ours grow in magnitude."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _to_uint8(_to_float(img) + sign * p)


def _jitter(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Move each pixel by a random offset uniform in [-p, p] in x and y."""
    h, w = img.shape[:2]
    off = rng.uniform(-p, p, size=(2, h, w)).astype(np.float32)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + off[0], gy + off[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _non_eccentricity_patch(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Copy small patches (1/24 of the short side) one patch-width away, covering KADID's area fraction.

    ``p`` patches of 16 px (384 / 24) on a 512x384 image; on other sizes the count keeps the fraction of
    the image the patches cover (``p`` x 16^2 / (512 x 384)), so a 64-px region is as distorted as a
    full image (a count scaled by area alone would leave it a pixel or two of change).
    """
    h, w = img.shape[:2]
    size = max(1, int(round(min(h, w) / 24)))
    levels = LEVELS["non_eccentricity_patch"]

    def count(q: float) -> int:
        return max(1, int(round(q * _KADID_PATCH_AREA * h * w / (512 * 384 * size * size))))

    # The count grows with the level even on tiny images where the scaled counts would tie.
    n = count(p) + levels.index(p)
    n_max = count(levels[-1]) + len(levels) - 1
    # Draw the patches of the strongest level and use the first n: levels are nested, so severity grows.
    ys = rng.integers(0, max(1, h - size + 1), size=n_max)
    xs = rng.integers(0, max(1, w - size + 1), size=n_max)
    angle = rng.uniform(0, 2 * np.pi, size=n_max)
    dy, dx = np.rint(size * np.sin(angle)).astype(int), np.rint(size * np.cos(angle)).astype(int)
    out = img.copy()
    for i in range(n):
        ty = int(np.clip(ys[i] + dy[i], 0, max(0, h - size)))
        tx = int(np.clip(xs[i] + dx[i], 0, max(0, w - size)))
        out[ty : ty + size, tx : tx + size] = img[ys[i] : ys[i] + size, xs[i] : xs[i] + size]
    return out


def _pixelate(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w * p)), max(1, round(h * p))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _quantization(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Per-channel quantization to ``p`` levels with image-adaptive (equal-population) thresholds.

    MATLAB ``multithresh`` (Otsu) is too slow on the fly; quantile thresholds adapt to the histogram the same way.
    Each bin is replaced by the mean of its samples.
    """
    n = int(p)
    out = np.empty_like(img)
    for c in range(3):
        ch = img[..., c].ravel()
        edges = np.unique(np.quantile(ch, np.arange(1, n) / n, method="nearest"))
        idx = np.searchsorted(edges, ch, side="right")  # bin index per sample
        sums = np.bincount(idx, weights=ch, minlength=len(edges) + 1)
        counts = np.bincount(idx, minlength=len(edges) + 1)
        means = np.rint(sums / np.maximum(counts, 1)).astype(np.uint8)
        out[..., c] = means[idx].reshape(img.shape[:2])
    return out


def _color_block(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Paste ``p`` solid blocks of random colour at random positions (nested across levels)."""
    h, w = img.shape[:2]
    size = max(1, int(round(min(h, w) / 12)))
    n_max = int(LEVELS["color_block"][-1])
    ys = rng.integers(0, max(1, h - size + 1), size=n_max)
    xs = rng.integers(0, max(1, w - size + 1), size=n_max)
    colors = rng.integers(0, 256, size=(n_max, 3))
    out = img.copy()
    for i in range(int(p)):
        out[ys[i] : ys[i] + size, xs[i] : xs[i] + size] = colors[i]
    return out


def _high_sharpen(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Unsharp masking of Lab L* (MATLAB ``imsharpen``), radius 1, amount ``p``."""
    lab = _rgb_to_lab(_to_float(img))
    light = np.ascontiguousarray(lab[..., 0])
    lab[..., 0] = np.clip(light + p * (light - _gaussian(light, 1.0)), 0.0, 100.0)
    return _to_uint8(_lab_to_rgb(lab))


def _contrast_change(img: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Scale deviations from the mean by ``exp(±p)``; the direction (more or less contrast) is drawn from rng."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    x = _to_float(img)
    mean = x.mean()
    return _to_uint8((x - mean) * np.float32(np.exp(sign * p)) + mean)


_FUNCS: tuple[Callable[[np.ndarray, float, np.random.Generator], np.ndarray], ...] = (
    _gaussian_blur,
    _lens_blur,
    _motion_blur,
    _color_diffusion,
    _color_shift,
    _color_quantization,
    _color_saturation_1,
    _color_saturation_2,
    _jpeg2000,
    _jpeg,
    _white_noise,
    _white_noise_color_component,
    _impulse_noise,
    _multiplicative_noise,
    _denoise,
    _brighten,
    _darken,
    _mean_shift,
    _jitter,
    _non_eccentricity_patch,
    _pixelate,
    _quantization,
    _color_block,
    _high_sharpen,
    _contrast_change,
)


def type_indices(
    types: Sequence[str | int], key: str, *, indices: bool = False, error: type[Exception] = ValueError
) -> list[int]:
    """The 0-based bank indices of ``types`` (distortion names; with ``indices`` also 0-based indices, as
    ints or digit strings from a command line), in the given order.

    The one check of a configured list of distortion types: raises ``error`` naming the config ``key`` for a
    bare string or an empty list, for every unknown name at once (with the names to choose from), and for an
    index outside 0..24.
    """
    what = "distortion names or 0-based indices" if indices else "distortion names"
    if isinstance(types, str) or not list(types):
        raise error(f"{key} must be a non-empty list of {what}, got {types!r}")
    out, unknown, outside = [], [], []
    for t in types:
        if indices and (isinstance(t, int) or (isinstance(t, str) and t.isdigit())):
            i = int(t)
            (out if 0 <= i < len(DISTORTION_NAMES) else outside).append(i)
        elif isinstance(t, str) and t in DISTORTION_NAMES:
            out.append(DISTORTION_NAMES.index(t))
        else:
            unknown.append(t)
    if unknown:
        raise error(f"{key}: unknown distortion name(s) {unknown}; choose from {list(DISTORTION_NAMES)}")
    if outside:
        raise error(f"{key}: index(es) {outside} outside 0..{len(DISTORTION_NAMES) - 1}")
    return out


def apply_distortion(
    image: np.ndarray, type_index: int, level: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Distort a (H, W, 3) uint8 RGB image with KADID type ``type_index`` (0-based) at ``level`` (1..5).

    ``rng`` is a Generator (advanced in place), a seed, or None (fresh entropy). Returns (H, W, 3) uint8.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"apply_distortion expects an (H, W, 3) uint8 RGB array, got a {desc}")
    if not 0 <= int(type_index) < len(DISTORTION_NAMES):
        raise ValueError(
            f"type_index must be in 0..{len(DISTORTION_NAMES) - 1} (0-based KADID id), got {type_index}"
        )
    if not 1 <= int(level) <= NUM_LEVELS:
        raise ValueError(f"level must be in 1..{NUM_LEVELS}, got {level}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    name = DISTORTION_NAMES[int(type_index)]
    out = np.ascontiguousarray(
        _FUNCS[int(type_index)](np.ascontiguousarray(image), LEVELS[name][int(level) - 1], rng),
        dtype=np.uint8,
    )
    # PIL-backed types (JPEG2000, colour quantization) hand back read-only buffers: callers own the output
    return out if out.flags.writeable else out.copy()


def benchmark(size: int = 256, repeats: int = 10, seed: int = 0) -> dict[str, float]:
    """Images per second for each type on one thread at ``size`` x ``size`` (all 5 levels, averaged)."""
    import time

    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    try:
        from skimage import data

        image = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    except ImportError:  # scikit-image is a dependency, but the benchmark still runs on noise without it
        pass
    rates = {}
    for t, name in enumerate(DISTORTION_NAMES):
        apply_distortion(image, t, 1, rng)  # warm-up (imports, codec init)
        start = time.perf_counter()
        for _ in range(repeats):
            for level in range(1, NUM_LEVELS + 1):
                apply_distortion(image, t, level, rng)
        rates[name] = repeats * NUM_LEVELS / (time.perf_counter() - start)
    return rates


def main() -> None:
    rates = benchmark()
    print("| # | type | images/s (256x256, 1 thread) |")
    print("|---|---|---|")
    for i, (name, r) in enumerate(rates.items()):
        print(f"| {i} | {name} | {r:.0f} |")
    print(f"| | harmonic mean | {len(rates) / sum(1 / r for r in rates.values()):.0f} |")


if __name__ == "__main__":
    main()

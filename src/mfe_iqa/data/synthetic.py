"""Synthetic pristine contents for DAN pre-training: dead-leaves images.

The dead-leaves model (Matheron; Lee, Mumford and Huang, "Occlusion models for natural images", IJCV
2001) stacks opaque discs of random colour whose radii follow a power law p(r) ~ r^-3 between ``r_min``
and ``r_max``: the result is scale-invariant, with occlusion edges at every scale and a 1/f^2 power
spectrum, the two statistics of natural images that distortions disturb most visibly (blur removes edges,
noise and blocking add high frequencies). Any number of distinct contents can be drawn, which a
contrastive DAN needs to stop telling contents apart instead of distortions when only a few real
pristine images exist (the demo has 12). The k-NN probe never uses them: it measures on real images.

What is drawn here, deterministically for a ``numpy`` Generator:
- discs with radii from the truncated power law (inverse CDF), drawn back to front at twice the output
  size and area-reduced, so edges are anti-aliased like a camera's;
- disc colours from a palette per image (a mean chroma and a luminance law drawn per image, each disc
  a draw around them: photographs have coherent, mostly muted colours), a share of discs is gray;
- the whole image gets a low-frequency illumination field and fine 1/f texture, so discs are not
  perfectly flat (no real photograph is).
"""

from __future__ import annotations

import cv2
import numpy as np


def _power_law_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """n radii with density ~ r^-3 on [r_min, r_max] (inverse CDF of the truncated law)."""
    u = rng.random(n)
    a, b = r_min**-2.0, r_max**-2.0
    return (a - u * (a - b)) ** -0.5


def _pink_noise(rng: np.random.Generator, h: int, w: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent, standardized to zero mean and unit std, (h, w)."""
    spectrum = np.fft.rfft2(rng.standard_normal((h, w)))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    field = np.fft.irfft2(spectrum / f ** (exponent / 2.0), s=(h, w))
    field -= field.mean()
    return field / (field.std() + 1e-8)


def dead_leaves(
    height: int,
    width: int,
    rng: np.random.Generator,
    r_min: float = 3.0,
    r_max: float | None = None,
    num_discs: int | None = None,
    gray_fraction: float = 0.15,
    texture: float = 6.0,
    illumination: float = 0.25,
) -> np.ndarray:
    """A dead-leaves image, (height, width, 3) uint8 RGB.

    ``r_min``/``r_max``: disc radii in output pixels (``r_max`` None: a third of the short side);
    ``num_discs``: None draws enough for the last-drawn discs to cover the canvas many times over
    (about 12 x the canvas area / the mean disc area, capped at 20,000); ``gray_fraction``: share of
    colourless discs; ``texture``: std of the fine 1/f texture in grey levels; ``illumination``:
    relative amplitude of the low-frequency shading.
    """
    if height < 8 or width < 8:
        raise ValueError(f"dead_leaves: size {height}x{width} is too small (>= 8 x 8)")
    r_max = float(r_max if r_max is not None else min(height, width) / 3.0)
    if not 0 < r_min < r_max:
        raise ValueError(f"dead_leaves: need 0 < r_min < r_max, got r_min={r_min}, r_max={r_max}")
    s = 2  # draw at twice the size, area-reduce: anti-aliased occlusion edges
    H, W = height * s, width * s
    if num_discs is None:
        # E[r^2] of the truncated r^-3 law = 2 ln(r_max / r_min) / (r_min^-2 - r_max^-2)
        mean_area = np.pi * 2.0 * np.log(r_max / r_min) / (r_min**-2.0 - r_max**-2.0)
        num_discs = int(min(20_000, 12.0 * height * width / mean_area))
    # Random drawing order (later discs occlude earlier ones). The reversal before the shuffle changes no law;
    # it keeps the seeded images those of the README's measured runs.
    radii = rng.permutation(_power_law_radii(rng, num_discs, r_min, r_max)[::-1])
    centres = rng.random((num_discs, 2)) * (H, W)
    # A palette per image (photographs have coherent colours): a mean chroma and a luminance law per image,
    # each disc a draw around them; a share of discs colourless.
    lum = rng.beta(*rng.uniform(0.8, 3.0, 2), size=num_discs) * 0.9 + 0.05
    base = rng.standard_normal(2) * 0.08
    chroma = base + rng.standard_normal((num_discs, 2)) * rng.uniform(0.03, 0.15)
    chroma[rng.random(num_discs) < gray_fraction] = 0.0
    # opponent axes -> RGB (Y, R-G, B-Y), then clip
    rgb = np.stack(
        [
            lum + chroma[:, 0] - 0.3 * chroma[:, 1],
            lum - chroma[:, 0] - 0.3 * chroma[:, 1],
            lum + chroma[:, 1],
        ],
        axis=1,
    )
    rgb = np.clip(rgb, 0.0, 1.0) * 255.0
    canvas = np.empty((H, W, 3), np.float32)
    canvas[:] = rgb[0]
    for (cy, cx), r, colour in zip(centres, radii * s, rgb):
        cv2.circle(canvas, (int(cx), int(cy)), max(1, int(round(r))), colour.tolist(), thickness=-1)
    img = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    if illumination > 0:
        light = _pink_noise(rng, height, width, 4.0)  # very smooth
        img *= (1.0 + illumination * np.tanh(light / 2.0))[:, :, None]
    if texture > 0:
        img += texture * _pink_noise(rng, height, width, 1.0)[:, :, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)

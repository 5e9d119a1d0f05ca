"""Dead-leaves contents (mfe_iqa.data.synthetic) against the model's own laws: radii, spectrum, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mfe_iqa.data.synthetic import _pink_noise, _power_law_radii, dead_leaves


def _spectral_slope(img: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum of the luminance (natural images: about -2)."""
    g = img.astype(np.float64).mean(axis=2) if img.ndim == 3 else img.astype(np.float64)
    power = np.abs(np.fft.fft2(g - g.mean())) ** 2
    h, w = g.shape
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    edges = np.logspace(np.log10(2 / h), np.log10(0.25), 15)
    idx = np.digitize(f, edges)
    xs, ys = [], []
    for b in range(1, len(edges)):
        m = idx == b
        xs.append(np.log(f[m].mean()))
        ys.append(np.log(power[m].mean()))
    return float(np.polyfit(xs, ys, 1)[0])


def test_radii_follow_the_truncated_inverse_cube_law():
    r_min, r_max = 3.0, 80.0
    radii = _power_law_radii(np.random.default_rng(0), 20_000, r_min, r_max)
    assert radii.min() >= r_min and radii.max() <= r_max

    def cdf(r):  # integral of r^-3 from r_min, normalized on [r_min, r_max]
        return (r_min**-2 - np.asarray(r) ** -2) / (r_min**-2 - r_max**-2)

    assert stats.kstest(radii, cdf).pvalue > 0.01
    # and a uniform law on the same interval is rejected by the same test
    assert stats.kstest(np.random.default_rng(0).uniform(r_min, r_max, 20_000), cdf).pvalue < 1e-6


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_pink_noise_has_the_requested_spectral_slope(exponent):
    field = _pink_noise(np.random.default_rng(1), 256, 256, exponent)
    assert abs(field.mean()) < 1e-9 and field.std() == pytest.approx(1.0)
    assert _spectral_slope(field) == pytest.approx(-exponent, abs=0.25)


def test_dead_leaves_image_has_natural_image_statistics_and_is_seeded():
    img = dead_leaves(192, 256, np.random.default_rng(3))
    assert img.shape == (192, 256, 3) and img.dtype == np.uint8
    assert -2.6 < _spectral_slope(img) < -1.7  # occlusion edges at every scale: ~1/f^2 (white noise: 0)
    assert img.std() > 20  # not a flat canvas
    chroma = np.abs(img[..., 0].astype(int) - img[..., 1]).mean()
    assert chroma > 2  # colour, so the chroma-only distortion types act on it
    np.testing.assert_array_equal(img, dead_leaves(192, 256, np.random.default_rng(3)))
    assert not np.array_equal(img, dead_leaves(192, 256, np.random.default_rng(4)))


def test_dead_leaves_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="too small"):
        dead_leaves(4, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="r_min < r_max"):
        dead_leaves(64, 64, np.random.default_rng(0), r_min=30.0, r_max=10.0)

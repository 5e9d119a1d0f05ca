"""High-frequency module and target: low frequencies removed, high frequencies kept; HFEN shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mfe_iqa.models.high_frequency import (
    HighFrequencyExtractionNetwork,
    HighFrequencyModule,
    HighFrequencyTarget,
    remove_low_band,
)


def energy(t: torch.Tensor) -> float:
    return float(t.pow(2).mean())


def make_inputs(c: int = 4, h: int = 48, w: int = 64) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    smooth = 0.5 + 0.4 * torch.sin(2 * math.pi * xx / w) * torch.cos(2 * math.pi * yy / h)  # one period
    checker = ((xx + yy) % 2).float()  # 1-pixel checkerboard, the highest frequency
    return {
        "constant": torch.full((1, c, h, w), 0.7),
        "smooth": smooth.expand(1, c, h, w).clone(),
        "checker": checker.expand(1, c, h, w).clone(),
    }


def test_remove_low_band_keeps_only_high_frequencies() -> None:
    x = make_inputs()
    assert energy(remove_low_band(x["constant"])) < 1e-12
    # a 1-pixel checkerboard is all high band: AvgPool2 gives 0.5 everywhere, so the residual is +-0.5
    torch.testing.assert_close(remove_low_band(x["checker"]), x["checker"] - 0.5)


@pytest.mark.parametrize("train", [False, True])
def test_high_frequency_module_rejects_low_frequencies(train: bool) -> None:
    torch.manual_seed(0)
    module = HighFrequencyModule(4, 8).train(train)
    x = make_inputs()
    with torch.no_grad():
        e = {k: energy(module(v)) for k, v in x.items()}
    assert e["constant"] < 1e-10
    assert e["checker"] > 1e-2
    assert e["smooth"] < 1e-3 * e["checker"]


def test_hfen_stage_shapes_and_decoder() -> None:
    net = HighFrequencyExtractionNetwork(stem_channels=4, channels=(8, 12, 16, 20), num_stages=3).eval()
    with torch.no_grad():
        feats, hf_pred = net(torch.rand(2, 3, 50, 70))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 13, 18), (2, 12, 7, 9), (2, 16, 4, 5)]
    assert hf_pred.shape == (2, 1, 50, 70)
    with torch.no_grad():
        flat_feats, _ = net(torch.full((1, 3, 32, 32), 0.3))
    assert all(energy(f) < 1e-10 for f in flat_feats)  # a flat image has no high-frequency features
    with pytest.raises(ValueError, match="num_stages"):
        HighFrequencyExtractionNetwork(channels=(8, 16), num_stages=3)


def test_high_frequency_target_matches_scipy_difference_of_gaussians() -> None:
    sigma = 1.5
    target = HighFrequencyTarget(sigma)
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 40, 36)).astype(np.float32)
    gray = 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    radius = math.ceil(3 * sigma)
    blur = np.stack([gaussian_filter(g, sigma, mode="mirror", truncate=radius / sigma) for g in gray])
    expected = torch.from_numpy(gray - blur).unsqueeze(1)
    torch.testing.assert_close(target(torch.from_numpy(img)), expected, atol=1e-5, rtol=1e-4)
    assert energy(target(torch.full((1, 3, 16, 16), 0.4))) < 1e-12
    with pytest.raises(ValueError, match="sigma"):
        HighFrequencyTarget(0.0)

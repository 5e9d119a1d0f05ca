"""IQA losses against hand computations on tiny batches."""

from __future__ import annotations

import math

import pytest
import torch

from mfe_iqa.losses.iqa import (
    DistortionTypeLoss,
    HighFrequencyLoss,
    PairwiseRankLoss,
    PLCCLoss,
    QualityLoss,
)

PRED = torch.tensor([0.2, 0.4, 0.6, 0.9])
MOS = torch.tensor([0.1, 0.5, 0.4, 1.0])


def test_l1_and_mse_terms_by_hand():
    loss = QualityLoss(l1=1.0, mse=2.0)
    terms = loss.terms(PRED, MOS)
    # |d| = 0.1, 0.1, 0.2, 0.1 ; d^2 = 0.01, 0.01, 0.04, 0.01
    assert float(terms["l1"]) == pytest.approx(0.5 / 4)
    assert float(terms["mse"]) == pytest.approx(0.07 / 4)
    assert float(loss(PRED, MOS)) == pytest.approx(0.5 / 4 + 2 * 0.07 / 4)


def test_plcc_loss_by_hand():
    p = torch.tensor([1.0, 2.0, 3.0, 4.0])
    t = torch.tensor([1.0, 3.0, 2.0, 4.0])
    # centred: p = (-1.5, -0.5, 0.5, 1.5), t = (-1.5, 0.5, -0.5, 1.5); dot = 2.25 - 0.25 - 0.25 + 2.25 = 4
    # |p| = |t| = sqrt(5) -> r = 0.8 -> loss = (1 - 0.8) / 2
    assert float(PLCCLoss()(p, t)) == pytest.approx(0.1, abs=1e-6)
    assert float(PLCCLoss()(p, p * 3 + 1)) == pytest.approx(0.0, abs=1e-6)  # scale/offset invariant
    assert float(PLCCLoss()(p, -p)) == pytest.approx(1.0, abs=1e-6)


def test_pairwise_rank_loss_by_hand():
    # ordered pairs (mos_i > mos_j): (1,0) (1,2) (2,0) (3,0) (3,1) (3,2)
    # pred_i - pred_j:                0.2  -0.2  0.4  0.7  0.5  0.3
    # margin 0.25 -> relu(0.25 - d):  0.05  0.45 0    0    0    0     -> mean 0.5 / 6
    loss = PairwiseRankLoss(margin=0.25)(PRED, MOS)
    assert float(loss) == pytest.approx(0.5 / 6, abs=1e-6)
    # margin 0 penalizes only the one mis-ordered pair: 0.2 / 6
    assert float(PairwiseRankLoss()(PRED, MOS)) == pytest.approx(0.2 / 6, abs=1e-6)


def test_rank_loss_ignores_ties_and_handles_no_pairs():
    p = torch.tensor([0.3, 0.1], requires_grad=True)
    loss = PairwiseRankLoss(margin=0.5)(p, torch.tensor([0.7, 0.7]))
    assert loss.item() == 0.0
    loss.backward()  # still connected to the graph
    assert p.grad is not None


def test_weighted_mix_is_the_weighted_sum():
    mix = QualityLoss(l1=0.5, mse=0.0, plcc=2.0, rank=1.0, rank_margin=0.25)
    expected = 0.5 * (0.5 / 4) + 2.0 * float(PLCCLoss()(PRED, MOS)) + 1.0 * (0.5 / 6)
    assert float(mix(PRED, MOS)) == pytest.approx(expected, abs=1e-6)
    assert set(mix.terms(PRED, MOS)) == {"l1", "plcc", "rank"}  # weight 0 terms are not computed


def test_quality_loss_rejects_all_zero_weights_and_shape_mismatch():
    with pytest.raises(ValueError, match="at least one"):
        QualityLoss(l1=0.0)
    with pytest.raises(ValueError, match="differ"):
        QualityLoss()(PRED, MOS[:3])


def test_high_frequency_loss_by_hand():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 3.0]]]])
    assert float(HighFrequencyLoss("l1")(pred, target)) == pytest.approx((1 + 0 + 2 + 0) / 4)
    assert float(HighFrequencyLoss("mse")(pred, target)) == pytest.approx((1 + 0 + 4 + 0) / 4)
    with pytest.raises(ValueError, match="same shape"):
        HighFrequencyLoss()(pred, target[..., :1])


def test_high_frequency_target_is_not_trained():
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.ones(1, 1, 2, 2, requires_grad=True)
    HighFrequencyLoss()(pred, target).backward()
    assert target.grad is None and pred.grad is not None


def test_distortion_loss_ignores_unlabelled_images_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, -1, 2])
    # image 0: -log(e^2 / (e^2 + 2)); image 2: -log(1/3); image 1 ignored
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(3)) / 2
    assert float(DistortionTypeLoss()(logits, labels)) == pytest.approx(expected, abs=1e-6)


def test_distortion_loss_without_any_label_is_zero_not_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = DistortionTypeLoss()(logits, torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_distortion_loss_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        DistortionTypeLoss()(torch.randn(2, 3), torch.tensor([0, 3]))

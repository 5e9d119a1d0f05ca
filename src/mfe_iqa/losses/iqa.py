"""Losses of multi-task IQA training: quality regression terms and the two auxiliary tasks.

All quality losses take ``pred`` (B,) and ``target`` (B,) on the normalized MOS scale (higher = better).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfe_iqa.data.items import NO_LABEL


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A 0.0 that stays connected to ``x``'s graph, so DDP sees a gradient for every used parameter."""
    return x.sum() * 0.0


class PLCCLoss(nn.Module):
    """(1 - PLCC(pred, target)) / 2 over the batch, in [0, 1]; 0.5 (no gradient signal) for a constant batch.

    Invariant to the scale and offset of the predictions, so it is usually mixed with an L1/MSE term.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float().flatten(), target.float().flatten()
        if pred.numel() < 2:
            return _zero_like_graph(pred) + 0.5
        p = pred - pred.mean()
        t = target - target.mean()
        r = (p * t).sum() / (p.norm() * t.norm() + self.eps)
        return (1.0 - r) / 2.0


class PairwiseRankLoss(nn.Module):
    """Margin ranking loss over all ordered pairs of the batch.

    For every pair (i, j) with target_i > target_j (pairs with equal targets carry no order and are skipped):
    max(0, margin - (pred_i - pred_j)); the loss is the mean over those pairs, 0.0 if there are none.
    """

    def __init__(self, margin: float = 0.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float().flatten(), target.float().flatten()
        dp = pred[:, None] - pred[None, :]  # (B, B): pred_i - pred_j
        ordered = target[:, None] > target[None, :]  # (B, B): True where i should rank above j
        if not bool(ordered.any()):
            return _zero_like_graph(pred)
        return F.relu(self.margin - dp[ordered]).mean()


class TwinRankLoss(nn.Module):
    """Synthetic quality ranking: a crop must score above its own degraded copy (RankIQA's pair constraint).

    ``mean_i max(0, margin - (pred_source_i - pred_degraded_i))`` over the pairs; no MOS is involved, the
    order comes from the degradation. ``margin`` is on the normalized MOS scale.
    """

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"system.twin_margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, pred_source: torch.Tensor, pred_degraded: torch.Tensor) -> torch.Tensor:
        pred_source, pred_degraded = pred_source.float().flatten(), pred_degraded.float().flatten()
        if pred_source.shape != pred_degraded.shape:
            raise ValueError(
                f"TwinRankLoss: {pred_source.numel()} source scores for {pred_degraded.numel()} degraded copies"
            )
        return F.relu(self.margin - (pred_source - pred_degraded)).mean()


class QualityLoss(nn.Module):
    """The main quality loss: a weighted sum of L1, MSE, PLCC and pairwise-rank terms (weight 0 = off).

    The weights come from ``conf/system/*.yaml`` (``system.quality_loss.l1`` etc.), so a sweep can mix them.
    """

    def __init__(
        self,
        l1: float = 1.0,
        mse: float = 0.0,
        plcc: float = 0.0,
        rank: float = 0.0,
        rank_margin: float = 0.0,
        plcc_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.weights = {"l1": float(l1), "mse": float(mse), "plcc": float(plcc), "rank": float(rank)}
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"QualityLoss weights must be >= 0, got {self.weights}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("QualityLoss: every weight (l1, mse, plcc, rank) is 0; at least one must be > 0")
        self.plcc_loss = PLCCLoss(eps=plcc_eps)
        self.rank_loss = PairwiseRankLoss(margin=rank_margin)

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms whose weight is > 0."""
        if pred.shape != target.shape:
            raise ValueError(f"QualityLoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred, target = pred.float(), target.float()
        fns = {
            "l1": lambda: F.l1_loss(pred, target),
            "mse": lambda: F.mse_loss(pred, target),
            "plcc": lambda: self.plcc_loss(pred, target),
            "rank": lambda: self.rank_loss(pred, target),
        }
        return {name: fns[name]() for name, w in self.weights.items() if w > 0}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in self.terms(pred, target).items())


class HighFrequencyLoss(nn.Module):
    """HFEN auxiliary loss: L1 (``kind="l1"``) or MSE between the reconstruction and the fixed HF target.

    The target is the non-learned high-frequency component of the input and is detached.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        if kind not in ("l1", "mse"):
            raise ValueError(f"HighFrequencyLoss kind must be 'l1' or 'mse', got {kind!r}")
        self.kind = kind

    def forward(self, hf_pred: torch.Tensor, hf_target: torch.Tensor) -> torch.Tensor:
        if hf_pred.shape != hf_target.shape:
            raise ValueError(
                f"HighFrequencyLoss: hf_pred {tuple(hf_pred.shape)} and hf_target {tuple(hf_target.shape)} must "
                "have the same shape (B, 1, H, W); the network must return them at one resolution"
            )
        target = hf_target.detach().float()
        if self.kind == "l1":
            return F.l1_loss(hf_pred.float(), target)
        return F.mse_loss(hf_pred.float(), target)


class DistortionTypeLoss(nn.Module):
    """DAN auxiliary loss: cross-entropy over distortion types, ignoring images labelled -1 (no label).

    A batch without any label (authentic databases) gives 0.0, not NaN.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, dist_type: torch.Tensor) -> torch.Tensor:
        dist_type = dist_type.long().flatten()
        labelled = dist_type != NO_LABEL  # (B,)
        if not bool(labelled.any()):
            return _zero_like_graph(logits)
        num_classes = logits.shape[-1]
        bad = dist_type[labelled & ((dist_type < 0) | (dist_type >= num_classes))]
        if bad.numel():
            raise ValueError(
                f"DistortionTypeLoss: label {int(bad[0])} outside [0, {num_classes - 1}] (or -1 for no label); "
                "the model's number of distortion types must match the database's (data.num_dist_types)"
            )
        return F.cross_entropy(
            logits[labelled].float(), dist_type[labelled], label_smoothing=self.label_smoothing
        )

"""Multi-positive NT-Xent (SupCon "out" form, as in CONTRIQUE): every sample of the same class is a positive.

For L2-normalized embeddings z and cosine similarities s_ik = z_i . z_k, the loss of anchor i is

    L_i = log sum_{k != i} exp(s_ik / tau) - (1 / |P(i)|) sum_{j in P(i)} s_ij / tau,

with P(i) the other samples of i's class; the loss is the mean over anchors with at least one positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiPositiveNTXent(nn.Module):
    """Supervised-contrastive loss over (N, D) embeddings with integer class labels; temperature ``tau``.

    ``anchor_index`` restricts which rows act as anchors while all rows serve as keys: under DDP each rank
    passes the gathered embeddings and its own rows as anchors, so gradients reach every rank exactly once.
    ``self.last_anchors_without_positive`` counts anchors skipped in the last call (0 with our sampler).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.last_anchors_without_positive = 0

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchor_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        n = embeddings.shape[0]
        if anchor_index is None:
            anchor_index = torch.arange(n, device=embeddings.device)
        z = F.normalize(embeddings.float(), dim=1)  # (N, D)
        logits = z[anchor_index] @ z.T / self.temperature  # (A, N)
        self_mask = F.one_hot(anchor_index, n).bool()  # (A, N): the anchor itself
        positives = (labels[anchor_index, None] == labels[None, :]) & ~self_mask  # (A, N)
        n_pos = positives.sum(dim=1)  # (A,)
        has_pos = n_pos > 0
        self.last_anchors_without_positive = int((~has_pos).sum())
        if not bool(has_pos.any()):
            return embeddings.sum() * 0.0  # nothing to contrast; keeps the graph for DDP
        log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)  # (A,)
        mean_positive = (logits * positives).sum(dim=1) / n_pos.clamp(min=1)  # (A,)
        return (log_denominator - mean_positive)[has_pos].mean()

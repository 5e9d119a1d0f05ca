"""DANPretrainModule: contrastive pre-training of the Distortion-Aware Network (CONTRIQUE-style).

The DAN backbone (a ``DistortionAwareNetwork``, the same class MFENet uses, held as ``self.dan`` so that
checkpoint keys read ``dan.backbone.*``) is followed by a projection MLP; the loss is multi-positive
NT-Xent over (type, level) classes. Validation measures k-NN accuracy of the pooled backbone features
(what IQA training inherits) on held-out images (queries), neighbours taken from a bank of distorted
training images (or, without a bank, from the other held-out images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mfe_iqa.losses.contrastive import MultiPositiveNTXent
from mfe_iqa.models.dan import DistortionAwareNetwork


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``min_lr_ratio`` x lr."""
    warmup = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0
    total = max(total_steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class ProjectionHead(nn.Module):
    """CONTRIQUE's projector: Linear -> BatchNorm -> ReLU -> Linear, (N, C) -> (N, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def knn_accuracy(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    types: torch.Tensor,
    content: torch.Tensor,
    k: int = 5,
    temperature: float = 0.1,
    is_bank: torch.Tensor | None = None,
    distorted_only: bool = False,
) -> tuple[float, float]:
    """Weighted k-NN of other-content neighbours: (type accuracy over distorted queries, class accuracy).

    embeddings (N, D); labels, types, content (N,). For each query the k most cosine-similar candidates of
    *other* contents vote with weight exp(s / temperature), once for the class and once for the type.
    ``is_bank`` (N,) bool: queries are the rows outside the bank, candidates the bank rows (None: every row
    is both, leave-one-content-out). ``distorted_only``: pristine rows (type < 0) are neither candidates nor
    queries, so the type vote is over the distortion types alone (chance 1 / #types) and the class
    accuracy is the (type, level) accuracy.
    """
    z = F.normalize(embeddings.float(), dim=1)
    n = len(z)
    query = torch.ones(n, dtype=torch.bool, device=z.device) if is_bank is None else ~is_bank.bool()
    cand = torch.ones(n, dtype=torch.bool, device=z.device) if is_bank is None else is_bank.bool()
    if distorted_only:
        query, cand = query & (types >= 0), cand & (types >= 0)
    qi, ci = query.nonzero().squeeze(1), cand.nonzero().squeeze(1)
    if len(qi) == 0:
        raise ValueError("k-NN validation has no query")
    sim = z[qi] @ z[ci].T  # (Q, M)
    sim = sim.masked_fill(content[qi][:, None] == content[ci][None, :], float("-inf"))
    k = min(k, int((content[ci] != content[qi[0]]).sum()))
    if k < 1:
        raise ValueError("k-NN validation needs at least two held-out images (contents)")
    top_s, top_i = sim.topk(k, dim=1)  # (Q, k)
    weights = torch.exp((top_s - top_s[:, :1]) / temperature)  # (Q, k), stable

    def vote(targets: torch.Tensor) -> torch.Tensor:
        values, inverse = torch.unique(targets[ci], return_inverse=True)
        scores = torch.zeros(len(qi), len(values), dtype=weights.dtype, device=weights.device)
        scores.scatter_add_(1, inverse[top_i], weights)
        return values[scores.argmax(dim=1)]

    class_acc = (vote(labels) == labels[qi]).float().mean().item()
    distorted = types[qi] >= 0
    type_acc = (
        (vote(types)[distorted] == types[qi][distorted]).float().mean().item()
        if distorted.any()
        else float("nan")
    )
    return type_acc, class_acc


class DANPretrainModule(L.LightningModule):
    """Contrastive pre-training of ``dan`` + projection head with multi-positive NT-Xent.

    ``feature_stages``: which DAN stages (indices into its feature list) are pooled, each L2-normalized and
    concatenated, for the projection and the k-NN; None = the last stage only (CONTRIQUE). Distortions are
    low-level statistics, so including early stages speeds learning up; IQA training fuses every stage.
    ``patch_grid=2`` projects each 2x2 pooled patch (CONTRIQUE); 0 uses the global pooled feature.
    Under DDP the projections of all ranks are gathered (with gradients) as keys.
    """

    def __init__(
        self,
        dan: DistortionAwareNetwork,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        loss: nn.Module | None = None,
        projection_dim: int = 128,
        projection_hidden_dim: int | None = None,
        patch_grid: int = 0,
        feature_stages: Sequence[int] | None = None,
        weight_decay_norm_bias: bool = False,
        knn_k: int = 5,
        knn_temperature: float = 0.1,
        pooling: Sequence[str] = ("mean",),
        knn_distorted_only: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["dan", "loss"], logger=False)
        self.dan = dan
        n_stages = len(dan.channels)
        stages = [-1] if feature_stages is None else list(feature_stages)
        bad = [i for i in stages if not -n_stages <= int(i) < n_stages]
        if bad or not stages:
            raise ValueError(
                f"feature_stages {stages}: DAN has {n_stages} stages (indices 0..{n_stages - 1} or -1)"
            )
        self.feature_stages = [int(i) % n_stages for i in stages]
        self.pooling = [str(p) for p in pooling]
        if not self.pooling or set(self.pooling) - {"mean", "std"}:
            raise ValueError(f"pooling {self.pooling}: choose a non-empty list of 'mean' and 'std'")
        channels = len(self.pooling) * sum(dan.channels[i] for i in self.feature_stages)
        self.head = ProjectionHead(channels, projection_hidden_dim or channels, projection_dim)
        self.loss_fn = loss if loss is not None else MultiPositiveNTXent(0.1)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.patch_grid = int(patch_grid)
        self.weight_decay_norm_bias = weight_decay_norm_bias
        self.knn_k = int(knn_k)
        self.knn_temperature = float(knn_temperature)
        self.knn_distorted_only = bool(knn_distorted_only)
        self._val: list[tuple[torch.Tensor, ...]] = []
        self.last_knn: dict[str, float] = {}

    def pooled(self, x: torch.Tensor, grid: int = 0) -> torch.Tensor:
        """Pooled DAN features of x (B, 3, H, W) in [0, 1]: (B, C) for grid 0, else (B, grid*grid, C).

        C = len(pooling) x the sum of the selected stages' channels; each stage's mean (and std) vector is
        L2-normalized first. The spatial std (second-order statistics: noise, blur, contrast) of a 1 x 1 map is 0.
        """
        feats = self.dan(x)[0]  # [(B, C_i, h_i, w_i)]
        parts = []
        for i in self.feature_stages:
            f = feats[i]
            for stat in self.pooling:
                if grid > 0:
                    m = F.adaptive_avg_pool2d(f, grid)
                    p = (
                        m
                        if stat == "mean"
                        else (F.adaptive_avg_pool2d(f * f, grid) - m * m).clamp_min(0).sqrt()
                    )
                    p = p.flatten(2).transpose(1, 2)  # (B, g*g, C_i)
                else:
                    p = f.mean(dim=(2, 3)) if stat == "mean" else f.std(dim=(2, 3), correction=0)  # (B, C_i)
                parts.append(F.normalize(p, dim=-1))
        return torch.cat(parts, dim=-1)

    def project(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections (N', D) and their labels: one per image, or one per patch of a g x g grid."""
        if self.patch_grid > 0:
            g = self.patch_grid
            pooled = self.pooled(x, g)  # (B, g*g, C)
            pooled = pooled.reshape(-1, pooled.shape[-1])  # (B*g*g, C)
            labels = labels.repeat_interleave(g * g)
        else:
            pooled = self.pooled(x)  # (B, C)
        return self.head(pooled), labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        views = batch["views"]  # (B, 2, 3, c, c)
        x = views.flatten(0, 1)  # (2B, 3, c, c): the two views of item i are rows 2i, 2i+1
        labels = batch["label"].repeat_interleave(views.shape[1])  # (2B,)
        z, labels = self.project(x, labels)  # (N, D), (N,)
        anchors = None
        if self.trainer is not None and self.trainer.world_size > 1:
            n = z.shape[0]
            z = self.all_gather(z, sync_grads=True).flatten(0, 1)  # (W*N, D)
            labels = self.all_gather(labels).flatten(0, 1)  # (W*N,)
            anchors = torch.arange(n, device=z.device) + self.global_rank * n
        loss = self.loss_fn(z, labels, anchor_index=anchors)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=views.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        emb = self.pooled(batch["image"])  # (B, C)
        bank = batch.get("is_bank", torch.zeros_like(batch["label"], dtype=torch.bool))
        self._val.append((emb.detach(), batch["label"], batch["dist_type"], batch["content"], bank))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        emb, labels, types, content, bank = (torch.cat(parts) for parts in zip(*self._val))
        self._val = []
        type_acc, class_acc = knn_accuracy(
            emb,
            labels,
            types,
            content,
            self.knn_k,
            self.knn_temperature,
            is_bank=bank if bool(bank.any()) else None,
            distorted_only=self.knn_distorted_only,
        )
        self.last_knn = {"val/knn_type_acc": type_acc, "val/knn_class_acc": class_acc}
        # Every rank computes the same value on the whole (unsharded) validation set.
        self.log("val/knn_type_acc", type_acc, prog_bar=True, sync_dist=True)
        self.log("val/knn_class_acc", class_acc, prog_bar=True, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mfe_iqa_dan"] = {"backbone": self.dan.backbone_name}

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:  # biases and norm weights are the 1-d parameters
                (no_decay if p.ndim <= 1 and not self.weight_decay_norm_bias else decay).append(p)
        optimizer = self.optimizer_factory(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]  # no decay on biases and norms
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

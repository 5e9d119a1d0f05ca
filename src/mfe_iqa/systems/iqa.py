"""Multi-task IQA training: quality regression + HFEN reconstruction + DAN distortion-type classification.

``IQATrainingModule`` takes any network returning ``MFENetOutput`` and knows nothing of files or databases
beyond the small ``database`` dict it stores in its checkpoints (so a model can be rebuilt from the file alone,
see ``load_net_from_checkpoint``). Metrics are per image (crops averaged, see ``mfe_iqa.metrics``).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mfe_iqa.data.items import BATCH_DIST_TYPE, BATCH_IMAGE, BATCH_IMAGE_DEGRADED, BATCH_INDEX, BATCH_MOS
from mfe_iqa.errors import UserError
from mfe_iqa.losses.iqa import DistortionTypeLoss, HighFrequencyLoss, QualityLoss, TwinRankLoss
from mfe_iqa.metrics import (
    ImagePredictions,
    best_tracker,
    build_iqa_metrics,
    fit_logistic,
)
from mfe_iqa.models.outputs import MFENetOutput

log = logging.getLogger("mfe_iqa.systems.iqa")

STATS_HEAD_INITS = ("zero", "ridge", "auto")

CKPT_META_KEY = "mfe_iqa"
NET_PREFIX = "net."
# Keys of a model config that point to external weights; a checkpoint already holds the trained weights,
# so they are cleared before the network is rebuilt from the file (no download, no missing-file error).
WEIGHT_SOURCE_KEYS = {"pretrained_path": None, "pretrained_ckpt": None, "pretrained": False}


def warmup_cosine_schedule(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Per-step linear warm-up from lr/warmup to lr, then cosine decay to ``min_lr_ratio`` x lr at ``total_steps``.

    ``warmup_steps`` overrides ``warmup_fraction`` (of ``total_steps``) when given.
    """
    total = max(int(total_steps), 1)
    warm = int(warmup_steps) if warmup_steps is not None else int(round(warmup_fraction * total))
    warm = min(max(warm, 0), total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def _model_cfg_to_dict(model_cfg: Mapping | str | None) -> dict | None:
    """Accept the model config as a mapping or as YAML text (see ``IQATrainingModule``)."""
    if model_cfg is None:
        return None
    if isinstance(model_cfg, nn.Module):
        raise TypeError(
            "IQATrainingModule got an nn.Module as model_cfg: hydra.utils.instantiate builds every dict with a "
            "'_target_' passed to it as a keyword. Pass the model config as YAML text instead, e.g. "
            "instantiate(cfg.system, net=net, model_cfg=OmegaConf.to_yaml(cfg.model, resolve=True), ...)."
        )
    if isinstance(model_cfg, str):
        model_cfg = yaml.safe_load(model_cfg)
    model_cfg = _plain(model_cfg)
    if not isinstance(model_cfg, Mapping) or "_target_" not in model_cfg:
        raise ValueError(
            f"model_cfg must be a model config mapping with a '_target_', got {model_cfg!r:.200}"
        )
    return dict(model_cfg)


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite: the message names the global step and every loss term."""


class IQATrainingModule(L.LightningModule):
    """Trains ``net`` on normalized MOS with auxiliary HFEN and DAN losses; evaluates per image.

    Loss = quality_loss(score, mos) + lambda_hf * hf_loss(hf_pred, hf_target) + lambda_dist * dist_loss(logits, type);
    an auxiliary term is skipped (logged as 0) when its weight is 0 or the network does not return its output.
    With ``lambda_twin > 0`` (synthetic quality ranking) the batch must carry ``image_degraded`` (the data
    module's ``degraded_twin``): the first ``ceil(twin_fraction * B)`` degraded copies go through the network in
    the same forward pass as the batch, and ``lambda_twin * TwinRankLoss(twin_margin)`` asks each source crop to
    score at least ``twin_margin`` above its copy. The other terms see the B source crops only.
    ``channels_last``: the network's 4-D weights and every input batch in channels-last memory layout (a speed
    setting: the same function up to float rounding; on the CPU MFENet-tiny's training step measured 1.2x faster
    and its 20-minute fit validated 1.4x as often, README "Real photographs on a CPU").

    ``model_cfg`` (mapping with ``_target_`` or its YAML text) and ``database`` ({"name", "mos_min", "mos_max",
    "lower_better"}) are written into every checkpoint under ``checkpoint["mfe_iqa"]``. Through
    ``hydra.utils.instantiate`` pass ``model_cfg`` as YAML text: Hydra would build a dict that carries ``_target_``.
    ``test_set_names[i]`` names the i-th test dataloader (metrics ``test/<name>/<metric>``); it may be set after
    construction, before ``trainer.test``.
    """

    def __init__(
        self,
        net: nn.Module,
        quality_loss: nn.Module | None = None,
        hf_loss: nn.Module | None = None,
        dist_loss: nn.Module | None = None,
        lambda_hf: float = 0.0,
        lambda_dist: float = 0.0,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        backbone_lr_mult: float = 1.0,
        dan_lr_mult: float | None = None,
        stats_head_lr_mult: float = 1.0,
        weight_decay: float = 0.0,
        fit_5_parameter: bool = False,
        lambda_twin: float = 0.0,
        twin_margin: float = 0.1,
        twin_fraction: float = 1.0,
        channels_last: bool = False,
        stats_head_init: str = "zero",
        stats_head_alphas: Sequence[float] | None = None,
        stats_head_alpha_selection: str = "val",
        stats_head_cv_folds: int = 5,
        model_cfg: Mapping | str | None = None,
        database: Mapping | None = None,
        test_set_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"system.scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        if lambda_hf < 0 or lambda_dist < 0:
            raise ValueError(
                f"system.lambda_hf ({lambda_hf}) and system.lambda_dist ({lambda_dist}) must be >= 0"
            )
        if not backbone_lr_mult > 0 or (dan_lr_mult is not None and not dan_lr_mult > 0):
            raise ValueError(
                f"system.backbone_lr_mult ({backbone_lr_mult}) and system.dan_lr_mult ({dan_lr_mult}) must be > 0 "
                "(dan_lr_mult null: the backbone's); to keep the pre-trained DAN fixed set model.dan.freeze=true"
            )
        if not stats_head_lr_mult >= 0:
            raise ValueError(
                f"system.stats_head_lr_mult ({stats_head_lr_mult}) must be >= 0 (0: the DAN-statistics head keeps "
                "its start, e.g. the linear probe of system.stats_head_init=ridge; 1: the head's lr)"
            )
        if lambda_twin < 0 or not 0 < twin_fraction <= 1:
            raise ValueError(
                f"system.lambda_twin ({lambda_twin}) must be >= 0 and system.twin_fraction ({twin_fraction}) in (0, 1]"
            )
        if stats_head_init not in STATS_HEAD_INITS:
            raise ValueError(
                f"system.stats_head_init must be one of {STATS_HEAD_INITS}, got {stats_head_init!r}"
            )
        if stats_head_init == "ridge" and getattr(net, "dan_stats", None) is None:
            raise ValueError(
                "system.stats_head_init=ridge starts the DAN-statistics head at the linear probe's solution: the "
                "network has no such head. Set model.dan_stats_head=true (MFENet with use_dan=true)."
            )
        if stats_head_alphas is not None and (
            not list(stats_head_alphas) or any(not float(a) > 0 for a in stats_head_alphas)
        ):
            raise ValueError(
                f"system.stats_head_alphas must be null or a non-empty list of positive numbers, got {stats_head_alphas}"
            )
        from mfe_iqa.probe import HEAD_ALPHA_SELECTIONS

        if stats_head_alpha_selection not in HEAD_ALPHA_SELECTIONS or int(stats_head_cv_folds) < 2:
            raise ValueError(
                f"system.stats_head_alpha_selection must be one of {HEAD_ALPHA_SELECTIONS} (got "
                f"{stats_head_alpha_selection!r}) and system.stats_head_cv_folds >= 2 (got {stats_head_cv_folds})"
            )
        self.stats_head_alpha_selection = str(stats_head_alpha_selection)
        self.stats_head_cv_folds = int(stats_head_cv_folds)
        # auto: ridge when the network has the DAN-statistics head (a preset that trains several models)
        self.stats_head_init = (
            ("ridge" if getattr(net, "dan_stats", None) is not None else "zero")
            if stats_head_init == "auto"
            else stats_head_init
        )
        self.stats_head_alphas = (
            [float(a) for a in stats_head_alphas] if stats_head_alphas is not None else None
        )
        self.stats_head_probe: dict[str, Any] | None = None  # what the linear-probe stage fitted (ridge init)
        self.net = net
        self.channels_last = bool(channels_last)
        if self.channels_last:  # before the optimizer and the EMA copy exist, so both see the new layout
            self.net.to(memory_format=torch.channels_last)
        self.lambda_twin = float(lambda_twin)
        self.twin_fraction = float(twin_fraction)
        self.twin_loss = TwinRankLoss(twin_margin)
        self._warned_unused_twins = False
        self.quality_loss = quality_loss if quality_loss is not None else QualityLoss()
        self.hf_loss = hf_loss if hf_loss is not None else HighFrequencyLoss()
        self.dist_loss = dist_loss if dist_loss is not None else DistortionTypeLoss()
        self.lambda_hf = float(lambda_hf)
        self.lambda_dist = float(lambda_dist)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.backbone_lr_mult = float(backbone_lr_mult)
        self.dan_lr_mult = self.backbone_lr_mult if dan_lr_mult is None else float(dan_lr_mult)
        self.stats_head_lr_mult = float(stats_head_lr_mult)
        self.weight_decay = float(weight_decay)
        self.fit_5_parameter = bool(fit_5_parameter)
        self.model_cfg = _model_cfg_to_dict(model_cfg)
        self.database = dict(_plain(database)) if database is not None else None
        self.test_set_names = [str(n) for n in _plain(test_set_names)] if test_set_names else None
        self.save_hyperparameters(
            {
                "lambda_hf": self.lambda_hf,
                "lambda_dist": self.lambda_dist,
                "backbone_lr_mult": self.backbone_lr_mult,
                "dan_lr_mult": self.dan_lr_mult,
                "stats_head_lr_mult": self.stats_head_lr_mult,
                "weight_decay": self.weight_decay,
                "scheduler_interval": scheduler_interval,
                "fit_5_parameter": self.fit_5_parameter,
                "lambda_twin": self.lambda_twin,
                "twin_margin": self.twin_loss.margin,
                "twin_fraction": self.twin_fraction,
                "channels_last": self.channels_last,
                "stats_head_init": self.stats_head_init,
                "stats_head_alpha_selection": self.stats_head_alpha_selection,
                "stats_head_cv_folds": self.stats_head_cv_folds,
                "database": self.database,
            }
        )

        self.val_metrics = build_iqa_metrics(prefix="val/", fit_5_parameter=self.fit_5_parameter)
        self.val_srcc_best = best_tracker()
        self.test_metrics = nn.ModuleDict()  # name -> MetricCollection, built in on_test_start
        self.test_collectors = nn.ModuleDict()  # name -> ImagePredictions
        self.best_val_metrics: dict[
            str, float
        ] = {}  # val metrics (no prefix) of the epoch with the best SRCC
        self.best_val_epoch: int | None = None
        self.test_results: dict[str, dict[str, float]] = {}  # name -> {metric: value}
        # name -> {"index", "prediction", "mos"} numpy arrays, one row per image, sorted by dataset index
        self.test_predictions: dict[str, dict[str, np.ndarray]] = {}

    # ----------------------------------------------------------------------------------------------------------
    # forward and losses
    # ----------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> MFENetOutput:
        """x: (B, 3, H, W) in [0, 1] -> the network's output."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        if not isinstance(out, MFENetOutput):
            raise TypeError(f"the network must return MFENetOutput, got {type(out).__name__}")
        return out

    def predict_images(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, K, 3, h, w) crops or (B, 3, h, w) -> (B,) score averaged over the K crops of each image."""
        if image.ndim == 4:
            image = image.unsqueeze(1)
        if image.ndim != 5:
            raise ValueError(
                f"eval batch 'image' must be (B, K, 3, h, w) or (B, 3, h, w), got {tuple(image.shape)}"
            )
        b, k = image.shape[:2]
        score = self(image.flatten(0, 1)).score  # (B*K,)
        return score.float().reshape(b, k).mean(dim=1)  # (B,)

    def compute_losses(self, out: MFENetOutput, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"loss", "loss_quality", "loss_hf", "loss_dist"} for one training batch."""
        score = out.score.float().reshape(-1)  # (B,)
        mos = batch[BATCH_MOS].float().reshape(-1)  # (B,)
        if score.shape != mos.shape:
            raise ValueError(
                f"network score {tuple(out.score.shape)} does not match the batch's mos {tuple(mos.shape)}"
            )
        loss_quality = self.quality_loss(score, mos)
        zero = score.new_zeros(())
        loss_hf = zero
        use_hf = self.lambda_hf > 0 and out.hf_pred is not None and out.hf_target is not None
        if use_hf:
            loss_hf = self.hf_loss(out.hf_pred, out.hf_target)
        loss_dist = zero
        use_dist = self.lambda_dist > 0 and out.dist_logits is not None and BATCH_DIST_TYPE in batch
        if use_dist:
            loss_dist = self.dist_loss(out.dist_logits, batch[BATCH_DIST_TYPE])
        loss = loss_quality + self.lambda_hf * loss_hf + self.lambda_dist * loss_dist
        # The output of a switched-off term (weight 0) joins the graph with a zero factor: under DDP every trainable
        # parameter must receive a gradient at each step, or DDP stops ("parameters that were not used in producing
        # the loss"). nan_to_num keeps a NaN in an unused head from reaching the loss. The value is unchanged.
        for output, used in ((out.hf_pred, use_hf), (out.dist_logits, use_dist)):
            if output is not None and not used and output.requires_grad:
                loss = loss + 0.0 * torch.nan_to_num(output.float(), nan=0.0, posinf=0.0, neginf=0.0).sum()
        return {"loss": loss, "loss_quality": loss_quality, "loss_hf": loss_hf, "loss_dist": loss_dist}

    # ----------------------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.stats_head_init == "ridge":
            self._init_stats_head_ridge()

    def _init_stats_head_ridge(self) -> None:
        """LP-FT's linear-probe stage: ``net.dan_stats`` set to the ridge regressor of the training images' MOS on
        the DAN's crop statistics (alpha on val), before the first step (``mfe_iqa.probe.init_stats_head_ridge``).
        Skipped when the fit resumes from a checkpoint (the head's weights come from there)."""
        from mfe_iqa.probe import DEFAULT_ALPHAS, init_stats_head_ridge

        if self.trainer.ckpt_path:
            log.info(
                "system.stats_head_init=ridge: resuming from %s, the head keeps its saved weights",
                self.trainer.ckpt_path,
            )
            return
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "eval_dataloader") or not hasattr(dm, "train_items"):
            raise ValueError(
                "system.stats_head_init=ridge fits the head on the datamodule's training images: pass an "
                "IQADataModule to trainer.fit(datamodule=...)"
            )
        has_val = bool(getattr(dm, "has_val", False))
        val_items = list(dm.val_items) if has_val else []
        started = time.perf_counter()
        result = init_stats_head_ridge(
            self.net.dan_stats,
            self.net.dan,
            dm.eval_dataloader(dm.train_items),
            list(dm.train_items),
            dm.eval_dataloader(val_items) if has_val else None,
            val_items,
            alphas=self.stats_head_alphas or DEFAULT_ALPHAS,
            cv_folds=self.stats_head_cv_folds,
            device=self.device,
            selection=self.stats_head_alpha_selection,
        )
        # every process fitted the same images; rank 0's result is what all keep (float noise may differ on GPUs)
        head = self.net.dan_stats
        with torch.no_grad():
            for t in (head.weight, head.bias, head.norm.running_mean, head.norm.running_var):
                t.copy_(self.trainer.strategy.broadcast(t.detach().clone(), src=0).to(t.device))
        seconds = time.perf_counter() - started
        self.stats_head_probe = {
            "alpha": result.alpha,
            "selection": result.selection,
            "train_srcc": result.train_srcc,
            "val_srcc": result.val_srcc,
            "dead_features": result.dead_features,
            "seconds": seconds,
            **{f"n_{k}": v for k, v in result.counts.items()},
        }
        log.info(
            "Linear-probe stage (system.stats_head_init=ridge): DAN-statistics head set to the ridge fit on %d "
            "training images (alpha %.3g chosen by %s%s; train SRCC %.3f, val SRCC %s; %d constant features; %.1f s)",
            result.counts["train"], result.alpha, result.selection,
            ", at the edge of the grid: widen system.stats_head_alphas" if result.at_grid_edge else "",
            result.train_srcc, "n/a" if result.val_srcc is None else f"{result.val_srcc:.3f}",
            result.dead_features, seconds,
        )  # fmt: skip
        metrics = {
            f"stats_head_probe/{k}": float(v)
            for k, v in self.stats_head_probe.items()
            if isinstance(v, (int, float))
        }
        for logger in self.loggers:
            logger.log_metrics(metrics, step=0)

    def on_train_start(self) -> None:
        # the sanity check fed the validation metrics; start clean
        self.val_metrics.reset()
        self.val_srcc_best.reset()
        self.best_val_metrics = {}
        self.best_val_epoch = None

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image = batch[BATCH_IMAGE]  # (B, 3, h, w)
        if image.ndim != 4:
            raise ValueError(f"train batch 'image' must be (B, 3, h, w), got {tuple(image.shape)}")
        bs = image.shape[0]
        if self.lambda_twin > 0:
            losses = self._losses_with_twins(image, batch)
        else:
            if BATCH_IMAGE_DEGRADED in batch and not self._warned_unused_twins:
                self._warned_unused_twins = True
                log.warning(
                    "data.degraded_twin is on but system.lambda_twin=0: every training crop's degraded copy is "
                    "made and not used. Set system.lambda_twin > 0, or data.degraded_twin.enabled=false."
                )
            losses = self.compute_losses(self(image), batch)
        self._stop_on_non_finite(losses, batch_idx)
        for name, value in losses.items():
            self.log(
                f"train/{name}",
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=bs,
                sync_dist=True,
                prog_bar=name == "loss",
            )
        return losses["loss"]

    def _losses_with_twins(
        self, image: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One forward pass over the B source crops and their first k degraded copies; adds ``loss_twin``."""
        twin = batch.get(BATCH_IMAGE_DEGRADED)
        if twin is None:
            raise UserError(
                f"system.lambda_twin={self.lambda_twin:g} needs each training crop's degraded copy in the batch "
                f"(key {BATCH_IMAGE_DEGRADED!r}): set data.degraded_twin.enabled=true, or system.lambda_twin=0."
            )
        if twin.shape != image.shape:
            raise ValueError(
                f"batch {BATCH_IMAGE_DEGRADED!r} {tuple(twin.shape)} must match 'image' {tuple(image.shape)}"
            )
        bs = image.shape[0]
        k = max(1, math.ceil(self.twin_fraction * bs))
        out_all = self(torch.cat([image, twin[:k]]))
        out = MFENetOutput(*(t[:bs] if t is not None else None for t in out_all))
        losses = self.compute_losses(out, batch)
        score = out_all.score.float().reshape(-1)
        losses["loss_twin"] = self.twin_loss(score[:k], score[bs:])
        losses["loss"] = losses["loss"] + self.lambda_twin * losses["loss_twin"]
        # share of pairs already in order (source above its copy): the task's own progress, no MOS involved
        losses["twin_order_acc"] = (score[:k] > score[bs:]).float().mean().detach()
        return losses

    def _stop_on_non_finite(self, losses: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Raise ``NonFiniteLossError`` (step and every term in the message) when the loss is NaN/inf on any rank.

        Under DDP the flag is summed over the ranks so that every process stops at the same step (a rank that
        raised alone would leave the others waiting in the gradient all-reduce).
        """
        local_bad = not bool(torch.isfinite(losses["loss"].detach()))
        bad = local_bad
        if self._trainer is not None and self.trainer.world_size > 1:
            flag = torch.tensor(float(local_bad), device=self.device)
            bad = float(self.trainer.strategy.reduce(flag, reduce_op="sum")) > 0
        if not bad:
            return
        terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in losses.items())
        where = "" if local_bad else " on another process (this process's terms below are finite)"
        raise NonFiniteLossError(
            f"non-finite training loss{where} at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}): {terms} (weights: lambda_hf={self.lambda_hf:g}, "
            f"lambda_dist={self.lambda_dist:g}). Training stopped. Lower the learning rate, use "
            "trainer.precision=32-true or bf16-mixed instead of 16-mixed, or set trainer.gradient_clip_val."
        )

    # ----------------------------------------------------------------------------------------------------------
    # validation
    # ----------------------------------------------------------------------------------------------------------
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.predict_images(batch[BATCH_IMAGE])  # (B,)
        self.val_metrics.update(pred, batch[BATCH_MOS], index=batch[BATCH_INDEX])

    def on_validation_epoch_end(self) -> None:
        # every rank reaches compute(): torchmetrics gathers the (index, pred, target) states across ranks
        values = {k: float(v) for k, v in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        if self.trainer.sanity_checking:
            return
        # values are already global (gathered states): no sync_dist, a correlation is not an average
        self.log_dict({k: v for k, v in values.items() if k != "val/srcc"}, sync_dist=False)
        self.log("val/srcc", values["val/srcc"], prog_bar=True, sync_dist=False)
        self.val_srcc_best.update(torch.tensor(values["val/srcc"], device=self.device))
        best = float(self.val_srcc_best.compute())
        self.log("val/srcc_best", best, prog_bar=True, sync_dist=False)
        if not self.best_val_metrics or values["val/srcc"] > self.best_val_metrics["srcc"]:
            self.best_val_metrics = {k.removeprefix("val/"): v for k, v in values.items()}
            self.best_val_epoch = int(self.current_epoch)

    def on_fit_end(self) -> None:
        if self.best_val_metrics:
            summary = {f"best_val/{k}": v for k, v in self.best_val_metrics.items()}
            summary["best_val/epoch"] = self.best_val_epoch
            self._wandb_summary(summary)

    # ----------------------------------------------------------------------------------------------------------
    # test (own test split and cross-dataset sets)
    # ----------------------------------------------------------------------------------------------------------
    def _names_for_test(self) -> list[str]:
        loaders = self.trainer.test_dataloaders
        n = len(loaders) if isinstance(loaders, Sequence) else 1
        names = list(self.test_set_names or [])
        if not names:
            default = str((self.database or {}).get("name") or "test")
            names = [default] if n == 1 else [f"{default}_{i}" for i in range(n)]
        if len(names) < n:
            raise ValueError(
                f"{n} test dataloaders but only {len(names)} test_set_names ({names}); give one name per loader"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"test_set_names must be unique, got {names}")
        return names[:n]

    def on_test_start(self) -> None:
        names = self._names_for_test()
        self._test_names = names
        self.test_metrics = nn.ModuleDict(
            {n: build_iqa_metrics(prefix=f"test/{n}/", fit_5_parameter=self.fit_5_parameter) for n in names}
        ).to(self.device)
        self.test_collectors = nn.ModuleDict({n: ImagePredictions() for n in names}).to(self.device)
        self.test_results = {}
        self.test_predictions = {}

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._test_names[dataloader_idx]
        pred = self.predict_images(batch[BATCH_IMAGE])  # (B,)
        self.test_metrics[name].update(pred, batch[BATCH_MOS], index=batch[BATCH_INDEX])
        self.test_collectors[name].update(pred, batch[BATCH_MOS], index=batch[BATCH_INDEX])

    def on_test_epoch_end(self) -> None:
        for name in self._test_names:
            values = {k: float(v) for k, v in self.test_metrics[name].compute().items()}
            collected = self.test_collectors[name].compute()
            self.test_predictions[name] = {k: v.detach().cpu().numpy() for k, v in collected.items()}
            self.test_results[name] = {k.removeprefix(f"test/{name}/"): v for k, v in values.items()}
            self.test_results[name]["n_images"] = float(len(self.test_predictions[name]["index"]))
            self.log_dict(values, sync_dist=False, add_dataloader_idx=False)
            self.test_metrics[name].reset()
            self.test_collectors[name].reset()
        self._wandb_test_media()

    # ----------------------------------------------------------------------------------------------------------
    # W&B extras (no-ops without a WandbLogger)
    # ----------------------------------------------------------------------------------------------------------
    def _wandb_loggers(self) -> list:
        if self._trainer is None or not self.trainer.is_global_zero:
            return []
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover - wandb is a dependency
            return []
        return [lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]

    def _wandb_summary(self, values: Mapping[str, Any]) -> None:
        for lg in self._wandb_loggers():
            for k, v in values.items():
                lg.experiment.summary[k] = v

    def _wandb_test_media(self) -> None:
        loggers = self._wandb_loggers()
        if not loggers:
            return
        import wandb

        from mfe_iqa.plots import scatter_with_fit

        summary: dict[str, Any] = {}
        for name, rows in self.test_predictions.items():
            metrics = self.test_results[name]
            summary.update({f"test/{name}/{k}": v for k, v in metrics.items()})
            fit = fit_logistic(rows["prediction"], rows["mos"], kind="4") if len(rows["index"]) >= 5 else None
            shown = {k: metrics[k] for k in ("srcc", "plcc", "plcc_fit") if k in metrics}
            fig = scatter_with_fit(rows["prediction"], rows["mos"], fit, title=name, metrics=shown)
            table = wandb.Table(
                columns=["index", "mos", "prediction"],
                data=[
                    [int(i), float(m), float(p)]
                    for i, m, p in zip(rows["index"], rows["mos"], rows["prediction"])
                ],
            )
            for lg in loggers:
                lg.experiment.log(
                    {f"test/{name}/scatter": wandb.Image(fig), f"test/{name}/predictions": table}
                )
        self._wandb_summary(summary)

    # ----------------------------------------------------------------------------------------------------------
    # optimizer
    # ----------------------------------------------------------------------------------------------------------
    def _parameter_groups(self) -> list[dict[str, Any]]:
        """backbone/dan/stats_head/head x decay/no_decay groups; biases and norm parameters (ndim <= 1) get no weight decay.

        Learning rate: the optimizer's lr times backbone_lr_mult (backbone), dan_lr_mult (dan),
        stats_head_lr_mult (stats_head) or 1 (head).
        """
        # the groups a network's parameter_groups() may name, each with its lr multiplier
        lr_mults = {
            "backbone": self.backbone_lr_mult,
            "dan": self.dan_lr_mult,
            "stats_head": self.stats_head_lr_mult,
            "head": 1.0,
        }
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        if hasattr(self.net, "parameter_groups"):
            named = {str(k): list(v) for k, v in self.net.parameter_groups().items()}
            unknown = sorted(set(named) - set(lr_mults))
            if unknown:
                raise ValueError(
                    f"net.parameter_groups() returned unknown groups {unknown}; use {', '.join(lr_mults)}"
                )
        else:
            named = {"head": trainable}
        seen: dict[int, str] = {}
        for group, params in named.items():
            for p in params:
                if id(p) in seen:
                    raise ValueError(
                        f"a parameter is in both '{seen[id(p)]}' and '{group}' of net.parameter_groups()"
                    )
                seen[id(p)] = group
        missing = [p for p in trainable if id(p) not in seen]
        if missing:
            log.info(
                "%d trainable tensors not named by net.parameter_groups(): trained with the head's lr",
                len(missing),
            )
            named.setdefault("head", []).extend(missing)
        groups: list[dict[str, Any]] = []
        for group, params in named.items():
            params = [p for p in params if p.requires_grad]
            mult = lr_mults[group]
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            if decay:
                groups.append(
                    {"params": decay, "weight_decay": self.weight_decay, "lr_mult": mult, "name": group}
                )
            if no_decay:
                groups.append(
                    {"params": no_decay, "weight_decay": 0.0, "lr_mult": mult, "name": f"{group}_no_decay"}
                )
        if not groups:
            raise ValueError("the network has no trainable parameter")
        return groups

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(
                "IQATrainingModule was built without an optimizer (system.optimizer); cannot train"
            )
        optimizer = self.optimizer_factory(params=self._parameter_groups())
        for group in optimizer.param_groups:  # per-module learning rate from the optimizer's base lr
            group["lr"] = group["lr"] * group["lr_mult"]
        if self.scheduler_factory is None:
            return optimizer
        kwargs: dict[str, Any] = {}
        target = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        if "total_steps" in inspect.signature(target).parameters:
            total = self.trainer.estimated_stepping_batches
            if self.scheduler_interval == "epoch":
                total = self.trainer.max_epochs
            if total is None or not math.isfinite(total) or total <= 0:
                raise ValueError(
                    "the warm-up + cosine schedule needs a finite training length: set trainer.max_epochs "
                    "or trainer.max_steps (or system.scheduler=null)"
                )
            kwargs["total_steps"] = int(total)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1},
        }

    # ----------------------------------------------------------------------------------------------------------
    # checkpoints
    # ----------------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model_cfg is None:
            log.warning(
                "IQATrainingModule has no model_cfg: this checkpoint cannot be rebuilt by load_net_from_checkpoint"
            )
        checkpoint[CKPT_META_KEY] = {"model_cfg": self.model_cfg, "database": self.database}
        fingerprint = pretrained_dan_fingerprint(self.net)
        if fingerprint is not None:  # the pre-trained DAN the network started from (a read-out checks it)
            checkpoint[CKPT_META_KEY]["pretrained_dan"] = {"fingerprint": fingerprint}
        if self.stats_head_probe is not None:
            checkpoint[CKPT_META_KEY]["stats_head_probe"] = dict(self.stats_head_probe)


def pretrained_dan_fingerprint(net: nn.Module) -> str | None:
    """``dan_fingerprint`` of the pre-trained DAN a network's DAN started from; None without a DAN or without
    pre-trained DAN weights (a checkpoint written before the fingerprint existed, too)."""
    dan = getattr(net, "dan", None)
    return getattr(dan, "pretrained_fingerprint", None) if dan is not None else None


class CheckpointFormatError(UserError, ValueError):
    """A file that is not an IQA training checkpoint of this project."""


def _clear_weight_sources(cfg: Any) -> Any:
    """Copy of a model config with every pretrained-weight pointer cleared (the checkpoint has the weights)."""
    if isinstance(cfg, Mapping):
        return {
            k: (WEIGHT_SOURCE_KEYS[k] if k in WEIGHT_SOURCE_KEYS else _clear_weight_sources(v))
            for k, v in cfg.items()
        }
    if isinstance(cfg, list):
        return [_clear_weight_sources(v) for v in cfg]
    return cfg


def load_net_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of an ``IQATrainingModule`` checkpoint from the file alone.

    Returns (network in eval mode on ``map_location``, database dict {"name", "mos_min", "mos_max",
    "lower_better", ...}). Pretrained-weight paths in the stored model config are cleared before building, since
    the checkpoint's ``net.*`` weights replace them; the fingerprint of the pre-trained DAN the fit started from,
    where the checkpoint records one, is set back on ``net.dan.pretrained_fingerprint`` (``ReadoutModel.check_pairing``
    reads it). Loads with ``weights_only=False``: open trusted files only.
    """
    from hydra.utils import instantiate

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist: give a .ckpt written by mfe-iqa-train")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise CheckpointFormatError(
            f"'{path}' is not a PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or CKPT_META_KEY not in ckpt:
        hint = (
            " (this looks like a DAN pre-training export: load it with model.dan.pretrained_ckpt)"
            if (isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("mfe_iqa.dan"))
            else ""
        )
        raise CheckpointFormatError(
            f"'{path}' is not an mfe-iqa IQA training checkpoint: it lacks the 'state_dict' and '{CKPT_META_KEY}' "
            f"entries that IQATrainingModule writes{hint}. Give a checkpoint from mfe-iqa-train (checkpoints/*.ckpt)."
        )
    meta = ckpt[CKPT_META_KEY] or {}
    model_cfg = meta.get("model_cfg")
    if not isinstance(model_cfg, Mapping) or "_target_" not in model_cfg:
        raise CheckpointFormatError(
            f"'{path}': checkpoint['{CKPT_META_KEY}']['model_cfg'] is missing or has no '_target_' "
            "(the training system was built without model_cfg); the network cannot be rebuilt from this file"
        )
    state = {k[len(NET_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not state:
        raise CheckpointFormatError(
            f"'{path}': the state_dict holds no weight under the prefix '{NET_PREFIX}'"
        )
    net = instantiate(_clear_weight_sources(dict(model_cfg)))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointFormatError(
            f"'{path}': the stored weights do not fit the network rebuilt from its model_cfg: {err}"
        ) from err
    source = meta.get("pretrained_dan") or {}
    if getattr(net, "dan", None) is not None and source.get("fingerprint"):
        # the provenance the cleared pretrained_ckpt carried: which pre-trained DAN the fit started from
        net.dan.pretrained_fingerprint = str(source["fingerprint"])
    return net.to(map_location).eval(), dict(meta.get("database") or {})

"""Crash-safe checkpoints: a kill during a save never leaves a truncated or missing ``last.ckpt``.

``AtomicCheckpointIO`` writes every checkpoint to a hidden temporary file in the target's folder, fsyncs it, then
``os.replace``s it over the target (atomic on POSIX: a reader sees the old file or the new one, never half of one),
and fsyncs the folder so the rename survives a power loss. ``AtomicModelCheckpoint`` is Lightning's
``ModelCheckpoint`` that installs that writer on the trainer's strategy and makes ``save_last="link"`` atomic too
(Lightning removes ``last.ckpt`` before linking; here the new link replaces it in one rename).
Wire it with ``_target_: mfe_iqa.callbacks.AtomicModelCheckpoint`` (conf/callbacks/model_checkpoint.yaml).

``EMAWeights`` is Lightning's ``EMAWeightAveraging`` made consistent with model selection: validation and every
saved ``state_dict`` hold the averaged weights, and testing a checkpoint after the fit tests those averaged weights
(the selected ones), not the raw weights Lightning keeps beside them for resuming (conf/callbacks/ema.yaml). With
``warmup_power`` its decay warms up (``ema_warmup_decay``), so a short run's average is not dominated by the
weights after the first optimizer step.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # temporary names: ".<name>.tmp-<pid>" (hidden, and not ending in .ckpt)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync, then ``os.replace``.

    If anything fails (or the process dies) before the rename, ``path`` keeps its previous content; the
    temporary file is removed on an exception (a killed process may leave a hidden ``.<name>.tmp-<pid>``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_link(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Point ``link`` at ``target`` (relative symlink, or a copy where links are not allowed) in one rename."""
    target, link = Path(target), Path(link)
    tmp = _tmp_path(link)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.symlink(os.path.relpath(target, link.parent), tmp)
        except OSError:
            shutil.copyfile(target, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(link.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with an fsynced write-then-rename save (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}"
            )
        if "://" in str(path):  # remote file systems: Lightning's own (fsspec transaction) save
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files are written atomically (see the module docstring).

    On setup it swaps the strategy's default ``TorchCheckpointIO`` for ``AtomicCheckpointIO`` (a custom IO given
    through ``trainer.plugins`` is kept, with a warning) and removes temporary files a killed save left behind.
    With ``save_last=True`` the last checkpoint is refreshed at every save opportunity, improved or not.

    ``select_after_steps``: no checkpoint is selected (no top-k save, so ``best_model_path`` and
    ``best_model_score`` ignore the validation) before that many optimizer steps; ``last.ckpt`` is still written.
    With an EMA of decay ``d`` the average is mostly the first-step weights for ``ln 0.5 / ln d`` steps (69 at
    0.99), so an early validation score describes the start of the run, and on a small validation set a lucky
    one can win the whole selection. If the fit ends before the step, nothing is selected and the last epoch's
    model is what is tested (``mfe-iqa-train`` says so).
    """

    def __init__(self, *args: Any, select_after_steps: int = 0, **kwargs: Any) -> None:
        if (
            isinstance(select_after_steps, bool)
            or not isinstance(select_after_steps, int)
            or select_after_steps < 0
        ):
            raise ValueError(
                f"AtomicModelCheckpoint: select_after_steps must be a whole number >= 0, got {select_after_steps!r}"
            )
        super().__init__(*args, **kwargs)
        self.select_after_steps = select_after_steps
        self.skipped_selections = 0  # validations not considered for selection (before select_after_steps)

    def _save_topk_checkpoint(self, trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor is not None and trainer.global_step < self.select_after_steps:
            self.skipped_selections += 1
            if self.skipped_selections == 1:
                log.info(
                    "Checkpoint selection on %s starts after %d optimizer steps (select_after_steps); step %d "
                    "is not considered",
                    self.monitor,
                    self.select_after_steps,
                    trainer.global_step,
                )
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        io = getattr(strategy, "checkpoint_io", None)
        if type(io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(io, AtomicCheckpointIO):
            log.warning(
                "AtomicModelCheckpoint: the strategy uses %s, not AtomicCheckpointIO: checkpoint writes are "
                "only as safe as that plugin makes them",
                type(io).__name__,
            )
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            for stale in Path(self.dirpath).glob(f".*{TMP_MARK}*"):
                log.info("Removing a temporary file left by an interrupted checkpoint save: %s", stale)
                stale.unlink(missing_ok=True)

    # Lightning >= 2.5 refreshes last.ckpt only when a top-k checkpoint was saved at the same step, so with
    # `monitor` + `save_top_k` last.ckpt stayed at the best epoch and a resumed run lost the epochs after it.
    # Here `save_last: true` writes last.ckpt at every checkpoint opportunity (each validation end, or each
    # train-epoch end with save_on_train_epoch_end), which is what `ckpt_path=last` needs.
    def _save_last_if_missed(self, trainer) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if self.save_last is not True or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            atomic_link(filepath, linkpath)
        trainer.strategy.barrier()


def ema_warmup_decay(n_averaged: int, decay: float, power: float | None = None, gamma: float = 1.0) -> float:
    """The EMA decay for the update that follows ``n_averaged`` snapshots: ``min(decay, 1 - (1 + n/gamma)^-power)``.

    Without warm-up (``power=None``) it is ``decay``. A constant decay ``d`` leaves the weights after the first step
    a share ``d^n`` of the average after ``n`` more steps (0.99: 88 % after 13 steps, 6 % after 280), so the
    average of a run of a few hundred steps, and every early checkpoint, is largely the barely trained model. The
    warm-up (the power law of timm's ``ModelEmaV3``) starts with a short window that grows with the run: at
    power 3/4 and gamma 1 the decay is 0.41 after one snapshot, 0.86 after 13, 0.968 after 100 and reaches 0.99
    at about 460.
    """
    if power is None:
        return decay
    return min(decay, 1.0 - (1.0 + n_averaged / gamma) ** (-power))


class EMAWeights(EMAWeightAveraging):
    """Exponential moving average of the weights, evaluated and tested as the averaged model.

    Lightning's callback stores the averaged weights as the checkpoint's ``state_dict`` (what validation scored,
    so what ``val/srcc`` selected) and the raw weights as ``current_model_state`` (to resume the fit). Its
    ``on_load_checkpoint`` puts the raw weights back into the module whenever an averaged model exists, which
    after a fit includes ``trainer.test(ckpt_path=best)`` in the same process: the test would score weights
    that were never validated. Outside the fit stage this callback leaves the loaded ``state_dict`` (the
    averaged weights) in place; resuming a fit restores both as before.

    ``warmup_power`` (with ``warmup_gamma``) makes the decay grow with the number of updates (``ema_warmup_decay``);
    the count is ``AveragedModel.n_averaged``, which is saved with the average, so a resumed fit continues the
    warm-up where it stopped. Integer buffers (BatchNorm's ``num_batches_tracked``) follow the model: a counter
    has no average.
    """

    def __init__(
        self,
        *args: Any,
        decay: float = 0.999,
        warmup_power: float | None = None,
        warmup_gamma: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMAWeights: decay must be in [0, 1], got {decay}")
        if warmup_power is not None and not warmup_power > 0:
            raise ValueError(
                f"EMAWeights: warmup_power must be > 0 (or null for no warm-up), got {warmup_power}"
            )
        if not warmup_gamma > 0:
            raise ValueError(f"EMAWeights: warmup_gamma must be > 0, got {warmup_gamma}")
        super().__init__(*args, decay=decay, **kwargs)
        self.decay, self.warmup_power, self.warmup_gamma = decay, warmup_power, warmup_gamma
        if warmup_power is not None:  # replaces the constant-decay avg_fn EMAWeightAveraging passes on
            self._kwargs.pop("avg_fn", None)
            self._kwargs["multi_avg_fn"] = self._warmup_update

    @torch.no_grad()
    def _warmup_update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        """AveragedModel's multi_avg_fn: one (device, dtype) group per call, updated in place."""
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        d = ema_warmup_decay(int(n_averaged), self.decay, self.warmup_power, self.warmup_gamma)
        torch._foreach_lerp_(averaged, current, 1.0 - d)  # avg + (1 - d) (w - avg) = d avg + (1 - d) w

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
